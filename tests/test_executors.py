"""How the local pool shares the cores between its workers."""

from __future__ import annotations

import pytest

from rbpbench.executors import threads_per_worker, usable_cores


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
