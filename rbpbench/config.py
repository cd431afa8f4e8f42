"""What a sweep should run: shipped suites, users' TOML files and command-line flags, layered.

A suite (``--suite NAME``, a TOML file shipped in ``rbpbench/suites``) is the
base, a user's file (``--config FILE.toml``) overrides it, and flags on the
command line override both. Every value is checked here, before anything is
written, and a bad one raises :class:`UsageError` with one clear line.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rbpbench.convergence import TOLERANCE_PARAMS
from rbpbench.plugins import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from rbpbench.results import STATUSES

KEYS = {
    "description",
    "tasks",
    "methods",
    "truncation",
    "seeds",
    "device",
    "jobs",
    "timeout",
    "task_params",
    "method_params",
    "task_grid",
    "executor",
    "address",
    "cpus_per_cell",
    "gpus_per_cell",
}
EXECUTORS = ("local", "ray")


class UsageError(Exception):
    """Bad input from the user: reported in one line with exit status 2."""


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
    for key in ("task_params", "method_params", "task_grid"):
        tables = data.get(key, {})
        if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
            raise UsageError(f"{where}: {key} must hold one table per name, e.g. [{key}.NAME]")
    return data


def load_suite(name: str) -> dict[str, Any]:
    if name not in suite_names():
        raise UsageError(f"unknown suite {name!r}; valid: {', '.join(suite_names())}")
    text = (resources.files("rbpbench") / "suites" / f"{name}.toml").read_text()
    return read_toml(text, f"suite {name}")


def load_config(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"--config {path}: {exc.strerror}") from None
    return read_toml(text, f"--config {path}")


def layer(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win; parameter tables are merged per name and key."""
    merged: dict[str, Any] = {"task_params": {}, "method_params": {}, "task_grid": {}}
    for settings in layers:
        for key, value in settings.items():
            if value is None:
                continue
            if key in ("task_params", "method_params", "task_grid"):
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


def parse_truncations(value: Any) -> list[int]:
    try:
        values = [int(v) for v in as_list(value, "truncation")]
    except (TypeError, ValueError):
        raise UsageError(
            f"--truncation takes whole numbers separated by commas, not {value!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"--truncation values must be positive whole numbers, not {value!r}")
    return list(dict.fromkeys(values))


def parse_seeds(value: Any) -> list[int]:
    """``0-4`` (inclusive), ``1,3,7``, a mix like ``0-2,10``, or a list of ints."""
    seeds: list[int] = []
    try:
        for part in as_list(value, "seeds"):
            text = str(part).strip()
            if "-" in text.lstrip("-"):
                low, high = (int(v) for v in text.split("-", 1))
                if high < low:
                    raise ValueError
                seeds.extend(range(low, high + 1))
            else:
                seeds.append(int(text))
    except ValueError:
        raise UsageError(
            f"--seeds takes a range like 0-4 or a list like 0,3,7, not {value!r}"
        ) from None
    if not seeds or any(s < 0 for s in seeds):
        raise UsageError(f"--seeds must be non-negative whole numbers, not {value!r}")
    return list(dict.fromkeys(seeds))


def parse_devices(value: Any) -> list[str]:
    devices = [str(d) for d in as_list(value, "device")]
    for device in devices:
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda") or (index and not (kind == "cuda" and index.isdigit())):
            raise UsageError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N")
    if not devices:
        raise UsageError("no device given")
    return list(dict.fromkeys(devices))


# --fail-on conditions beside the statuses: a cell whose forward did not converge, and a
# cell whose adjoint system was left above its tolerance (often by design: a truncation).
CONVERGENCE_CONDITIONS = ("unconverged", "adjoint-unconverged")


def parse_statuses(value: str) -> list[str]:
    statuses = [s.strip() for s in value.split(",") if s.strip()]
    valid = (*STATUSES, *CONVERGENCE_CONDITIONS)
    unknown = [s for s in statuses if s not in valid]
    if unknown:
        raise UsageError(
            f"--fail-on: unknown status {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    return statuses


def parse_positive(value: Any, key: str, kind: type) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"{key} must be a positive number, not {value!r}") from None
    if number <= 0:
        raise UsageError(f"{key} must be a positive number, not {value!r}")
    return number


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


def parse_grid(
    tables: Mapping[str, Mapping[str, Any]], tasks: Sequence[str], flags: Mapping[str, Any]
) -> dict[str, dict[str, list[Any]]]:
    """``[task_grid.NAME]`` tables: each key's list of values is one more axis of cells.

    A key also set by a ``--task-param`` flag is no axis: the flag's single value wins.
    """
    grid: dict[str, dict[str, list[Any]]] = {}
    for task in tasks:
        for key, values in tables.get(task, {}).items():
            if key in flags:
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
    seeds: list[int]
    devices: list[str]
    jobs: int = 1
    timeout: float | None = None
    task_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    # Where cells run: the local pool, or a Ray cluster (address None: a local Ray instance).
    executor: str = "local"
    address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 1.0


DEFAULTS: dict[str, Any] = {
    "tasks": "contractive-rnn",
    # the paper's five; installed plugins' methods run when named
    "methods": "bptt,tbptt,rbp,cg-rbp,neumann-rbp",
    "truncation": "10,20,30",
    "seeds": "0-2",
    "device": "cpu",
    "jobs": 1,
    "timeout": 3600,
    "executor": "local",
    "cpus_per_cell": 1,
    "gpus_per_cell": 1,
}


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


def accepted_params(function: Any, defaults: Mapping[str, Any]) -> set[str] | None:
    """Parameter names a builder or method accepts (None: it takes any keyword)."""
    names = set(defaults)
    for p in inspect.signature(function).parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD and p.name != "_" and not defaults:
            return None
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            names.add(p.name)
    return names - {"seed", "device", "dtype", "diagnostics"}


def check_params(
    tables: Mapping[str, Mapping[str, Any]], specs: Mapping[str, Any], call: str, key: str
) -> None:
    for name, params in tables.items():
        if name not in specs:
            continue  # parameters for a task or method this sweep does not run
        spec = specs[name]
        accepted = accepted_params(getattr(spec, call), spec.defaults)
        if accepted is not None and call == "build":
            accepted |= set(TOLERANCE_PARAMS)  # every task's: the harness reads them
        unknown = sorted(set(params) - accepted) if accepted is not None else []
        if unknown:
            raise UsageError(
                f"{key}: {name} has no parameter {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(accepted or [])) or '(none)'}"
            )


def resolve(
    settings: Mapping[str, Any],
    registry: Registry,
    *,
    task_param_flags: Mapping[str, Any] | None = None,
    method_param_flags: Mapping[str, Any] | None = None,
) -> SweepSettings:
    """Check layered settings against the installed plugins; flags' parameters apply to every selection."""
    merged = layer(DEFAULTS, settings)
    tasks = parse_names(merged["tasks"], list(registry.tasks), "task")
    methods = parse_names(merged["methods"], list(registry.methods), "method")
    task_params = {
        t: {**merged["task_params"].get(t, {}), **(task_param_flags or {})} for t in tasks
    }
    method_params = {
        m: {**merged["method_params"].get(m, {}), **(method_param_flags or {})} for m in methods
    }
    specs_t = {name: registry.task(name) for name in registry.tasks}
    specs_m = {name: registry.method(name) for name in registry.methods}
    check_params(task_params, specs_t, "build", "--task-param")
    task_grid = parse_grid(merged["task_grid"], tasks, task_param_flags or {})
    check_params(task_grid, specs_t, "build", "task_grid")
    check_params(method_params, specs_m, "compute", "--method-param")
    timeout = merged.get("timeout")
    executor, address, cpus_per_cell, gpus_per_cell = parse_executor(
        merged["executor"], merged.get("address"), merged["cpus_per_cell"], merged["gpus_per_cell"]
    )
    return SweepSettings(
        tasks=tasks,
        methods=methods,
        truncations=parse_truncations(merged["truncation"]),
        seeds=parse_seeds(merged["seeds"]),
        devices=parse_devices(merged["device"]),
        jobs=parse_positive(merged["jobs"], "--jobs", int),
        timeout=None
        if timeout in (None, 0, "none")
        else parse_positive(timeout, "--timeout", float),
        task_params=task_params,
        method_params=method_params,
        task_grid=task_grid,
        executor=executor,
        address=address,
        cpus_per_cell=cpus_per_cell,
        gpus_per_cell=gpus_per_cell,
    )
