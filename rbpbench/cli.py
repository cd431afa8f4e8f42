"""The command line: ``rbpbench run``, ``list``, ``plugins``, ``leaderboard``, ``report``,
``merge`` and ``compare``."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rbpbench import api, compare, config, leaderboard
from rbpbench.cells import plan
from rbpbench.config import UsageError
from rbpbench.data import DATA_DIR_ENV
from rbpbench.executors import usable_cores
from rbpbench.plugins import (
    PluginConfig,
    PluginError,
    load_registry,
    one_line,
    plugin_statuses,
)
from rbpbench.results import (
    REPORT_DIR,
    REPORT_PAGE,
    RESULTS_CSV,
    RESULTS_PARQUET,
    StorageError,
    read_table,
)
from rbpbench.sweep import Sweep

# Exit status of a sweep that stopped because a results file could not be written.
STORAGE_FAILURE = 3


class Terminated(Exception):
    """SIGTERM arrived: stop as Ctrl-C does, with what is stored kept."""


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while a sweep runs (the default is a silent exit)."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def default_out() -> Path:
    return Path("results") / time.strftime("run-%Y%m%d-%H%M%S")


def plugin_config(args: argparse.Namespace) -> PluginConfig:
    return api.plugin_config(args.plugin or [], args.disable_plugin or [])


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (None: not given), one per :data:`config.OPTIONS`."""
    return {s.key: getattr(args, s.key) for s in config.OPTIONS}


def dry_run(settings: config.SweepSettings) -> int:
    """Print the cells as they are made (none is held), then their number."""
    count = 0
    for cell in plan(settings):
        params = dict(cell.task_params) | dict(cell.method_params) | dict(cell.forward_params)
        forward = f" forward={cell.forward}" if cell.forward != "iterate" else ""
        print(
            f"{cell.task} {cell.method} K={cell.truncation} seed={cell.seed} {cell.device}"
            f"{forward} {params or ''}"
        )
        count += 1
    print(f"{count} cells")
    return 0


def command_run(args: argparse.Namespace) -> int:
    api.refuse_empty(args.out, args.data_dir)
    with api.data_root(args.data_dir):
        plugins = plugin_config(args)
        registry = load_registry(plugins)
        settings = api.resolve_sweep(
            registry,
            flags=flags_of(args),
            suite=args.suite,
            config_file=args.config,
            task_params=args.task_param,
            method_params=args.method_param,
            forward_params=args.forward_param,
        )
        fail_on = config.parse_statuses(args.fail_on) if args.fail_on is not None else []
        api.warn_about_jobs(settings)
        if args.dry_run:
            return dry_run(settings)
        out = Path(args.out) if args.out else default_out()
        sweep = Sweep(settings, registry, plugins, out, retry_failed=args.retry_failed)
        try:
            with terminate_as_interrupt():
                api.execute(sweep)
        except (KeyboardInterrupt, Terminated) as stop:
            what = "terminated" if isinstance(stop, Terminated) else "interrupted"
            print(
                f"\n{what}: finished cells are in {sweep.results.parquet}; "
                "run the same command again to resume",
                file=sys.stderr,
            )
            return 143 if isinstance(stop, Terminated) else 130
        except StorageError as exc:
            print(
                f"\nrbpbench: error: {exc}; the sweep stopped there. The cells stored before are "
                f"in {out}; once it can be written, run the same command again to resume",
                file=sys.stderr,
            )
            return STORAGE_FAILURE
    frame = sweep.frame()
    print(leaderboard.render(frame))
    print(f"\n{len(frame)} cells in {sweep.results.parquet} and {sweep.results.csv}")
    reasons = failure_reasons(frame, fail_on)
    if reasons:
        print(f"rbpbench: {'; '.join(reasons)}", file=sys.stderr)
        return 1
    return 0


def failure_reasons(frame: Any, fail_on: Sequence[str]) -> list[str]:
    """What ``--fail-on`` finds in a sweep's table, as phrases; empty: exit 0."""
    reasons = []
    failed = frame[frame.status.isin(fail_on)]
    if len(failed):
        reasons.append(f"{len(failed)} cells ended in {', '.join(sorted(set(failed.status)))}")
    for condition, column, what in (
        ("unconverged", "forward_converged", "forward pass did not converge"),
        ("adjoint-unconverged", "adjoint_converged", "adjoint system was not solved"),
    ):
        if condition in fail_on and column in frame:
            count = int((frame[column] == False).sum())  # noqa: E712 (nullable booleans)
            if count:
                reasons.append(f"{count} cells whose {what} to tolerance")
    return reasons


def command_list(args: argparse.Namespace) -> int:
    registry = load_registry(plugin_config(args))
    print("methods:")
    for name, (method, origin) in registry.methods.items():
        print(f"  {name:<16} {origin!s:<24} {method.summary}")
    print("tasks:")
    for name, (task, origin) in registry.tasks.items():
        print(f"  {name:<16} {origin!s:<24} {task.summary}")
    print("forward solvers:")
    for name, (forward, origin) in registry.forwards.items():
        print(f"  {name:<16} {origin!s:<24} {forward.summary}")
    print("suites:")
    for name in config.suite_names():
        print(f"  {name:<16} {config.load_suite(name).get('description', '')}")
    return 0


def command_plugins(args: argparse.Namespace) -> int:
    """Every plugin with its distribution, status, hooks and contributions; exit 1 if one is broken
    (failed, shadowed, or in a name conflict)."""
    statuses, problems = plugin_statuses(plugin_config(args))
    rows = [("plugin", "distribution", "status", "hooks", "provides / error")]
    for s in statuses:
        provides = "; ".join(
            f"{kind}: {', '.join(names)}"
            for kind, names in (
                ("methods", s.methods),
                ("tasks", s.tasks),
                ("forward solvers", s.forwards),
            )
            if names
        )
        hooks = ", ".join(s.hooks) or ("(none)" if s.status in ("loaded", "conflict") else "-")
        last = one_line(s.error) or provides
        rows.append((s.origin.plugin, str(s.origin), s.status, hooks, last))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        print("  ".join([*cells, row[4]]).rstrip())
    for problem in problems:
        print(f"rbpbench: error: {one_line(problem)}", file=sys.stderr)
    broken = any(s.status in ("failed", "shadowed", "conflict") for s in statuses)
    return 1 if problems or broken else 0


def results_table(folder: str) -> Any:
    """The results table of a folder as the leaderboard reads it (:func:`leaderboard.prepared`),
    or a UsageError that says what is wrong with it. Repeated cell ids: a warning on stderr,
    and the last row of each is kept."""
    path = Path(folder)
    # results.parquet, else results.csv: the file read_table reads
    table = path / RESULTS_PARQUET
    if not table.exists() and (path / RESULTS_CSV).exists():
        table = path / RESULTS_CSV
    try:
        found = read_table(path)
    except Exception as exc:
        raise UsageError(f"{table} cannot be read: {exc}") from None
    if found is None:
        raise UsageError(
            f"{path} holds no results table ({RESULTS_PARQUET}); run rbpbench run first"
        )
    frame = found[0]
    try:
        repeated = leaderboard.duplicate_cells(frame) if "cell_id" in frame else []
        frame = leaderboard.prepared(frame)
    except leaderboard.TableError as exc:
        raise UsageError(f"{table}: {exc}") from None
    if frame.empty:
        raise UsageError(f"{table} holds no cells")
    if repeated:
        print(
            f"rbpbench: warning: {table}: {len(repeated)} cell id(s) have more than one row "
            f"(first: {repeated[0]}); the last row of each is used",
            file=sys.stderr,
        )
    return frame


def command_leaderboard(args: argparse.Namespace) -> int:
    frame = results_table(args.results)
    names = [n for value in args.metric or [] for n in value.split(",") if n]
    try:
        metrics = leaderboard.resolve_metrics(names) if names else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    sys.stdout.write(leaderboard.render(frame, args.format, metrics))
    return 0


def command_report(args: argparse.Namespace) -> int:
    from rbpbench.reports import report

    frame = results_table(args.results)
    comparison = None
    if args.compare is not None:
        folders_given("report --compare", args.compare)
        # the reported folder is B, compared with the baseline A: rbpbench compare BASELINE RESULTS_DIR
        comparison = compare.compare(
            results_table(args.compare), frame, name_a=args.compare, name_b=args.results
        )
    try:
        path = report.write(Path(args.results), frame, comparison=comparison)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise UsageError(
            f"cannot write the report in {args.results}: {where}{exc.strerror or exc}"
        ) from None
    print(f"wrote {path} and its figures in {path.parent / report.FIGURES_DIR}")
    return 0


def folders_given(command: str, *names: str) -> None:
    """A folder given as an empty string is a mistake (an unset shell variable), never the
    current folder."""
    for name in names:
        if not name.strip():
            raise UsageError(f"{command} takes folders, not {name!r}")


def command_merge(args: argparse.Namespace) -> int:
    from rbpbench import merge

    folders_given("merge", args.out, *args.sources)
    try:
        merged = merge.merge(Path(args.out), [Path(s) for s in args.sources])
    except StorageError as exc:
        print(
            f"rbpbench: error: {exc}; the merge stopped there. Once {args.out} can be written, "
            "run the same command again (its rows are merged again, identical ones once)",
            file=sys.stderr,
        )
        return STORAGE_FAILURE
    for line in merged.messages():
        print(line, file=sys.stderr)
    print(merged.summary())
    return 0


def regression_threshold(text: str) -> float:
    """``--fail-on-regression``'s percentage: a finite number >= 0."""
    try:
        percent = float(text)
    except ValueError:
        percent = math.nan
    if not (math.isfinite(percent) and percent >= 0):
        raise UsageError(
            f"--fail-on-regression takes a percentage >= 0 (e.g. 10 for 10%), not {text!r}"
        )
    return percent


def command_compare(args: argparse.Namespace) -> int:
    folders_given("compare", args.a, args.b)
    percent = (
        regression_threshold(args.fail_on_regression)
        if args.fail_on_regression is not None
        else None
    )
    comparison = compare.compare(
        results_table(args.a), results_table(args.b), name_a=args.a, name_b=args.b
    )
    for line in comparison.warnings():
        print(line, file=sys.stderr)
    sys.stdout.write(compare.render(comparison, args.format))
    if percent is None:
        return 0
    found = compare.regressions(comparison, percent)
    for line in found:
        print(f"rbpbench: regression: {line}", file=sys.stderr)
    return 1 if found else 0


def add_plugin_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        dest="plugin",
        action="append",
        metavar="NAME",
        help="load plugin module NAME, or with no:NAME do not load plugin NAME",
    )
    parser.add_argument("--disable-plugin", action="append", metavar="NAME")


def add_task_param(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--task-param",
        action="append",
        default=[],
        metavar="[TASK.]KEY=VALUE",
        help="a task parameter (VALUE read as JSON, else a string, and checked against the "
        "default's type): for every selected task that has KEY, or only for TASK",
    )


def add_method_param(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--method-param",
        action="append",
        default=[],
        metavar="[METHOD.]KEY=VALUE",
        help="a method parameter: for every selected method that has KEY, or only for METHOD",
    )


def add_forward_param(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--forward-param",
        action="append",
        default=[],
        metavar="[FORWARD.]KEY=VALUE",
        help="a forward solver parameter (e.g. tol=1e-6): for every selected forward solver "
        "that has KEY, or only for FORWARD",
    )


# The flags that write into a parameter table, placed among the options where the table's
# setting is declared.
PARAM_OPTIONS = {
    "task_params": add_task_param,
    "method_params": add_method_param,
    "forward_params": add_forward_param,
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rbpbench", description="Benchmark gradient methods of convergent recurrent networks."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a sweep and print its leaderboard")
    run.add_argument("--suite", help="a shipped preset (see rbpbench list)")
    run.add_argument(
        "--config",
        help="a TOML file of settings (UTF-8); flags override it; its [task_params.NAME], "
        "[method_params.NAME] and [task_grid.NAME] tables must name installed tasks and methods",
    )
    cores = usable_cores()
    for setting in config.SETTINGS:
        if setting.flag is not None:
            run.add_argument(
                setting.flag,
                dest=setting.key,
                metavar=setting.metavar,
                help=setting.help_text(cores=cores),
            )
        if setting.key in PARAM_OPTIONS:
            PARAM_OPTIONS[setting.key](run)
    run.add_argument(
        "--out",
        help="results folder (default results/run-<time>); an earlier sweep's folder resumes it",
    )
    run.add_argument(
        "--data-dir", help=f"data root (default ${DATA_DIR_ENV}, else ~/.cache/rbpbench/data)"
    )
    run.add_argument(
        "--retry-failed", action="store_true", help="also rerun cells that failed before"
    )
    run.add_argument(
        "--fail-on",
        metavar="STATUSES",
        help="exit 1 if any cell ends in one of these, e.g. error,timeout; also unconverged "
        "(a forward pass that did not converge) and adjoint-unconverged",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="print the cells and their number; run nothing"
    )
    add_plugin_options(run)
    run.set_defaults(handler=command_run)
    listing = commands.add_parser("list", help="list methods, tasks and suites with their origin")
    add_plugin_options(listing)
    listing.set_defaults(handler=command_list)
    plugins = commands.add_parser(
        "plugins",
        help="list every plugin: distribution, version, status, hooks, load errors "
        "(exit 1 if one is broken)",
    )
    add_plugin_options(plugins)
    plugins.set_defaults(handler=command_plugins)
    board = commands.add_parser(
        "leaderboard",
        help="per task, methods x truncation: mean and 95%% interval over seeds of each metric",
    )
    board.add_argument("results", metavar="RESULTS_DIR")
    board.add_argument(
        "--metric",
        action="append",
        metavar="NAMES",
        help="comma-separated metrics instead of the task's own (e.g. grad_error,wall_time); "
        f"valid: {', '.join(leaderboard.metric_names())}",
    )
    board.add_argument("--format", choices=leaderboard.FORMATS, default="text")
    board.set_defaults(handler=command_leaderboard)
    report = commands.add_parser(
        "report",
        help=f"write RESULTS_DIR/{REPORT_PAGE} with its figures in RESULTS_DIR/{REPORT_DIR}/",
    )
    report.add_argument("results", metavar="RESULTS_DIR")
    report.add_argument(
        "--compare",
        metavar="BASELINE_DIR",
        help="add a section comparing RESULTS_DIR with BASELINE_DIR, as rbpbench compare "
        "BASELINE_DIR RESULTS_DIR prints it",
    )
    report.set_defaults(handler=command_report)
    merging = commands.add_parser(
        "merge",
        help="merge results folders into OUT (a new folder, or a results folder added to): "
        "one row per cell id, conflicts reported and resolved, environment.json and curves "
        "merged (docs/merge-and-compare.md)",
    )
    merging.add_argument(
        "out",
        metavar="OUT",
        help="the merged folder: new, empty, or a results folder (its rows come first)",
    )
    merging.add_argument("sources", metavar="DIR", nargs="*", help="a results folder to merge")
    merging.set_defaults(handler=command_merge)
    comparing = commands.add_parser(
        "compare",
        help="the same cells in results folders A (the baseline) and B, per task, method, "
        "forward and K: time and memory ratios B/A with 95%% intervals, gradient error "
        "differences, status changes, cells in only one",
    )
    comparing.add_argument("a", metavar="A", help="the baseline results folder")
    comparing.add_argument("b", metavar="B", help="the results folder compared with it")
    comparing.add_argument("--format", choices=compare.FORMATS, default="text")
    comparing.add_argument(
        "--fail-on-regression",
        metavar="PCT",
        help="exit 1 if a time or memory ratio B/A is above 1 + PCT/100 with its whole 95%% "
        "interval, or a cell ok in A is not ok in B",
    )
    comparing.set_defaults(handler=command_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (UsageError, PluginError) as exc:
        print(f"rbpbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
