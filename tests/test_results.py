"""The results folder on disk: storage failures are loud, the CSV alone resumes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rbpbench.results import ResultsFolder, StorageError, atomic_write
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
    before = pd.read_parquet(folder.parquet)
    folder.csv.unlink()
    folder.csv.mkdir()  # a real OSError (IsADirectoryError) when the CSV is replaced
    with pytest.raises(StorageError, match=r"could not write .*results\.csv: Is a directory"):
        folder.append(row("t", "m", 5, 7, loss=1.0))
    assert len(folder.rows) == 2  # the row it could not store is not pretended stored
    pd.testing.assert_frame_equal(pd.read_parquet(folder.parquet).head(2), before)
    assert not list(folder.folder.glob(".*.partial"))


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
    expected = folder.frame()
    folder.parquet.unlink()
    again = ResultsFolder(folder.folder)
    assert again.source == folder.csv
    assert set(again.finished(retry_failed=False)) == set(expected.cell_id)
    pd.testing.assert_frame_equal(again.frame(), expected)


def test_an_unread_folder_holds_nothing_until_read(tmp_path: Path) -> None:
    folder = stored_folder(tmp_path)
    assert ResultsFolder(folder.folder, read=False).rows == {}
