"""The conformance kit as pytest tests: ``pytest --pyargs rbpbench.testing --rbpbench-method NAME``.

One test per method and check; the ``--rbpbench-*`` options and the fixtures
come from :mod:`rbpbench.testing.pytest_plugin`.
"""

from __future__ import annotations

import pytest

from rbpbench.plugins import Registry
from rbpbench.testing.kit import resolve_method, run_check
from rbpbench.testing.pytest_plugin import method_settings


def test_conformance(
    rbpbench_method: str,
    rbpbench_check: str,
    rbpbench_registry: Registry,
    pytestconfig: pytest.Config,
) -> None:
    spec = resolve_method(rbpbench_method, registry=rbpbench_registry)
    outcome = run_check(rbpbench_check, spec, method_settings(pytestconfig, rbpbench_method))
    if outcome.status == "skipped":
        pytest.skip(outcome.detail)
    if outcome.status == "failed":
        pytest.fail(f"{rbpbench_method}: {outcome.detail}", pytrace=False)
