from __future__ import annotations

import gc
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from rbpbench import measure
from rbpbench import state as S
from rbpbench.measure import (
    arnoldi_spectral_radius,
    cosine,
    median_wall_time,
    peak_memory,
    power_spectral_radius,
    relative_error,
    spectral_estimate,
    spectral_radius,
)

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


def test_calls_sharing_a_capture_get_the_figures_of_captures_of_their_own() -> None:
    held: list[Tensor] = []

    def allocates() -> None:
        torch.ones(8_000_000, dtype=torch.float64)  # 64 MB

    def frees_what_was_held_then_allocates() -> None:
        held.pop()  # 32 MB freed: memory held before the call is no saving of the call's
        torch.ones(2_000_000, dtype=torch.float64)  # 16 MB

    def grows() -> None:
        buffer = bytearray()
        for _ in range(300):
            buffer += bytes(10_000)  # reallocated as it grows: memray sees a free and a new block

    def nothing() -> None:
        pass

    calls = [allocates, frees_what_was_held_then_allocates, grows, nothing, allocates]
    held += [torch.ones(8_000_000) for _ in range(3)]
    for call in calls:  # warm-up
        call()
    alone = [peak_memory(call, CPU).peak_bytes for call in calls]
    shared = [figure.peak_bytes for figure in measure.peak_memories(calls, CPU)]
    assert 16_000_000 <= alone[1] < 17_000_000 and 3_000_000 <= alone[2] < 7_000_000
    for a, s in zip(alone, shared, strict=True):
        assert abs(a - s) <= 64 << 10, (alone, shared)


def test_segment_peaks_sums_each_call_as_memray_sums_a_capture() -> None:
    from types import SimpleNamespace

    from memray import AllocatorType as A

    page = measure.mmap.PAGESIZE
    start, end = measure.CALL_STARTS_PAGES * page, measure.CALL_ENDS_PAGES * page

    def r(kind: A, address: int, size: int = 0) -> SimpleNamespace:
        return SimpleNamespace(allocator=kind, address=address, size=size)

    records = [
        r(A.MALLOC, 1, 10**6),  # before the first call: not the call's
        r(A.MMAP, 50, start), r(A.MUNMAP, 50, start),
        r(A.MALLOC, 1, 100), r(A.MALLOC, 2, 50), r(A.FREE, 1),  # 50 held
        r(A.FREE, 99),  # memory from before the call: takes nothing off
        r(A.FREE, 2), r(A.REALLOC, 3, 80),  # a realloc: 80 held
        r(A.MMAP, 10_000, 1_000),  # 1,080 held: the peak
        r(A.MUNMAP, 10_500, 200),  # a hole in the middle of the mapping: 880
        r(A.MUNMAP, 9_000, 5_000),  # the rest of it, and more: 80
        r(A.MMAP, 60, end), r(A.MUNMAP, 60, end),
        r(A.MALLOC, 4, 10**6),  # between two calls
        r(A.MMAP, 70, start), r(A.MUNMAP, 70, start),
        r(A.FREE, 3),  # allocated in the call before
        r(A.PYMALLOC_MALLOC, 5, 10), r(A.PYMALLOC_FREE, 5), r(A.CALLOC, 6, 7),
        r(A.MMAP, 80, end), r(A.MUNMAP, 80, end),
    ]  # fmt: skip
    assert measure.segment_peaks(records) == [1_080, 10]


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


def non_normal(rho: float, seed: int = 0, size: int = 24) -> Tensor:
    """Upper triangular, eigenvalues linspace(-rho, rho) in random order, norm about 7."""
    gen = torch.Generator().manual_seed(seed)
    diag = torch.linspace(-rho, rho, size, dtype=torch.float64)[torch.randperm(size, generator=gen)]
    upper = torch.triu(torch.randn(size, size, generator=gen, dtype=torch.float64), 1)
    return torch.diag(diag) + upper


def orthogonal(size: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=gen, dtype=torch.float64))
    return q


def transposed_product(a: Tensor) -> Callable[[Tensor], Tensor]:
    """The vjp of the step h <- A h: v -> A^T v."""
    return lambda v: a.T @ v


RHOS = [0.9, 0.99, 0.999]
ACCURACY = 2e-4  # what the spectral_radius column promises on these problems


@pytest.mark.parametrize("rho", RHOS)
def test_dense_path_is_exact_on_non_normal_matrices(rho: float) -> None:
    a = non_normal(rho)
    assert torch.linalg.matrix_norm(a, 2) > 7  # power iteration overestimates by 1.2e-3 here
    like = torch.zeros(24, dtype=torch.float64)
    estimate = spectral_estimate(transposed_product(a), like, seed=0)
    assert estimate.path == "dense" and estimate.products == 24
    assert abs(estimate.radius - rho) < ACCURACY
    # The same spectrum hidden by an orthogonal similarity (LAPACK cannot spot
    # a permuted triangle): backward-stable eigenvalues are still exact to 1e-10.
    q = orthogonal(24, seed=1)
    assert spectral_radius(transposed_product(q @ a @ q.T), like) == pytest.approx(rho, abs=1e-10)


@pytest.mark.parametrize("rho", RHOS)
def test_arnoldi_path_is_exact_when_the_basis_spans_the_state(rho: float) -> None:
    estimate = arnoldi_spectral_radius(
        transposed_product(non_normal(rho)), torch.zeros(24, dtype=torch.float64), seed=0
    )
    assert estimate.path == "arnoldi"
    assert estimate.radius == pytest.approx(rho, abs=1e-10)


def batched(blocks: Tensor) -> Callable[[Tensor], Tensor]:
    """The vjp of h <- A_b h applied to each row b of a (B, n) state, as in a batched RNN."""
    return lambda v: torch.einsum("bij,bi->bj", blocks, v)


@pytest.mark.parametrize("rho", RHOS)
def test_arnoldi_path_above_the_dense_threshold_on_a_batch_of_non_normal_blocks(rho: float) -> None:
    blocks = torch.stack([non_normal(rho, seed) for seed in range(30)])  # state of 720 numbers
    like = torch.zeros(30, 24, dtype=torch.float64)
    assert like.numel() > measure.DENSE_MAX_STATE
    estimate = spectral_estimate(batched(blocks), like, seed=0)
    assert estimate.path == "arnoldi" and estimate.products <= measure.SPECTRAL_PRODUCTS
    assert abs(estimate.radius - rho) < ACCURACY


@pytest.mark.parametrize("rho", RHOS)
def test_arnoldi_path_on_a_dense_non_normal_matrix(rho: float) -> None:
    """Twenty non-normal blocks mixed by an orthogonal similarity: no structure left to exploit."""
    full = torch.block_diag(*[non_normal(rho, seed) for seed in range(20)])
    q = orthogonal(480, seed=1)
    estimate = arnoldi_spectral_radius(
        transposed_product(q @ full @ q.T), torch.zeros(480, dtype=torch.float64), seed=0
    )
    assert estimate.path == "arnoldi" and estimate.products <= measure.SPECTRAL_PRODUCTS
    assert abs(estimate.radius - rho) < ACCURACY


def test_a_complex_conjugate_dominant_pair_is_found_by_both_paths() -> None:
    """Radius 0.95 from a rotation block at angle 1 in a non-normal matrix; the rest within 0.7."""
    size, radius = 60, 0.95
    gen = torch.Generator().manual_seed(3)
    a = torch.triu(torch.randn(size, size, generator=gen, dtype=torch.float64), 1)
    a *= 7 / torch.linalg.matrix_norm(a, 2)
    a += torch.diag(torch.linspace(-0.7, 0.7, size, dtype=torch.float64))
    c, s = math.cos(1.0), math.sin(1.0)
    a[:2, :2] = radius * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    q = orthogonal(size, seed=4)
    product = transposed_product(q @ a @ q.T)
    like = torch.zeros(size, dtype=torch.float64)
    dense = spectral_estimate(product, like)
    arnoldi = arnoldi_spectral_radius(product, like)
    assert dense.path == "dense" and arnoldi.path == "arnoldi"
    # The pair is ill-conditioned enough that rounding Q A Q^T moves it by 6e-8.
    assert dense.radius == pytest.approx(radius, abs=1e-6)
    assert arnoldi.radius == pytest.approx(dense.radius, abs=1e-10)
    # The power-iteration fallback also handles the pair, if slowly.
    assert power_spectral_radius(product, like, iterations=400).radius == pytest.approx(
        radius, rel=0.03
    )


def test_a_tuple_state_in_float32_is_flattened_and_cast_for_each_product() -> None:
    """A state of two (4, 6) tensors, as weights and velocities in the hyperparameter task."""
    like = (torch.zeros(4, 6), torch.zeros(4, 6))
    a = torch.randn(48, 48, generator=torch.Generator().manual_seed(5)) / 7
    seen = []

    def vjp(v: S.State) -> S.State:
        seen.append(tuple((x.shape, x.dtype) for x in S.as_tuple(v)))
        return S.unflatten(a.T @ S.flatten(v), v)

    radius = torch.linalg.eigvals(a.to(torch.float64)).abs().max().item()
    assert spectral_radius(vjp, like) == pytest.approx(radius, rel=1e-6)
    arnoldi = arnoldi_spectral_radius(vjp, like)
    assert arnoldi.radius == pytest.approx(radius, rel=1e-6)
    assert arnoldi.tolerance == 10 * torch.finfo(torch.float32).eps  # no tighter than float32
    assert set(seen) == {((torch.Size([4, 6]), torch.float32),) * 2}


def test_a_zero_jacobian_has_radius_zero_on_every_path() -> None:
    def zero(v: Tensor) -> Tensor:
        return torch.zeros_like(v)

    assert spectral_radius(zero, torch.zeros(10)) == 0.0
    estimate = spectral_estimate(zero, torch.zeros(3, 300))
    assert (estimate.radius, estimate.path, estimate.products) == (0.0, "arnoldi", 1)
    assert power_spectral_radius(zero, torch.zeros(5), iterations=10).radius == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_product_gives_a_non_finite_estimate_instead_of_an_error(bad: float) -> None:
    def vjp(v: Tensor) -> Tensor:
        return torch.full_like(v, bad)

    for like in (torch.zeros(10), torch.zeros(1000)):
        estimate = spectral_estimate(vjp, like)
        assert estimate.path == "non-finite" and estimate.products == 1
        assert (math.isnan if math.isnan(bad) else math.isinf)(estimate.radius)
    assert math.isnan(power_spectral_radius(vjp, torch.zeros(5), iterations=3).radius) == (
        math.isnan(bad)
    )


def test_the_estimate_depends_on_the_seed_alone() -> None:
    blocks = torch.stack([non_normal(0.99, seed) for seed in range(30)])
    like = torch.zeros(30, 24, dtype=torch.float64)
    first = spectral_estimate(batched(blocks), like, seed=7)
    assert spectral_estimate(batched(blocks), like, seed=7) == first


def test_arpack_running_out_of_restarts_falls_back_as_documented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import scipy.sparse.linalg

    a = non_normal(0.9, size=100)
    like = torch.zeros(100, dtype=torch.float64)
    found = np.array([0.5 + 0.1j, -0.8])

    def partial(*args: object, **kwargs: object) -> None:
        raise scipy.sparse.linalg.ArpackNoConvergence("no convergence", found, None)

    monkeypatch.setattr(scipy.sparse.linalg, "eigs", partial)
    estimate = arnoldi_spectral_radius(transposed_product(a), like)
    assert (estimate.radius, estimate.path) == (0.8, "arnoldi-partial")
    assert estimate.tolerance == measure.ARNOLDI_TOLERANCE

    found = np.array([])  # both ARPACK runs converge on nothing
    estimate = arnoldi_spectral_radius(transposed_product(a), like, seed=2)
    power = power_spectral_radius(
        transposed_product(a), like, iterations=measure.FALLBACK_POWER_ITERATIONS, seed=2
    )
    assert estimate.path == "power-iteration" and estimate.radius == power.radius
    assert estimate.products == power.products == measure.FALLBACK_POWER_ITERATIONS


def test_the_arnoldi_budget_bounds_each_arpack_run() -> None:
    """Also on a 300 x 300 triangle (norm 35) where ARPACK never converges and the fallback runs."""
    hard = non_normal(0.999, size=300)
    blocks = torch.stack([non_normal(0.999, seed) for seed in range(30)])
    problems = [
        (transposed_product(hard), torch.zeros(300, dtype=torch.float64)),
        (batched(blocks), torch.zeros(30, 24, dtype=torch.float64)),
    ]
    for vjp, like in problems:
        for budget in (9, 60, 200):
            estimate = arnoldi_spectral_radius(vjp, like, products=budget)
            if estimate.path == "power-iteration":  # two ARPACK runs, then the fallback
                assert estimate.products <= 2 * budget + measure.FALLBACK_POWER_ITERATIONS
            elif estimate.tolerance == measure.ARNOLDI_TOLERANCE:
                assert estimate.products <= budget
            else:
                assert estimate.products <= 2 * budget
    with pytest.raises(ValueError, match="at least 9"):
        arnoldi_spectral_radius(vjp, like, products=8)


def test_a_clustered_spectrum_gets_a_second_run_at_the_relaxed_tolerance() -> None:
    """Ten near-copies of a symmetric matrix, as hopfield's batch of ten images gives.

    Their dominant eigenvalues form a tight cluster, which 300 products do not
    resolve to a residual of 1e-10; the second run at 1e-6 does.
    """
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(150, 150, generator=gen, dtype=torch.float64)
    w = (g + g.T) / 600**0.5
    scales = 0.9 + 0.1 * torch.rand(10, 150, generator=gen, dtype=torch.float64)
    radius = max(
        torch.linalg.eigvalsh(r.sqrt()[:, None] * w * r.sqrt()[None, :]).abs().max().item()
        for r in scales
    )
    like = torch.zeros(10, 150, dtype=torch.float64)
    estimate = arnoldi_spectral_radius(lambda v: scales * (v @ w), like, products=300)
    assert estimate.tolerance == measure.RELAXED_TOLERANCE and 300 < estimate.products <= 600
    assert estimate.radius == pytest.approx(radius, abs=1e-9)
    assert arnoldi_spectral_radius(lambda v: scales * (v @ w), like).tolerance == 1e-10
