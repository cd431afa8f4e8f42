"""The task conformance kit as pytest tests: ``pytest --pyargs rbpbench.testing --rbpbench-task NAME``.

One test per task and check; the ``--rbpbench-*`` options come from
:mod:`rbpbench.testing.pytest_plugin`.
"""

from __future__ import annotations

import pytest

from rbpbench.plugins import Registry
from rbpbench.testing.pytest_plugin import task_settings
from rbpbench.testing.task_kit import resolve_task, run_task_check


def test_task_conformance(
    rbpbench_task: str,
    rbpbench_task_check: str,
    rbpbench_registry: Registry,
    pytestconfig: pytest.Config,
) -> None:
    spec = resolve_task(rbpbench_task, registry=rbpbench_registry)
    outcome = run_task_check(rbpbench_task_check, spec, task_settings(pytestconfig, rbpbench_task))
    if outcome.status == "skipped":
        pytest.skip(outcome.detail)
    if outcome.status == "failed":
        pytest.fail(f"{rbpbench_task}: {outcome.detail}", pytrace=False)
