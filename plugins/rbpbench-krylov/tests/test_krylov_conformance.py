"""The three Krylov methods pass rbpbench's conformance kit."""

from __future__ import annotations

import pytest

from rbpbench import check_method


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gmres-rbp", "bicgstab-rbp", "lsqr-rbp"])
def test_the_krylov_methods_pass_the_conformance_kit(name: str) -> None:
    report = check_method(name)  # raises ConformanceError naming every failure
    assert report.ok and {o.status for o in report.outcomes} == {"passed"}, str(report)


@pytest.mark.slow
def test_restarted_gmres_with_a_small_restart_passes_too() -> None:
    assert check_method("gmres-rbp", params={"restart": 10}, truncation=2000).ok
