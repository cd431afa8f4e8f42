"""The public surface: ``rbpbench.run`` and ``rbpbench.load``, the exports, and their cost."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rbpbench
from rbpbench.cli import main
from rbpbench.config import UsageError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_returns_its_cells_load_reads_them_and_a_rerun_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    frame = rbpbench.run(
        tasks=["contractive-rnn"],
        methods=["bptt", "neumann-rbp"],
        truncation=[5, 10],
        seeds=[0],
        task_params={"steps": 80},
        out=out,
    )
    assert len(frame) == 4 and set(frame.status) == {"ok"}
    assert list(zip(frame.method, frame.truncation, strict=True)) == [
        ("bptt", 5), ("bptt", 10), ("neumann-rbp", 5), ("neumann-rbp", 10),
    ]  # fmt: skip
    assert frame.attrs["out"] == str(out)
    assert (out / "results.parquet").is_file() and (out / "results.csv").is_file()
    loaded = rbpbench.load(out)
    assert sorted(loaded.cell_id) == sorted(frame.cell_id)
    assert list(loaded.columns) == list(frame.columns)
    assert loaded.dtypes.equals(frame.dtypes)

    # the same sweep in the command's strings: every cell is found, none runs again
    capsys.readouterr()
    again = rbpbench.run(
        tasks="contractive-rnn",
        methods="bptt,neumann-rbp",
        truncation="5,10",
        seeds="0-0",
        task_params=["contractive-rnn.steps=80"],
        out=str(out),
    )
    assert "resuming" in capsys.readouterr().err
    assert list(again.cell_id) == list(frame.cell_id)
    assert list(again.run_id) == list(frame.run_id)  # the rows of the first run

    # one more seed: only its cells run, and the frame is this sweep's cells only
    more = rbpbench.run(
        tasks=["contractive-rnn"],
        methods=["bptt", "neumann-rbp"],
        truncation=[5, 10],
        seeds=range(2),
        task_params={"contractive-rnn": {"steps": 80}},
        out=out,
        progress=False,
    )
    assert len(more) == 8 and set(more.status) == {"ok"}
    assert set(frame.cell_id) < set(more.cell_id)
    assert more.run_id.nunique() == 2

    # results.csv alone is read as results.parquet is
    (out / "results.parquet").unlink()
    assert sorted(rbpbench.load(out).cell_id) == sorted(more.cell_id)


def cli_message(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rbpbench: error: ")
    return err.removeprefix("rbpbench: error: ")


@pytest.mark.parametrize(
    ("kwargs", "args"),
    [
        ({"tasks": ["nope"]}, ["--tasks", "nope"]),
        ({"methods": "bptt,magic"}, ["--methods", "bptt,magic"]),
        ({"truncation": "0"}, ["--truncation", "0"]),
        ({"truncation": "ten"}, ["--truncation", "ten"]),
        ({"seeds": "4-1"}, ["--seeds", "4-1"]),
        ({"seeds": "-1"}, ["--seeds", "-1"]),
        ({"device": ["cpu", "tpu"]}, ["--device", "cpu,tpu"]),
        ({"jobs": "0"}, ["--jobs", "0"]),
        ({"timeout": "-1"}, ["--timeout", "-1"]),
        ({"suite": "nosuchsuite"}, ["--suite", "nosuchsuite"]),
        ({"task_params": {"colour": 3}}, ["--task-param", "colour=3"]),
        ({"task_params": {"steps": -5}}, ["--task-param", "steps=-5"]),
        ({"method_params": ["tol"]}, ["--method-param", "tol"]),
        (
            {"methods": ["neumann-rbp"], "method_params": {"tol": 1e-6}},
            ["--methods", "neumann-rbp", "--method-param", "tol=1e-6"],
        ),
        (
            {"methods": ["rbp"], "method_params": {"rbp": {"start": "zeros"}}},
            ["--methods", "rbp", "--method-param", "rbp.start=zeros"],
        ),
        ({"out": ""}, ["--out", ""]),
        ({"data_dir": " "}, ["--data-dir", " "]),
    ],
)
def test_bad_input_raises_the_commands_message_and_writes_nothing(
    kwargs: dict[str, object],
    args: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = {"out": tmp_path / "run"} if "out" not in kwargs else {}
    with pytest.raises(UsageError) as raised:
        rbpbench.run(**out, **kwargs)  # type: ignore[arg-type]
    assert isinstance(raised.value, ValueError)
    assert str(raised.value) == cli_message(args, capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"truncation": [0]}, "--truncation values must be positive whole numbers, not [0]"),
        ({"truncation": [2.5]}, "--truncation takes whole numbers separated by commas"),
        ({"seeds": [-1]}, "--seeds must be non-negative whole numbers, not [-1]"),
        ({"seeds": range(0)}, "--seeds must be non-negative whole numbers"),
        ({"jobs": 0}, "--jobs must be a positive whole number, not 0"),
        ({"timeout": float("nan")}, "--timeout must be a positive number of seconds"),
        ({"task_params": {"steps": True}}, "contractive-rnn.steps must be a whole number"),
        ({"plugins": ["no_such_module_here"]}, "no_such_module_here"),
    ],
)
def test_python_values_are_checked_as_the_flags_are(
    kwargs: dict[str, object], message: str, tmp_path: Path
) -> None:
    """The message shows the value as it was given (a list here, a string on the command line)."""
    with pytest.raises(UsageError) as raised:
        rbpbench.run(out=tmp_path / "run", **kwargs)  # type: ignore[arg-type]
    assert message in str(raised.value)
    assert not (tmp_path / "run").exists()


def test_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UsageError, match="is being written by another rbpbench run"):
            rbpbench.run(methods=["bptt"], truncation=[5], seeds=[0], out=out)


def test_load_says_when_a_folder_holds_no_results(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no rbpbench results"):
        rbpbench.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no rbpbench results"):
        rbpbench.load(tmp_path / "missing")


def test_method_parameters_are_still_named_and_refused_on_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--methods", "rbp", "--method-param", "tol=1e-6", "--dry-run"]) == 0
    assert "{'tol': 1e-06}" in capsys.readouterr().out
    for method, valid in (("rbp", "init, tol"), ("cg-rbp", "damping, tol"), ("bptt", "(none)")):
        assert main(["run", "--methods", method, "--method-param", "tolerance=1", "--dry-run"]) == 2
        assert f"{method} has no parameter tolerance; valid: {valid}" in capsys.readouterr().err


def test_import_rbpbench_stays_light() -> None:
    """Worker processes import rbpbench: pandas, the sweep machinery and the kit come on use."""
    code = (
        "import sys, rbpbench\n"
        "heavy = {'pandas', 'rbpbench.api', 'rbpbench.config', 'rbpbench.testing'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "assert rbpbench.run.__module__ == 'rbpbench.api' and 'pandas' in sys.modules\n"
        "assert rbpbench.UsageError is __import__('rbpbench.config').config.UsageError\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_export_exists() -> None:
    for name in rbpbench.__all__:
        assert getattr(rbpbench, name) is not None, name
    assert set(rbpbench.__all__) <= set(dir(rbpbench))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rbpbench.nope  # noqa: B018


def test_the_krylov_plugin_imports_only_the_top_level() -> None:
    sources = sorted((REPO / "plugins" / "rbpbench-krylov" / "src").rglob("*.py"))
    assert sources
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("rbpbench."), (path, ast.unparse(node))
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("rbpbench.")]
                assert not names, (path, ast.unparse(node))


@pytest.mark.slow
def test_a_script_read_from_standard_input_runs_a_sweep(tmp_path: Path) -> None:
    """Spawned workers must not re-import ``__main__``: here it is ``<stdin>``, no file."""
    script = (
        "import rbpbench\n"
        f"t = rbpbench.run(tasks=['contractive-rnn'], methods=['bptt'], truncation=[2], "
        f"seeds=[0], task_params={{'steps': 20}}, out={str(tmp_path / 'nb')!r})\n"
        "print(len(t), sorted(set(t.status)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("1 ['ok']")
