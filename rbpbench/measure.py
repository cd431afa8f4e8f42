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
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    return min((_peak_once(fn, device) for _ in range(repeats)), key=lambda m: m.peak_bytes)


def _peak_once(fn: Callable[[], object], device: torch.device) -> MemoryFigure:
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return MemoryFigure(torch.cuda.max_memory_allocated(device) - baseline, "cuda-allocator")
    import memray

    with tempfile.TemporaryDirectory(prefix="rbpbench-memray-") as folder:
        capture = Path(folder) / "capture.bin"
        with memray.Tracker(destination=memray.FileDestination(str(capture), overwrite=True)):
            fn()
        return MemoryFigure(int(memray.FileReader(str(capture)).metadata.peak_memory), "memray")


def spectral_radius(
    vjp: Callable[[State], State], like: State, *, iterations: int = 50, seed: int = 0
) -> float:
    """Estimate of the spectral radius of J from products J^T v (power iteration).

    The geometric mean of the growth factors over the second half of the
    iterations converges to rho(J) even when the dominant eigenvalues form a
    complex pair, where plain power iteration would not settle on a vector.
    """
    generator = torch.Generator().manual_seed(seed)
    v = S.tree_map(
        lambda x: torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x), like
    )
    v = S.scale(v, 1 / S.norm(v))
    logs: list[float] = []
    with torch.no_grad():
        for _ in range(iterations):
            w = vjp(v)
            size = float(S.norm(w))
            if size == 0.0 or not math.isfinite(size):
                return size
            logs.append(math.log(size))
            v = S.scale(w, 1 / size)
    tail = logs[len(logs) // 2 :]
    return math.exp(sum(tail) / len(tail))


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
