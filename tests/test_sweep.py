"""Sweeps in real worker processes: isolation, time limits, durability under SIGKILL, resumption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rbpbench import results
from rbpbench.costs import Costs
from rbpbench.results import COLUMNS
from tests.helpers import run_cli

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
FAULTY = ("-p", "tests.faulty_methods")


def test_misbehaving_cells_become_rows_and_the_sweep_completes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    started = time.monotonic()
    result = run_cli(
        "run", *FAULTY, "--methods", "hangs,raises,nan,dies,exhausts-memory,neumann-rbp",
        "--truncation", "3", "--seeds", "0", "--task-param", "steps=50",
        "--timeout", "6", "--jobs", "2", "--out", str(out), cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 120  # the hung cell did not hold the sweep
    frame = pd.read_parquet(out / "results.parquet").set_index("method")
    assert frame.status.to_dict() == {
        "hangs": "timeout",
        "raises": "error",
        "nan": "diverged",
        "dies": "crashed",
        "exhausts-memory": "oom",
        "neumann-rbp": "ok",
    }
    assert "time limit of 6 s" in frame.loc["hangs", "error"]
    assert "killed by SIGKILL" in frame.loc["dies", "error"]
    assert frame.loc["raises", "error"].startswith(
        "RuntimeError: solver exploded (at faulty_methods.py:"
    )
    assert "(5 not ok)" in result.stdout and "-- cells (statuses other than ok)" in result.stdout


def test_fail_on_turns_chosen_statuses_into_exit_1_and_retry_failed_reruns_them(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    args = ("run", *FAULTY, "--methods", "raises,bptt", "--truncation", "2", "--seeds", "0",
            "--task-param", "steps=20", "--out", str(out))  # fmt: skip
    first = run_cli(*args, "--fail-on", "error", cwd=REPO)
    assert first.returncode == 1 and "1 cells ended in error" in first.stderr
    before = pd.read_parquet(out / "results.parquet").set_index("method")
    again = run_cli(*args, cwd=REPO)  # nothing to do: failed cells count as finished
    assert again.returncode == 0 and "2 of 2 cells already finished" in again.stderr
    retried = run_cli(*args, "--retry-failed", cwd=REPO)
    assert retried.returncode == 0 and "1 of 2 cells already finished" in retried.stderr
    after = pd.read_parquet(out / "results.parquet").set_index("method")
    assert len(after) == 2
    assert after.loc["bptt", "run_id"] == before.loc["bptt", "run_id"]
    assert after.loc["raises", "run_id"] != before.loc["raises", "run_id"]
    runs = json.loads((out / "environment.json").read_text())["runs"]
    assert set(after.run_id) <= set(runs) and len(runs) == 3


def rows_on_disk(out: Path) -> int:
    """Finished rows as every reader sees them: the table and the journal."""
    try:
        return len(results.read(out))
    except (FileNotFoundError, OSError, ValueError):
        return 0


def test_a_sweep_killed_with_sigkill_resumes_without_redoing_finished_cells(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", "--methods", "bptt,tbptt,rbp,cg-rbp,neumann-rbp", "--truncation", "5,10",
            "--seeds", "0-3", "--jobs", "2", "--out", str(out)]  # fmt: skip
    sweep = subprocess.Popen(
        [sys.executable, "-m", "rbpbench", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while rows_on_disk(out) < 8 and time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.05)
    os.killpg(sweep.pid, signal.SIGKILL)  # the driver and its workers, mid-sweep
    sweep.wait()
    killed = results.read(out)  # readable: never torn (table and journal)
    assert 8 <= len(killed) < 40
    pd.read_parquet(out / "results.parquet")
    pd.read_csv(out / "results.csv")

    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(killed)} of 40 cells already finished" in resumed.stderr
    final = pd.read_parquet(out / "results.parquet")
    assert list(final.columns) == list(COLUMNS)
    assert len(final) == 40 and final.cell_id.is_unique
    assert not final.duplicated(["method", "truncation", "seed"]).any()
    assert (final.status == "ok").all()
    first_run = final.set_index("cell_id").loc[killed.cell_id, "run_id"]
    assert (first_run == killed.set_index("cell_id").run_id).all()  # finished cells were not redone
    assert len(pd.read_csv(out / "results.csv")) == 40


def test_a_second_sweep_on_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["run", *FAULTY, "--truncation", "1", "--seeds", "0", "--out", str(out)]
    # The first writer's only cell hangs, so it holds the folder for as long as the test needs.
    first = subprocess.Popen(
        [sys.executable, "-m", "rbpbench", *common, "--methods", "hangs", "--timeout", "600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "results.parquet").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = run_cli(*common, "--methods", "bptt", cwd=REPO)
        assert second.returncode == 2
        assert "is being written by another rbpbench run (pid" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # a dead writer's lock does not outlive it
    assert run_cli(*common, "--methods", "bptt", cwd=REPO).returncode == 0


def test_workers_end_soon_after_their_driver_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    driver = subprocess.Popen(
        [sys.executable, "-m", "rbpbench", "run", "--methods", "bptt", "--truncation", "1",
         "--seeds", "0-40", "--jobs", "2", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while rows_on_disk(out) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)  # the driver alone: its workers are orphaned
    driver.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(driver.pid, 0)  # anything left of the session?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    pytest.fail("worker processes outlived their driver by 20 s")


def wait_for_rows(out: Path, n: int, process: subprocess.Popen[bytes], limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while rows_on_disk(out) < n and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert rows_on_disk(out) >= n, "the sweep stored too few rows in time"


def chattr(flag: str, path: Path) -> bool:
    done = subprocess.run(["chattr", "-R", flag, str(path)], capture_output=True)
    return done.returncode == 0


def test_a_folder_that_turns_unwritable_stops_the_sweep_with_exit_3_and_it_resumes(
    tmp_path: Path,
) -> None:
    """As on a full disk: the first row that cannot be stored ends the sweep, loudly."""
    out = tmp_path / "run"
    args = ["run", "--methods", "bptt,neumann-rbp", "--truncation", "5,10", "--seeds", "0-4",
            "--task-param", "steps=60", "--out", str(out)]  # fmt: skip
    sweep = subprocess.Popen(
        [sys.executable, "-m", "rbpbench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_rows(out, 2, sweep)
        if not chattr("+i", out):
            pytest.skip("chattr +i is not permitted here (needs root on ext2/3/4)")
        stdout, stderr = sweep.communicate(timeout=300)
    finally:
        chattr("-i", out)
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 3, stderr
    assert "Traceback" not in stderr and "cells in" not in stdout
    message = [line for line in stderr.splitlines() if line.startswith("rbpbench: error:")]
    assert len(message) == 1 and "could not write" in message[0] and str(out) in message[0]
    stored = results.read(out)  # still readable: the table and the journal
    assert 2 <= len(stored) < 20
    pd.read_parquet(out / "results.parquet")
    pd.read_csv(out / "results.csv")
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(stored)} of 20 cells already finished" in resumed.stderr
    assert len(pd.read_parquet(out / "results.parquet")) == 20


def test_a_sweep_reads_its_folder_only_once_it_holds_the_lock(tmp_path: Path) -> None:
    """A sweep planned while another writes the folder must not overwrite that one's rows."""
    from rbpbench.config import resolve
    from rbpbench.plugins import PluginConfig, load_registry
    from rbpbench.sweep import Sweep

    out = tmp_path / "run"
    registry = load_registry(PluginConfig())
    settings = resolve(
        {"methods": "bptt", "truncation": "2", "seeds": "1"},
        registry,
        task_param_flags={"steps": 20},
    )
    late = Sweep(settings, registry, PluginConfig(), out)  # planned before the other sweep ran
    other = run_cli("run", "--methods", "bptt", "--truncation", "2", "--seeds", "0",
                    "--task-param", "steps=20", "--out", str(out))  # fmt: skip
    assert other.returncode == 0, other.stderr
    late.run()
    table = pd.read_parquet(out / "results.parquet")
    assert sorted(table.seed) == [0, 1]


def test_a_refused_second_sweep_says_nothing_about_resuming(tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["run", *FAULTY, "--truncation", "1", "--seeds", "0", "--out", str(out)]
    first = subprocess.Popen(
        [sys.executable, "-m", "rbpbench", *common, "--methods", "bptt,hangs", "--timeout", "600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=REPO,
    )
    try:
        wait_for_rows(out, 1, first)
        second = run_cli(*common, "--methods", "bptt", cwd=REPO)
        assert second.returncode == 2
        assert "resuming" not in second.stderr
        assert second.stderr.startswith("rbpbench: error:") and len(second.stderr.splitlines()) == 1
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_sigterm_stops_the_sweep_like_ctrl_c_and_it_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", *FAULTY, "--methods", "bptt,hangs", "--truncation", "1", "--seeds", "0",
            "--timeout", "600", "--out", str(out)]  # fmt: skip
    sweep = subprocess.Popen(
        [sys.executable, "-m", "rbpbench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=REPO,
    )
    wait_for_rows(out, 1, sweep)
    os.killpg(sweep.pid, signal.SIGTERM)  # the driver and its workers, as a service manager does
    _, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 143
    assert "terminated: finished cells are in" in stderr
    assert "run the same command again to resume" in stderr
    table = pd.read_parquet(out / "results.parquet")
    assert list(table.status) == ["ok"]  # the hanging cell is not recorded as crashed
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(sweep.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("worker processes outlived the terminated sweep by 20 s")


def test_a_folder_whose_parquet_file_is_gone_resumes_from_its_csv(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ("run", "--methods", "bptt,neumann-rbp", "--truncation", "2", "--task-param",
            "steps=20", "--out", str(out))  # fmt: skip
    assert run_cli(*args, "--seeds", "0").returncode == 0
    first = pd.read_csv(out / "results.csv")
    (out / "results.parquet").unlink()
    again = run_cli(*args, "--seeds", "0-1")
    assert again.returncode == 0, again.stderr
    assert "2 of 4 cells already finished" in again.stderr
    table = pd.read_parquet(out / "results.parquet").set_index("cell_id")
    assert len(table) == 4
    assert (table.loc[first.cell_id, "run_id"] == first.set_index("cell_id").run_id).all()


def test_an_out_folder_that_cannot_be_created_is_one_line_and_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("run", "--methods", "bptt", "--truncation", "1", "--seeds", "0",
                     "--out", str(blocker / "run"))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"rbpbench: error: --out {blocker / 'run'} cannot be written")


def test_a_cell_s_curves_cross_the_worker_process_beside_its_row(tmp_path: Path) -> None:
    """A training cell's curves go from the worker through the pipe, the pool and the sweep
    to <out>/curves/<cell_id>.parquet as a CellOutcome's side data, never as a column."""
    from rbpbench import load
    from rbpbench.results import CURVES_DIR, ENVIRONMENT_FILE, read_curves

    out = tmp_path / "run"
    result = run_cli(
        "run", "-p", "tests.curved_tasks", "--tasks", "curved", "--methods", "bptt,rbp",
        "--truncation", "3", "--seeds", "0", "--out", str(out), cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    frame = load(out)
    assert list(frame.columns) == list(COLUMNS)  # no side data among the columns
    assert set(frame.status) == {"ok"} and list(frame.epochs) == [2, 2]
    for extra in map(json.loads, frame.extra_metrics):
        # the task's own metric, and the mean cost of its training steps, counted by the harness
        assert extra.pop("steps_seen") == 3
        assert set(extra) == {f"{c}_per_step" for c in Costs().columns()}
    assert {p.stem for p in (out / CURVES_DIR).iterdir()} == set(frame.cell_id)
    for row in frame.itertuples():
        curves = read_curves(out, str(row.cell_id))
        by_name = {name: list(group.value) for name, group in curves.groupby("curve")}
        assert by_name == {
            "train_loss": [row.train_loss_initial, row.train_loss_final],
            "probe_value": [0.25, 0.5, 0.75],
        }
    (run,) = json.loads((out / ENVIRONMENT_FILE).read_text())["runs"].values()
    assert set(run["nodes"]) == set(frame.node)


def test_a_sweep_killed_while_it_compacts_loses_no_finished_row(tmp_path: Path) -> None:
    """SIGKILL while results.parquet is being rewritten with journalled rows pending."""
    out = tmp_path / "run"
    args = ["run", "--methods", "neumann-rbp,jfb", "--truncation", "3", "--seeds", "0-29",
            "--task-param", "steps=20", "--out", str(out)]  # fmt: skip
    env = {**os.environ, results.COMPACT_EVERY_ENV: "0"}  # compact after every cell
    sweep = subprocess.Popen(
        [sys.executable, "-m", "rbpbench", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    partial = out / results.partial_name(results.RESULTS_PARQUET)
    journal = out / results.JOURNAL
    deadline = time.monotonic() + 120
    caught = False
    while time.monotonic() < deadline and sweep.poll() is None:
        if journal.exists() and partial.exists() and rows_on_disk(out) >= 3:
            caught = True
            break
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    if not caught:
        pytest.skip("the sweep never showed a compaction in progress to kill")
    seen = results.read(out)
    assert len(seen) >= 3 and seen.cell_id.is_unique
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(seen)} of 60 cells already finished" in resumed.stderr
    final = pd.read_parquet(out / "results.parquet")
    assert len(final) == 60 and final.cell_id.is_unique and not journal.exists()
    first_run = final.set_index("cell_id").loc[seen.cell_id, "run_id"]
    assert (first_run == seen.set_index("cell_id").run_id).all()
