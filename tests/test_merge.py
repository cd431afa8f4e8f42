"""``rbpbench merge OUT DIR...``: one row per cell id, conflicts by the documented rule,
environment.json and curves merged, bad input refused with one line and nothing written."""

from __future__ import annotations

import fcntl
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from rbpbench import results
from rbpbench.cli import main
from rbpbench.merge import BY_ORDER, BY_STATUS, BY_TIME, Candidate, Source, resolve
from rbpbench.results import (
    COLUMNS,
    CURVES_DIR,
    DTYPES,
    ENVIRONMENT_FILE,
    LOCK_FILE,
    CellOutcome,
    ResultsFolder,
)
from rbpbench.sweep import record_environment
from tests.helpers import run_cli
from tests.tables import row


def cell(seed: int, run: str, k: int = 3, **values: Any) -> dict[str, Any]:
    """A row of contractive-rnn's jfb at K and seed, written by run ``run``."""
    values.setdefault("wall_time_s", 0.01 * (seed + 1))
    return row("contractive-rnn", "jfb", k, seed, run_id=run, **values)


def folder(
    path: Path,
    rows: list[dict[str, Any]],
    runs: dict[str, str | None] | None = None,
    curves: dict[str, dict[str, list[float]]] | None = None,
) -> Path:
    """A results folder as a sweep leaves it: rows (with curves by cell id) and runs (id ->
    time) in environment.json."""
    store = ResultsFolder(path)
    for record in rows:
        store.append(CellOutcome(record, (curves or {}).get(record["cell_id"])))
    store.compact()  # as a sweep does when it ends
    for run_id, time in (runs or {}).items():
        record_environment(path, run_id, {"run_id": run_id, "time": time, "nodes": {}})
    return path


def merged_table(out: Path) -> pd.DataFrame:
    return results.read(out)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_disjoint_folders_merge_into_one_with_their_runs_and_curves(tmp_path: Path, capsys) -> None:
    a = folder(
        tmp_path / "a",
        [cell(s, "run-a") for s in range(3)],
        {"run-a": "2026-01-01T00:00:00+00:00"},
        {cell(1, "run-a")["cell_id"]: {"loss": [2.0, 1.0]}},
    )
    b = folder(tmp_path / "b", [cell(s, "run-b", k=5) for s in range(2)], {"run-b": None})
    out = tmp_path / "deep" / "merged"
    assert main(["merge", str(out), str(a), str(b)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # nothing to report: no conflict, no warning
    assert "merged 5 cells from 2 folder(s)" in captured.out
    frame = merged_table(out)
    assert list(frame.columns) == list(COLUMNS)
    assert {c: str(t) for c, t in frame.dtypes.items()} == DTYPES
    assert frame.cell_id.is_unique and len(frame) == 5
    assert list(frame.truncation) == [3, 3, 3, 5, 5]  # the order of the sources
    assert len(pd.read_csv(out / results.RESULTS_CSV)) == 5
    (out / results.RESULTS_PARQUET).rename(tmp_path / "aside.parquet")
    assert results.read(out).equals(frame)  # the CSV holds the same table
    runs = json.loads((out / ENVIRONMENT_FILE).read_text())["runs"]
    assert set(runs) == {"run-a", "run-b"} and runs["run-a"]["time"].startswith("2026-01-01")
    curve = cell(1, "run-a")["cell_id"]
    assert sorted(p.name for p in (out / CURVES_DIR).iterdir()) == [f"{curve}.parquet"]
    assert results.read_curves(out, curve).equals(results.read_curves(a, curve))


def test_identical_rows_are_one_row_without_a_word(tmp_path: Path, capsys) -> None:
    rows = [cell(s, "run-a") for s in range(2)]
    a = folder(tmp_path / "a", rows, {"run-a": "2026-01-01T00:00:00"})
    b = folder(tmp_path / "b", [*rows, cell(7, "run-a")], {"run-a": "2026-01-01T00:00:00"})
    assert main(["merge", str(tmp_path / "out"), str(a), str(b)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "2 identical duplicate(s) dropped, 0 conflict(s)" in captured.out
    assert list(merged_table(tmp_path / "out").seed) == [0, 1, 7]


def test_a_result_beats_a_failure_whatever_the_order_and_time(tmp_path: Path, capsys) -> None:
    ok = cell(0, "old", wall_time_s=0.5)
    failed = cell(0, "new", status="error", error="RuntimeError: boom", wall_time_s=None)
    diverged = cell(1, "new", status="diverged")
    a = folder(
        tmp_path / "a", [ok, cell(1, "old", status="timeout")], {"old": "2026-01-01T00:00:00"}
    )
    b = folder(tmp_path / "b", [failed, diverged], {"new": "2026-06-01T00:00:00"})
    assert main(["merge", str(tmp_path / "out"), str(a), str(b)]) == 0
    lines = capsys.readouterr().err.splitlines()
    conflicts = [line for line in lines if line.startswith("rbpbench: conflict: ")]
    assert len(conflicts) == 2, lines
    assert f"cell {ok['cell_id']} (contractive-rnn jfb K=3 seed=0)" in conflicts[0]
    assert f"kept the row of {a} (status ok, run old" in conflicts[0]
    assert f"dropped that of {b} (status error, run new" in conflicts[0]
    assert "a result beats a failure" in conflicts[0] and "status" in conflicts[0]
    assert f"kept the row of {b} (status diverged" in conflicts[1]
    assert lines[-1] == "rbpbench: 2 conflict(s) resolved: 2 by a result beats a failure"
    frame = merged_table(tmp_path / "out")
    assert list(frame.status) == ["ok", "diverged"] and frame.wall_time_s[0] == 0.5


def test_between_equals_the_more_recent_run_wins_else_the_later_folder(
    tmp_path: Path, capsys
) -> None:
    early = {"early": "2026-01-01T00:00:00+00:00"}
    late = {"late": "2026-03-01T00:00:00+00:00"}
    a = folder(tmp_path / "a", [cell(0, "late", wall_time_s=2.0)], late)
    b = folder(tmp_path / "b", [cell(0, "early", wall_time_s=1.0)], early)
    assert main(["merge", str(tmp_path / "by-time"), str(a), str(b)]) == 0
    assert merged_table(tmp_path / "by-time").wall_time_s.tolist() == [2.0]
    assert "by the more recent run" in capsys.readouterr().err
    # no time for one of the runs (no environment.json): the folder named last wins
    c = folder(tmp_path / "c", [cell(0, "unknown", wall_time_s=3.0)])
    assert main(["merge", str(tmp_path / "by-order"), str(c), str(a)]) == 0
    assert merged_table(tmp_path / "by-order").wall_time_s.tolist() == [2.0]
    assert main(["merge", str(tmp_path / "by-order-2"), str(a), str(c)]) == 0
    assert merged_table(tmp_path / "by-order-2").wall_time_s.tolist() == [3.0]
    assert "by the later folder on the command line" in capsys.readouterr().err


def test_the_rule_itself() -> None:
    def candidate(status: str, time: str | None, run: str) -> Candidate:
        source = Source(Path(run), Path(run), [], {run: {"time": time}} if time else {})
        return Candidate({"status": status, "run_id": run}, source)

    ok, error = candidate("ok", None, "x"), candidate("error", "2030-01-01T00:00:00", "y")
    assert resolve(ok, error) == (ok, BY_STATUS) and resolve(error, ok) == (ok, BY_STATUS)
    diverged = candidate("diverged", None, "z")
    assert resolve(diverged, error) == (diverged, BY_STATUS)
    assert resolve(ok, diverged) == (ok, BY_STATUS)
    old, new = candidate("ok", "2026-01-01T00:00:00Z", "o"), candidate("ok", "2025-01-01", "n")
    assert resolve(old, new) == (old, BY_TIME)  # a naive time is read as UTC
    timeout = candidate("timeout", "2026-01-01T00:00:00Z", "t")
    assert resolve(error, timeout) == (error, BY_TIME)  # two failures: the later run
    same = candidate("ok", "2026-01-01T00:00:00Z", "s")
    assert resolve(old, same) == (same, BY_ORDER)


def test_curves_follow_the_kept_row(tmp_path: Path, capsys) -> None:
    """The kept row's curves, from its own folder; a curve file of OUT's whose row is replaced
    by one without curves goes."""
    first, second = cell(0, "one", status="error"), cell(0, "two", wall_time_s=1.0)
    out = folder(
        tmp_path / "out",
        [first, cell(1, "one")],
        {"one": "2026-01-01T00:00:00"},
        {first["cell_id"]: {"loss": [9.0]}, cell(1, "one")["cell_id"]: {"loss": [1.0]}},
    )
    b = folder(tmp_path / "b", [second], {"two": "2026-02-01T00:00:00"})
    assert main(["merge", str(out), str(b)]) == 0
    assert "(its own rows included)" in capsys.readouterr().out
    frame = merged_table(out)
    assert list(frame.status) == ["ok", "ok"] and frame.run_id.tolist() == ["two", "one"]
    assert not (out / CURVES_DIR / f"{first['cell_id']}.parquet").exists()
    assert (out / CURVES_DIR / f"{cell(1, 'one')['cell_id']}.parquet").exists()
    runs = json.loads((out / ENVIRONMENT_FILE).read_text())["runs"]
    assert set(runs) == {"one", "two"}


def test_an_older_folder_without_the_added_columns_merges_with_nulls_there(tmp_path: Path) -> None:
    older = tmp_path / "older"
    older.mkdir()
    frame = results.to_frame([cell(0, "r")]).drop(columns=list(results.ADDED_COLUMNS))
    frame.to_parquet(older / results.RESULTS_PARQUET, index=False)
    b = folder(tmp_path / "b", [cell(1, "r", forward="iterate", forward_converged=True)])
    assert main(["merge", str(tmp_path / "out"), str(older), str(b)]) == 0
    merged = merged_table(tmp_path / "out")
    assert list(merged.columns) == list(COLUMNS)
    assert merged.forward.isna().tolist() == [True, False]
    assert merged.forward_converged.isna().tolist() == [True, False]


def test_one_run_id_in_two_folders_keeps_both_nodes(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    folder(a, [cell(0, "r")])
    folder(b, [cell(1, "r")])
    record_environment(a, "r", {"run_id": "r", "time": "t0", "nodes": {"n1": {"cpu": "x"}}})
    record_environment(b, "r", {"run_id": "r", "time": "t0", "nodes": {"n2": {"cpu": "y"}}})
    assert main(["merge", str(tmp_path / "out"), str(a), str(b)]) == 0
    assert capsys.readouterr().err == ""  # only the nodes differ: nothing to warn about
    runs = json.loads((tmp_path / "out" / ENVIRONMENT_FILE).read_text())["runs"]
    assert runs["r"]["nodes"] == {"n1": {"cpu": "x"}, "n2": {"cpu": "y"}}
    record_environment(b, "r", {"run_id": "r", "time": "t1", "nodes": {}})
    assert main(["merge", str(tmp_path / "out2"), str(a), str(b)]) == 0
    (warning,) = capsys.readouterr().err.splitlines()
    assert (
        warning.startswith("rbpbench: warning: run r is described differently")
        and "(time)" in warning
    )
    runs = json.loads((tmp_path / "out2" / ENVIRONMENT_FILE).read_text())["runs"]
    assert runs["r"]["time"] == "t1" and runs["r"]["nodes"] == {"n1": {"cpu": "x"}}


@contextmanager
def sweep_lock(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock as a running sweep does."""
    with open(path / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write("pid 4242")
        handle.flush()
        yield


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Name -> (merge's arguments, what its one line says), over folders made in ``tmp``."""
    good = folder(tmp / "good", [cell(0, "r")], {"r": "2026-01-01T00:00:00"})
    folder(tmp / "good" / "inner", [cell(1, "r")])
    (tmp / "empty").mkdir()
    (tmp / "stranger").mkdir()
    (tmp / "stranger" / "notes.txt").write_text("mine")
    (tmp / "a-file").write_text("x")
    (tmp / "no-columns").mkdir()
    pd.DataFrame({"cell_id": ["x"], "task": ["t"]}).to_parquet(
        tmp / "no-columns" / "results.parquet"
    )
    (tmp / "broken").mkdir()
    (tmp / "broken" / "results.parquet").write_bytes(b"not parquet")
    bad_env = folder(tmp / "bad-env", [cell(2, "r")])
    (bad_env / ENVIRONMENT_FILE).write_text("{not json")
    bad_type = folder(tmp / "bad-type", [cell(3, "r")])
    (bad_type / results.RESULTS_PARQUET).unlink()
    csv = (bad_type / results.RESULTS_CSV).read_text().replace(",3,3,", ",three,3,", 1)
    (bad_type / results.RESULTS_CSV).write_text(csv)
    out = str(tmp / "out")
    g = str(good)
    return {
        "no source": ([out], "merge needs at least one results folder DIR"),
        "missing source": ([out, str(tmp / "nope")], f"{tmp / 'nope'} does not exist"),
        "not a folder": ([out, str(tmp / "a-file")], "is not a folder"),
        "empty source": ([out, str(tmp / "empty")], "is not a results folder (no results.parquet"),
        "stranger source": ([out, g, str(tmp / "stranger")], "is not a results folder"),
        "missing columns": ([out, str(tmp / "no-columns")], "is not an rbpbench results table"),
        "broken table": ([out, str(tmp / "broken")], "its results table cannot be read"),
        "bad environment": ([out, str(bad_env)], "environment.json cannot be read"),
        "bad type": ([out, str(bad_type)], "column truncation holds values that are not Int64"),
        "twice": ([out, g, str(tmp / "good" / "inner" / "..")], "is given twice"),
        "out is a source": ([g, g], "is also given as a source"),
        "out inside a source": ([str(good / "sub"), g], "is inside the source"),
        "source inside out": ([g, str(good / "inner")], "is inside OUT"),
        "out is a file": ([str(tmp / "a-file"), g], "is a file, not a folder"),
        "out a stranger": ([str(tmp / "stranger"), g], "not empty and holds no rbpbench results"),
        "empty name": ([out, ""], "merge takes folders, not ''"),
    }


CASES = [
    "no source", "missing source", "not a folder", "empty source", "stranger source",
    "missing columns", "broken table", "bad environment", "bad type", "twice",
    "out is a source", "out inside a source", "source inside out", "out is a file",
    "out a stranger", "empty name",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys, case: str) -> None:
    args, message = _bad_inputs(tmp_path)[case]
    before = snapshot(tmp_path)
    assert main(["merge", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbpbench: error: ") and message in lines[0], (
        lines
    )
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "good" / "sub").exists()


def test_every_bad_input_case_is_tested(tmp_path: Path) -> None:
    assert sorted(_bad_inputs(tmp_path)) == sorted(CASES)


@pytest.mark.parametrize("locked", ["out", "source"])
def test_a_folder_a_sweep_is_writing_is_refused(tmp_path: Path, capsys, locked: str) -> None:
    out = folder(tmp_path / "out", [cell(0, "r")])
    source = folder(tmp_path / "source", [cell(1, "s")])
    before = snapshot(tmp_path)
    with sweep_lock(out if locked == "out" else source):
        assert main(["merge", str(out), str(source)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "is being written by a running rbpbench sweep (pid 4242)" in line, line
    after = snapshot(tmp_path)
    assert after == {**before, f"{locked}/{LOCK_FILE}": b"pid 4242"}
    # and with the sweep gone, the same merge goes through
    assert main(["merge", str(out), str(source)]) == 0
    assert len(merged_table(out)) == 2


def test_a_new_out_is_not_left_behind_when_the_lock_is_taken_meanwhile(tmp_path: Path) -> None:
    """OUT's lock is taken again for the writing; a folder the merge created for nothing goes."""
    from rbpbench import merge as merging
    from rbpbench.config import UsageError

    taken = tmp_path / "taken"
    taken.mkdir()
    with (
        sweep_lock(taken),
        pytest.raises(UsageError, match=r"being written .*\(pid 4242\)"),
        merging.holding(taken),
    ):
        pass
    assert taken.is_dir()  # not the merge's to remove
    fresh = tmp_path / "fresh" / "out"
    with pytest.raises(UsageError), merging.holding(fresh):
        assert (fresh / LOCK_FILE).read_text().startswith("pid ")
        raise UsageError("refused after the lock was taken")
    assert not fresh.exists()


def test_a_merge_is_what_the_folder_was_and_merges_again_to_the_same(tmp_path: Path) -> None:
    """Merging a folder with itself (as OUT, then again as its copy) changes no row."""
    rows = [cell(s, "r", wall_time_s=0.1 * s) for s in range(3)]
    a = folder(tmp_path / "a", rows, {"r": "2026-01-01T00:00:00"})
    assert main(["merge", str(tmp_path / "m"), str(a)]) == 0
    assert merged_table(tmp_path / "m").equals(results.read(a))
    assert main(["merge", str(tmp_path / "m"), str(a)]) == 0
    assert merged_table(tmp_path / "m").equals(results.read(a))


@pytest.mark.slow
def test_real_sweeps_on_two_machines_merge_and_compare(tmp_path: Path) -> None:
    """Two real sweeps that share a seed: merged, the shared cells are one row each (by the
    more recent run); compared, they are matched and the rest counted as in one folder only."""
    common = ["--task-param", "steps=20", "--truncation", "3", "--methods", "neumann-rbp,jfb"]
    for name, seeds in (("a", "0-1"), ("b", "1-2")):
        done = run_cli("run", *common, "--seeds", seeds, "--out", str(tmp_path / name))
        assert done.returncode == 0, done.stderr
    done = run_cli("merge", str(tmp_path / "m"), str(tmp_path / "a"), str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    merged = merged_table(tmp_path / "m")
    assert len(merged) == 6 and merged.cell_id.is_unique
    b = results.read(tmp_path / "b")
    shared = merged[merged.seed == 1].set_index("cell_id").run_id
    assert set(shared) == set(b.run_id)  # b ran later
    runs = json.loads((tmp_path / "m" / ENVIRONMENT_FILE).read_text())["runs"]
    assert set(runs) == set(merged.run_id)
    done = run_cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "csv")
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(io.StringIO(done.stdout))
    assert table.matched.tolist() == [1, 1] and table.only_a.tolist() == [1, 1]
    assert table.only_b.tolist() == [1, 1] and (table.grad_rel_error_exact_diff == 0).all()


def test_a_folder_with_journalled_rows_merges_them_and_its_journal_goes(tmp_path: Path) -> None:
    """A sweep killed before its last compaction leaves rows in the journal: they are rows."""
    a = folder(tmp_path / "a", [row("t", "m", 5, 0, loss=1.0)])
    store = ResultsFolder(a)
    store.append(CellOutcome(row("t", "m", 5, 1, loss=2.0)))  # journalled, not compacted
    assert (a / results.JOURNAL).exists()
    assert main(["merge", str(a), str(folder(tmp_path / "b", [row("t", "m", 5, 2)]))]) == 0
    assert sorted(merged_table(a).seed) == [0, 1, 2]
    assert not (a / results.JOURNAL).exists()
