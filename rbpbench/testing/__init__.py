"""The conformance kit: checks that a gradient method, or a task, keeps rbpbench's contract.

From Python::

    from rbpbench.testing import check_method, check_task

    report = check_method("my-method")  # raises ConformanceError listing every failure
    print(report)
    check_task("my-task", params={"steps": 50})

From the command line, through pytest (the ``--rbpbench-*`` options come from
the pytest plugin that rbpbench registers under the ``pytest11`` entry point)::

    pytest --pyargs rbpbench.testing --rbpbench-method my-method
    pytest --pyargs rbpbench.testing --rbpbench-task my-task

See docs/plugins.md for what each check asks and how to tune it.
"""

from rbpbench.testing.kit import (
    CheckOutcome,
    CheckSkipped,
    ConformanceError,
    ConformanceReport,
    KitSettings,
    check_method,
    checks_for,
    resolve_method,
    run_check,
)
from rbpbench.testing.task_kit import (
    TaskKitSettings,
    check_task,
    resolve_task,
    run_task_check,
    task_checks,
)

__all__ = [
    "CheckOutcome",
    "CheckSkipped",
    "ConformanceError",
    "ConformanceReport",
    "KitSettings",
    "TaskKitSettings",
    "check_method",
    "check_task",
    "checks_for",
    "resolve_method",
    "resolve_task",
    "run_check",
    "run_task_check",
    "task_checks",
]
