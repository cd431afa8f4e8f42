"""Every number a user reads about a method: wall time, peak memory, gradient error.

Time and memory are measured in separate passes, so the memory profiler's
overhead never enters a time. On the CPU peak memory comes from memray (every
allocation of the process during the call, native and Python, counted from
the start of the call); on CUDA from the caching allocator's peak counter,
reset before the call. Garbage left by earlier code is collected before each
capture; callers that need a figure robust to other noise (tests, the
conformance kit) take the smallest of several captures, since noise from the
rest of the process only ever adds bytes.
"""

from __future__ import annotations

import gc
import math
import mmap
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rbpbench import state as S
from rbpbench.state import State


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_wall_time(
    fn: Callable[[], object],
    device: torch.device,
    *,
    min_total_s: float = 0.2,
    max_repeats: int = 15,
) -> tuple[float, int]:
    """Median wall time of ``fn`` in seconds over repeats (CUDA synchronised), and the repeat count.

    Runs at least once and repeats while the total stays under ``min_total_s``,
    so millisecond-scale calls get a stable median and long calls run once.
    """
    times: list[float] = []
    while not times or (sum(times) < min_total_s and len(times) < max_repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


@dataclass(frozen=True)
class MemoryFigure:
    peak_bytes: int
    method: str  # how it was measured: "memray" or "cuda-allocator"


def peak_memory(
    fn: Callable[[], object], device: torch.device, *, repeats: int = 1
) -> MemoryFigure:
    """Peak memory allocated while ``fn`` runs, above what was held before it.

    Before each capture the cyclic garbage collector runs, so finalizers of
    objects that were garbage before ``fn`` started (and whatever they
    allocate) are not charged to ``fn``. Noise from the rest of the process
    (another thread, the interpreter growing an arena) only ever adds bytes,
    so with ``repeats`` > 1 the smallest of the captures is reported.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    return min(peak_memories([fn] * repeats, device), key=lambda m: m.peak_bytes)


def peak_memories(fns: Sequence[Callable[[], object]], device: torch.device) -> list[MemoryFigure]:
    """The peak memory of each call of ``fns`` in turn, each as :func:`peak_memory` reports it.

    On CUDA each call is measured by the caching allocator's peak counter. On
    the CPU the calls share one memray capture: starting and stopping memray
    costs 0.1-0.8 s (it patches and restores the allocation functions of every
    shared object loaded, 92 of them with a CUDA build of torch), far more than
    a cheap call. Each call runs between two marker mappings, and its figure
    counts only the allocations made between them, frees of memory allocated
    before its start ignored: exactly what a capture around that call alone
    would report (:func:`segment_peaks`). A call that raises ends the capture
    and the exception propagates; callers that must measure the others guard
    their calls.
    """
    if device.type == "cuda":
        return [_cuda_peak(fn, device) for fn in fns]
    if not fns:
        return []
    import memray

    marked = len(fns) > 1
    with tempfile.TemporaryDirectory(prefix="rbpbench-memray-") as folder:
        capture = str(Path(folder) / "capture.bin")
        gc.collect()
        with memray.Tracker(destination=memray.FileDestination(capture, overwrite=True)):
            for i, fn in enumerate(fns):
                if marked:
                    if i:
                        gc.collect()  # what it allocates falls between two calls' markers
                    _map_marker(CALL_STARTS_PAGES)
                fn()
                if marked:
                    _map_marker(CALL_ENDS_PAGES)
        reader = memray.FileReader(capture)
        if not marked:  # memray's own figure for the whole capture
            return [MemoryFigure(int(reader.metadata.peak_memory), "memray")]
        peaks = segment_peaks(reader.get_allocation_records())
    if len(peaks) != len(fns):
        raise RuntimeError(
            f"the memory capture holds {len(peaks)} marked calls, not {len(fns)}: "
            "memray did not record the marker mappings"
        )
    return [MemoryFigure(peak, "memray") for peak in peaks]


def _cuda_peak(fn: Callable[[], object], device: torch.device) -> MemoryFigure:
    gc.collect()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return MemoryFigure(torch.cuda.max_memory_allocated(device) - baseline, "cuda-allocator")


# The marker mappings around each call of a shared capture: anonymous mappings of
# sizes no allocation of a gradient computation has (prime numbers of pages, 31 MiB
# of address space that is never touched), mapped and unmapped at once.
CALL_STARTS_PAGES = 7919
CALL_ENDS_PAGES = 7927


def _map_marker(pages: int) -> None:
    mmap.mmap(-1, pages * mmap.PAGESIZE).close()


def segment_peaks(records: Iterable[Any]) -> list[int]:
    """Each marked call's peak from a memray capture's records, in order.

    The records are memray's, in the order they happened: allocations,
    deallocations, mappings and unmappings with their address and size. Within
    one call (from the start marker's mapping to the end marker's), the bytes
    held are summed as memray sums them for a whole capture: an allocation adds
    its size, freeing it (or reallocating it: memray records a free and an
    allocation) takes that size off, unmapping takes off the part of a mapping
    made in the call that it covers, and freeing memory allocated before the
    call's start takes off nothing.
    """
    from memray import AllocatorType

    simple_frees = {AllocatorType.FREE, AllocatorType.PYMALLOC_FREE}
    start_size = CALL_STARTS_PAGES * mmap.PAGESIZE
    end_size = CALL_ENDS_PAGES * mmap.PAGESIZE
    peaks: list[int] = []
    live: dict[int, int] | None = None  # address -> size, of the call in progress
    mappings: dict[int, int] = {}  # start -> length
    held = peak = 0
    for record in records:
        kind, address, size = record.allocator, record.address, record.size
        if kind == AllocatorType.MMAP and size in (start_size, end_size):
            if size == end_size and live is not None:
                peaks.append(peak)
            live = {} if size == start_size else None
            mappings, held, peak = {}, 0, 0
        elif live is None:
            continue
        elif kind in simple_frees:
            held -= live.pop(address, 0)
        elif kind == AllocatorType.MUNMAP:
            held -= _unmap(mappings, address, size)
        else:
            if kind == AllocatorType.MMAP:
                mappings[address] = size
            else:
                live[address] = size
            held += size
            peak = max(peak, held)
    return peaks


def _unmap(mappings: dict[int, int], address: int, length: int) -> int:
    """Take [address, address + length) out of ``mappings``; the bytes it covered."""
    removed = 0
    end = address + length
    for start, size in list(mappings.items()):
        stop = start + size
        low, high = max(start, address), min(stop, end)
        if low >= high:
            continue
        removed += high - low
        del mappings[start]
        if start < low:
            mappings[start] = low - start
        if high < stop:
            mappings[high] = stop - high
    return removed


# The spectral radius of J (docs/measurement.md, "Spectral radius", has the
# measurements behind these numbers). States up to DENSE_MAX_STATE numbers get
# their Jacobian written out and every eigenvalue computed; larger ones go to
# ARPACK's implicitly restarted Arnoldi on J^T v products.
DENSE_MAX_STATE = 512
SPECTRAL_PRODUCTS = 1000  # most J^T v products the Arnoldi path may take
ARNOLDI_EIGENVALUES = 4  # k: Ritz values wanted (room for +-rho and conjugate pairs)
ARNOLDI_BASIS = 40  # ncv: Krylov basis size; each restart costs at most ncv - k products
# ARPACK's relative residual test on each Ritz pair: ARNOLDI_TOLERANCE, or ten
# machine epsilons of the state's dtype where that is larger (1.2e-6 in
# float32), since products rounded to that dtype cannot get residuals lower.
ARNOLDI_TOLERANCE = 1e-10
RELAXED_TOLERANCE = 1e-6  # second ARPACK run when the first converged on nothing
FALLBACK_POWER_ITERATIONS = 100


@dataclass(frozen=True)
class SpectralEstimate:
    """An estimate of rho(J), how it was reached, and how many J^T v products it took.

    ``path`` is one of ``dense`` (every eigenvalue of the written-out J),
    ``arnoldi`` (ARPACK converged), ``arnoldi-partial`` (ARPACK ran out of its
    budget; the largest of the Ritz values that had converged),
    ``power-iteration`` (ARPACK converged on nothing, twice; the fallback), or
    ``non-finite`` (a product held NaN or inf; ``radius`` is NaN or inf).
    ``tolerance`` is ARPACK's residual tolerance on the Arnoldi paths, NaN on
    the others.
    """

    radius: float
    path: str
    products: int
    tolerance: float = math.nan


class _NonFiniteProduct(Exception):
    def __init__(self, radius: float) -> None:
        self.radius = radius


class _Products:
    """J^T v on flat float64 NumPy vectors, through ``vjp`` on states shaped like ``like``.

    Each vector is cast to the state's dtype and device for the product; the
    result comes back as float64 on the CPU. A product holding NaN or inf
    raises :class:`_NonFiniteProduct` carrying NaN (any NaN) or inf.
    """

    def __init__(self, vjp: Callable[[State], State], like: State) -> None:
        self.vjp = vjp
        self.like = like
        self.size = sum(x.numel() for x in S.as_tuple(like))
        self.count = 0

    def __call__(self, v: np.ndarray) -> np.ndarray:
        # np.array copies: the tensor must not share memory ARPACK reuses.
        flat = torch.from_numpy(np.array(v, dtype=np.float64).reshape(-1))
        state = S.tree_map(lambda x, t: x.to(t), S.unflatten(flat, self.like), self.like)
        self.count += 1
        out = S.flatten(S.tree_map(lambda x: x.detach().to("cpu", torch.float64), self.vjp(state)))
        result = out.numpy()
        if not np.isfinite(result).all():
            raise _NonFiniteProduct(math.nan if np.isnan(result).any() else math.inf)
        return result

    def start(self, seed: int) -> np.ndarray:
        """A random unit starting vector drawn from ``seed`` alone."""
        generator = torch.Generator().manual_seed(seed)
        v = torch.randn(self.size, generator=generator, dtype=torch.float64).numpy()
        return v / np.linalg.norm(v)


def spectral_radius(
    vjp: Callable[[State], State],
    like: State,
    *,
    dense_max: int = DENSE_MAX_STATE,
    products: int = SPECTRAL_PRODUCTS,
    seed: int = 0,
) -> float:
    """rho(J) from products J^T v (J^T has the eigenvalues of J); see :func:`spectral_estimate`."""
    return spectral_estimate(vjp, like, dense_max=dense_max, products=products, seed=seed).radius


def spectral_estimate(
    vjp: Callable[[State], State],
    like: State,
    *,
    dense_max: int = DENSE_MAX_STATE,
    products: int = SPECTRAL_PRODUCTS,
    seed: int = 0,
) -> SpectralEstimate:
    """rho(J): dense eigenvalues for a state of at most ``dense_max`` numbers, else Arnoldi.

    ``products`` bounds each ARPACK run of the Arnoldi path (see
    :func:`arnoldi_spectral_radius` for the fallbacks). Runs under no_grad;
    the same ``seed`` gives the same estimate.
    """
    size = sum(x.numel() for x in S.as_tuple(like))
    if size <= max(dense_max, 2):
        return dense_spectral_radius(vjp, like)
    return arnoldi_spectral_radius(vjp, like, products=products, seed=seed)


def dense_spectral_radius(vjp: Callable[[State], State], like: State) -> SpectralEstimate:
    """max |lambda| over all eigenvalues of J, its transpose built column by column in float64.

    Column i of J^T is J^T e_i: one product per state entry. The eigenvalues
    come from LAPACK (backward stable), so they are as accurate as the
    conditioning of J's eigenvalues allows.
    """
    apply = _Products(vjp, like)
    if apply.size == 0:
        return SpectralEstimate(0.0, "dense", 0)
    transposed = np.empty((apply.size, apply.size))
    unit = np.zeros(apply.size)
    with torch.no_grad():
        for i in range(apply.size):
            unit[i] = 1.0
            try:
                transposed[:, i] = apply(unit)
            except _NonFiniteProduct as exc:
                return SpectralEstimate(exc.radius, "non-finite", apply.count)
            unit[i] = 0.0
    radius = float(np.abs(np.linalg.eigvals(transposed)).max())
    return SpectralEstimate(radius, "dense", apply.count)


def arnoldi_spectral_radius(
    vjp: Callable[[State], State],
    like: State,
    *,
    products: int = SPECTRAL_PRODUCTS,
    seed: int = 0,
) -> SpectralEstimate:
    """max |Ritz value| from ARPACK's implicitly restarted Arnoldi on J^T (``which='LM'``).

    ARNOLDI_EIGENVALUES Ritz values are wanted from a basis of ARNOLDI_BASIS
    vectors, restarted at most as often as fits in ``products`` products, to a
    relative residual of :func:`arnoldi_tolerance`. If ARPACK runs out of
    restarts, the largest Ritz value that had converged is returned
    (``arnoldi-partial``); if none had, ARPACK runs once more from the same
    start at RELAXED_TOLERANCE (clustered dominant eigenvalues converge slowly
    to a tight residual); if that converges on nothing either, the
    power-iteration estimate is returned. At most 2 ``products`` +
    FALLBACK_POWER_ITERATIONS products in all.
    """
    apply = _Products(vjp, like)
    n = apply.size
    if n < 3:  # ARPACK needs k < n - 1
        return dense_spectral_radius(vjp, like)
    k = min(ARNOLDI_EIGENVALUES, n - 2)
    # ARPACK takes one product to start, ncv to build the basis, and at most
    # ncv - k per restart after that; the basis shrinks to fit a small budget.
    ncv = min(ARNOLDI_BASIS, n, (products - 1 + k) // 2)
    if ncv < k + 2:
        raise ValueError(f"products must be at least {k + 5} for this state, got {products}")
    restarts = (products - 1 - ncv) // (ncv - k)
    tolerances = [arnoldi_tolerance(like)]
    if tolerances[0] < RELAXED_TOLERANCE:
        tolerances.append(RELAXED_TOLERANCE)
    with torch.no_grad():
        for tolerance in tolerances:
            try:
                found = _arpack(apply, k=k, ncv=ncv, restarts=restarts, tol=tolerance, seed=seed)
            except _NonFiniteProduct as exc:
                return SpectralEstimate(exc.radius, "non-finite", apply.count)
            if found is not None:
                radius, path = found
                return SpectralEstimate(radius, path, apply.count, tolerance)
    fallback = power_spectral_radius(vjp, like, iterations=FALLBACK_POWER_ITERATIONS, seed=seed)
    return SpectralEstimate(fallback.radius, fallback.path, apply.count + fallback.products)


def _arpack(
    apply: _Products, *, k: int, ncv: int, restarts: int, tol: float, seed: int
) -> tuple[float, str] | None:
    """(radius, path) from one ARPACK run, or None when no Ritz value converged."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigs

    start = apply.count
    try:
        values = eigs(
            LinearOperator((apply.size, apply.size), matvec=apply, dtype=np.float64),
            k=k,
            which="LM",
            ncv=ncv,
            maxiter=restarts,
            tol=tol,
            v0=apply.start(seed),
            return_eigenvectors=False,
        )
        return float(np.abs(values).max()), "arnoldi"
    except ArpackNoConvergence as exc:
        if len(exc.eigenvalues):
            return float(np.abs(exc.eigenvalues).max()), "arnoldi-partial"
    except ArpackError:
        # ARPACK's first act is v0 <- J^T v0; it stops there when that is
        # zero, which for a random v0 means J = 0.
        if apply.count == start + 1:
            return 0.0, "arnoldi"
    return None


def arnoldi_tolerance(like: State) -> float:
    """ARNOLDI_TOLERANCE, or ten epsilons of the state's least precise floating dtype."""
    eps = max(
        (torch.finfo(x.dtype).eps for x in S.as_tuple(like) if x.is_floating_point()), default=0.0
    )
    return max(ARNOLDI_TOLERANCE, 10 * eps)


def power_spectral_radius(
    vjp: Callable[[State], State], like: State, *, iterations: int, seed: int = 0
) -> SpectralEstimate:
    """Power iteration on J^T: the geometric mean of the growth factors over the second half.

    That mean converges to rho(J) even when the dominant eigenvalues form a
    complex pair, where plain power iteration would not settle on a vector;
    but slowly, and from above on strongly non-normal J (the transient growth
    of ||(J^T)^k v|| has not died out), which is why it is only the fallback.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    apply = _Products(vjp, like)
    v = apply.start(seed)
    logs: list[float] = []
    with torch.no_grad():
        for _ in range(iterations):
            try:
                w = apply(v)
            except _NonFiniteProduct as exc:
                return SpectralEstimate(exc.radius, "non-finite", apply.count)
            size = float(torch.linalg.vector_norm(torch.from_numpy(w)))  # not NumPy's BLAS
            if size == 0.0:
                return SpectralEstimate(0.0, "power-iteration", apply.count)
            logs.append(math.log(size))
            v = w / size
    tail = logs[len(logs) // 2 :]
    return SpectralEstimate(math.exp(sum(tail) / len(tail)), "power-iteration", apply.count)


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])


def relative_error(estimate: Sequence[Tensor], reference: Sequence[Tensor]) -> float:
    """||estimate - reference|| / ||reference|| over all tensors together."""
    est = _flat(estimate)
    ref = _flat(reference).to(est.device)
    denominator = float(torch.linalg.vector_norm(ref))
    if denominator == 0.0:
        return 0.0 if float(torch.linalg.vector_norm(est)) == 0.0 else math.inf
    return float(torch.linalg.vector_norm(est - ref)) / denominator


def cosine(estimate: Sequence[Tensor], reference: Sequence[Tensor]) -> float:
    est = _flat(estimate)
    ref = _flat(reference).to(est.device)
    denominator = float(torch.linalg.vector_norm(est) * torch.linalg.vector_norm(ref))
    return float(est @ ref) / denominator if denominator else math.nan


def all_finite(*groups: Sequence[Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for group in groups for t in group)
