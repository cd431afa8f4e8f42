"""The 95% intervals: Student t over seeds for a mean, Wilson for a success rate."""

from __future__ import annotations

import math

import pytest

from rbpbench.stats import t_interval, wilson_interval

T_975_2DF = 4.302652729749462  # the 0.975 quantile of Student's t with 2 degrees of freedom


def test_the_mean_of_three_seeds_has_the_t_interval_with_two_degrees_of_freedom() -> None:
    agg = t_interval([1.0, 2.0, 3.0])
    assert agg.mean == 2.0 and agg.n == agg.cells == 3
    assert agg.half_width == pytest.approx(T_975_2DF * 1.0 / math.sqrt(3))
    assert agg.low == pytest.approx(2.0 - agg.half_width)


def test_missing_and_non_finite_values_are_left_out_but_the_cells_are_counted() -> None:
    agg = t_interval([1.0, math.nan, 3.0, math.inf, None], cells=5)  # type: ignore[list-item]
    assert (agg.mean, agg.n, agg.cells) == (2.0, 2, 5)
    one = t_interval([4.0], cells=3)
    assert one.mean == 4.0 and not one.has_interval
    none = t_interval([], cells=2)
    assert none.n == 0 and math.isnan(none.mean)


def test_a_success_rate_has_the_wilson_interval() -> None:
    agg = wilson_interval(2, 3)
    assert agg.mean == pytest.approx(2 / 3)
    # the 95% Wilson score interval of 2 successes in 3 trials
    assert (agg.low, agg.high) == pytest.approx((0.2077, 0.9385), abs=1e-4)
    assert wilson_interval(3, 3).high == 1.0 and wilson_interval(0, 3).low == pytest.approx(0.0)
