"""rbpbench's conformance kit on torchdeq's two methods.

torchdeq-ift passes every check, with each of its backward solvers.
torchdeq-phantom keeps the contract (result, determinism, problem untouched,
memory flat in T) and, at the kit's K = 1000, passes the exact-gradient
checks too: with tau = 1 it back-propagates K steps from h*, a truncated
Neumann series, and on contractive-rnn the contraction at the fixed point is
fast enough (plain iteration reaches 1e-12 in 334 steps at spectral norm
0.99) for 1000 terms to reach the exact gradient. It is biased at finite K:
at K = 50 it fails at spectral norms 0.9 and 0.99 (measured 1.45e-4 and
2.33e-2, the errors of torchdeq-ift with fixed-point iteration at K = 50).
"""

from __future__ import annotations

import pytest

from rbpbench import check_method

EXACT = ["exact-gradient-rho0.5", "exact-gradient-rho0.9", "exact-gradient-rho0.99"]


@pytest.mark.slow
def test_torchdeq_ift_passes_the_conformance_kit() -> None:
    report = check_method("torchdeq-ift")  # raises ConformanceError naming every failure
    assert report.ok and {o.status for o in report.outcomes} == {"passed"}, str(report)


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_torchdeq_ift_passes_with_its_other_backward_solvers(solver: str) -> None:
    assert check_method("torchdeq-ift", params={"solver": solver}).ok


@pytest.mark.slow
def test_torchdeq_phantom_passes_the_conformance_kit_at_its_default_k() -> None:
    report = check_method("torchdeq-phantom")
    assert report.ok and {o.status for o in report.outcomes} == {"passed"}, str(report)


@pytest.mark.slow
def test_torchdeq_phantom_is_biased_at_small_k() -> None:
    report = check_method("torchdeq-phantom", truncation=50, checks=EXACT, raise_on_failure=False)
    status = {o.check: o.status for o in report.outcomes}
    assert status == dict(zip(EXACT, ["passed", "failed", "failed"], strict=True)), str(report)
