"""The plugin host: finds plugins through entry points, tolerates broken ones, indexes what they give.

A plugin that cannot be used is *failed*, never fatal to the others: one that
raises on import, one that pluggy refuses to register (a hook whose
arguments are not the spec's), one with a ``@hookimpl`` function that names
no hook of rbpbench (a misspelling, say ``rbpbench_method``), one whose hook
raises when called, and one whose hook returns anything but a list (or
tuple) of :class:`~rbpbench.problem.MethodSpec`,
:class:`~rbpbench.problem.TaskSpec` or
:class:`~rbpbench.problem.ForwardSolverSpec` objects with distinct names. A failed
plugin is unregistered and gives nothing (not even the hooks that worked);
``run`` and ``list`` warn about it in one line on stderr and go on,
``rbpbench plugins`` shows it as ``failed`` with its error. A second entry
point of a name already taken is *shadowed*: not loaded, with a warning
naming both distributions.
"""

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

import rbpbench
from rbpbench import hookspecs
from rbpbench.forward import ITERATE
from rbpbench.problem import ForwardSolverSpec, MethodSpec, TaskSpec

ENTRY_POINT_GROUP = "rbpbench"
# Set to any non-empty value to load no entry-point plugins (only those named with -p).
DISABLE_AUTOLOAD_ENV = "RBPBENCH_DISABLE_PLUGIN_AUTOLOAD"
# The hooks rbpbench calls, the kind of object each returns, and what that kind is called.
HOOKS: tuple[tuple[str, type, str], ...] = (
    ("rbpbench_methods", MethodSpec, "method"),
    ("rbpbench_tasks", TaskSpec, "task"),
    ("rbpbench_forward_solvers", ForwardSolverSpec, "forward solver"),
)


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


def core_origin() -> Origin:
    return Origin("rbpbench", "rbpbench", rbpbench.__version__)


def core_forwards() -> dict[str, tuple[ForwardSolverSpec, Origin]]:
    """``iterate``, the forward pass the paper defines and every problem falls back on: part of
    rbpbench itself, present whichever plugins load (a plugin may not take its name)."""
    return {ITERATE.name: (ITERATE, core_origin())}


@dataclass
class Registry:
    """Every method, task and forward solver the loaded plugins contribute, each with its origin."""

    methods: dict[str, tuple[MethodSpec, Origin]] = field(default_factory=dict)
    tasks: dict[str, tuple[TaskSpec, Origin]] = field(default_factory=dict)
    forwards: dict[str, tuple[ForwardSolverSpec, Origin]] = field(default_factory=core_forwards)
    # plugin name -> why it failed (one line), for every plugin that did
    load_errors: dict[str, str] = field(default_factory=dict)
    # plugin name -> the names of the hooks it implements, for every loaded plugin
    hooks: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def method(self, name: str) -> MethodSpec:
        return self.methods[name][0]

    def task(self, name: str) -> TaskSpec:
        return self.tasks[name][0]

    def forward(self, name: str) -> ForwardSolverSpec:
        return self.forwards[name][0]


def one_line(text: str) -> str:
    """``text`` with every run of whitespace, newlines included, as one space."""
    return " ".join(text.split())


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    message = one_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def short_repr(value: Any, limit: int = 80) -> str:
    text = one_line(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def known_hooks(manager: pluggy.PluginManager) -> list[str]:
    """The hooks rbpbench specifies (see :mod:`rbpbench.hookspecs`)."""
    return sorted(name for name, caller in vars(manager.hook).items() if caller.has_spec())


def entry_point_origin(ep: md.EntryPoint) -> Origin:
    dist = ep.dist
    return Origin(ep.name, dist.name if dist else "unknown", dist.version if dist else "unknown")


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


class _HookFailure(Exception):
    """A hook that raised or returned something other than a list of specs; the message says which."""


@dataclass
class PluginHost:
    """What loading the plugins found.

    ``manager`` holds the plugins that loaded (failed ones are unregistered);
    ``origins`` every plugin that was tried, loaded or failed; ``errors`` why
    each failed one did (one line); ``shadowed`` one line per entry point not
    loaded because an earlier distribution took its name; ``contributions``
    what the loaded plugins' hooks returned, per kind (``method``, ``task``),
    in the order pluggy lists them, each with its origin.
    """

    manager: pluggy.PluginManager
    origins: dict[str, Origin] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    shadowed: list[str] = field(default_factory=list)
    contributions: dict[str, list[tuple[Any, Origin]]] = field(default_factory=dict)

    def origin(self, name: str) -> Origin:
        return self.origins.get(name) or Origin(name, "unregistered", "-")

    def fail(self, name: str, error: str) -> None:
        """Mark plugin ``name`` failed (the first error counts) and unregister it."""
        self.errors.setdefault(name, one_line(error))
        if self.manager.get_plugin(name) is not None:
            self.manager.unregister(name=name)

    def register(self, name: str, plugin: object, origin: Origin) -> None:
        self.origins[name] = origin
        try:
            self.manager.register(plugin, name=name)
        except Exception as exc:  # pluggy refuses it, e.g. a hook with arguments no spec has
            self.fail(name, describe(exc))

    def warnings(self) -> list[str]:
        """One line per plugin that did not load for a reason the user should hear of."""
        failed = [
            f"warning: rbpbench plugin {name!r} ({self.origin(name)}) failed: {error}"
            for name, error in self.errors.items()
        ]
        return [*self.shadowed, *failed]

    def provided(self, kind: str) -> list[tuple[Any, Origin]]:
        return self.contributions.get(kind, [])


def load_entry_points(host: PluginHost) -> None:
    """Register every plugin of the entry-point group; one that fails to import is failed, not fatal.

    The first distribution to register an entry-point name wins; a later one
    of the same name is shadowed: not imported, and noted in ``host.shadowed``.
    """
    manager = host.manager
    first: dict[str, Origin] = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        origin = entry_point_origin(ep)
        if manager.is_blocked(ep.name):
            continue
        if ep.name in first:
            host.shadowed.append(
                f"warning: rbpbench plugin {ep.name!r} ({origin}) is not loaded: "
                f"{shadow_error(ep.name, first[ep.name])}"
            )
            continue
        first[ep.name] = origin
        host.origins[ep.name] = origin
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the others down
            host.fail(ep.name, describe(exc))
            continue
        host.register(ep.name, plugin, origin)


def shadow_error(name: str, first: Origin) -> str:
    return (
        f"entry point name {name!r} already taken by {first}, whose plugin is loaded instead; "
        "rename one of the two entry points or uninstall one distribution"
    )


def load_module(host: PluginHost, module: str, *, strict: bool) -> None:
    """Import and register a ``-p MODULE`` plugin.

    A module that cannot be imported is the user's explicit request gone
    wrong: :class:`PluginError` when ``strict`` (``run``, ``list``), else a
    failed plugin (``rbpbench plugins`` shows it). A module already registered
    under its entry-point name is not registered twice.
    """
    manager = host.manager
    if manager.is_blocked(module) or manager.get_plugin(module) is not None:
        return
    try:
        plugin = importlib.import_module(module)
    except Exception as exc:
        if strict:
            raise PluginError(
                f"plugin module {module!r} (-p) cannot be imported: {describe(exc)}"
            ) from exc
        host.origins[module] = Origin(module, module, "local")
        host.fail(module, describe(exc))
        return
    if manager.get_name(plugin) is not None:
        return
    host.register(module, plugin, module_origin(module))


def check_hook_names(host: PluginHost) -> None:
    """Fail every plugin with a ``@hookimpl`` that names no hook rbpbench specifies.

    pluggy registers such a function silently (and only
    ``PluginManager.check_pending`` would complain, for every plugin at
    once): a misspelt ``rbpbench_method`` would contribute nothing without a
    word. An implementation marked ``optionalhook=True`` may name an unknown
    hook, as pluggy allows.
    """
    manager = host.manager
    for name, plugin in list(manager.list_name_plugin()):
        unknown = sorted(
            caller.name
            for caller in manager.get_hookcallers(plugin) or []
            if not caller.has_spec()
            and any(
                impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()
            )
        )
        if unknown:
            host.fail(
                name,
                f"unknown hook{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"known hooks: {', '.join(known_hooks(manager))}",
            )


def call_hook(impl: Any, hook: str, expected: type[Any], kind: str) -> list[Any]:
    """One plugin's implementation of ``hook``, called on its own, and its return value checked."""
    if impl.hookwrapper or impl.wrapper:
        raise _HookFailure(
            f"{hook} is a hook wrapper; rbpbench calls each implementation on its own "
            "and takes none"
        )
    try:
        returned = impl.function()
    except Exception as exc:
        raise _HookFailure(f"{describe(exc)} (in hook {hook})") from exc
    if not isinstance(returned, list | tuple):
        raise _HookFailure(
            f"{hook}() returned {type(returned).__name__} {short_repr(returned)}; "
            f"it must return a list of {expected.__name__} objects (an empty list for none)"
        )
    names: set[str] = set()
    for spec in returned:
        if not isinstance(spec, expected):
            raise _HookFailure(
                f"{hook}() returned {short_repr(spec)} in its list; "
                f"expected {expected.__name__} objects"
            )
        if not isinstance(spec.name, str) or not spec.name:
            raise _HookFailure(
                f"{hook}() returned a {expected.__name__} named {spec.name!r}; "
                "a name is a non-empty string"
            )
        if spec.name in names:
            raise _HookFailure(f"{hook}() returned two {kind}s named {spec.name!r}")
        names.add(spec.name)
    return list(returned)


def collect(host: PluginHost) -> None:
    """Call each loaded plugin's hooks; a plugin whose hook fails gives nothing and is failed."""
    manager = host.manager
    found: dict[str, list[tuple[Any, Origin]]] = {}
    for hook, expected, kind in HOOKS:
        found[kind] = []
        for impl in getattr(manager.hook, hook).get_hookimpls():
            name = manager.get_name(impl.plugin) or impl.plugin_name
            if name in host.errors:
                continue
            try:
                specs = call_hook(impl, hook, expected, kind)
            except _HookFailure as exc:
                host.fail(name, str(exc))
                continue
            found[kind].extend((spec, host.origin(name)) for spec in specs)
    host.contributions = {
        kind: [(spec, origin) for spec, origin in specs if origin.plugin not in host.errors]
        for kind, specs in found.items()
    }


def load_plugins(
    config: PluginConfig,
    extra_plugins: Iterable[tuple[str, ModuleType | object]] = (),
    *,
    strict: bool = True,
) -> PluginHost:
    """Register the plugins ``config`` asks for, set the failed ones apart, call the hooks.

    ``strict``: a ``-p`` module that cannot be imported raises
    :class:`PluginError` (else it is a failed plugin).
    """
    host = PluginHost(new_manager())
    for name in config.disabled:
        host.manager.set_blocked(name)
    if config.autoload:
        load_entry_points(host)
    for module in config.modules:
        load_module(host, module, strict=strict)
    for name, plugin in extra_plugins:
        host.register(name, plugin, Origin(name, name, "local"))
    check_hook_names(host)
    collect(host)
    return host


def conflicts(kind: str, contributions: Iterable[tuple[Any, Origin]]) -> dict[str, list[Origin]]:
    """Each name that more than one plugin gives, with those plugins' origins."""
    givers: dict[str, list[Origin]] = {}
    for spec, origin in contributions:
        givers.setdefault(spec.name, []).append(origin)
    return {name: origins for name, origins in givers.items() if len(origins) > 1}


def conflict_message(kind: str, name: str, origins: Sequence[Origin]) -> str:
    first, second = origins[0], origins[1]
    return (
        f"{kind} {name!r} is provided by two plugins: "
        f"{first.distribution} {first.version} (plugin {first.plugin!r}) and "
        f"{second.distribution} {second.version} (plugin {second.plugin!r}); "
        "uninstall or disable one of them"
    )


def _index(
    kind: str, contributions: Iterable[tuple[Any, Origin]], into: dict[str, tuple[Any, Origin]]
) -> None:
    for spec, origin in contributions:
        if spec.name in into:
            raise PluginError(conflict_message(kind, spec.name, [into[spec.name][1], origin]))
        into[spec.name] = (spec, origin)


def load_registry(
    config: PluginConfig | None = None,
    extra_plugins: Iterable[tuple[str, ModuleType | object]] = (),
    *,
    warn: bool = True,
) -> Registry:
    """Load the plugins ``config`` asks for (plus ``extra_plugins`` objects) and index what they give.

    Failed and shadowed plugins are left out, each with a one-line warning on
    stderr when ``warn``; two plugins giving one name raise :class:`PluginError`.
    """
    config = config or PluginConfig.from_environment()
    host = load_plugins(config, extra_plugins)
    if warn:
        for line in host.warnings():
            print(line, file=sys.stderr)
    registry = Registry(load_errors=dict(host.errors), hooks=hook_names(host.manager))
    _index("method", host.provided("method"), registry.methods)
    _index("task", host.provided("task"), registry.tasks)
    _index("forward solver", host.provided("forward solver"), registry.forwards)
    return registry


@dataclass(frozen=True)
class PluginStatus:
    """One plugin as ``rbpbench plugins`` shows it.

    ``status`` is ``loaded``, ``failed`` (``error`` says why: it raised on
    import, a hook raised or returned the wrong objects, or it implements a
    hook rbpbench does not know), ``conflict`` (it gives a method or task name
    that another plugin gives too; ``error`` says which), ``disabled``
    (-p no:NAME, --disable-plugin), ``not autoloaded`` (the environment
    variable is set) or ``shadowed`` (an earlier distribution registered an
    entry point of the same name); ``methods``, ``tasks`` and ``forwards``
    name what its hooks return.
    """

    origin: Origin
    status: str
    hooks: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    error: str = ""
    forwards: tuple[str, ...] = ()


def plugin_statuses(config: PluginConfig | None = None) -> tuple[list[PluginStatus], list[str]]:
    """Every plugin rbpbench can see, loaded or not, and the problems of the set as a whole.

    Unlike :func:`load_registry` this never raises: a ``-p`` module that cannot
    be imported is a failed plugin, and two plugins giving one name are a
    problem (one line each) whose two plugins have the status ``conflict``;
    every other plugin keeps what it provides.
    """
    config = config or PluginConfig.from_environment()
    host = load_plugins(config, strict=False)
    hooks = hook_names(host.manager)
    given: dict[tuple[str, str], list[str]] = {}
    problems: list[str] = []
    clashes: dict[str, list[str]] = {}  # plugin -> its conflicting names
    for _, _, kind in HOOKS:
        found = host.provided(kind)
        for spec, origin in found:
            given.setdefault((origin.plugin, kind), []).append(spec.name)
        for name, origins in conflicts(kind, found).items():
            problems.append(conflict_message(kind, name, origins))
            for origin in origins:
                clashes.setdefault(origin.plugin, []).append(f"{kind} {name!r}")

    def loaded(origin: Origin) -> PluginStatus:
        name = origin.plugin
        if name in host.errors:
            return PluginStatus(origin, "failed", error=host.errors[name])
        methods, tasks = given.get((name, "method"), []), given.get((name, "task"), [])
        forwards = given.get((name, "forward solver"), [])
        status = "conflict" if name in clashes else "loaded"
        return PluginStatus(
            origin,
            status,
            hooks.get(name, ()),
            tuple(methods),
            tuple(tasks),
            forwards=tuple(forwards),
        )

    statuses: list[PluginStatus] = []
    first: dict[str, Origin] = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        origin = entry_point_origin(ep)
        if ep.name in config.disabled:
            statuses.append(PluginStatus(origin, "disabled"))
        elif ep.name in first:
            statuses.append(
                PluginStatus(origin, "shadowed", error=shadow_error(ep.name, first[ep.name]))
            )
            continue
        elif not config.autoload:
            error = f"{DISABLE_AUTOLOAD_ENV} is set"
            statuses.append(PluginStatus(origin, "not autoloaded", error=error))
        else:
            statuses.append(loaded(origin))
        first.setdefault(ep.name, origin)
    for module in dict.fromkeys(config.modules):
        if module in first or (module not in host.origins and module not in config.disabled):
            continue  # an entry point's name, or a module registered under its entry point's
        origin = host.origins.get(module) or module_origin(module)
        disabled = module in config.disabled
        statuses.append(PluginStatus(origin, "disabled") if disabled else loaded(origin))
    return statuses, problems
