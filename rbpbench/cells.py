"""Cells: the unit of a sweep, their identity, and the identity columns of their rows."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import rbpbench
from rbpbench.config import SweepSettings, check_cell_count, count_cells
from rbpbench.plugins import Registry
from rbpbench.results import empty_row

DEFAULT_FORWARD = "iterate"


@dataclass(frozen=True)
class Cell:
    """One (task, method, truncation, seed, device, forward) with the parameters given by the user."""

    task: str
    method: str
    truncation: int
    seed: int
    device: str
    task_params: tuple[tuple[str, Any], ...] = ()
    method_params: tuple[tuple[str, Any], ...] = ()
    forward: str = "iterate"
    forward_params: tuple[tuple[str, Any], ...] = ()


def expand(
    tasks: Sequence[str],
    methods: Sequence[str],
    truncations: Sequence[int],
    seeds: Sequence[int],
    devices: Sequence[str],
    task_params: Mapping[str, Mapping[str, Any]] | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    task_grid: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    forwards: Sequence[str] = ("iterate",),
    forward_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Cell]:
    """Every combination as a list (see :func:`iter_cells`), after counting them.

    A plan over :data:`~rbpbench.config.MAX_CELLS` cells is refused before any
    cell is made: ``seeds`` may be a :class:`~rbpbench.config.Seeds` of a
    hundred million seeds, which costs nothing until it is iterated.
    """
    check_cell_count(count_cells(tasks, methods, truncations, seeds, devices, task_grid, forwards))
    return list(
        iter_cells(
            tasks,
            methods,
            truncations,
            seeds,
            devices,
            task_params,
            method_params,
            task_grid,
            forwards,
            forward_params,
        )
    )


def iter_cells(
    tasks: Sequence[str],
    methods: Sequence[str],
    truncations: Sequence[int],
    seeds: Sequence[int],
    devices: Sequence[str],
    task_params: Mapping[str, Mapping[str, Any]] | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    task_grid: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    forwards: Sequence[str] = ("iterate",),
    forward_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[Cell]:
    """Every combination, one at a time, task- and seed-major so that cells sharing a BPTT
    reference run together, and forward-major within a seed so that cells sharing a solved
    forward pass do too.

    ``task_grid`` gives, per task, parameters with several values: each
    combination is one more set of cells, with those values over ``task_params``.
    """
    task_params, method_params = task_params or {}, method_params or {}
    given = {m: tuple(sorted(method_params.get(m, {}).items())) for m in methods}
    solver_params = {f: tuple(sorted((forward_params or {}).get(f, {}).items())) for f in forwards}
    for task in tasks:
        for params in param_variants(task_params.get(task, {}), (task_grid or {}).get(task, {})):
            for device in devices:
                for seed in seeds:
                    for forward in forwards:
                        for method in methods:
                            for k in truncations:
                                yield Cell(
                                    task,
                                    method,
                                    k,
                                    seed,
                                    device,
                                    params,
                                    given[method],
                                    forward,
                                    solver_params[forward],
                                )


def cell_axes(settings: SweepSettings) -> dict[str, Any]:
    """Resolved settings as the keyword arguments of :func:`expand` and :func:`iter_cells`."""
    return {
        "tasks": settings.tasks,
        "methods": settings.methods,
        "truncations": settings.truncations,
        "seeds": settings.seeds,
        "devices": settings.devices,
        "task_params": settings.task_params,
        "method_params": settings.method_params,
        "task_grid": settings.task_grid,
        "forwards": settings.forwards,
        "forward_params": settings.forward_params,
    }


def plan(settings: SweepSettings) -> Iterator[Cell]:
    """The cells of resolved settings, one at a time (``--dry-run`` prints them as they come)."""
    return iter_cells(**cell_axes(settings))


def param_variants(
    base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]
) -> Iterator[tuple[tuple[str, Any], ...]]:
    """``base`` updated with each combination of the grid's values, as sorted items."""
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        yield tuple(sorted({**base, **dict(zip(keys, values, strict=True))}.items()))


def identity_row(cell: Cell, registry: Registry, run_id: str) -> dict[str, Any]:
    """The columns that say which cell a row is, and the cell's id.

    The id hashes everything that makes two cells the same experiment: task and
    its parameters, method and its parameters, truncation, seed, device, dtype,
    forward solver and its parameters, and the versions of rbpbench and of the
    plugins providing task, method and forward solver. The default forward
    (``iterate``, which has no parameters) is left out of the hash, so that
    folders written before forward solvers existed keep their ids and resume.
    """
    task_spec, task_origin = registry.tasks[cell.task]
    method_spec, method_origin = registry.methods[cell.method]
    forward_spec, forward_origin = registry.forwards[cell.forward]
    row = empty_row()
    row.update(
        run_id=run_id,
        task=cell.task,
        task_params=json.dumps({**task_spec.defaults, **dict(cell.task_params)}, sort_keys=True),
        method=cell.method,
        method_params=json.dumps(
            {**method_spec.defaults, **dict(cell.method_params)}, sort_keys=True
        ),
        forward=cell.forward,
        forward_params=json.dumps(
            {**forward_spec.defaults, **dict(cell.forward_params)}, sort_keys=True
        ),
        truncation=cell.truncation,
        seed=cell.seed,
        device=cell.device,
        dtype=str(task_spec.dtype).removeprefix("torch."),
        error="",
        torch_version=torch.__version__,
        rbpbench_version=rbpbench.__version__,
        method_distribution=str(method_origin),
        task_distribution=str(task_origin),
        forward_distribution=str(forward_origin),
    )
    keys = [
        "task",
        "task_params",
        "method",
        "method_params",
        "truncation",
        "seed",
        "device",
        "dtype",
        "rbpbench_version",
        "method_distribution",
        "task_distribution",
    ]
    if cell.forward != DEFAULT_FORWARD or row["forward_params"] != "{}":
        keys += ["forward", "forward_params", "forward_distribution"]
    fingerprint = json.dumps([row[k] for k in keys], sort_keys=True)
    row["cell_id"] = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return row
