"""Facts declared once: the sweep settings (config.SETTINGS) and the results table's columns
(results.SCHEMA), and everything derived from them."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

from rbpbench import api, cli
from rbpbench.config import DEFAULTS, KEYS, OPTIONS, SETTINGS, TABLES, SweepSettings

# Options of ``rbpbench run`` that are not sweep settings: where and how a sweep runs.
CLI_ONLY = {
    "help",
    "suite",
    "config",
    "task_param",
    "method_param",
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
    assert TABLES == ("task_params", "method_params", "task_grid")
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
