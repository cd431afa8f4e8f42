"""Suites, config files and flags, layered and checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbpbench.cli import main
from rbpbench.config import (
    UsageError,
    layer,
    load_suite,
    parse_devices,
    parse_seeds,
    parse_truncations,
    resolve,
    suite_names,
)


def test_parsers() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0-1,7,1") == [0, 1, 7]
    assert parse_seeds([3, 1]) == [3, 1]
    assert parse_truncations("10,20,10") == [10, 20]
    assert parse_truncations([5]) == [5]
    assert parse_devices("cpu,cuda:1") == ["cpu", "cuda:1"]
    for bad in ("-1", "1-", "", "x-y"):
        with pytest.raises(UsageError):
            parse_seeds(bad)
    for bad in ("cuda:x", "cuda:", "cpu:0", "cuda:-1"):
        with pytest.raises(UsageError):
            parse_devices(bad)
    assert parse_seeds("0-100000000").size == 100_000_001  # a range, not a list


def test_every_shipped_suite_resolves(registry) -> None:
    assert "quick" in suite_names()
    for name in suite_names():
        settings = resolve(load_suite(name), registry)
        assert settings.tasks and settings.methods


def test_quick_covers_every_builtin_task(registry) -> None:
    builtin = [n for n, (_, origin) in registry.tasks.items() if origin.distribution == "rbpbench"]
    assert set(resolve(load_suite("quick"), registry).tasks) == set(builtin)


def test_layers_later_wins_and_parameter_tables_merge(registry) -> None:
    merged = layer(
        {"seeds": "0-9", "task_params": {"contractive-rnn": {"steps": 5, "hidden": 8}}},
        {"seeds": "3", "task_params": {"contractive-rnn": {"steps": 7}}},
    )
    settings = resolve(merged, registry, task_param_flags={"batch": 2})
    assert settings.seeds == [3]
    assert settings.task_params["contractive-rnn"] == {"steps": 7, "hidden": 8, "batch": 2}


def test_dry_run_with_suite_and_overriding_flags(capsys) -> None:
    args = [
        "--suite",
        "quick",
        "--tasks",
        "contractive-rnn",
        "--methods",
        "bptt,rbp",
        "--seeds",
        "4",
    ]
    assert main(["run", *args, "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "4 cells"  # 2 methods x 2 truncations (quick) x 1 seed
    assert lines[0].startswith("contractive-rnn bptt K=5 seed=4 cpu")


def test_config_file_sets_parameters(tmp_path: Path, capsys) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'methods = ["rbp"]\ntruncation = [3]\nseeds = "0-2"\n'
        '[method_params.rbp]\ninit = "zeros"\n[task_params.contractive-rnn]\nspectral_norm = 0.5\n'
    )
    assert main(["run", "--config", str(path), "--seeds", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 cells" not in out and out.strip().endswith("1 cells")
    assert "'spectral_norm': 0.5" in out and "'init': 'zeros'" in out


def test_a_task_grid_crosses_parameter_values_and_a_flag_fixes_one(registry, capsys) -> None:
    settings = resolve(load_suite("paper-table3"), registry)
    assert settings.task_grid == {"hyperopt": {"rbp_jacobian": ["last", "full"]}}
    assert main(["run", "--suite", "paper-fig4", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "32 cells"  # 4 T x 4 methods x 2 truncations
    assert sum("'steps': 1500" in line for line in lines) == 8
    assert main(["run", "--suite", "paper-fig4", "--task-param", "steps=100", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "8 cells"


def test_a_bad_task_grid_is_a_usage_error(registry) -> None:
    base = {"tasks": "hyperopt"}
    with pytest.raises(UsageError, match="must be a non-empty list"):
        resolve({**base, "task_grid": {"hyperopt": {"steps": 100}}}, registry)
    with pytest.raises(UsageError, match="hyperopt has no parameter nope"):
        resolve({**base, "task_grid": {"hyperopt": {"nope": [1, 2]}}}, registry)
