"""The conformance kit's pytest plugin, registered under the ``pytest11`` entry point as ``rbpbench``.

It must be an installed plugin rather than a ``conftest.py`` in
``rbpbench/testing``: pytest parses the command line before it collects
``--pyargs`` packages, and loads a ``conftest.py`` early enough to add options
only from the paths named on the command line, which a ``--pyargs`` module
name is not, so ``--rbpbench-method`` would be an unknown option. An entry
point is loaded before parsing, wherever rbpbench is installed. It adds only
options and fixtures, and parametrizes only the kit's own test
(``rbpbench/testing/test_conformance.py``), so other test suites are untouched.
"""

from __future__ import annotations

from typing import Any

import pytest

from rbpbench.config import UsageError, parse_params
from rbpbench.plugins import PluginConfig, PluginError, Registry, load_registry
from rbpbench.testing.kit import KitSettings, checks_for

_REGISTRY = pytest.StashKey[Registry]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "rbpbench", "rbpbench conformance kit (pytest --pyargs rbpbench.testing)"
    )
    group.addoption(
        "--rbpbench-method",
        action="append",
        default=[],
        metavar="NAME",
        help="an installed rbpbench method to check (repeat or comma-separate for several)",
    )
    group.addoption(
        "--rbpbench-truncation",
        type=int,
        default=KitSettings.truncation,
        metavar="K",
        help=f"K for the accuracy checks (default {KitSettings.truncation})",
    )
    group.addoption(
        "--rbpbench-tolerance",
        type=float,
        default=KitSettings.tolerance,
        metavar="TOL",
        help=f"relative error allowed against the exact gradient (default {KitSettings.tolerance})",
    )
    group.addoption(
        "--rbpbench-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method parameter over its defaults (VALUE read as JSON when it parses)",
    )
    group.addoption(
        "--rbpbench-plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="also load this rbpbench plugin module (as rbpbench's -p MODULE does)",
    )
    group.addoption(
        "--rbpbench-device", default=KitSettings.device, help="device of the problems (cpu)"
    )


def kit_settings(config: pytest.Config) -> KitSettings:
    try:
        params = parse_params(config.getoption("rbpbench_param"), "--rbpbench-param")
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    return KitSettings(
        truncation=config.getoption("rbpbench_truncation"),
        tolerance=config.getoption("rbpbench_tolerance"),
        params=params,
        device=config.getoption("rbpbench_device"),
    )


def kit_registry(config: pytest.Config) -> Registry:
    if _REGISTRY not in config.stash:
        modules = config.getoption("rbpbench_plugin")
        try:
            config.stash[_REGISTRY] = load_registry(PluginConfig.from_environment(modules=modules))
        except PluginError as exc:
            raise pytest.UsageError(f"rbpbench: {exc}") from None
    return config.stash[_REGISTRY]


def kit_methods(config: pytest.Config) -> list[str]:
    names = [n for raw in config.getoption("rbpbench_method") for n in raw.split(",") if n]
    if not names:
        raise pytest.UsageError(
            "the rbpbench conformance kit needs a method: "
            "pytest --pyargs rbpbench.testing --rbpbench-method NAME"
        )
    registry = kit_registry(config)
    unknown = [n for n in names if n not in registry.methods]
    if unknown:
        raise pytest.UsageError(
            f"no rbpbench method {', '.join(map(repr, unknown))} is installed; "
            f"installed: {', '.join(registry.methods)}"
        )
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "rbpbench_check" not in metafunc.fixturenames:
        return
    config = metafunc.config
    methods = kit_methods(config)
    checks = list(checks_for(kit_settings(config)))
    cases = [(m, c) for m in methods for c in checks]
    metafunc.parametrize(
        ("rbpbench_method", "rbpbench_check"), cases, ids=[f"{m}-{c}" for m, c in cases]
    )


@pytest.fixture(scope="session")
def rbpbench_kit_settings(pytestconfig: pytest.Config) -> KitSettings:
    """The kit's settings, from the --rbpbench-* options."""
    return kit_settings(pytestconfig)


@pytest.fixture(scope="session")
def rbpbench_registry(pytestconfig: pytest.Config) -> Registry:
    """rbpbench's plugin registry, with the --rbpbench-plugin modules loaded too."""
    return kit_registry(pytestconfig)


def pytest_report_header(config: pytest.Config) -> Any:
    methods = config.getoption("rbpbench_method")
    if methods:
        settings = kit_settings(config)
        return (
            f"rbpbench conformance kit: {', '.join(methods)} at K={settings.truncation}, "
            f"tolerance {settings.tolerance:g}, device {settings.device}"
        )
    return None
