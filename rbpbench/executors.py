"""Where cells run: behind one small interface, so another engine can replace the local pool.

An executor takes cells and calls ``on_row`` with one :class:`~rbpbench.results.CellOutcome`
per cell (its row, and its curves beside it), whatever happens to the cell: the row of a cell whose worker had to be killed at the
time limit says ``timeout``; one whose worker died says ``crashed``.
"""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing as mp
import os
import signal
import socket
import statistics
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from rbpbench.cells import Cell, identity_row
from rbpbench.plugins import PluginConfig, Registry, load_registry
from rbpbench.results import CRASHED, OK, TIMEOUT, CellOutcome

RowCallback = Callable[[CellOutcome], None]


class Executor(Protocol):
    """Runs cells and calls ``on_row`` once per cell; ``close`` releases what it holds."""

    def run(self, cells: Sequence[Cell], on_row: RowCallback) -> None: ...

    def close(self) -> None: ...


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset or a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_worker(jobs: int) -> int:
    """Torch threads for each of ``jobs`` workers.

    OMP_NUM_THREADS wins when the user set it to a positive integer (the
    usual way to pin a benchmark's threads); otherwise the usable cores are
    shared out so that the workers do not oversubscribe them.
    """
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return max(1, usable_cores() // jobs)


# numpy's and scipy's BLAS (the spectral-radius estimator's Arnoldi iteration runs there)
# reads its thread count from these when a process loads it.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """Start worker processes whose BLAS uses ``threads`` threads, as their torch does.

    Left to itself OpenBLAS starts a thread per core in every worker, and its
    spinning threads fight torch's for the cores (measured: the spectral radius
    of hopfield's problem took 21-22 s against 6-11 s with one BLAS thread, on
    two loaded cores). A value the user set is kept.
    """
    given = {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES}
    for name, value in given.items():
        if value is None:
            os.environ[name] = str(threads)
    try:
        yield
    finally:
        for name, value in given.items():
            if value is None:
                os.environ.pop(name, None)


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Start worker processes that do not re-run the driver's ``__main__``.

    The spawn start method re-imports the parent's main module in the child,
    by name or from its file. A worker needs nothing of it (it runs
    :func:`worker_main` and loads the plugins by name), and a script read from
    standard input (``python - <<EOF``, whose ``__file__`` is ``<stdin>``)
    cannot be re-imported at all: the worker died at start. So the main
    module's ``__spec__`` and ``__file__`` are out of sight while a worker starts.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    has_file = hasattr(main, "__file__")
    path = getattr(main, "__file__", None)
    if main is not None:
        main.__spec__ = None
        if has_file:
            del main.__file__
    try:
        yield
    finally:
        if main is not None:
            main.__spec__ = spec
            if has_file:
                main.__file__ = path


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a fresh worker process needs, picklable for the spawn start method."""

    plugins: PluginConfig
    run_id: str
    threads: int


def exit_when_orphaned(parent: int, interval: float = 1.0) -> None:
    """End this worker soon after its driver dies (even by SIGKILL), instead of finishing a cell nobody will read."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def worker_main(setup: WorkerSetup, connection: Connection) -> None:
    """A worker's life: load the plugins once, then run the batches of cells it is sent."""
    import torch

    from rbpbench.runner import CellRunner

    # The driver handles Ctrl-C and SIGTERM (sent to the whole process group too) and stops
    # us; a worker dying of them first would be recorded as a crashed cell.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exit_when_orphaned(os.getppid())
    torch.set_num_threads(setup.threads)
    runner = CellRunner(load_registry(setup.plugins, warn=False), setup.run_id)
    # What the worker holds for its whole life (torch, the plugins) leaves the collector's
    # sight: the full collection before each memory capture then takes microseconds, not 0.1 s.
    gc.collect()
    gc.freeze()
    try:
        connection.send(("ready", None))
        while (cells := connection.recv()) is not None:
            # ("started", i) before the batch's cell i, ("capture", n) before the shared
            # capture of n memory passes: where the time limit runs from, and who is at fault
            outcomes = runner.run_batch(cells, lambda kind, n: connection.send((kind, n)))
            connection.send(("rows", outcomes))  # CellOutcomes, in order
    except (EOFError, BrokenPipeError):
        return  # the driver is gone (killed or interrupted): nothing is left to report to


def signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


# How much work one batch of cheap cells may hold: the wall time a worker spends on
# it by the estimates (what a kill can lose), and the most cells in one batch.
BATCH_TARGET_S = 5.0
MAX_BATCH = 32
ESTIMATE_WINDOW = 8


class Batcher:
    """Takes the next batch of cells for a worker: one cell, or several cheap ones.

    A cell's cost is estimated from the cells finished last that differ from it
    in the seed alone: the median of their ``cell_time_s`` (ESTIMATE_WINDOW of
    them), so that one slow cell does not shrink the batches that follow. A CPU cell of a task that does not
    train, whose estimate is known, joins the batch of the cells before it
    while the batch's estimated time stays within BATCH_TARGET_S and it holds
    at most ``max_batch`` cells; anything else runs alone, and so does a cell
    whose batch was lost (:meth:`isolate`). Batching changes no
    figure (the memory passes of a batch share one capture but are measured
    apart, :func:`rbpbench.measure.peak_memories`); it saves the profiler's
    start and stop, 0.1-0.8 s per cell, which is most of a cheap cell's cost.
    Cells keep their order.
    """

    def __init__(self, registry: Registry, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.registry = registry
        self.max_batch = max_batch
        self.times: dict[str, deque[float]] = {}
        self.isolated: set[int] = set()  # ids of cells that must run alone
        self.sent: Counter[int] = Counter()  # batch size -> how many batches of that size

    @staticmethod
    def key(cell: Cell) -> str:
        return repr(replace(cell, seed=0))  # parameters may hold lists: no hash

    def observe(self, cell: Cell, row: dict[str, Any]) -> None:
        seconds = row.get("cell_time_s")
        if row.get("status") == OK and isinstance(seconds, float) and math.isfinite(seconds):
            self.times.setdefault(self.key(cell), deque(maxlen=ESTIMATE_WINDOW)).append(seconds)

    def isolate(self, cells: Sequence[Cell]) -> None:
        self.isolated.update(id(cell) for cell in cells)

    def estimate(self, cell: Cell) -> float | None:
        if (
            id(cell) in self.isolated
            or cell.device != "cpu"
            or cell.task not in self.registry.tasks
        ):
            return None
        if self.registry.task(cell.task).train is not None:
            return None
        times = self.times.get(self.key(cell))
        return statistics.median(times) if times else None

    def take(self, pending: deque[Cell]) -> list[Cell]:
        batch = [pending.popleft()]
        total = self.estimate(batch[0])
        while total is not None and pending and len(batch) < self.max_batch:
            cost = self.estimate(pending[0])
            if cost is None or total + cost > BATCH_TARGET_S:
                break
            batch.append(pending.popleft())
            total += cost
        self.sent[len(batch)] += 1
        return batch


@dataclass
class Worker:
    process: Any
    connection: Connection
    ready: bool = False
    cells: list[Cell] = field(default_factory=list)  # the batch it is running
    current: int | None = None  # the batch's cell running now; None: not yet, or the capture
    started: float = 0.0  # when that began
    deadline: float = float("inf")

    def begin(self, current: int | None, limit: float | None, cells: int = 1) -> None:
        self.current, self.started = current, time.monotonic()
        self.deadline = self.started + (limit or math.inf) * cells


@dataclass
class LocalPool:
    """``jobs`` spawned worker processes with a hard time limit per cell.

    Spawned rather than forked, so that CUDA works in the workers. A worker at
    its time limit is killed and replaced; so is one that dies. Each worker
    runs ``threads`` torch threads when given, else ``threads_per_worker``.
    Cheap cells go to a worker in batches (:class:`Batcher`), whose memory
    passes share one capture. The worker says when each cell of a batch
    starts, and the time limit runs for each cell from its start (for the
    shared capture, the limit times its passes). When a worker dies or runs
    out of time in a cell of a batch, that cell gets the ``crashed`` or
    ``timeout`` row and the batch's other cells run again; in the shared
    capture, where the pass at fault is unknown, each runs again alone.
    Every row is stamped with ``node``, the machine the cells ran on. With
    ``keep_workers``, idle workers outlive ``run`` for the next call (the Ray
    executor runs one cell per call) until ``close``.
    """

    registry: Registry
    plugins: PluginConfig
    run_id: str
    jobs: int = 1
    timeout: float | None = None
    threads: int | None = None
    node: str = field(default_factory=socket.gethostname)
    keep_workers: bool = False
    max_batch: int = MAX_BATCH
    batcher: Batcher = field(init=False, repr=False)
    _requeue: list[Cell] = field(default_factory=list)  # cells of a lost batch, to run alone
    _context: Any = field(default_factory=lambda: mp.get_context("spawn"))
    _idle: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.registry, self.max_batch)

    def _start(self) -> Worker:
        threads = self.threads or threads_per_worker(self.jobs)
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=worker_main,
            args=(WorkerSetup(self.plugins, self.run_id, threads), child),
            daemon=True,
        )
        with blas_threads(threads), main_module_hidden():
            process.start()
        child.close()
        return Worker(process, parent)

    def _failure_row(self, cell: Cell, status: str, error: str, started: float) -> CellOutcome:
        row = identity_row(cell, self.registry, self.run_id)
        row.update(
            status=status, error=error, cell_time_s=time.monotonic() - started, node=self.node
        )
        return CellOutcome(row)

    def run(self, cells: Sequence[Cell], on_row: RowCallback, *, one_batch: bool = False) -> None:
        """Run ``cells``, calling ``on_row`` with each outcome. With ``one_batch`` (a Ray task's
        cells, batched by the driver), they go to the first worker as one batch."""
        pending = deque(cells)
        workers: list[Worker] = []
        for w in self._idle:  # kept from the last run; one that died idle is let go
            if w.process.is_alive():
                workers.append(w)
            else:
                self._stop(w)
        self._idle = []
        workers += [self._start() for _ in range(min(self.jobs, len(pending)) - len(workers))]
        kept: list[Worker] = []
        self.batcher.isolated.clear()  # ids of the last run's cells
        try:
            while pending or any(w.cells for w in workers):
                for w in workers:
                    if w.ready and not w.cells and pending:
                        if one_batch and not self.batcher.isolated:
                            w.cells = [*pending]
                            pending.clear()
                        else:
                            w.cells = self.batcher.take(pending)
                        # A worker that died idle cannot take it: _service reports it crashed.
                        w.begin(None, self.timeout)  # the worker says "started" at once
                        with contextlib.suppress(OSError):
                            w.connection.send(w.cells)
                next_deadline = min((w.deadline for w in workers), default=float("inf"))
                wait_for = max(0.0, min(next_deadline - time.monotonic(), 1.0))
                wait(
                    [w.connection for w in workers] + [w.process.sentinel for w in workers],
                    wait_for,
                )
                workers = [self._service(w, on_row) for w in workers]
                pending.extendleft(reversed(self._requeue))
                self._requeue = []
            if self.keep_workers:
                kept, workers = workers, []
        finally:
            for w in workers:
                self._stop(w)
            self._idle = kept

    def close(self) -> None:
        """Stop the workers kept for another ``run``."""
        for w in self._idle:
            self._stop(w)
        self._idle = []

    def _service(self, w: Worker, on_row: RowCallback) -> Worker:
        """Collect what a worker has to say; replace it if it died or ran out of time."""
        for kind, payload in self._messages(w):
            if kind == "ready":
                w.ready = True
            elif kind == "started":
                w.begin(payload, self.timeout)
            elif kind == "capture":
                w.begin(None, self.timeout, payload)
            elif kind == "rows":
                cells, w.cells, w.deadline = w.cells, [], float("inf")
                for cell, outcome in zip(cells, payload, strict=True):
                    self.batcher.observe(cell, outcome.row)
                    # Not guarded: a row that cannot be stored must stop the sweep.
                    on_row(replace(outcome, row={**outcome.row, "node": self.node}))
        if not w.cells and not w.ready and not w.process.is_alive():
            raise RuntimeError(
                f"a worker process failed to start ({signal_name(w.process.exitcode)})"
            )
        died = bool(w.cells) and not w.process.is_alive()
        late = bool(w.cells) and time.monotonic() > w.deadline
        if not (died or late):
            return w
        at_fault = w.current if w.current is not None or len(w.cells) > 1 else 0
        if at_fault is None:  # in the shared capture: which pass failed is unknown
            self.batcher.isolate(w.cells)
            self._requeue += w.cells
            return self._replace(w)
        self._requeue += w.cells[:at_fault] + w.cells[at_fault + 1 :]  # their work is lost
        if died:
            error = f"the worker process died while running the cell ({signal_name(w.process.exitcode)})"
            on_row(self._failure_row(w.cells[at_fault], CRASHED, error, w.started))
        else:
            error = f"no result within the time limit of {self.timeout:g} s; the worker was killed"
            on_row(self._failure_row(w.cells[at_fault], TIMEOUT, error, w.started))
        return self._replace(w)

    @staticmethod
    def _messages(w: Worker) -> list[tuple[str, Any]]:
        """What the worker has sent so far; a pipe broken by its death ends the list."""
        messages = []
        try:
            while w.connection.poll():
                messages.append(w.connection.recv())
        except (EOFError, OSError):
            pass
        return messages

    def _replace(self, w: Worker) -> Worker:
        self._stop(w)
        return self._start()

    @staticmethod
    def _stop(w: Worker) -> None:
        """An idle worker is asked to exit; a busy or unresponsive one is killed."""
        if w.process.is_alive() and not w.cells and w.ready:
            try:
                w.connection.send(None)
                w.process.join(timeout=2)
            except (BrokenPipeError, OSError):
                pass
        if w.process.is_alive():
            w.process.kill()
        w.process.join(timeout=5)
        w.connection.close()
