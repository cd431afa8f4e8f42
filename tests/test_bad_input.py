"""Bad input that once got a traceback, ran forever or was silently changed: now one line, exit 2."""

from __future__ import annotations

import re
from pathlib import Path
from unittest.mock import MagicMock

import pytest

from rbpbench import config, executors
from rbpbench.cells import Cell, expand, plan
from rbpbench.cli import main
from rbpbench.config import (
    INT64_MAX,
    UsageError,
    load_suite,
    parse_seeds,
    parse_timeout,
    resolve,
    type_problem,
)
from rbpbench.executors import LocalPool, Worker, usable_cores
from rbpbench.plugins import PluginConfig
from rbpbench.problem import TaskSpec
from rbpbench.sweep import plan_cells
from tests.helpers import run_cli

ONE_CELL = ["--tasks", "contractive-rnn", "--methods", "bptt", "--truncation", "5", "--seeds", "0"]


def sweep_args(*overrides: str) -> list[str]:
    """ONE_CELL with some of its flags replaced and others added (each a flag and its value)."""
    flags = dict(zip(ONE_CELL[::2], ONE_CELL[1::2], strict=True))
    flags.update(zip(overrides[::2], overrides[1::2], strict=True))
    return [part for pair in flags.items() for part in pair]


def refused(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``rbpbench run ARGS --out OUT``: exit 2, one line, no folder. Returns the line."""
    assert main(["run", *args, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbpbench: error: "), lines
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "nan"], "--timeout must be a positive number"),
        (["--timeout", "inf"], "--timeout must be a positive number"),
        (["--timeout", "-1"], "or 0 or none for no limit"),
        (["--seeds", "0-100000000"], "100,000,001 cells, over the limit of 1,000,000"),
        (["--seeds", "0-9223372036854775807"], "over the limit of 1,000,000"),
        (["--seeds", "0,9223372036854775808"], "beyond the largest seed"),
        (["--seeds", "1.5"], "--seeds takes a range"),
        (["--truncation", "9223372036854775808"], "beyond the largest value"),
        (["--truncation", "2.5"], "--truncation takes whole numbers"),
        (["--jobs", "2.7"], "--jobs must be a positive whole number"),
        (["--jobs", "true"], "--jobs must be a positive whole number"),
        (["--cpus-per-cell", "nan"], "--cpus-per-cell must be a positive number"),
        (["--device", "cuda:"], "unknown device 'cuda:'"),
        (["--task-param", "spectral_norm=abc"], "contractive-rnn.spectral_norm must be a number"),
        (["--task-param", "steps=true"], "contractive-rnn.steps must be a whole number"),
        (["--task-param", "steps=-5"], "contractive-rnn: steps must be at least 1, not -5"),
        (["--task-param", "spectral_norm=1.5"], "spectral_norm must be in (0, 1)"),
        (["--task-param", "hopfield.epochs=2"], "the task hopfield is not selected"),
        (["--task-param", "nope.steps=2"], "'nope' is no installed task"),
        (["--task-param", "contractive-rnn.colour=2"], "contractive-rnn has no parameter colour"),
        (["--methods", "rbp", "--method-param", "rbp.tol=small"], "rbp.tol must be a number"),
        (["--method-param", "bptt.init=zeros"], "bptt has no parameter init"),
        (["--method-param", "init=zeros", "--methods", "bptt,tbptt"], "none of the selected"),
        (["--fail-on", ""], "--fail-on takes statuses"),
        (["--suite", ""], "unknown suite ''"),
        (["--config", ""], "--config takes the path of a TOML file"),
        (["--data-dir", ""], "--data-dir takes a folder"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert message in refused(sweep_args(*args), tmp_path / "X", capsys)


def test_a_hundred_million_seeds_are_refused_before_a_dry_run_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*sweep_args("--seeds", "0-100000000"), "--dry-run"]
    assert "100,000,001 cells" in refused(args, tmp_path / "X", capsys)


def test_an_empty_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *ONE_CELL, "--out", ""]) == 2
    assert "--out takes a folder, not ''" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[task_params.contractive_rnn]\nspectral_norm = 0.5",
            "[task_params.contractive_rnn] names",
        ),
        ("[method_params.rbpp]\ninit = 'zeros'", "[method_params.rbpp] names no installed method"),
        ("[task_grid.hyperopd]\nsteps = [1, 2]", "[task_grid.hyperopd] names no installed task"),
        ("truncation = [2.5, 7.9]", "--truncation takes whole numbers"),
        ("truncation = [true]", "--truncation takes whole numbers"),
        ("seeds = [1.5]", "--seeds takes a range"),
        ("jobs = 2.7", "--jobs must be a positive whole number"),
        ("jobs = true", "--jobs must be a positive whole number"),
        ("timeout = true", "--timeout must be a positive number"),
        ("timeout = nan", "--timeout must be a positive number"),
        ("cpus_per_cell = true", "--cpus-per-cell must be a positive number"),
        ("[task_params.contractive-rnn]\nsteps = 1.5", "contractive-rnn.steps must be a whole"),
        ("[task_params.contractive-rnn]\nsteps = -5", "steps must be at least 1"),
        ("[method_params.rbp]\ntol = true", "rbp.tol must be a number"),
        (
            "tasks = ['hyperopt']\n[task_grid.hyperopt]\nsteps = [100, 'many']",
            "hyperopt.steps must be a whole number",
        ),
        (
            "tasks = ['hyperopt']\n[task_grid.hyperopt]\nsteps = [100, 0]",
            "steps must be at least 1",
        ),
    ],
)
def test_bad_config_values_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(text + "\n")
    assert message in refused(["--config", str(path)], tmp_path / "X", capsys)


def test_a_config_file_that_is_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin.toml"
    path.write_bytes(b'tasks = "\xff\xfe"\n')
    assert "is not UTF-8 text" in refused(["--config", str(path)], tmp_path / "X", capsys)


def test_whole_floats_and_a_byte_order_mark_are_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sweep.toml"
    path.write_bytes(b"\xef\xbb\xbftruncation = [2.0]\nseeds = [3.0]\njobs = 1.0\n")
    assert main(["run", *ONE_CELL[:4], "--config", str(path), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("contractive-rnn bptt K=2 seed=3")


@pytest.mark.parametrize("value", [0, 0.0, "0", "0.0", "none", "None", None])
def test_zero_and_none_both_mean_no_time_limit(value: object) -> None:
    assert parse_timeout(value) is None


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("nan"), True, "soon", -1, [1]])
def test_a_timeout_that_is_no_finite_number_is_refused(value: object) -> None:
    with pytest.raises(UsageError, match="--timeout must be a positive number"):
        parse_timeout(value)


def test_seeds_are_ranges_counted_without_expanding() -> None:
    seeds = parse_seeds("0-100000000,5,200000000")
    assert seeds.size == 100_000_002 and seeds.ranges == (
        range(100_000_001),
        range(200_000_000, 200_000_001),
    )
    assert seeds[100_000_001] == 200_000_000 and seeds[-2] == 100_000_000
    assert parse_seeds(f"0-{INT64_MAX}").size == INT64_MAX + 1
    with pytest.raises(UsageError, match="over the limit"):
        expand(["contractive-rnn"], ["bptt"], [5], seeds, ["cpu"])


def test_the_cell_limit_is_a_module_constant(
    registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(config, "MAX_CELLS", 10)
    base = {"tasks": "contractive-rnn", "methods": "bptt,rbp", "truncation": "5"}
    settings = resolve({**base, "seeds": "0-4"}, registry)
    assert len(plan_cells(settings)) == 10  # at the limit: a list, as the sweep indexes it
    with pytest.raises(UsageError, match="20 cells, over the limit of 10"):
        resolve({**base, "seeds": "0-4", "truncation": "5,6"}, registry)
    with pytest.raises(UsageError, match="12 cells, over the limit of 10"):
        resolve({**base, "seeds": "0-5"}, registry)
    grid = {"task_grid": {"hyperopt": {"steps": [1, 2]}}}
    with pytest.raises(UsageError, match="20 cells, over the limit of 10"):  # grid values count
        resolve({**base, "tasks": "hyperopt", "seeds": "0-4", **grid}, registry)
    with pytest.raises(UsageError, match="over the limit of 10"):  # and the Sweep's own plan
        plan_cells(
            config.SweepSettings(["contractive-rnn"], ["bptt"], [5], parse_seeds("0-10"), ["cpu"])
        )


def test_a_dry_run_prints_cells_as_they_are_made() -> None:
    settings = config.SweepSettings(
        ["contractive-rnn"], ["bptt"], [5], parse_seeds(f"0-{10**8}"), ["cpu"]
    )
    cells = plan(settings)
    assert next(cells) == Cell("contractive-rnn", "bptt", 5, 0, "cpu")
    assert next(cells).seed == 1


def test_an_unscoped_parameter_goes_to_the_selected_ones_that_take_it(
    registry, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--method-param", "init=zeros", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "45 cells"
    assert all(("'init': 'zeros'" in line) == (" rbp " in line) for line in lines[:-1])
    settings = resolve(
        load_suite("quick"), registry, task_param_flags={"epochs": 3, "hyperopt.steps": 7}
    )
    with_epochs = {t for t, params in settings.task_params.items() if params.get("epochs") == 3}
    assert with_epochs == {
        "hopfield",
        "cora",
        "citeseer",
        "pubmed",
        "deq-mnist",
    }  # not contractive-rnn, hyperopt
    assert settings.task_params["hyperopt"]["steps"] == 7
    assert settings.task_params["hopfield"]["steps"] == 30  # the suite's; the flag was scoped


def test_a_scoped_value_wins_over_a_plain_one(registry) -> None:
    flags = {"rbp.tol": 1e-3, "tol": 1e-5}
    settings = resolve({"methods": "rbp,cg-rbp"}, registry, method_param_flags=flags)
    assert settings.method_params == {"rbp": {"tol": 1e-3}, "cg-rbp": {"tol": 1e-5}}


def test_a_scoped_flag_fixes_a_grid_key_of_its_task_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(["run", "--suite", "paper-fig4", "--task-param", "hyperopt.steps=100", "--dry-run"])
        == 0
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == "8 cells"


def test_a_suite_may_name_a_task_the_flags_deselect(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--suite", "quick", "--tasks", "hopfield", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "20 cells"


@pytest.mark.parametrize(
    ("task", "params", "message"),
    [
        ("hopfield", {"epochs": 0}, "hopfield: epochs must be at least 1"),
        ("hopfield", {"corruption": 1.5}, "hopfield: corruption must be in [0, 1]"),
        ("hopfield", {"lr": 0}, "hopfield: lr must be > 0"),
        ("hopfield", {"source": "web"}, "hopfield: source must be one of auto, embedded, mnist"),
        ("cora", {"eval_every": 0}, "cora: eval_every must be at least 1"),
        ("cora", {"momentum": 1.0}, "cora: momentum must be in [0, 1)"),
        ("pubmed", {"train_fraction": 0.6, "val_fraction": 0.5}, "pubmed: train_fraction + val"),
        ("hyperopt", {"batch": 500, "examples": 100}, "hyperopt: batch must be at most examples"),
        ("hyperopt", {"meta_steps": -1}, "hyperopt: meta_steps must be at least 0"),
        ("hyperopt", {"rbp_jacobian": "some"}, "hyperopt: rbp_jacobian must be one of"),
        ("hyperopt", {"meta_lr": float("nan")}, "hyperopt: meta_lr must be > 0"),
        ("contractive-rnn", {"hidden": 0}, "contractive-rnn: hidden must be at least 1"),
        ("deq-mnist", {"spectral_norm": 1.0}, "deq-mnist: spectral_norm must be in (0, 1)"),
        ("deq-mnist", {"examples": 60000}, "deq-mnist: examples + val_examples must be at most"),
    ],
)
def test_each_builtin_task_checks_its_ranges_up_front(
    registry, task: str, params: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        resolve({"tasks": task}, registry, task_param_flags=params)


def test_every_builtin_task_accepts_its_defaults(registry) -> None:
    for spec, origin in registry.tasks.values():
        if origin.distribution == "rbpbench":
            assert spec.check is not None
            spec.check(dict(spec.defaults))


def test_a_task_without_a_check_still_works() -> None:
    assert TaskSpec("x", lambda **kw: None, "s").check is None  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(
    ("value", "default", "ok"),
    [
        (3, 1, True),
        (True, 1, False),
        (3.0, 1, False),
        (3, 0.5, True),
        (0.5, 0.5, True),
        (False, 0.5, False),
        ("x", "auto", True),
        (1, "auto", False),
        (True, False, True),
        (1, False, False),
        ([1, 2], [3], True),
        ([1, "a"], [3], False),
        ("a", [3], False),
        ({"a": 1}, {}, True),
        ([1], {}, False),
        ("anything", None, True),
    ],
)
def test_values_are_checked_against_the_type_of_the_default(
    value: object, default: object, ok: bool
) -> None:
    assert (type_problem(value, default) is None) == ok


def test_more_jobs_than_cores_is_a_warning_not_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", *ONE_CELL, "--jobs", str(usable_cores() + 1), "--dry-run"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbpbench: warning: --jobs"), lines


def test_the_local_pool_starts_no_more_workers_than_cells(
    registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Stop(Exception):
        pass

    started: list[Worker] = []

    def start(self: LocalPool) -> Worker:
        started.append(Worker(MagicMock(), MagicMock()))
        return started[-1]

    monkeypatch.setattr(LocalPool, "_start", start)
    monkeypatch.setattr(executors, "wait", MagicMock(side_effect=Stop))
    pool = LocalPool(registry, PluginConfig(), "run", jobs=64)
    cells = [Cell("contractive-rnn", "bptt", 5, seed, "cpu") for seed in range(3)]
    with pytest.raises(Stop):
        pool.run(cells, lambda row: None)
    assert len(started) == 3


@pytest.mark.slow
def test_the_console_script_refuses_a_hundred_million_seeds_at_once(tmp_path: Path) -> None:
    out = tmp_path / "X"
    result = run_cli("run", *ONE_CELL[:6], "--seeds", "0-100000000", "--dry-run", "--out", str(out))
    assert result.returncode == 2 and result.stdout == "", result.stdout[-200:]
    assert result.stderr.count("\n") == 1 and "over the limit" in result.stderr
    assert not out.exists()
