"""How the local pool shares the cores between its workers, and batches cheap cells."""

from __future__ import annotations

import time
from collections import deque

import pytest

from rbpbench.cells import Cell
from rbpbench.executors import (
    BATCH_TARGET_S,
    ESTIMATE_WINDOW,
    Batcher,
    LocalPool,
    threads_per_worker,
    usable_cores,
)
from rbpbench.plugins import PluginConfig, load_registry


def test_workers_share_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_worker(1) == usable_cores()
    assert threads_per_worker(usable_cores() * 4) == 1


@pytest.mark.parametrize(("value", "jobs", "expected"), [("3", 2, 3), ("1", 1, 1)])
def test_omp_num_threads_sets_each_workers_threads(
    monkeypatch: pytest.MonkeyPatch, value: str, jobs: int, expected: int
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert threads_per_worker(jobs) == expected


@pytest.mark.parametrize("value", ["", "0", "four", "2,1"])
def test_unusable_omp_num_threads_falls_back_to_sharing(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert threads_per_worker(1) == usable_cores()


def _blas_threads_seen(_queue) -> None:
    import os

    _queue.put(os.environ.get("OPENBLAS_NUM_THREADS"))


def test_spawned_workers_get_as_many_blas_threads_as_torch_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import multiprocessing as mp

    from rbpbench.executors import blas_threads

    context = mp.get_context("spawn")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    for given, expected in ((None, "3"), ("5", "5")):
        if given is not None:
            monkeypatch.setenv("OPENBLAS_NUM_THREADS", given)
        queue = context.Queue()
        with blas_threads(3):
            process = context.Process(target=_blas_threads_seen, args=(queue,))
            process.start()
        process.join(60)
        assert queue.get(timeout=60) == expected
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    with blas_threads(2):
        pass
    import os

    assert "OPENBLAS_NUM_THREADS" not in os.environ  # the driver's environment is left as it was


def seeds(count: int, task: str = "contractive-rnn", device: str = "cpu") -> deque[Cell]:
    return deque(Cell(task, "bptt", 2, seed, device) for seed in range(count))


def ok(seconds: float) -> dict[str, object]:
    return {"status": "ok", "cell_time_s": seconds}


def test_a_cell_of_unknown_cost_runs_alone_and_cheap_ones_share_a_batch(registry) -> None:
    batcher = Batcher(registry, max_batch=8)
    pending = seeds(30)
    (first,) = batcher.take(pending)
    assert first.seed == 0
    batcher.observe(first, ok(BATCH_TARGET_S / 3))
    assert [c.seed for c in batcher.take(pending)] == [1, 2, 3]  # within the target, in order
    for _ in range(ESTIMATE_WINDOW):
        batcher.observe(first, ok(0.001))
    assert [c.seed for c in batcher.take(pending)] == list(range(4, 12))  # at most max_batch
    batcher.observe(first, ok(2 * BATCH_TARGET_S))
    assert len(batcher.take(pending)) == 8  # the median of the last cells: one slow cell is noise
    for _ in range(ESTIMATE_WINDOW):
        batcher.observe(first, ok(2 * BATCH_TARGET_S))
    assert len(batcher.take(pending)) == 1
    assert batcher.sent == {1: 2, 3: 1, 8: 2}


def test_a_failed_cell_teaches_nothing_of_the_cost(registry) -> None:
    batcher = Batcher(registry)
    pending = seeds(5)
    cell = pending[0]
    batcher.observe(cell, {"status": "error", "cell_time_s": 0.01})
    batcher.observe(cell, {"status": "ok", "cell_time_s": float("nan")})
    assert batcher.estimate(cell) is None


def test_a_batch_stops_at_a_cell_of_another_kind(registry) -> None:
    batcher = Batcher(registry)
    pending = seeds(3)
    other = Cell("contractive-rnn", "tbptt", 2, 0, "cpu")
    pending.insert(2, other)
    batcher.observe(pending[0], ok(0.01))
    assert [c.seed for c in batcher.take(pending)] == [0, 1]  # tbptt's cost is unknown
    batcher.observe(other, ok(0.01))
    assert len(batcher.take(pending)) == 2


def test_training_tasks_cuda_cells_and_isolated_cells_run_alone(registry) -> None:
    batcher = Batcher(registry)
    for pending in (seeds(3, task="hopfield"), seeds(3, device="cuda")):
        batcher.observe(pending[0], ok(0.01))
        assert batcher.estimate(pending[0]) is None and len(batcher.take(pending)) == 1
    pending = seeds(3)
    batcher.observe(pending[0], ok(0.01))
    batcher.isolate([pending[1]])
    assert len(batcher.take(pending)) == 1 and len(batcher.take(pending)) == 1
    assert len(batcher.take(pending)) == 1  # the last one: nothing left to join
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(registry, max_batch=0)


def batch_of_five(method: str, timeout: float) -> tuple[LocalPool, list[dict[str, object]]]:
    """Five cheap cells of ``method`` sent to one worker as one batch; their rows."""
    plugins = PluginConfig(modules=("tests.faulty_methods",))
    pool = LocalPool(load_registry(plugins), plugins, "run", jobs=1, timeout=timeout)
    cells = [Cell("contractive-rnn", method, 1, seed, "cpu", (("steps", 10),)) for seed in range(5)]
    pool.batcher.observe(cells[0], ok(0.01))  # as if one had run: the five share a batch
    rows: list[dict[str, object]] = []
    try:
        pool.run(cells, lambda outcome: rows.append(outcome.row))
    finally:
        pool.close()
    return pool, rows


@pytest.mark.slow
def test_a_cell_that_kills_its_batch_s_worker_is_the_only_crashed_row() -> None:
    pool, rows = batch_of_five("dies-on-seed-2", timeout=120)
    statuses = {r["seed"]: r["status"] for r in rows}
    assert statuses == {0: "ok", 1: "ok", 2: "crashed", 3: "ok", 4: "ok"}
    assert pool.batcher.sent == {5: 1, 4: 1}  # the other four ran again, in a batch
    crashed = next(r for r in rows if r["seed"] == 2)
    assert "killed by SIGKILL" in str(crashed["error"])


@pytest.mark.slow
def test_a_cell_that_hangs_in_a_batch_times_out_once_from_its_own_start() -> None:
    started = time.monotonic()
    pool, rows = batch_of_five("hangs-on-seed-2", timeout=4)
    statuses = {r["seed"]: r["status"] for r in rows}
    assert statuses == {0: "ok", 1: "ok", 2: "timeout", 3: "ok", 4: "ok"}
    assert pool.batcher.sent == {5: 1, 4: 1}
    hung = next(r for r in rows if r["seed"] == 2)
    assert "time limit of 4 s" in str(hung["error"])
    assert 4 <= float(hung["cell_time_s"]) < 8  # from the cell's start, not the batch's
    assert time.monotonic() - started < 60  # not the batch's five limits, nor twice


@pytest.mark.slow
def test_a_death_in_the_shared_capture_reruns_each_cell_of_the_batch_alone() -> None:
    pool, rows = batch_of_five("dies-counted-on-seed-2", timeout=120)
    statuses = {r["seed"]: r["status"] for r in rows}
    assert statuses == {0: "ok", 1: "ok", 2: "crashed", 3: "ok", 4: "ok"}
    assert pool.batcher.sent == {5: 1, 1: 5}  # which pass killed it was unknown
