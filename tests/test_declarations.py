"""Facts declared once: the sweep settings (config.SETTINGS) and the results table's columns
(results.SCHEMA), and everything derived from them."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from rbpbench import api, cli, results
from rbpbench.config import DEFAULTS, KEYS, OPTIONS, SETTINGS, TABLES, SweepSettings
from rbpbench.results import COLUMNS, SCHEMA, CellOutcome, ResultsFolder, empty_row, to_frame
from tests.tables import row

# Options of ``rbpbench run`` that are not sweep settings: where and how a sweep runs.
CLI_ONLY = {
    "help",
    "suite",
    "config",
    "task_param",
    "method_param",
    "forward_param",
    "out",
    "data_dir",
    "retry_failed",
    "fail_on",
    "dry_run",
    "plugin",
    "disable_plugin",
}


def run_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices["run"]


def test_the_declaration_names_each_setting_once() -> None:
    keys = [s.key for s in SETTINGS]
    assert len(keys) == len(set(keys))
    assert set(keys) == KEYS
    assert set(DEFAULTS) <= KEYS
    assert TABLES == ("task_params", "method_params", "forward_params", "task_grid")
    assert all(not s.option for s in SETTINGS if s.table)


def test_sweep_settings_has_a_field_for_each_declared_setting() -> None:
    fields = {f.name for f in dataclasses.fields(SweepSettings)}
    declared = {s.field for s in SETTINGS if s.field is not None}
    assert fields == declared


def test_the_run_command_has_an_option_for_each_declared_flag() -> None:
    run = run_parser()
    by_dest = {a.dest: a for a in run._actions}
    for setting in OPTIONS:
        action = by_dest[setting.key]
        assert action.option_strings == [setting.flag]
        assert action.metavar == setting.metavar
        assert action.help == setting.help_text(cores=cli.usable_cores())
        assert "{" not in (action.help or ""), "a placeholder left unfilled"
    settings = {s.key for s in OPTIONS}
    assert set(by_dest) - settings == CLI_ONLY


def test_flags_map_to_settings_by_the_declaration() -> None:
    args = cli.make_parser().parse_args(
        ["run", "--tasks", "a", "--cpus-per-cell", "2", "--truncation", "5", "--jobs", "3"]
    )
    flags = cli.flags_of(args)
    assert set(flags) == {s.key for s in OPTIONS}
    assert flags["tasks"] == "a" and flags["cpus_per_cell"] == "2"
    assert flags["truncation"] == "5" and flags["jobs"] == "3"
    assert flags["seeds"] is None  # not given


def test_the_notebook_api_takes_each_flag_as_a_keyword() -> None:
    parameters = inspect.signature(api.run).parameters
    for setting in OPTIONS:
        assert setting.key in parameters, f"rbpbench.run has no keyword {setting.key}"
        assert parameters[setting.key].default is None


def test_python_values_become_setting_values() -> None:
    by_key = {s.key: s for s in SETTINGS}
    assert by_key["seeds"].python_value(range(3, 7)) == "3-6"
    assert by_key["truncation"].python_value((5, 10)) == [5, 10]
    assert by_key["tasks"].python_value("a,b") == "a,b"
    assert by_key["jobs"].python_value(None) is None


# -- the results table's columns ------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"

# Columns the README's measurement table does not describe, by why. Everything else in the
# schema must be named in that table.
NOT_IN_README = {
    "the cell's identity": (
        "cell_id", "task", "task_params", "method", "method_params", "truncation", "seed",
        "device", "dtype", "forward", "forward_params",
    ),
    "its outcome, as the method reported it": ("status", "error", "loss"),
    "training tasks' figures, described with each task in docs/tasks/": (
        "train_loss_initial", "train_loss_final", "success", "retrieval_error", "val_accuracy",
        "test_accuracy", "epochs", "train_time_s", "extra_metrics",
    ),
    "provenance: which run, software and machine": (
        "run_id", "torch_version", "rbpbench_version", "method_distribution",
        "task_distribution", "forward_distribution", "worker", "node",
    ),
}  # fmt: skip


def readme_columns() -> tuple[set[str], set[str]]:
    """The `names` in the column cells of the table under "What is measured, and how", and
    those in its meaning cells."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## What is measured, and how") :]
    table = section[section.index("| column") :].split("\n\n", 1)[0]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `")]
    assert rows, "the README's column table was not found"
    named = {name for column, _ in rows for name in re.findall(r"`(\w+)`", column)}
    mentioned = {name for _, meaning in rows for name in re.findall(r"`(\w+)`", meaning)}
    return named, mentioned


def test_the_readme_s_column_table_matches_the_schema() -> None:
    """Every name in the column cells of the README's table "What is measured, and how" is a
    column of the schema. A column counts as documented there when a row names it, in its
    column cell or in its meaning (`memory_method` is explained in `peak_memory_bytes`'
    row). Every column of the schema is either documented there or listed above in
    NOT_IN_README, under why the measurement table leaves it out (identity, outcome,
    training figures described per task, provenance), never both: a new column must be
    documented or placed in one of these groups on purpose."""
    schema = {c.name for c in SCHEMA}
    named, mentioned = readme_columns()
    assert named - schema == set(), "the README names columns the table does not have"
    documented = named | (mentioned & schema)
    left_out = [name for names in NOT_IN_README.values() for name in names]
    assert len(left_out) == len(set(left_out))
    assert set(left_out) - schema == set(), "NOT_IN_README names columns the table lacks"
    assert set(left_out) & documented == set(), "a column both in the README and left out"
    missing = schema - documented - set(left_out)
    assert not missing, f"columns neither in the README's table nor in NOT_IN_README: {missing}"


def test_the_schema_drives_every_column_list() -> None:
    names = [c.name for c in SCHEMA]
    assert len(names) == len(set(names))
    assert list(COLUMNS) == names and all(COLUMNS[c.name] == c.meaning for c in SCHEMA)
    by_type = {
        results.INTEGER: results.INTEGER_COLUMNS,
        results.FLOAT: results.FLOAT_COLUMNS,
        results.BOOLEAN: results.BOOLEAN_COLUMNS,
        results.STRING: results.STRING_COLUMNS,
    }
    assert set(results.DTYPES.values()) <= set(by_type)
    assert sorted(n for columns in by_type.values() for n in columns) == sorted(names)
    for dtype, columns in by_type.items():
        assert list(columns) == [c.name for c in SCHEMA if c.dtype == dtype]
    assert tuple(c.name for c in SCHEMA if c.added) == results.ADDED_COLUMNS
    assert tuple(c.name for c in SCHEMA if c.training) == results.TRAINING_COLUMNS
    # what the results table holds is what the schema says, column by column
    frame = to_frame([empty_row()])
    assert {c: str(t) for c, t in frame.dtypes.items()} == results.DTYPES


def test_a_folder_is_read_by_one_reader_with_the_schema_s_types(tmp_path: Path) -> None:
    """results.read, rbpbench.load and ResultsFolder agree, from the Parquet file or the CSV."""
    from rbpbench import load

    folder = ResultsFolder(tmp_path)
    for seed in range(2):
        outcome = CellOutcome(
            row("t", "m", 5, seed, loss=1.5, success=seed == 0, forward_converged=None),
            curves={"loss": [2.0, 1.0]},
        )
        folder.append(outcome)
    folder.compact()
    assert sorted(p.name for p in (tmp_path / results.CURVES_DIR).iterdir()) == [
        f"{i}.parquet" for i in sorted(folder.rows)
    ]
    for source in (results.RESULTS_PARQUET, results.RESULTS_CSV):
        frame = results.read(tmp_path)
        assert {c: str(t) for c, t in frame.dtypes.items()} == results.DTYPES, source
        assert list(frame.success) == [True, False] and frame.forward_converged.isna().all()
        assert load(tmp_path).equals(frame)
        assert ResultsFolder(tmp_path).frame().equals(frame)
        (tmp_path / results.RESULTS_PARQUET).unlink(missing_ok=True)  # then from the CSV
    (tmp_path / results.RESULTS_CSV).unlink()
    with pytest.raises(FileNotFoundError):
        results.read(tmp_path)
