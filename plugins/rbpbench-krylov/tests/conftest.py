"""Where rbpbench-krylov is not installed, these tests are not collected, and the summary says so."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("rbpbench_krylov") is None:
    collect_ignore_glob = ["test_*.py"]

    def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.write_line(
            "plugins/rbpbench-krylov/tests not run: rbpbench-krylov is not installed "
            "(pip install -e ./plugins/rbpbench-krylov)",
            yellow=True,
        )
