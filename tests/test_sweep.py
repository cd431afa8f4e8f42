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
    try:
        return len(pd.read_parquet(out / "results.parquet"))
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
    killed = pd.read_parquet(out / "results.parquet")  # readable: never torn
    assert 8 <= len(killed) < 40
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
