"""The conformance kit: checks that a gradient method keeps rbpbench's contract.

From Python::

    from rbpbench.testing import check_method

    report = check_method("my-method")  # raises ConformanceError listing every failure
    print(report)

From the command line, through pytest (the ``--rbpbench-*`` options come from
the pytest plugin that rbpbench registers under the ``pytest11`` entry point)::

    pytest --pyargs rbpbench.testing --rbpbench-method my-method

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

__all__ = [
    "CheckOutcome",
    "CheckSkipped",
    "ConformanceError",
    "ConformanceReport",
    "KitSettings",
    "check_method",
    "checks_for",
    "resolve_method",
    "run_check",
]
