"""Where rbpbench-torchdeq is not installed, these tests are not collected, and the summary says so."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("rbpbench_torchdeq") is None:
    collect_ignore_glob = ["test_*.py"]

    def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.write_line(
            "plugins/rbpbench-torchdeq/tests not run: rbpbench-torchdeq is not installed "
            "(pip install -e ./plugins/rbpbench-torchdeq)",
            yellow=True,
        )
