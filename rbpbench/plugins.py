"""The plugin host: finds plugins through entry points, tolerates broken ones, indexes what they give."""

from __future__ import annotations

import importlib.metadata as md
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from rbpbench import hookspecs
from rbpbench.problem import MethodSpec, TaskSpec

ENTRY_POINT_GROUP = "rbpbench"


class PluginError(Exception):
    """A conflict between plugins that the user must resolve (e.g. two plugins, one name)."""


@dataclass(frozen=True)
class Origin:
    """Where a plugin comes from: its registered name and its distribution."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}"


@dataclass
class Registry:
    """Every method and task the loaded plugins contribute, each with its origin."""

    methods: dict[str, tuple[MethodSpec, Origin]] = field(default_factory=dict)
    tasks: dict[str, tuple[TaskSpec, Origin]] = field(default_factory=dict)
    load_errors: dict[str, str] = field(default_factory=dict)

    def method(self, name: str) -> MethodSpec:
        return self.methods[name][0]

    def task(self, name: str) -> TaskSpec:
        return self.tasks[name][0]


def new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def load_entry_points(manager: pluggy.PluginManager) -> tuple[dict[str, Origin], dict[str, str]]:
    """Register every plugin of the entry-point group; one that fails to import is reported, not fatal."""
    origins: dict[str, Origin] = {}
    errors: dict[str, str] = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        origin = Origin(
            ep.name, dist.name if dist else "unknown", dist.version if dist else "unknown"
        )
        if manager.get_plugin(ep.name) is not None or manager.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            manager.register(plugin, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take the others down
            errors[ep.name] = f"{type(exc).__name__}: {exc}"
            print(
                f"warning: rbpbench plugin {ep.name!r} ({origin}) failed to load: "
                f"{type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
            continue
        origins[ep.name] = origin
    return origins, errors


def _index(
    kind: str, contributions: Iterable[tuple[Any, Origin]], into: dict[str, tuple[Any, Origin]]
) -> None:
    for spec, origin in contributions:
        if spec.name in into:
            first = into[spec.name][1]
            raise PluginError(
                f"{kind} {spec.name!r} is provided by two plugins: "
                f"{first.distribution} {first.version} (plugin {first.plugin!r}) and "
                f"{origin.distribution} {origin.version} (plugin {origin.plugin!r}); "
                "uninstall or disable one of them"
            )
        into[spec.name] = (spec, origin)


def _contributions(
    manager: pluggy.PluginManager,
    hook: pluggy.HookCaller,
    expected: type,
    origins: dict[str, Origin],
) -> list[tuple[Any, Origin]]:
    """Call each implementation of ``hook`` on its own, so every contribution keeps its origin."""
    out = []
    for impl in hook.get_hookimpls():
        name = manager.get_name(impl.plugin) or repr(impl.plugin)
        origin = origins.get(name, Origin(name, "unregistered", "-"))
        returned: Any = impl.function() or []
        for spec in returned:
            if not isinstance(spec, expected):
                raise PluginError(
                    f"plugin {name!r} ({origin}) returned {spec!r} from {hook.name}; "
                    f"expected {expected.__name__} objects"
                )
            out.append((spec, origin))
    return out


def load_registry(extra_plugins: Iterable[tuple[str, ModuleType | object]] = ()) -> Registry:
    """Load all entry-point plugins (plus ``extra_plugins``, named) and index their contributions."""
    manager = new_manager()
    origins, errors = load_entry_points(manager)
    for name, plugin in extra_plugins:
        manager.register(plugin, name=name)
        origins[name] = Origin(name, name, "local")
    registry = Registry(load_errors=errors)
    hooks = manager.hook
    methods = _contributions(manager, hooks.rbpbench_methods, MethodSpec, origins)
    tasks = _contributions(manager, hooks.rbpbench_tasks, TaskSpec, origins)
    _index("method", methods, registry.methods)
    _index("task", tasks, registry.tasks)
    return registry
