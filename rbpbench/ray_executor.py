"""Cells as Ray tasks: a sweep on a Ray cluster, or on a local Ray instance, with the local pool's guarantees.

Cells go to Ray tasks that ask for ``cpus_per_cell`` CPUs (and
``gpus_per_cell`` GPUs for a CUDA cell), so that Ray places them on a node
where they fit: one cell per task, or a batch of cheap CPU cells chosen as the
local pool chooses them (:class:`~rbpbench.executors.Batcher`, from the costs
of the cells finished so far), with twice as many tasks submitted as the
cluster's CPUs can run, so that the driver is not the bottleneck
(docs/ray.md has the figures). Inside the task the cells run exactly as under
the local executor: in the spawned worker process of a one-worker
:class:`LocalPool` that the Ray worker keeps between tasks. That pool enforces the hard time
limit on the node itself, from the moment the cell starts (time spent waiting
for a free node does not count), kills the cell's process at the limit, and
turns a segfault or a kill of that process into a ``crashed`` row, with the
same messages as a local sweep. What the pool cannot report, because it died
too (the Ray worker, its node), reaches the driver as a Ray exception and
becomes a ``crashed`` row for each cell of the task (``oom`` when Ray's memory
monitor killed it).

The driver stays the only writer of the results folder: rows come back as the
tasks' results and are stored by the sweep as they arrive. Ray is imported
only here and only when ``--executor ray`` is asked for.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from rbpbench.cells import Cell, identity_row
from rbpbench.config import UsageError
from rbpbench.data import DATA_DIR_ENV
from rbpbench.environment import machine_environment, plugin_versions
from rbpbench.executors import Batcher, LocalPool, RowCallback
from rbpbench.plugins import PluginConfig, Registry, load_registry
from rbpbench.results import CRASHED, ERROR, OOM, SKIPPED, CellOutcome

RAY_MISSING = (
    "--executor ray needs Ray, which is not installed: pip install 'rbpbench[ray]' "
    "(or pip install ray), on the driver and on every node of the cluster"
)
# Environment variables a task takes from the driver: the data root must be the same path on every node.
FORWARDED_ENV = (DATA_DIR_ENV,)


def import_ray() -> ModuleType:
    """The ray module, or a UsageError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class RayJob:
    """What every task of a sweep needs on its node, besides its cell (picklable, hashable)."""

    plugins: PluginConfig
    run_id: str
    timeout: float | None
    threads: int
    env: tuple[tuple[str, str], ...] = ()


def node_name(node_id: str) -> str:
    """How rows and environment.json name a Ray node: its host and the start of its Ray node id."""
    return f"{socket.gethostname()}/{node_id[:8]}"


# State of a Ray worker process, kept between the tasks it runs: one pool per
# job and GPU assignment, and this node's description.
_pools: dict[tuple[RayJob, str | None], LocalPool] = {}
_node_environment: dict[str, Any] = {}


def identity_problem(cell: Cell, registry: Registry, expected: dict[str, Any]) -> str | None:
    """Why this node cannot run ``cell`` as the driver planned it (other plugins or versions), or None."""
    for kind, name, known in (
        ("task", cell.task, registry.tasks),
        ("method", cell.method, registry.methods),
    ):
        if name not in known:
            return f"the {kind} {name} is not installed on this node"
    here = identity_row(cell, registry, expected["run_id"])
    keys = ("rbpbench_version", "method_distribution", "task_distribution", "cell_id")
    if any(here[k] != expected[k] for k in keys):
        return (
            "this node has other versions than the driver ("
            + ", ".join(f"{k} {here[k]} here, {expected[k]} on the driver" for k in keys[:3])
            + "); install the same versions on every node"
        )
    return None


def run_cells_task(
    job: RayJob, cells: Sequence[Cell], expected: Sequence[dict[str, Any]]
) -> list[CellOutcome]:
    """The body of a Ray task, on whatever node Ray chose: its cells' outcomes in order, from a
    local pool, with this node's description beside them."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node = node_name(node_id)
    os.environ.update(dict(job.env))  # before the pool spawns its worker, which inherits it
    key = (job, os.environ.get("CUDA_VISIBLE_DEVICES"))  # Ray sets the GPUs of each task
    if key not in _pools:
        for pool in _pools.values():
            pool.close()
        _pools.clear()
        registry = load_registry(job.plugins, warn=False)
        _pools[key] = LocalPool(
            registry, job.plugins, job.run_id, 1, job.timeout, job.threads, node, keep_workers=True
        )
    pool = _pools[key]
    if not _node_environment:
        _node_environment.update(
            machine_environment(plugin_versions(pool.registry)),
            node=node,
            ray_node_id=node_id,
            node_ip=ray.util.get_node_ip_address(),
        )
    outcomes: dict[str, CellOutcome] = {}
    runnable = []
    for cell, identity in zip(cells, expected, strict=True):
        problem = identity_problem(cell, pool.registry, identity)
        if problem:
            error = f"on node {node}: {problem}"
            row = {**identity, "status": ERROR, "error": error, "node": node}
            outcomes[identity["cell_id"]] = CellOutcome(row)
        else:
            runnable.append(cell)
    pool.run(
        runnable,
        lambda outcome: outcomes.__setitem__(outcome.row["cell_id"], outcome),
        one_batch=True,
    )
    ordered = [outcomes[identity["cell_id"]] for identity in expected]
    for outcome in ordered:
        outcome.node_environment = _node_environment
    return ordered


CONNECT_LIMIT_S = 120.0


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """A HOST:PORT where nothing listens is reported at once (Ray itself would retry forever)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(
            f"cannot join the Ray cluster at {address}: nothing answers there ({exc.strerror or exc}); "
            "is its head node started (ray start --head --port PORT)?"
        ) from None


def give_up(where: str) -> None:
    print(
        f"rbpbench: error: could not start or join {where} within {CONNECT_LIMIT_S:g} s",
        file=sys.stderr,
        flush=True,
    )
    os._exit(2)


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line[:limit]}"


def fits(request: dict[str, float], nodes: Sequence[dict[str, float]]) -> bool:
    """Whether some node's total resources can hold ``request``."""
    return any(all(node.get(k, 0.0) >= v for k, v in request.items()) for node in nodes)


def describe(request: dict[str, float]) -> str:
    return " and ".join(f"{v:g} {k}" for k, v in request.items())


@dataclass(frozen=True)
class InFlight:
    """A submitted task: its cells, their identity rows, and what it asked Ray for."""

    cells: list[Cell]
    identities: list[dict[str, Any]]
    request: dict[str, float]


def task_name(batch: Sequence[Cell]) -> str:
    first = batch[0]
    name = f"rbpbench {first.task} {first.method} K={first.truncation} seed={first.seed}"
    return name if len(batch) == 1 else f"{name} and {len(batch) - 1} more cells"


@dataclass
class RayExecutor:
    """Run cells as Ray tasks on the cluster at ``address``, or on a local Ray instance started here.

    ``connect`` is separate from ``run`` so that an unreachable cluster or a
    request no node can hold is reported before the sweep writes anything.
    """

    registry: Registry
    plugins: PluginConfig
    run_id: str
    timeout: float | None = None
    address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 1.0
    poll_s: float = 5.0
    _ray: ModuleType | None = field(default=None, repr=False)
    batcher: Batcher | None = field(default=None, init=False, repr=False)  # the last run's

    def request(self, cell: Cell) -> dict[str, float]:
        request = {"CPU": self.cpus_per_cell}
        if cell.device.startswith("cuda"):
            request["GPU"] = self.gpus_per_cell
        return request

    def connect(self) -> None:
        ray = import_ray()
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
        if self.address:
            check_reachable(self.address)
        # Ray retries forever to reach a head that does not answer: give up, before any write.
        watchdog = threading.Timer(CONNECT_LIMIT_S, give_up, (where,))
        watchdog.daemon = True
        watchdog.start()
        try:
            if self.address:
                ray.init(address=self.address, logging_level=logging.WARNING)
            else:  # "local": always a new instance, never a cluster that happens to run here
                ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
            raise UsageError(f"cannot start or join {where}: {first_line(exc)}") from None
        finally:
            watchdog.cancel()
        self._ray = ray
        nodes = self.live_nodes()
        if not fits({"CPU": self.cpus_per_cell}, nodes):
            self.close()
            raise UsageError(
                f"--cpus-per-cell {self.cpus_per_cell:g}: no node of {where} has that many CPUs "
                f"(the largest has {max((n.get('CPU', 0.0) for n in nodes), default=0):g})"
            )
        cpus = sum(n.get("CPU", 0.0) for n in nodes)
        gpus = sum(n.get("GPU", 0.0) for n in nodes)
        print(
            f"rbpbench: running on {where}: {len(nodes)} nodes, {cpus:g} CPUs, {gpus:g} GPUs",
            file=sys.stderr,
            flush=True,
        )

    def live_nodes(self) -> list[dict[str, float]]:
        assert self._ray is not None
        return [dict(n["Resources"]) for n in self._ray.nodes() if n["Alive"]]

    def close(self) -> None:
        """Leave the cluster (a local instance stops); Ray ends whatever tasks of ours still run."""
        if self._ray is not None:
            self._ray.shutdown()
            self._ray = None

    def run(self, cells: Sequence[Cell], on_row: RowCallback) -> None:
        if self._ray is None:
            self.connect()
        ray = self._ray
        assert ray is not None
        env = tuple((k, os.environ[k]) for k in FORWARDED_ENV if k in os.environ)
        job = RayJob(
            self.plugins, self.run_id, self.timeout, max(1, math.ceil(self.cpus_per_cell)), env
        )
        remote = ray.remote(run_cells_task)
        nodes = self.live_nodes()
        queue: deque[Cell] = deque()
        for cell in cells:
            request = self.request(cell)
            if "GPU" in request and not fits(request, nodes):
                error = f"no node of the Ray cluster has {describe(request)} for a CUDA cell"
                identity = identity_row(cell, self.registry, self.run_id)
                on_row(CellOutcome({**identity, "status": SKIPPED, "error": error}))
            else:
                queue.append(cell)
        batcher = self.batcher = Batcher(self.registry)
        slots = self.task_slots(nodes)
        pending: dict[Any, InFlight] = {}
        while queue or pending:
            while queue and len(pending) < slots:
                batch = batcher.take(queue)
                identities = [identity_row(c, self.registry, self.run_id) for c in batch]
                request = self.request(batch[0])  # a batch holds CPU cells only, or one cell
                ref = remote.options(
                    num_cpus=request["CPU"],
                    num_gpus=request.get("GPU", 0),
                    max_retries=0,  # a lost cell is a crashed row, not silently run twice
                    retry_exceptions=False,
                    name=task_name(batch),
                ).remote(job, batch, identities)
                pending[ref] = InFlight(batch, identities, request)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_s)
            for ref in ready:
                flight = pending.pop(ref)
                outcomes = self.collect(ref, flight.identities)
                for cell, outcome in zip(flight.cells, outcomes, strict=True):
                    batcher.observe(cell, outcome.row)
                    on_row(outcome)
            if not ready:
                self.drop_unplaceable(pending, on_row)
                slots = self.task_slots(self.live_nodes())

    def task_slots(self, nodes: Sequence[dict[str, float]]) -> int:
        """How many tasks to keep submitted: twice what the cluster's CPUs can run at once, so
        that a node finishing a task finds the next one waiting, and the driver still
        chooses each batch's size from the costs of the cells finished so far."""
        cpus = sum(n.get("CPU", 0.0) for n in nodes)
        return max(2, 2 * math.floor(cpus / self.cpus_per_cell))

    def collect(self, ref: Any, identities: Sequence[dict[str, Any]]) -> list[CellOutcome]:
        """A finished task's outcomes; a task that failed as a whole gives each of its cells a
        row saying why."""
        ray = self._ray
        assert ray is not None
        try:
            outcomes: list[CellOutcome] = ray.get(ref)
            return outcomes
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            status, error = ERROR, f"the cell's Ray task failed: {first_line(cause)}"
        except ray.exceptions.OutOfMemoryError as exc:
            status, error = OOM, f"Ray killed the worker running the cell: {first_line(exc)}"
        except ray.exceptions.RayError as exc:
            status = CRASHED
            error = f"the Ray worker or node running the cell was lost: {first_line(exc)}"
        return [
            CellOutcome({**identity, "status": status, "error": error}) for identity in identities
        ]

    def drop_unplaceable(self, pending: dict[Any, InFlight], on_row: RowCallback) -> None:
        """Cells that no live node can hold any more (their nodes died) end as crashed, not waited for."""
        ray = self._ray
        assert ray is not None
        nodes = self.live_nodes()
        for ref, flight in list(pending.items()):
            if not fits(flight.request, nodes):
                ray.cancel(ref, force=True)
                del pending[ref]
                error = f"no live node of the Ray cluster has {describe(flight.request)} for the cell any more"
                for identity in flight.identities:
                    on_row(CellOutcome({**identity, "status": CRASHED, "error": error}))
