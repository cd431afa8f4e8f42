"""The conformance kit's pytest plugin, registered under the ``pytest11`` entry point as ``rbpbench``.

It must be an installed plugin rather than a ``conftest.py`` in
``rbpbench/testing``: pytest parses the command line before it collects
``--pyargs`` packages, and loads a ``conftest.py`` early enough to add options
only from the paths named on the command line, which a ``--pyargs`` module
name is not, so ``--rbpbench-method`` would be an unknown option. An entry
point is loaded before parsing, wherever rbpbench is installed. It adds only
options and fixtures, and parametrizes (or leaves out) only the kit's own
tests (``rbpbench/testing/test_conformance.py`` for methods,
``test_task_conformance.py`` for tasks), so other test suites are untouched.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from rbpbench import config as rc
from rbpbench.config import UsageError, parse_params
from rbpbench.plugins import PluginConfig, PluginError, Registry, load_registry
from rbpbench.testing.kit import KitSettings, checks_for
from rbpbench.testing.task_kit import TaskKitSettings, task_checks

_REGISTRY = pytest.StashKey[Registry]()
_PARAMS = pytest.StashKey[dict[str, dict[str, dict[str, Any]]]]()
PARAM_OPTION = "--rbpbench-param"
HERE = Path(__file__).resolve().parent
METHOD_TESTS = HERE / "test_conformance.py"
TASK_TESTS = HERE / "test_task_conformance.py"


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
        "--rbpbench-task",
        action="append",
        default=[],
        metavar="NAME",
        help="an installed rbpbench task to check (repeat or comma-separate for several)",
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
        metavar="[NAME.]KEY=VALUE",
        help="a parameter of the methods or tasks checked, over their defaults (VALUE read as "
        "JSON when it parses), checked as rbpbench run checks --method-param/--task-param",
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
    group.addoption(
        "--rbpbench-seed-independent",
        action="store_true",
        help="the tasks checked draw nothing at random: seeds may give the same problem",
    )
    group.addoption(
        "--rbpbench-fd-tolerance",
        type=float,
        default=TaskKitSettings.fd_tolerance,
        metavar="TOL",
        help="relative error allowed between a task's exact gradient and finite differences "
        f"(default {TaskKitSettings.fd_tolerance})",
    )


def _names(config: pytest.Config, option: str) -> list[str]:
    return [n for raw in config.getoption(option) for n in raw.split(",") if n]


def kit_settings(config: pytest.Config) -> KitSettings:
    """The method kit's settings; ``params`` as given (see :func:`method_settings`)."""
    try:
        params = parse_params(config.getoption("rbpbench_param"), PARAM_OPTION)
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


def _installed(config: pytest.Config, kind: str) -> list[str]:
    names = _names(config, f"rbpbench_{kind}")
    registry = kit_registry(config)
    known = registry.methods if kind == "method" else registry.tasks
    unknown = [n for n in names if n not in known]
    if unknown:
        raise pytest.UsageError(
            f"no rbpbench {kind} {', '.join(map(repr, unknown))} is installed; "
            f"installed: {', '.join(known)}"
        )
    return names


def _require_subject(config: pytest.Config) -> None:
    if not _names(config, "rbpbench_method") and not _names(config, "rbpbench_task"):
        raise pytest.UsageError(
            "the rbpbench conformance kit needs a method or a task: "
            "pytest --pyargs rbpbench.testing --rbpbench-method NAME "
            "(or --rbpbench-task NAME)"
        )


def kit_methods(config: pytest.Config) -> list[str]:
    _require_subject(config)
    return _installed(config, "method")


def kit_tasks(config: pytest.Config) -> list[str]:
    _require_subject(config)
    return _installed(config, "task")


def scoped_params(
    flags: dict[str, Any], methods: list[str], tasks: list[str], registry: Registry
) -> dict[str, dict[str, dict[str, Any]]]:
    """``--rbpbench-param`` flags per kind and name, checked as ``rbpbench run`` checks its own.

    ``NAME.KEY=VALUE`` is for NAME only; a plain ``KEY=VALUE`` for every
    method or task checked that takes KEY, and an error when none does; each
    value is checked against its default's type, and a task's values by the
    task's own ``check`` (:func:`rbpbench.config.scope_flags`,
    :func:`rbpbench.config.run_task_checks`). Raises UsageError.
    """
    selected = {"method": methods, "task": tasks}
    kinds = [kind for kind in ("method", "task") if selected[kind]]
    plugins = {kind: rc.plugins_of(registry, kind) for kind in kinds}
    share: dict[str, dict[str, Any]] = {kind: {} for kind in kinds}
    for given, value in flags.items():
        name, dot, _ = given.rpartition(".")
        if len(kinds) == 1:
            share[kinds[0]][given] = value
        elif dot:
            share["task" if name in tasks and name not in methods else "method"][given] = value
        else:
            takers = [k for k in kinds if any(plugins[k][n].accepts(given) for n in selected[k])]
            if not takers:
                raise UsageError(
                    f"{PARAM_OPTION}: none of the methods and tasks checked has a parameter "
                    f"{given} ("
                    + "; ".join(f"{n}: {plugins[k][n].valid()}" for k in kinds for n in selected[k])
                    + ")"
                )
            for kind in takers:
                share[kind][given] = value
    out = {
        kind: rc.scope_flags(share[kind], selected[kind], plugins[kind], PARAM_OPTION, kind)
        for kind in kinds
    }
    if "task" in out:
        rc.run_task_checks(plugins["task"], out["task"], {})
    return out


def kit_params(config: pytest.Config) -> dict[str, dict[str, dict[str, Any]]]:
    """The parameters of each method and task checked, by kind and name (pytest.UsageError if bad)."""
    if _PARAMS not in config.stash:
        methods, tasks = _installed(config, "method"), _installed(config, "task")
        try:
            flags = parse_params(config.getoption("rbpbench_param"), PARAM_OPTION)
            config.stash[_PARAMS] = scoped_params(flags, methods, tasks, kit_registry(config))
        except UsageError as exc:
            raise pytest.UsageError(f"rbpbench: {exc}") from None
    return config.stash[_PARAMS]


def method_settings(config: pytest.Config, method: str) -> KitSettings:
    """The method kit's settings for ``method``: its own --rbpbench-param values."""
    params = kit_params(config).get("method", {}).get(method, {})
    return dataclasses.replace(kit_settings(config), params=params)


def task_settings(config: pytest.Config, task: str) -> TaskKitSettings:
    """The task kit's settings for ``task``: its own --rbpbench-param values."""
    return TaskKitSettings(
        params=kit_params(config).get("task", {}).get(task, {}),
        device=config.getoption("rbpbench_device"),
        seed_independent=config.getoption("rbpbench_seed_independent"),
        fd_tolerance=config.getoption("rbpbench_fd_tolerance"),
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave out the kit's method tests when only tasks are checked, and its task tests
    unless a task is (pytest would report an empty parametrization as a skip)."""
    if collection_path.name not in (TASK_TESTS.name, METHOD_TESTS.name):
        return None
    path = collection_path.resolve()
    if path == TASK_TESTS and not _names(config, "rbpbench_task"):
        return True
    if (
        path == METHOD_TESTS
        and not _names(config, "rbpbench_method")
        and _names(config, "rbpbench_task")
    ):
        return True
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    try:
        _parametrize(metafunc)
    except pytest.UsageError as exc:
        # A collection error whose report is just this line (a UsageError would come with a
        # traceback of pytest's internals), on stdout with the rest of the session.
        raise pytest.Collector.CollectError(str(exc)) from None


def _parametrize(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    if "rbpbench_check" in metafunc.fixturenames:
        methods = kit_methods(config)
        kit_params(config)  # bad parameters stop the run before any check
        checks = list(checks_for(kit_settings(config)))
        cases = [(m, c) for m in methods for c in checks]
        metafunc.parametrize(
            ("rbpbench_method", "rbpbench_check"), cases, ids=[f"{m}-{c}" for m, c in cases]
        )
    if "rbpbench_task_check" in metafunc.fixturenames:
        tasks = kit_tasks(config)
        kit_params(config)
        task_cases = [(t, c) for t in tasks for c in task_checks()]
        metafunc.parametrize(
            ("rbpbench_task", "rbpbench_task_check"),
            task_cases,
            ids=[f"{t}-{c}" for t, c in task_cases],
        )


@pytest.fixture(scope="session")
def rbpbench_kit_settings(pytestconfig: pytest.Config) -> KitSettings:
    """The method kit's settings, from the --rbpbench-* options (``params`` as given)."""
    return kit_settings(pytestconfig)


@pytest.fixture(scope="session")
def rbpbench_registry(pytestconfig: pytest.Config) -> Registry:
    """rbpbench's plugin registry, with the --rbpbench-plugin modules loaded too."""
    return kit_registry(pytestconfig)


def pytest_report_header(config: pytest.Config) -> Any:
    methods, tasks = _names(config, "rbpbench_method"), _names(config, "rbpbench_task")
    lines = []
    settings = kit_settings(config)
    if methods:
        lines.append(
            f"rbpbench conformance kit: {','.join(methods)} at K={settings.truncation}, "
            f"tolerance {settings.tolerance:g}, device {settings.device}"
        )
    if tasks:
        lines.append(f"rbpbench task conformance kit: {','.join(tasks)}, device {settings.device}")
    return lines or None
