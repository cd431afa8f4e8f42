from __future__ import annotations

import gc
import math

import pytest
import torch

from rbpbench.measure import cosine, median_wall_time, peak_memory, relative_error, spectral_radius

CPU = torch.device("cpu")


def test_peak_memory_sees_a_known_allocation_and_ignores_what_was_held_before() -> None:
    held = torch.ones(4_000_000)  # 16 MB allocated before the measurement
    size = 8_000_000 * 8  # 64 MB inside it

    def allocate() -> float:
        return float(torch.ones(8_000_000, dtype=torch.float64).sum())

    figure = peak_memory(allocate, CPU)
    assert figure.method == "memray"
    assert size <= figure.peak_bytes < size + 8_000_000
    del held


class _AllocatesWhenCollected:
    """Cyclic garbage whose finalizer allocates: the kind an earlier test leaves behind."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        self.buffer = bytearray(8 << 20)


def test_peak_memory_does_not_charge_earlier_garbage_to_the_call() -> None:
    def allocate() -> float:
        objects = [[] for _ in range(30_000)]  # enough container allocations to start a collection
        return float(torch.ones(1_000_000, dtype=torch.float64).sum()) + len(objects)

    threshold = gc.get_threshold()
    gc.collect()
    gc.set_threshold(20_000)  # no collection while the profiler starts; one inside the call
    try:
        for _ in range(20):
            _AllocatesWhenCollected()
        figure = peak_memory(allocate, CPU)
    finally:
        gc.set_threshold(*threshold)
    assert 8_000_000 <= figure.peak_bytes < 8_000_000 + (4 << 20)


def test_peak_memory_reports_the_smallest_of_its_repeats() -> None:
    sizes = iter([64, 8, 32])

    def allocate() -> None:
        torch.ones(next(sizes) << 17, dtype=torch.float64)  # 64, 8, 32 MiB

    figure = peak_memory(allocate, CPU, repeats=3)
    assert (8 << 20) <= figure.peak_bytes < (9 << 20)
    with pytest.raises(ValueError, match="at least 1"):
        peak_memory(allocate, CPU, repeats=0)


def test_wall_time_repeats_short_calls_and_reports_their_median() -> None:
    calls = []
    elapsed, repeats = median_wall_time(lambda: calls.append(1), CPU, min_total_s=0.0)
    assert len(calls) == repeats == 1 and elapsed >= 0
    _, repeats = median_wall_time(lambda: calls.append(1), CPU, min_total_s=10.0, max_repeats=5)
    assert len(calls) == 1 + 5 and repeats == 5


def test_gradient_error_figures() -> None:
    ref = (torch.tensor([3.0, 0.0]), torch.tensor([4.0]))
    assert relative_error(ref, ref) == 0.0
    assert relative_error((torch.tensor([3.0, 0.0]), torch.tensor([-1.0])), ref) == pytest.approx(
        1.0
    )
    assert cosine((torch.tensor([6.0, 0.0]), torch.tensor([8.0])), ref) == pytest.approx(1.0)
    zero = (torch.zeros(2),)
    assert relative_error(zero, zero) == 0.0 and math.isinf(relative_error((torch.ones(2),), zero))


def test_spectral_radius_from_transposed_products_even_for_complex_eigenvalues() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        a = torch.randn(40, 40, generator=gen, dtype=torch.float64)
        radius = torch.linalg.eigvals(a).abs().max().item()
        estimate = spectral_radius(
            lambda v, a=a: a.T @ v, torch.zeros(40, dtype=torch.float64), iterations=400
        )
        assert estimate == pytest.approx(radius, rel=0.03)
