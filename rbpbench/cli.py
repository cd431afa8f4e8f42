"""The command line: ``rbpbench run`` and ``rbpbench list``."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rbpbench import leaderboard
from rbpbench.plugins import PluginError, Registry, load_registry
from rbpbench.results import ResultsFolder
from rbpbench.runner import Cell, CellRunner, expand, run_sweep

DEFAULT_TASKS = "contractive-rnn"
DEFAULT_TRUNCATIONS = "10,20,30"
DEFAULT_SEEDS = "0-2"


class UsageError(Exception):
    """Bad input from the user: reported in one line with exit status 2."""


def parse_names(text: str, known: Mapping[str, Any], kind: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"no {kind} given")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown {kind} {', '.join(unknown)}; valid: {', '.join(known)}")
    return list(dict.fromkeys(names))


def parse_truncations(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(
            f"--truncation takes whole numbers separated by commas, not {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"--truncation values must be positive whole numbers, not {text!r}")
    return list(dict.fromkeys(values))


def parse_seeds(text: str) -> list[int]:
    """``0-4`` (inclusive), ``1,3,7``, or a mix: ``0-2,10``."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if "-" in part.lstrip("-"):
                low, high = (int(v) for v in part.split("-", 1))
                if high < low:
                    raise ValueError
                seeds.extend(range(low, high + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise UsageError(
            f"--seeds takes a range like 0-4 or a list like 0,3,7, not {text!r}"
        ) from None
    if any(s < 0 for s in seeds):
        raise UsageError(f"--seeds must not be negative: {text!r}")
    return list(dict.fromkeys(seeds))


def parse_devices(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for device in devices:
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda") or (index and not (kind == "cuda" and index.isdigit())):
            raise UsageError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N")
    if not devices:
        raise UsageError("no device given")
    return list(dict.fromkeys(devices))


def parse_params(pairs: Sequence[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON when it parses, else kept as a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} takes KEY=VALUE, not {pair!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def accepted_params(function: Any, defaults: Mapping[str, Any]) -> set[str] | None:
    """Parameter names a builder or method accepts (None: it takes any keyword)."""
    signature = inspect.signature(function)
    names = set(defaults)
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD and p.name != "_":
            if not defaults:
                return None
        elif p.kind is inspect.Parameter.KEYWORD_ONLY:
            names.add(p.name)
    return names - {"seed", "device", "dtype", "diagnostics"}


def check_params(params: Mapping[str, Any], specs: Sequence[Any], call: str, option: str) -> None:
    for spec in specs:
        accepted = accepted_params(getattr(spec, call), spec.defaults)
        unknown = sorted(set(params) - accepted) if accepted is not None else []
        if unknown:
            raise UsageError(
                f"{option}: {spec.name} has no parameter {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(accepted or [])) or '(none)'}"
            )


def build_cells(args: argparse.Namespace, registry: Registry) -> list[Cell]:
    tasks = parse_names(args.tasks, registry.tasks, "task")
    methods = parse_names(args.methods or ",".join(registry.methods), registry.methods, "method")
    task_params = parse_params(args.task_param, "--task-param")
    method_params = parse_params(args.method_param, "--method-param")
    check_params(task_params, [registry.task(t) for t in tasks], "build", "--task-param")
    check_params(method_params, [registry.method(m) for m in methods], "compute", "--method-param")
    cells = expand(
        tasks,
        methods,
        parse_truncations(args.truncation),
        parse_seeds(args.seeds),
        parse_devices(args.device),
    )
    frozen_t, frozen_m = tuple(sorted(task_params.items())), tuple(sorted(method_params.items()))
    return [
        Cell(**{**c.__dict__, "task_params": frozen_t, "method_params": frozen_m}) for c in cells
    ]


def default_out() -> Path:
    return Path("results") / time.strftime("run-%Y%m%d-%H%M%S")


class Progress:
    """A bar on a terminal, a plain line per cell otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.counts: dict[str, int] = {}
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="cell", file=sys.stderr)

    def __call__(self, row: Mapping[str, Any]) -> None:
        self.done += 1
        self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        summary = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        if self.bar is not None:
            self.bar.set_postfix_str(summary)
            self.bar.update()
        else:
            detail = f" ({row['error']})" if row["error"] else ""
            print(
                f"[{self.done}/{self.total}] {row['task']} {row['method']} K={row['truncation']} "
                f"seed={row['seed']} {row['device']}: {row['status']}{detail}",
                file=sys.stderr,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def command_run(args: argparse.Namespace) -> int:
    registry = load_registry()
    cells = build_cells(args, registry)
    out = Path(args.out) if args.out else default_out()
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} exists and is not empty; choose a new folder")
    folder = ResultsFolder(out)
    runner = CellRunner(registry)
    progress = Progress(len(cells))
    try:
        run_sweep(cells, runner, folder, progress)
    finally:
        progress.close()
    print(leaderboard.render(folder.frame()))
    print(f"\n{len(cells)} cells written to {folder.parquet} and {folder.csv}")
    return 0


def command_list(args: argparse.Namespace) -> int:
    registry = load_registry()
    print("methods:")
    for name, (method, origin) in registry.methods.items():
        print(f"  {name:<16} {origin!s:<24} {method.summary}")
    print("tasks:")
    for name, (task, origin) in registry.tasks.items():
        print(f"  {name:<16} {origin!s:<24} {task.summary}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rbpbench", description="Benchmark gradient methods of convergent recurrent networks."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a sweep and print its leaderboard")
    run.add_argument(
        "--tasks", default=DEFAULT_TASKS, help=f"comma-separated (default {DEFAULT_TASKS})"
    )
    run.add_argument("--methods", default=None, help="comma-separated (default: every method)")
    run.add_argument(
        "--truncation",
        default=DEFAULT_TRUNCATIONS,
        help=f"K values (default {DEFAULT_TRUNCATIONS})",
    )
    run.add_argument(
        "--seeds", default=DEFAULT_SEEDS, help=f"e.g. 0-4 or 0,3 (default {DEFAULT_SEEDS})"
    )
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, comma-separated")
    run.add_argument("--task-param", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--method-param", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--out", default=None, help="results folder (default results/run-<time>)")
    run.set_defaults(handler=command_run)
    listing = commands.add_parser("list", help="list methods and tasks with their origin")
    listing.set_defaults(handler=command_list)
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
