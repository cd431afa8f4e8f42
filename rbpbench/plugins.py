"""The plugin host: finds plugins through entry points, tolerates broken ones, indexes what they give."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from rbpbench import hookspecs
from rbpbench.problem import MethodSpec, TaskSpec

ENTRY_POINT_GROUP = "rbpbench"
# Set to any non-empty value to load no entry-point plugins (only those named with -p).
DISABLE_AUTOLOAD_ENV = "RBPBENCH_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class PluginConfig:
    """Which plugins to load, as the user chose: picklable, so worker processes load the same.

    ``modules`` are extra plugin modules to import and register (``-p MODULE``);
    ``disabled`` are entry-point or module names not to load (``-p no:NAME``);
    ``autoload`` loads the ``rbpbench`` entry-point group.
    """

    modules: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    autoload: bool = True

    @classmethod
    def from_environment(
        cls, modules: Sequence[str] = (), disabled: Sequence[str] = ()
    ) -> PluginConfig:
        return cls(tuple(modules), tuple(disabled), not os.environ.get(DISABLE_AUTOLOAD_ENV))


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
    # plugin name -> the names of the hooks it implements, for every loaded plugin
    hooks: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def method(self, name: str) -> MethodSpec:
        return self.methods[name][0]

    def task(self, name: str) -> TaskSpec:
        return self.tasks[name][0]


def new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def load_entry_points(
    manager: pluggy.PluginManager, *, warn: bool = True
) -> tuple[dict[str, Origin], dict[str, str]]:
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
            if warn:
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


def module_origin(module: str) -> Origin:
    """The distribution that ships ``module``'s top-level package, if an installed one does."""
    top = module.split(".")[0]
    for dist_name in md.packages_distributions().get(top, []):
        return Origin(module, dist_name, md.version(dist_name))
    return Origin(module, module, "local")


def hook_names(manager: pluggy.PluginManager) -> dict[str, tuple[str, ...]]:
    """Each registered plugin's name and the names of the hooks it implements."""
    return {
        name: tuple(sorted(caller.name for caller in manager.get_hookcallers(plugin) or []))
        for name, plugin in manager.list_name_plugin()
        if plugin is not None
    }


def load_plugins(
    config: PluginConfig,
    extra_plugins: Iterable[tuple[str, ModuleType | object]] = (),
    *,
    warn: bool = True,
) -> tuple[pluggy.PluginManager, dict[str, Origin], dict[str, str]]:
    """Register the plugins ``config`` asks for: the manager, their origins and load errors."""
    manager = new_manager()
    for name in config.disabled:
        manager.set_blocked(name)
    origins: dict[str, Origin] = {}
    errors: dict[str, str] = {}
    if config.autoload:
        origins, errors = load_entry_points(manager, warn=warn)
    for module in config.modules:
        if manager.is_blocked(module) or manager.get_plugin(module) is not None:
            continue
        try:
            manager.register(importlib.import_module(module), name=module)
        except ImportError as exc:
            raise PluginError(f"plugin module {module!r} (-p) cannot be imported: {exc}") from exc
        origins[module] = module_origin(module)
    for name, plugin in extra_plugins:
        manager.register(plugin, name=name)
        origins[name] = Origin(name, name, "local")
    return manager, origins, errors


def load_registry(
    config: PluginConfig | None = None,
    extra_plugins: Iterable[tuple[str, ModuleType | object]] = (),
    *,
    warn: bool = True,
) -> Registry:
    """Load the plugins ``config`` asks for (plus ``extra_plugins`` objects) and index what they give."""
    config = config or PluginConfig.from_environment()
    manager, origins, errors = load_plugins(config, extra_plugins, warn=warn)
    registry = Registry(load_errors=errors, hooks=hook_names(manager))
    hooks = manager.hook
    methods = _contributions(manager, hooks.rbpbench_methods, MethodSpec, origins)
    tasks = _contributions(manager, hooks.rbpbench_tasks, TaskSpec, origins)
    _index("method", methods, registry.methods)
    _index("task", tasks, registry.tasks)
    return registry


@dataclass(frozen=True)
class PluginStatus:
    """One plugin as ``rbpbench plugins`` shows it.

    ``status`` is ``loaded``, ``failed`` (``error`` says why), ``disabled``
    (-p no:NAME, --disable-plugin), ``not autoloaded`` (the environment
    variable is set) or ``shadowed`` (an earlier distribution registered an
    entry point of the same name); ``methods`` and ``tasks`` name what its
    hooks return.
    """

    origin: Origin
    status: str
    hooks: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    error: str = ""


def plugin_statuses(config: PluginConfig | None = None) -> tuple[list[PluginStatus], list[str]]:
    """Every plugin rbpbench can see, loaded or not, and the problems of the set as a whole.

    Unlike :func:`load_registry` this never raises: two plugins giving one
    name, or a hook returning the wrong objects, is one of the problems.
    """
    config = config or PluginConfig.from_environment()
    try:
        manager, origins, errors = load_plugins(config, warn=False)
    except PluginError as exc:
        return [], [str(exc)]
    hooks = hook_names(manager)
    given: dict[tuple[str, str], list[str]] = {}
    problems: list[str] = []
    try:
        for kind, hook, expected in (
            ("method", manager.hook.rbpbench_methods, MethodSpec),
            ("task", manager.hook.rbpbench_tasks, TaskSpec),
        ):
            found = _contributions(manager, hook, expected, origins)
            for spec, origin in found:
                given.setdefault((origin.plugin, kind), []).append(spec.name)
            _index(kind, found, {})
    except PluginError as exc:
        problems.append(str(exc))

    def loaded(origin: Origin) -> PluginStatus:
        name = origin.plugin
        methods, tasks = given.get((name, "method"), []), given.get((name, "task"), [])
        return PluginStatus(origin, "loaded", hooks.get(name, ()), tuple(methods), tuple(tasks))

    statuses: list[PluginStatus] = []
    seen: dict[str, Origin] = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        origin = Origin(
            ep.name, dist.name if dist else "unknown", dist.version if dist else "unknown"
        )
        if ep.name in seen:
            error = f"entry point name {ep.name!r} already taken by {seen[ep.name]}"
            statuses.append(PluginStatus(origin, "shadowed", error=error))
            continue
        seen[ep.name] = origin
        if ep.name in config.disabled:
            statuses.append(PluginStatus(origin, "disabled"))
        elif not config.autoload:
            error = f"{DISABLE_AUTOLOAD_ENV} is set"
            statuses.append(PluginStatus(origin, "not autoloaded", error=error))
        elif ep.name in errors:
            statuses.append(PluginStatus(origin, "failed", error=errors[ep.name]))
        else:
            statuses.append(loaded(origin))
    for module in config.modules:
        if module in seen:
            continue
        origin = origins.get(module) or module_origin(module)
        disabled = module in config.disabled
        statuses.append(PluginStatus(origin, "disabled") if disabled else loaded(origin))
    return statuses, problems
