"""Aggregates over seeds: a mean with a 95% Student-t interval, a rate with a Wilson interval.

Every figure the leaderboard and the report print comes from here, so the
statistics are stated once:

- a metric (gradient error, accuracy, time, memory, ...) is the mean of the
  cells that have a finite value, with the 95% confidence interval
  ``mean ± t(0.975, n - 1) · sd / sqrt(n)`` of the Student t distribution
  over those n cells (seeds); with one value there is no interval;
- a success rate counts every cell, a failed one as a failure, and gives the
  95% Wilson score interval of the binomial proportion (a t interval would
  claim certainty when all trials agree).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Aggregate:
    """A figure over the cells of one method at one truncation.

    ``n`` counts the values that went into ``mean`` and ``cells`` the cells
    there were: ``n < cells`` when some cells have no figure (failed,
    diverged to NaN). ``low`` and ``high`` bound the 95% interval; both are
    NaN when there is none (fewer than two values).
    """

    mean: float
    low: float
    high: float
    n: int
    cells: int
    kind: str = "t"  # "t": mean with a t interval; "wilson": a proportion

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_interval(values: Iterable[float], cells: int | None = None) -> Aggregate:
    """Mean and 95% t interval of the finite values; ``cells`` defaults to their number."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    cells = n if cells is None else cells
    if n == 0:
        return Aggregate(math.nan, math.nan, math.nan, 0, cells)
    mean = math.fsum(finite) / n
    if n == 1:
        return Aggregate(mean, math.nan, math.nan, 1, cells)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return Aggregate(mean, mean - half, mean + half, n, cells)


def wilson_interval(hits: int, cells: int) -> Aggregate:
    """Proportion ``hits / cells`` with its 95% Wilson score interval."""
    if cells == 0:
        return Aggregate(math.nan, math.nan, math.nan, 0, 0, "wilson")
    z = float(stats.norm.ppf(0.5 + CONFIDENCE / 2))
    p = hits / cells
    denominator = 1 + z * z / cells
    centre = (p + z * z / (2 * cells)) / denominator
    half = z * math.sqrt(p * (1 - p) / cells + z * z / (4 * cells * cells)) / denominator
    return Aggregate(p, max(0.0, centre - half), min(1.0, centre + half), cells, cells, "wilson")
