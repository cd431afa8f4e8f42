"""``rbpbench run`` end to end in a real process, and its handling of bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from rbpbench.cli import main
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
        # installed plugins' methods may come first, so only the paper's are looked for
        (["--methods", "bptt,magic"], "unknown method magic; valid: "),
        (["--truncation", "0"], "--truncation values must be positive"),
        (["--truncation", "ten"], "--truncation takes whole numbers"),
        (["--seeds", "4-1"], "--seeds takes a range"),
        (["--seeds", "a"], "--seeds takes a range"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--task-param", "colour=3"], "contractive-rnn has no parameter colour"),
        (["--method-param", "tol"], "--method-param takes KEY=VALUE"),
        (
            ["--suite", "nosuchsuite"],
            "unknown suite 'nosuchsuite'; valid: deq-mnist, forward-solvers, hopfield-quick, ",
        ),
        (["--jobs", "0"], "--jobs must be a positive whole number"),
        (["--timeout", "soon"], "--timeout must be a positive number"),
        (["--fail-on", "error,meh"], "--fail-on: unknown status meh"),
        (["--config", "/nonexistent.toml"], "--config /nonexistent.toml: No such file"),
        (
            ["-p", "no_such_plugin_module"],
            "plugin module 'no_such_plugin_module' (-p) cannot be imported",
        ),
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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tasks = [", "does not parse as TOML"),
        ('tasks = "contractive-rnn"\ncolour = "red"', "unknown keys colour"),
        ("task_params = 3", "task_params must hold one table per name"),
        ('[method_params.rbp]\nstart = "zeros"', "rbp has no parameter start"),
    ],
)
def test_a_bad_config_file_is_exit_2(tmp_path: Path, capsys, text: str, message: str) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    out = tmp_path / "never"
    assert main(["run", "--config", str(path), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_a_folder_that_holds_something_else_is_left_untouched(tmp_path: Path, capsys) -> None:
    out = tmp_path / "old"
    out.mkdir()
    (out / "notes.txt").write_text("precious\n")
    assert main(["run", "--seeds", "0", "--truncation", "3", "--out", str(out)]) == 2
    assert "holds no rbpbench results" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_list_names_every_method_and_task_with_its_distribution(capsys) -> None:
    assert main(["list"]) == 0
    stdout = capsys.readouterr().out
    for name in ("bptt", "tbptt", "rbp", "cg-rbp", "neumann-rbp", "contractive-rnn"):
        line = next(row for row in stdout.splitlines() if row.split()[:1] == [name])
        assert "rbpbench 0.1.0" in line


def test_bad_input_leaves_an_earlier_sweeps_folder_byte_for_byte(tmp_path: Path, capsys) -> None:
    out = tmp_path / "earlier"
    assert (
        main(["run", "--methods", "bptt", "--seeds", "0", "--truncation", "2", "--out", str(out)])
        == 0
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for bad in (["--truncation", "-3"], ["--device", "gpu"], ["--tasks", "x"], ["--seeds", "2-1"]):
        assert main(["run", *bad, "--out", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
