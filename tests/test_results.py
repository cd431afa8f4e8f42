"""The results folder on disk: storage failures are loud, the CSV alone resumes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rbpbench.results import ResultsFolder, StorageError, atomic_write, read
from tests.tables import row


def stored_folder(tmp_path: Path, n: int = 2) -> ResultsFolder:
    folder = ResultsFolder(tmp_path / "r")
    for seed in range(n):
        folder.append(
            row("t", "m", 5, seed, loss=0.5 + seed, success=bool(seed), forward_converged=True)
        )
    return folder


def test_a_file_that_cannot_be_written_raises_naming_it_and_keeps_the_table(
    tmp_path: Path,
) -> None:
    folder = stored_folder(tmp_path)
    folder.compact()
    before = pd.read_parquet(folder.parquet)
    folder.journal.mkdir()  # a real OSError (IsADirectoryError) when a row is journalled
    with pytest.raises(StorageError, match=r"could not write .*results\.pending\.jsonl"):
        folder.append(row("t", "m", 5, 7, loss=1.0))
    assert len(folder.rows) == 2  # the row it could not store is not pretended stored
    folder.journal.rmdir()
    folder.csv.unlink()
    folder.csv.mkdir()  # and when the CSV is replaced at compaction
    folder.append(row("t", "m", 5, 8, loss=1.0))
    with pytest.raises(StorageError, match=r"could not write .*results\.csv: Is a directory"):
        folder.compact()
    pd.testing.assert_frame_equal(pd.read_parquet(folder.parquet).head(2), before)
    assert not list(folder.folder.glob(".*.partial"))
    assert len(read(folder.folder)) == 3  # the journal keeps the row the table could not take


def test_atomic_write_removes_its_partial_file_and_leaves_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")

    def fails(partial: Path) -> None:
        partial.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(StorageError, match="No space left on device"):
        atomic_write(path, fails)
    assert path.read_text() == "old" and not (tmp_path / ".f.txt.partial").exists()


def test_the_csv_alone_resumes_with_the_parquet_types(tmp_path: Path) -> None:
    folder = stored_folder(tmp_path)
    folder.compact()
    expected = folder.frame()
    folder.parquet.unlink()
    again = ResultsFolder(folder.folder)
    assert again.source == folder.csv
    assert set(again.finished(retry_failed=False)) == set(expected.cell_id)
    pd.testing.assert_frame_equal(again.frame(), expected)


def test_an_unread_folder_holds_nothing_until_read(tmp_path: Path) -> None:
    folder = stored_folder(tmp_path)
    assert ResultsFolder(folder.folder, read=False).rows == {}


def test_a_finished_cell_costs_one_journal_line_and_readers_see_it(tmp_path: Path) -> None:
    folder = stored_folder(tmp_path, n=3)  # no compaction yet: the rows are in the journal
    assert not folder.parquet.exists()
    assert len(folder.journal.read_text().splitlines()) == 3
    pd.testing.assert_frame_equal(read(folder.folder), folder.frame())
    folder.compact()
    assert not folder.journal.exists() and len(pd.read_parquet(folder.parquet)) == 3
    folder.append(row("t", "m", 5, 0, loss=9.0))  # the same cell again: the journal's row wins
    seen = read(folder.folder)
    assert len(seen) == 3 and seen.set_index("seed").loc[0, "loss"] == 9.0
    again = ResultsFolder(folder.folder)
    assert set(again.rows) == set(folder.rows) and again.rows[seen.cell_id[0]]["loss"] is not None


def test_a_reader_racing_a_compaction_still_sees_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep compacts between the reader's two reads, the journal's and the table's
    (the race a SIGTERM test once lost: the old table, then no journal, showed no row)."""
    from rbpbench import results

    folder = stored_folder(tmp_path, n=2)
    folder.compact()
    folder.append(row("t", "m", 5, 7, loss=1.0))  # pending: in the journal only
    reads: list[str] = []

    def then_compact(name: str, read_part):  # type: ignore[no-untyped-def]
        def read_and_maybe_compact(path: Path):  # type: ignore[no-untyped-def]
            part = read_part(path)
            reads.append(name)
            if len(reads) == 1:
                folder.compact()  # the table now holds the row, and the journal is gone
            return part

        return read_and_maybe_compact

    monkeypatch.setattr(results, "read_journal", then_compact("journal", results.read_journal))
    table_of = then_compact("table", results._compacted_table)
    monkeypatch.setattr(results, "_compacted_table", table_of)
    assert sorted(read(folder.folder).seed) == [0, 1, 7]
    assert reads == ["journal", "table"]


def test_a_line_cut_short_by_a_kill_is_not_a_row(tmp_path: Path) -> None:
    folder = stored_folder(tmp_path, n=2)
    with open(folder.journal, "a") as handle:
        handle.write('{"cell_id": "half", "loss": 0.')
    assert len(read(folder.folder)) == 2


def test_compaction_waits_longer_on_a_table_that_takes_long_to_write(tmp_path: Path) -> None:
    folder = stored_folder(tmp_path, n=1)
    folder.compact_every_s = 0.0
    folder._compaction_s = 3600.0  # as if the last compaction took an hour
    folder._last_compaction = __import__("time").monotonic()
    folder.append(row("t", "m", 5, 5, loss=1.0))
    assert not folder.parquet.exists()  # not due: at most a tenth of the time goes to compacting
