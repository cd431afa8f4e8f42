"""What a sweep should run: shipped suites, users' TOML files and command-line flags, layered.

A suite (``--suite NAME``, a TOML file shipped in ``rbpbench/suites``) is the
base, a user's file (``--config FILE.toml``) overrides it, and flags on the
command line override both. Every value is checked here, before anything is
written, and a bad one raises :class:`UsageError` with one clear line: names
of tasks, methods and parameter tables against the installed plugins,
parameter values against the types of their defaults and the task's own
``check``, whole numbers and seeds against what the results table holds, and
the number of cells against :data:`MAX_CELLS`, counted before any is made.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, overload

from rbpbench.convergence import TOLERANCE_PARAMS, split_params
from rbpbench.plugins import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from rbpbench.results import STATUSES

EXECUTORS = ("local", "ray")
# The most cells one sweep may have; counted from the settings before any cell is made.
MAX_CELLS = 1_000_000
# The largest truncation or seed: the results table stores both as int64. (torch's
# Generator.manual_seed takes up to 2**64 - 1, so int64 is the tighter bound.)
INT64_MAX = 2**63 - 1


def listed(value: Any) -> Any:
    """A tuple, range or other sequence as the list the settings take."""
    if isinstance(value, Sequence) and not isinstance(value, str | list):
        return list(value)
    return value


def seed_list(value: Any) -> Any:
    """Seeds as the settings take them; a range as ``A-B``, which is never expanded."""
    if isinstance(value, range) and value.step == 1 and len(value):
        return f"{value.start}-{value.stop - 1}"
    return listed(value)


@dataclass(frozen=True)
class Setting:
    """One setting of a sweep, declared once: a key of a suite or ``--config`` file, a
    keyword of ``rbpbench.run``, and (``option``) a flag of ``rbpbench run``.

    ``default`` (None: none) goes into :data:`DEFAULTS`; ``field`` is the
    :class:`SweepSettings` field :func:`resolve` checks it into (None: none, as
    for ``description``); ``help`` is the flag's help text, in which
    ``{default}``, ``{max_cells}`` and ``{cores}`` (the usable cores, which the
    command line fills in) are replaced; ``from_python`` turns a notebook
    value (a tuple, a range) into what the settings take. A ``table`` holds one
    table per task or method name and has no flag of its own (``--task-param``
    and ``--method-param`` write into the parameter tables).
    """

    key: str
    default: Any = None
    option: bool = True
    help: str = ""
    metavar: str | None = None
    field: str | None = None
    from_python: Callable[[Any], Any] | None = None
    table: bool = False

    @property
    def flag(self) -> str | None:
        """The option of ``rbpbench run``: ``--`` and the key with dashes; None for a file-only key."""
        return "--" + self.key.replace("_", "-") if self.option else None

    def help_text(self, **context: Any) -> str:
        return self.help.format(default=self.default, max_cells=MAX_CELLS, **context)

    def python_value(self, value: Any) -> Any:
        """A value given to ``rbpbench.run`` as the settings take it (None stays None)."""
        if value is None or self.from_python is None:
            return value
        return self.from_python(value)


# The settings of a sweep, in the order of ``rbpbench run --help``. KEYS, DEFAULTS, TABLES,
# the command's options and their mapping to settings, and rbpbench.run's keywords all
# come from here; SweepSettings' fields are checked against it by the tests.
SETTINGS: tuple[Setting, ...] = (
    Setting("description", option=False),
    Setting(
        "tasks",
        "contractive-rnn",
        help="comma-separated (default {default})",
        field="tasks",
        from_python=listed,
    ),
    Setting(
        "methods",
        # the paper's five; installed plugins' methods run when named
        "bptt,tbptt,rbp,cg-rbp,neumann-rbp",
        help="comma-separated (default {default})",
        field="methods",
        from_python=listed,
    ),
    Setting(
        "truncation",
        "10,20,30",
        help="K values, whole numbers from 1 to 2**63-1 (default {default})",
        field="truncations",
        from_python=listed,
    ),
    Setting(
        "seeds",
        "0-2",
        help="e.g. 0-4 or 0,3, from 0 to 2**63-1 (default {default}); a sweep may have "
        "at most {max_cells:,} cells",
        field="seeds",
        from_python=seed_list,
    ),
    Setting(
        "device",
        "cpu",
        help="cpu, cuda, cuda:N, comma-separated (default {default})",
        field="devices",
        from_python=listed,
    ),
    Setting(
        "forward",
        "iterate",
        help="forward solvers that find h*, comma-separated: iterate (T steps of F, the "
        "default), anderson, broyden, or an installed plugin's",
        field="forwards",
        from_python=listed,
    ),
    Setting("task_params", option=False, field="task_params", table=True),
    Setting("method_params", option=False, field="method_params", table=True),
    Setting("forward_params", option=False, field="forward_params", table=True),
    Setting("task_grid", option=False, field="task_grid", table=True),
    Setting(
        "jobs",
        1,
        help="worker processes of the local executor (default {default}); never more are "
        "started than cells are left to run, and more than the usable cores ({cores} here) "
        "only makes them compete",
        field="jobs",
    ),
    Setting(
        "timeout",
        3600,
        help="seconds per cell before its worker is killed (default {default}; "
        "0 or none: no limit)",
        field="timeout",
    ),
    Setting(
        "executor",
        "local",
        help="where cells run: local (worker processes here, the default) or ray (docs/ray.md)",
        field="executor",
    ),
    Setting(
        "address",
        metavar="HOST:PORT",
        help="with --executor ray: the Ray cluster to join (default: start a local Ray instance)",
        field="address",
    ),
    Setting(
        "cpus_per_cell",
        1,
        metavar="N",
        help="with --executor ray: CPUs a cell asks Ray for (default {default})",
        field="cpus_per_cell",
    ),
    Setting(
        "gpus_per_cell",
        1,
        metavar="N",
        help="with --executor ray: GPUs a cuda cell asks Ray for, e.g. 0.5 (default {default})",
        field="gpus_per_cell",
    ),
)
KEYS = {s.key for s in SETTINGS}
TABLES = tuple(s.key for s in SETTINGS if s.table)
# The settings the command line takes as flags (and rbpbench.run as keywords of the same name).
OPTIONS = tuple(s for s in SETTINGS if s.option)
DEFAULTS: dict[str, Any] = {s.key: s.default for s in SETTINGS if s.default is not None}


class UsageError(ValueError):
    """Bad input from the user: reported in one line with exit status 2 (``rbpbench.run``
    raises it). A ValueError, so code that checks values may catch it as one; the parsers
    below let their own UsageErrors through before turning other ValueErrors into one."""


def suite_names() -> list[str]:
    folder = resources.files("rbpbench") / "suites"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def read_toml(text: str, where: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where} does not parse as TOML: {exc}") from None
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise UsageError(
            f"{where}: unknown keys {', '.join(unknown)}; valid: {', '.join(sorted(KEYS))}"
        )
    for key in TABLES:
        tables = data.get(key, {})
        if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
            raise UsageError(f"{where}: {key} must hold one table per name, e.g. [{key}.NAME]")
    return data


def load_suite(name: str) -> dict[str, Any]:
    if name not in suite_names():
        raise UsageError(f"unknown suite {name!r}; valid: {', '.join(suite_names())}")
    text = (resources.files("rbpbench") / "suites" / f"{name}.toml").read_text(encoding="utf-8")
    return read_toml(text, f"suite {name}")


def load_config(path: str) -> dict[str, Any]:
    if not path.strip():
        raise UsageError("--config takes the path of a TOML file, not ''")
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--config {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is no error
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"--config {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); TOML files are UTF-8"
        ) from None
    return read_toml(text, f"--config {path}")


def layer(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win; parameter tables are merged per name and key."""
    merged: dict[str, Any] = {key: {} for key in TABLES}
    for settings in layers:
        for key, value in settings.items():
            if value is None:
                continue
            if key in TABLES:
                for name, params in value.items():
                    merged[key].setdefault(name, {}).update(params)
            else:
                merged[key] = value
    return merged


def as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    raise UsageError(f"{key} must be a list or a comma-separated string, not {value!r}")


def parse_names(value: Any, known: Sequence[str], kind: str) -> list[str]:
    names = [str(n) for n in as_list(value, kind + "s")]
    if not names:
        raise UsageError(f"no {kind} given")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown {kind} {', '.join(unknown)}; valid: {', '.join(known)}")
    return list(dict.fromkeys(names))


def whole_number(value: Any) -> int:
    """``value`` as an int: an int, a float without a fraction, or a string of either.

    Raises ValueError for anything else: a boolean (``true`` is no count), a
    fraction (2.5 is not silently 2), NaN, infinity, a word.
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            value = float(text)  # "2.0" as in a TOML file; anything else raises ValueError
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise ValueError(value)


def real_number(value: Any) -> float:
    """``value`` as a finite float: an int, a float or a string of one; never a boolean, NaN or inf."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def parse_truncations(value: Any) -> list[int]:
    try:
        values = [whole_number(v) for v in as_list(value, "truncation")]
    except UsageError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise UsageError(
            f"--truncation takes whole numbers separated by commas, not {value!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"--truncation values must be positive whole numbers, not {value!r}")
    too_large = [v for v in values if v > INT64_MAX]
    if too_large:
        raise UsageError(
            f"--truncation {too_large[0]} is beyond the largest value the results table holds "
            f"({INT64_MAX}, int64)"
        )
    return list(dict.fromkeys(values))


class Seeds(Sequence[int]):
    """Seeds as ranges, never as a list: ``0-100000000`` costs nothing until it is iterated.

    Built from ranges in the order given, each seed kept at its first
    occurrence (``0-1,7,1`` is 0, 1, 7). ``size`` is the number of seeds (``len``
    gives it too where Python's ``len`` can hold it); a Seeds equals any
    sequence with the same seeds in the same order.
    """

    def __init__(self, ranges: Iterable[range] = ()) -> None:
        starts: list[int] = []  # seeds seen so far, as sorted disjoint [start, stop) intervals
        stops: list[int] = []
        kept: list[range] = []
        for r in ranges:
            low, high = r.start, r.stop
            if low >= high:
                continue
            first, last = bisect_left(stops, low), bisect_right(starts, high)
            cursor = low
            for start, stop in zip(starts[first:last], stops[first:last], strict=True):
                if start > cursor:
                    kept.append(range(cursor, min(start, high)))
                cursor = max(cursor, stop)
            if cursor < high:
                kept.append(range(cursor, high))
            if first < last:
                low, high = min(low, starts[first]), max(high, stops[last - 1])
            starts[first:last], stops[first:last] = [low], [high]
        merged: list[range] = []
        for r in kept:
            if merged and merged[-1].stop == r.start:
                merged[-1] = range(merged[-1].start, r.stop)
            else:
                merged.append(r)
        self.ranges = tuple(merged)
        self.offsets = list(itertools.accumulate((r.stop - r.start for r in merged), initial=0))

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(self.ranges)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(index)
        part = bisect_right(self.offsets, index) - 1
        return self.ranges[part].start + index - self.offsets[part]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Seeds):
            return self.ranges == other.ranges
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(other) == self.size and all(a == b for a, b in zip(self, other, strict=False))

    def __hash__(self) -> int:
        return hash(self.ranges)

    def __repr__(self) -> str:
        parts = (str(r.start) if len(r) == 1 else f"{r.start}-{r.stop - 1}" for r in self.ranges)
        return f"Seeds({','.join(parts)})"


def parse_seeds(value: Any) -> Seeds:
    """``0-4`` (inclusive), ``1,3,7``, a mix like ``0-2,10``, or a list of ints; kept as ranges."""
    ranges: list[range] = []
    try:
        for part in as_list(value, "seeds"):
            text = part.strip() if isinstance(part, str) else part
            if isinstance(text, str) and "-" in text.lstrip("-"):
                low, high = (whole_number(v) for v in text.split("-", 1))
                if high < low:
                    raise ValueError
            else:
                low = high = whole_number(text)
            if low < 0:
                raise UsageError(f"--seeds must be non-negative whole numbers, not {value!r}")
            if high > INT64_MAX:
                raise UsageError(
                    f"--seeds {high} is beyond the largest seed the results table holds "
                    f"({INT64_MAX}, int64)"
                )
            ranges.append(range(low, high + 1))
    except UsageError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise UsageError(
            f"--seeds takes a range like 0-4 or a list like 0,3,7, not {value!r}"
        ) from None
    if not ranges:
        raise UsageError(f"--seeds must be non-negative whole numbers, not {value!r}")
    return Seeds(ranges)


def parse_devices(value: Any) -> list[str]:
    devices = [str(d) for d in as_list(value, "device")]
    for device in devices:
        kind, colon, index = device.partition(":")
        numbered = kind == "cuda" and index.isascii() and index.isdigit()
        if kind not in ("cpu", "cuda") or (colon and not numbered):
            raise UsageError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N")
    if not devices:
        raise UsageError("no device given")
    return list(dict.fromkeys(devices))


# --fail-on conditions beside the statuses: a cell whose forward did not converge, and a
# cell whose adjoint system was left above its tolerance (often by design: a truncation).
CONVERGENCE_CONDITIONS = ("unconverged", "adjoint-unconverged")


def parse_statuses(value: str) -> list[str]:
    statuses = [s.strip() for s in value.split(",") if s.strip()]
    if not statuses:
        raise UsageError(f"--fail-on takes statuses such as error,timeout, not {value!r}")
    valid = (*STATUSES, *CONVERGENCE_CONDITIONS)
    unknown = [s for s in statuses if s not in valid]
    if unknown:
        raise UsageError(
            f"--fail-on: unknown status {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    return statuses


def parse_positive(value: Any, key: str, kind: type) -> Any:
    """A positive whole number (``kind`` int) or a positive finite number (float); never a boolean."""
    try:
        number = whole_number(value) if kind is int else real_number(value)
    except (TypeError, ValueError, OverflowError):
        what = "whole number" if kind is int else "number"
        raise UsageError(f"{key} must be a positive {what}, not {value!r}") from None
    if number <= 0:
        what = "whole number" if kind is int else "number"
        raise UsageError(f"{key} must be a positive {what}, not {value!r}")
    return number


def parse_timeout(value: Any) -> float | None:
    """Seconds per cell; 0 (also 0.0) or ``none`` means no limit. NaN and infinity are refused."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    try:
        seconds = real_number(value)
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if not seconds >= 0:
        raise UsageError(
            f"--timeout must be a positive number of seconds, or 0 or none for no limit, "
            f"not {value!r}"
        )
    return seconds or None


def parse_params(pairs: Sequence[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON when it parses, else kept as a string.

    KEY may be scoped, ``NAME.KEY``; :func:`resolve` splits it.
    """
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


def parse_grid(
    tables: Mapping[str, Mapping[str, Any]],
    tasks: Sequence[str],
    flags: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, list[Any]]]:
    """``[task_grid.NAME]`` tables: each key's list of values is one more axis of cells.

    A key that a ``--task-param`` flag sets for the task (``flags``: per task)
    is no axis: the flag's single value wins.
    """
    grid: dict[str, dict[str, list[Any]]] = {}
    for task in tasks:
        for key, values in tables.get(task, {}).items():
            if key in flags.get(task, {}):
                continue
            if not isinstance(values, list) or not values:
                raise UsageError(
                    f"task_grid.{task}.{key} must be a non-empty list of values, not {values!r}"
                )
            grid.setdefault(task, {})[key] = values
    return grid


@dataclass
class SweepSettings:
    """The resolved, checked description of a sweep."""

    tasks: list[str]
    methods: list[str]
    truncations: list[int]
    seeds: Sequence[int]
    devices: list[str]
    jobs: int = 1
    timeout: float | None = None
    task_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    forwards: list[str] = field(default_factory=lambda: ["iterate"])
    forward_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Where cells run: the local pool, or a Ray cluster (address None: a local Ray instance).
    executor: str = "local"
    address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 1.0


def count_cells(
    tasks: Sequence[str],
    methods: Sequence[str],
    truncations: Sequence[int],
    seeds: Sequence[int],
    devices: Sequence[str],
    task_grid: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    forwards: Sequence[str] = ("iterate",),
) -> int:
    """The number of cells these settings expand to, by arithmetic: nothing is expanded."""
    seed_count = seeds.size if isinstance(seeds, Seeds) else len(seeds)
    variants = sum(
        math.prod(len(values) for values in (task_grid or {}).get(task, {}).values())
        for task in tasks
    )
    return variants * len(devices) * seed_count * len(forwards) * len(methods) * len(truncations)


def check_cell_count(count: int) -> None:
    if count > MAX_CELLS:
        raise UsageError(
            f"the sweep has {count:,} cells, over the limit of {MAX_CELLS:,} per sweep; "
            "ask for fewer seeds, truncations, methods, forwards, tasks, devices or grid values"
        )


def parse_executor(
    executor: Any, address: Any, cpus: Any, gpus: Any
) -> tuple[str, str | None, float, float]:
    """The executor, the Ray address, and what one cell asks Ray for (CPUs; GPUs for a CUDA cell)."""
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise UsageError(f"--address takes HOST:PORT, not {address!r}")
    if address is not None and executor != "ray":
        raise UsageError("--address is the address of a Ray cluster: it needs --executor ray")
    cpus = parse_positive(cpus, "--cpus-per-cell", float)
    gpus = parse_positive(gpus, "--gpus-per-cell", float)
    if gpus > 1 and not gpus.is_integer():
        raise UsageError(
            f"--gpus-per-cell must be a fraction up to 1 or a whole number, not {gpus:g}"
        )
    return executor, address.strip() if address else None, cpus, gpus


EXCLUDED = {"seed", "device", "dtype", "diagnostics", "num_steps"}


def accepted_params(function: Any, defaults: Mapping[str, Any]) -> set[str] | None:
    """Parameter names a builder or method accepts (None: it takes any keyword)."""
    names = set(defaults)
    for p in inspect.signature(function).parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD and p.name != "_" and not defaults:
            return None
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            names.add(p.name)
    return names - EXCLUDED


def param_defaults(function: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Each parameter's default, whose type a given value must have: the spec's, else the signature's."""
    found = {
        p.name: p.default
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }
    return {k: v for k, v in {**found, **defaults}.items() if k not in EXCLUDED}


def type_problem(value: Any, default: Any) -> str | None:
    """What ``value`` should be, given a parameter's ``default``; None when it will do.

    A bool default takes a bool; an int one an int (not a bool); a float one an
    int or a float; a str one a str; a list one a list (of values like the
    default's, where those share a type); a dict one a table. A None default,
    or one of another type, takes anything.
    """
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, list | tuple):
        if not isinstance(value, list | tuple):
            return "a list"
        kinds = {type(item) for item in default}
        if len(kinds) == 1:
            for item in value:
                problem = type_problem(item, default[0])
                if problem:
                    return f"a list of {problem.removeprefix('a ')}s"
        return None
    if isinstance(default, Mapping):
        return None if isinstance(value, Mapping) else "a table"
    return None


@dataclass(frozen=True)
class Plugin:
    """What :func:`resolve` needs of a task or a method: its parameters and their defaults."""

    name: str
    accepted: set[str] | None
    defaults: dict[str, Any]
    check: Callable[[Mapping[str, Any]], None] | None = None

    def accepts(self, key: str) -> bool:
        return self.accepted is None or key in self.accepted

    def valid(self) -> str:
        return ", ".join(sorted(self.accepted or [])) or "(none)"

    def check_names(self, keys: Iterable[str], where: str) -> None:
        unknown = sorted(k for k in keys if not self.accepts(k))
        if unknown:
            raise UsageError(
                f"{where}: {self.name} has no parameter {', '.join(unknown)}; valid: {self.valid()}"
            )

    def check_params(self, params: Mapping[str, Any], where: str) -> None:
        """Names, then each value against its default's type."""
        self.check_names(params, where)
        for key, value in params.items():
            self.check_value(key, value, where)

    def check_value(self, key: str, value: Any, where: str) -> None:
        default = self.defaults.get(key)
        problem = type_problem(value, default)
        if problem:
            raise UsageError(
                f"{where}: {self.name}.{key} must be {problem} (its default is "
                f"{json.dumps(default, default=str)}), not {json.dumps(value, default=str)}"
            )


def with_tolerances(accepted: set[str] | None) -> set[str] | None:
    """Every task takes the convergence tolerances: the harness reads them, the builder never."""
    return None if accepted is None else accepted | set(TOLERANCE_PARAMS)


def check_tolerances(task: str, params: Mapping[str, Any]) -> None:
    for key in TOLERANCE_PARAMS:
        if key not in params:
            continue
        value = params[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and value > 0):
            raise UsageError(
                f"task parameters: {task}.{key} must be a positive number, not "
                f"{json.dumps(value, default=str)}"
            )


def plugins_of(registry: Registry, kind: str) -> dict[str, Plugin]:
    if kind == "task":
        return {
            name: Plugin(
                name,
                with_tolerances(accepted_params(spec.build, spec.defaults)),
                param_defaults(spec.build, spec.defaults),
                spec.check,
            )
            for name, (spec, _) in registry.tasks.items()
        }
    specs, function = (
        (registry.forwards, "solve") if kind == "forward solver" else (registry.methods, "compute")
    )
    return {
        name: Plugin(
            name,
            accepted_params(getattr(spec, function), spec.defaults),
            param_defaults(getattr(spec, function), spec.defaults),
        )
        for name, (spec, _) in specs.items()
    }


def check_table_names(
    merged: Mapping[str, Any],
    tasks: Sequence[str],
    methods: Sequence[str],
    forwards: Sequence[str] = (),
) -> None:
    """A ``[task_params.NAME]``, ``[task_grid.NAME]``, ``[method_params.NAME]`` or
    ``[forward_params.NAME]`` table must name an installed task, method or forward solver
    (``tasks``, ``methods``, ``forwards``: every installed one).

    A misspelt name would otherwise be ignored in silence. A table of an
    installed task or method that this sweep does not select is fine.
    """
    for key, kind, known in (
        ("task_params", "task", tasks),
        ("task_grid", "task", tasks),
        ("method_params", "method", methods),
        ("forward_params", "forward solver", forwards),
    ):
        unknown = [name for name in merged.get(key, {}) if name not in known]
        if unknown:
            raise UsageError(
                f"[{key}.{unknown[0]}] names no installed {kind}; valid: {', '.join(known)}"
            )


def scope_flags(
    flags: Mapping[str, Any],
    selected: Sequence[str],
    plugins: Mapping[str, Plugin],
    option: str,
    kind: str,
) -> dict[str, dict[str, Any]]:
    """``KEY=VALUE`` flags per selected task (or method).

    ``NAME.KEY`` applies to NAME only: NAME must be selected and take KEY. A
    plain ``KEY`` applies to every selected one that takes it and is an error
    only when none does. A scoped value wins over a plain one. A KEY never
    holds a '.', so everything before the last '.' is the NAME.
    """
    plain: dict[str, Any] = {}
    scoped: dict[str, dict[str, Any]] = {}
    for given, value in flags.items():
        name, dot, key = given.rpartition(".")
        if not dot:
            plain[given] = value
            continue
        if not key:
            raise UsageError(f"{option} takes KEY=VALUE or {kind.upper()}.KEY=VALUE, not {given!r}")
        if name not in plugins:
            raise UsageError(
                f"{option} {given}: {name!r} is no installed {kind} (a parameter name holds "
                f"no '.'); valid: {', '.join(plugins)}"
            )
        if name not in selected:
            raise UsageError(
                f"{option} {given}: the {kind} {name} is not selected; selected: {', '.join(selected)}"
            )
        if not plugins[name].accepts(key):
            raise UsageError(
                f"{option}: {name} has no parameter {key}; valid: {plugins[name].valid()}"
            )
        scoped.setdefault(name, {})[key] = value
    out: dict[str, dict[str, Any]] = {name: {} for name in selected}
    for key, value in plain.items():
        takers = [name for name in selected if plugins[name].accepts(key)]
        if not takers and len(selected) == 1:
            (name,) = selected
            raise UsageError(
                f"{option}: {name} has no parameter {key}; valid: {plugins[name].valid()}"
            )
        if not takers:
            raise UsageError(
                f"{option}: none of the selected {kind}s has a parameter {key} ("
                + "; ".join(f"{name}: {plugins[name].valid()}" for name in selected)
                + ")"
            )
        for name in takers:
            out[name][key] = value
    for name, params in scoped.items():
        out[name].update(params)
    for name, params in out.items():
        for key, value in params.items():
            plugins[name].check_value(key, value, option)
    return out


def variants(
    base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]
) -> Iterator[dict[str, Any]]:
    """``base`` updated with each combination of the grid's values."""
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        yield {**base, **dict(zip(keys, values, strict=True))}


def run_task_checks(
    plugins: Mapping[str, Plugin],
    task_params: Mapping[str, Mapping[str, Any]],
    task_grid: Mapping[str, Mapping[str, Sequence[Any]]],
) -> None:
    """Each task's own ``check`` on its parameters (defaults merged), once per grid combination."""
    for task, base in task_params.items():
        plugin = plugins[task]
        for params in variants(base, task_grid.get(task, {})):
            check_tolerances(task, params)
            if plugin.check is None:
                continue
            try:
                plugin.check({**plugin.defaults, **split_params(params)[0]})
            except (ValueError, TypeError) as exc:
                message = " ".join(str(exc).split()) or type(exc).__name__
                raise UsageError(f"task parameters: {message}") from None


def run_forward_checks(registry: Registry, forward_params: Mapping[str, Mapping[str, Any]]) -> None:
    """Each selected forward solver's own ``check`` on its parameters (defaults merged)."""
    for name, params in forward_params.items():
        spec = registry.forward(name)
        if spec.check is None:
            continue
        try:
            spec.check({**spec.defaults, **params})
        except (ValueError, TypeError) as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise UsageError(f"forward parameters: {message}") from None


def resolve(
    settings: Mapping[str, Any],
    registry: Registry,
    *,
    task_param_flags: Mapping[str, Any] | None = None,
    method_param_flags: Mapping[str, Any] | None = None,
    forward_param_flags: Mapping[str, Any] | None = None,
) -> SweepSettings:
    """Check layered settings against the installed plugins.

    ``task_param_flags``, ``method_param_flags`` and ``forward_param_flags``
    are the ``--task-param``, ``--method-param`` and ``--forward-param`` flags,
    ``KEY`` or ``NAME.KEY`` to a value (see :func:`scope_flags`); they override
    the tables of ``settings``.
    """
    merged = layer(DEFAULTS, settings)
    tasks = parse_names(merged["tasks"], list(registry.tasks), "task")
    methods = parse_names(merged["methods"], list(registry.methods), "method")
    forwards = parse_names(merged["forward"], list(registry.forwards), "forward solver")
    check_table_names(merged, list(registry.tasks), list(registry.methods), list(registry.forwards))
    forward_plugins = plugins_of(registry, "forward solver")
    forward_flags = scope_flags(
        forward_param_flags or {}, forwards, forward_plugins, "--forward-param", "forward solver"
    )
    for f in forwards:
        forward_plugins[f].check_params(merged["forward_params"].get(f, {}), "forward_params")
    forward_params = {
        f: {**merged["forward_params"].get(f, {}), **forward_flags[f]} for f in forwards
    }
    run_forward_checks(registry, forward_params)
    task_plugins, method_plugins = plugins_of(registry, "task"), plugins_of(registry, "method")
    task_flags = scope_flags(task_param_flags or {}, tasks, task_plugins, "--task-param", "task")
    method_flags = scope_flags(
        method_param_flags or {}, methods, method_plugins, "--method-param", "method"
    )
    for t in tasks:
        task_plugins[t].check_params(merged["task_params"].get(t, {}), "task_params")
    for m in methods:
        method_plugins[m].check_params(merged["method_params"].get(m, {}), "method_params")
    task_params = {t: {**merged["task_params"].get(t, {}), **task_flags[t]} for t in tasks}
    method_params = {m: {**merged["method_params"].get(m, {}), **method_flags[m]} for m in methods}
    task_grid = parse_grid(merged["task_grid"], tasks, task_flags)
    for t, axes in task_grid.items():
        task_plugins[t].check_names(axes, "task_grid")
        for key, values in axes.items():
            for value in values:
                task_plugins[t].check_value(key, value, "task_grid")
    executor, address, cpus_per_cell, gpus_per_cell = parse_executor(
        merged["executor"], merged.get("address"), merged["cpus_per_cell"], merged["gpus_per_cell"]
    )
    resolved = SweepSettings(
        tasks=tasks,
        methods=methods,
        truncations=parse_truncations(merged["truncation"]),
        seeds=parse_seeds(merged["seeds"]),
        devices=parse_devices(merged["device"]),
        jobs=parse_positive(merged["jobs"], "--jobs", int),
        timeout=parse_timeout(merged.get("timeout")),
        task_params=task_params,
        method_params=method_params,
        task_grid=task_grid,
        forwards=forwards,
        forward_params=forward_params,
        executor=executor,
        address=address,
        cpus_per_cell=cpus_per_cell,
        gpus_per_cell=gpus_per_cell,
    )
    check_cell_count(
        count_cells(
            resolved.tasks,
            resolved.methods,
            resolved.truncations,
            resolved.seeds,
            resolved.devices,
            resolved.task_grid,
            resolved.forwards,
        )
    )
    run_task_checks(task_plugins, task_params, task_grid)
    return resolved
