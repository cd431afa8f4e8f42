"""``rbpbench run`` end to end in a real process, and its handling of bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from rbpbench.cli import UsageError, main, parse_devices, parse_seeds, parse_truncations
from rbpbench.results import COLUMNS
from tests.helpers import run_cli


@pytest.mark.slow
def test_a_small_sweep_writes_both_files_and_prints_the_leaderboard(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli(
        "run", "--truncation", "5,40", "--seeds", "0-1", "--device", "cpu,cuda",
        "--task-param", "steps=120", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "relative gradient error vs exact gradient" in result.stdout
    frame = pd.read_parquet(out / "results.parquet")
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 5 * 2 * 2 * 2
    assert len(pd.read_csv(out / "results.csv")) == len(frame)
    cpu = frame[frame.device == "cpu"]
    assert set(cpu.status) == {"ok"}
    assert (cpu.memory_method == "memray").all() and (cpu.peak_memory_bytes > 0).all()
    assert (cpu.wall_time_s > 0).all() and cpu.grad_rel_error_exact.notna().all()
    assert set(cpu.torch_version) == {torch.__version__}
    bptt = cpu[cpu.method == "bptt"]
    assert (bptt.grad_rel_error == 0).all() and (bptt.grad_cosine > 1 - 1e-12).all()
    by_k = cpu[cpu.method == "neumann-rbp"].groupby("truncation").grad_rel_error_exact.mean()
    assert by_k[40] < by_k[5]
    cuda = frame[frame.device == "cuda"]
    if torch.cuda.is_available():
        assert set(cuda.status) == {"ok"}
    else:
        assert set(cuda.status) == {"skipped"}
        assert cuda.error.str.contains("CUDA is not available").all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "nope"], "unknown task nope; valid: contractive-rnn"),
        (["--methods", "bptt,magic"], "unknown method magic; valid: bptt, tbptt"),
        (["--truncation", "0"], "--truncation values must be positive"),
        (["--truncation", "ten"], "--truncation takes whole numbers"),
        (["--seeds", "4-1"], "--seeds takes a range"),
        (["--seeds", "a"], "--seeds takes a range"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--task-param", "colour=3"], "contractive-rnn has no parameter colour"),
        (["--method-param", "tol"], "--method-param takes KEY=VALUE"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, capsys, args, message
) -> None:
    out = tmp_path / "never"
    assert main(["run", *args, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_the_console_script_exits_2_on_bad_input(tmp_path: Path) -> None:
    result = run_cli("run", "--tasks", "nope", "--out", str(tmp_path / "never"))
    assert result.returncode == 2 and result.stderr.startswith("rbpbench: error: unknown task nope")


def test_an_existing_results_folder_is_left_untouched(tmp_path: Path, capsys) -> None:
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.csv").write_text("precious\n")
    assert main(["run", "--seeds", "0", "--truncation", "3", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "results.csv").read_text() == "precious\n"


def test_list_names_every_method_and_task_with_its_distribution(capsys) -> None:
    assert main(["list"]) == 0
    stdout = capsys.readouterr().out
    for name in ("bptt", "tbptt", "rbp", "cg-rbp", "neumann-rbp", "contractive-rnn"):
        line = next(row for row in stdout.splitlines() if row.split()[:1] == [name])
        assert "rbpbench 0.1.0" in line


def test_parsers() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0-1,7,1") == [0, 1, 7]
    assert parse_truncations("10,20,10") == [10, 20]
    assert parse_devices("cpu,cuda:1") == ["cpu", "cuda:1"]
    for bad in ("-1", "1-", ""):
        with pytest.raises(UsageError):
            parse_seeds(bad)
    with pytest.raises(UsageError):
        parse_devices("cuda:x")
