from __future__ import annotations

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
