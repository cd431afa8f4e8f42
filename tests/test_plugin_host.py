"""The plugin host survives bad plugins: a hook that raises, returns the wrong objects or is
misspelt fails its own plugin only, a shadowed entry point is said, a name conflict marks only
the two plugins involved.

Plugins here are modules written to a temporary folder on the path (``-p MODULE``) and
distributions faked by writing their ``.dist-info`` folder there: no pip, so most of these
run in-process and fast. The last tests run the commands as a user does.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from rbpbench import MethodSpec, TaskSpec, hookimpl
from rbpbench.cli import main
from rbpbench.methods.unrolled import bptt
from rbpbench.plugins import PluginConfig, PluginError, load_registry, plugin_statuses
from tests.helpers import run_cli

BOOM = """
    from rbpbench import MethodSpec, TaskSpec, hookimpl
    from rbpbench.methods.unrolled import bptt
    from rbpbench.tasks import contractive


    @hookimpl
    def rbpbench_methods():
        raise RuntimeError("{name} fails when its hook is called")


    @hookimpl
    def rbpbench_tasks():  # works, but the plugin has failed: none of it is used
        return [TaskSpec("{name}-task", contractive.build, "never listed")]
"""

TYPO = """
    from rbpbench import hookimpl


    @hookimpl
    def rbpbench_method():
        return []
"""

GOOD = """
    from rbpbench import MethodSpec, hookimpl
    from rbpbench.methods.unrolled import bptt


    @hookimpl
    def rbpbench_methods():
        return [MethodSpec("{method}", bptt, "bptt under another name", unrolls=True)]
"""

BAD_IMPORT = """
    raise ImportError("this plugin is broken on purpose")
"""

Write = Callable[..., str]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path (of this process; run_cli passes it to others) for plugin modules."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(str(folder)):
            del sys.modules[name]


def write_module(site: Path, name: str, source: str, **fields: str) -> str:
    (site / f"{name}.py").write_text(textwrap.dedent(source).format(name=name, **fields))
    return name


def fake_distribution(
    site: Path, distribution: str, version: str, entry_points: dict[str, str]
) -> None:
    """An installed distribution as importlib.metadata sees one: its .dist-info folder."""
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
    )
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[rbpbench]\n{lines}")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def row(table: str, plugin: str) -> str:
    return next(line for line in table.splitlines() if line.split()[:1] == [plugin])


def method_names(listing: str) -> set[str]:
    lines = listing.split("tasks:")[0].splitlines()[1:]
    return {line.split()[0] for line in lines if line.strip()}


# -- a hook that raises --------------------------------------------------------------------


def test_a_hook_that_raises_fails_its_plugin_and_everything_else_loads(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boom = write_module(site, "host_boom", BOOM)
    registry = load_registry(PluginConfig.from_environment(modules=[boom]))
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        "warning: rbpbench plugin 'host_boom' (host_boom local) failed: RuntimeError: "
        "host_boom fails when its hook is called (in hook rbpbench_methods)"
    ]
    assert "neumann-rbp" in registry.methods and "contractive-rnn" in registry.tasks
    assert "host_boom-task" not in registry.tasks  # its working hook is not used either
    assert registry.load_errors["host_boom"].startswith("RuntimeError: host_boom fails")
    assert "host_boom" not in registry.hooks
    assert load_registry(PluginConfig.from_environment(modules=[boom]), warn=False).methods
    assert capsys.readouterr().err == ""


def test_list_and_plugins_survive_a_hook_that_raises(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boom = write_module(site, "host_boom_cli", BOOM)
    code, out, err = cli(capsys, "list", "-p", boom)
    assert code == 0
    assert "neumann-rbp" in method_names(out) and "contractive-rnn" in out
    assert err.count("\n") == 1 and "'host_boom_cli' (host_boom_cli local) failed" in err
    code, out, err = cli(capsys, "plugins", "-p", boom)
    assert code == 1 and err == ""
    line = row(out, boom)
    assert line.split()[1:5] == ["host_boom_cli", "local", "failed", "-"]
    assert line.endswith(
        "RuntimeError: host_boom_cli fails when its hook is called (in hook rbpbench_methods)"
    )
    assert row(out, "paper-methods").endswith(
        "methods: bptt, tbptt, rbp, cg-rbp, neumann-rbp, jfb, phantom"
    )


def test_a_multi_line_error_is_one_line_in_the_warning_and_the_table(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = BOOM.replace('"{name} fails when its hook is called"', '"first line\\n   second"')
    boom = write_module(site, "host_multiline", source)
    code, _, err = cli(capsys, "list", "-p", boom)
    assert code == 0
    assert err.splitlines() == [
        "warning: rbpbench plugin 'host_multiline' (host_multiline local) failed: "
        "RuntimeError: first line second (in hook rbpbench_methods)"
    ]
    _, out, _ = cli(capsys, "plugins", "-p", boom)
    assert row(out, boom).endswith("RuntimeError: first line second (in hook rbpbench_methods)")


# -- hooks that return the wrong thing ---------------------------------------------------


def plugin_returning(value: Any, hook: str = "rbpbench_methods") -> object:
    class Plugin:
        pass

    def implementation(self: object) -> Any:
        return value() if callable(value) else value

    setattr(Plugin, hook, hookimpl(implementation))
    return Plugin()


SPEC = MethodSpec("host-spec", bptt, "a method", unrolls=True)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (None, "rbpbench_methods() returned NoneType None; it must return a list of MethodSpec "
               "objects (an empty list for none)"),
        ({"a": SPEC}, "rbpbench_methods() returned dict {'a': MethodSpec("),
        (lambda: (s for s in [SPEC]), "rbpbench_methods() returned generator"),
        (SPEC, "rbpbench_methods() returned MethodSpec MethodSpec(name='host-spec'"),
        (["not a MethodSpec"], "rbpbench_methods() returned 'not a MethodSpec' in its list; "
                               "expected MethodSpec objects"),
        ([SPEC, SPEC], "rbpbench_methods() returned two methods named 'host-spec'"),
        ([MethodSpec("", bptt, "nameless")], "returned a MethodSpec named ''; a name is a "
                                             "non-empty string"),
    ],
    ids=["none", "dict", "generator", "bare-spec", "wrong-object", "twice", "nameless"],
)  # fmt: skip
def test_a_hook_returning_the_wrong_objects_fails_its_plugin(returned: Any, message: str) -> None:
    registry = load_registry(extra_plugins=[("odd", plugin_returning(returned))], warn=False)
    assert message in registry.load_errors["odd"]
    assert "host-spec" not in registry.methods and "neumann-rbp" in registry.methods


def test_a_task_hook_returning_methods_is_named() -> None:
    registry = load_registry(
        extra_plugins=[("odd", plugin_returning([SPEC], "rbpbench_tasks"))], warn=False
    )
    assert "rbpbench_tasks() returned MethodSpec(name='host-spec'" in registry.load_errors["odd"]
    assert "expected TaskSpec objects" in registry.load_errors["odd"]


def test_a_tuple_is_as_good_as_a_list() -> None:
    registry = load_registry(extra_plugins=[("fine", plugin_returning((SPEC,)))], warn=False)
    assert registry.methods["host-spec"][1].plugin == "fine" and not registry.load_errors


def test_a_hook_wrapper_or_a_hook_with_arguments_fails_its_plugin() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def rbpbench_methods(self) -> Any:
            return (yield)

    class Arguments:
        @hookimpl
        def rbpbench_methods(self, problem: Any) -> list[MethodSpec]:
            return [SPEC]

    registry = load_registry(
        extra_plugins=[("wrapper", Wrapper()), ("arguments", Arguments())], warn=False
    )
    assert registry.load_errors["wrapper"].startswith("rbpbench_methods is a hook wrapper")
    error = registry.load_errors["arguments"]
    assert error.startswith("PluginValidationError:") and "problem" in error
    assert "\n" not in error
    assert "neumann-rbp" in registry.methods and "arguments" not in registry.hooks


# -- a misspelt hook ---------------------------------------------------------------------


def test_a_misspelt_hook_fails_its_plugin(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = write_module(site, "host_typo", TYPO)
    code, out, err = cli(capsys, "plugins", "-p", typo)
    assert code == 1
    line = row(out, typo)
    assert line.split()[3] == "failed"
    assert line.endswith(
        "unknown hook rbpbench_method; known hooks: rbpbench_forward_solvers, rbpbench_methods, rbpbench_tasks"
    )
    code, out, err = cli(capsys, "list", "-p", typo)
    assert code == 0 and "neumann-rbp" in method_names(out)
    assert err.splitlines() == [
        "warning: rbpbench plugin 'host_typo' (host_typo local) failed: unknown hook "
        "rbpbench_method; known hooks: rbpbench_forward_solvers, rbpbench_methods, rbpbench_tasks"
    ]


def test_optional_hooks_and_specname_are_honoured() -> None:
    class Optional:
        @hookimpl(optionalhook=True)
        def rbpbench_someday(self) -> list[Any]:  # a hook of a later rbpbench, say
            return []

        @hookimpl(specname="rbpbench_methods")
        def my_methods(self) -> list[MethodSpec]:
            return [SPEC]

    class Both:
        @hookimpl
        def rbpbench_methods(self) -> list[MethodSpec]:
            return [MethodSpec("host-both", bptt, "fine", unrolls=True)]

        @hookimpl
        def rbpbench_taks(self) -> list[TaskSpec]:
            return []

        @hookimpl
        def rbpbench_metods(self) -> list[MethodSpec]:
            return []

    registry = load_registry(extra_plugins=[("optional", Optional()), ("both", Both())])
    assert registry.methods["host-spec"][1].plugin == "optional"
    assert "optional" not in registry.load_errors
    assert registry.load_errors["both"] == (
        "unknown hooks rbpbench_metods, rbpbench_taks; known hooks: "
        "rbpbench_forward_solvers, rbpbench_methods, rbpbench_tasks"
    )
    assert "host-both" not in registry.methods  # its good hook is not used either


# -- -p modules --------------------------------------------------------------------------


def test_p_modules_that_cannot_be_imported_or_are_loaded_already(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_module(site, "host_bad_import", BAD_IMPORT)
    code, _, err = cli(capsys, "list", "-p", bad)
    assert code == 2  # the user asked for it by name: an error, as before
    assert err.strip() == (
        "rbpbench: error: plugin module 'host_bad_import' (-p) cannot be imported: "
        "ImportError: this plugin is broken on purpose"
    )
    code, out, _ = cli(capsys, "plugins", "-p", bad, "-p", "host_no_such_module")
    assert code == 1
    assert row(out, bad).split()[3] == "failed"
    assert row(out, bad).endswith("ImportError: this plugin is broken on purpose")
    assert row(out, "host_no_such_module").endswith(
        "ModuleNotFoundError: No module named 'host_no_such_module'"
    )
    # a built-in plugin named as a module too: it is not registered a second time
    code, out, err = cli(capsys, "list", "-p", "rbpbench.methods.plugin")
    assert code == 0 and err == "" and "neumann-rbp" in method_names(out)


# -- shadowed entry points ---------------------------------------------------------------


def two_of_one_name(site: Path, monkeypatch: pytest.MonkeyPatch, first_source: str = GOOD) -> None:
    """Two distributions with an entry point ``host_shadow`` each; ``-a`` comes first on the path."""
    first, second = site / "first", site / "second"
    for folder in (second, first):  # each prepended: first ends up in front
        folder.mkdir()
        monkeypatch.syspath_prepend(str(folder))
    write_module(first, "host_shadow_a", first_source, method="host-first")
    write_module(second, "host_shadow_b", GOOD, method="host-second")
    fake_distribution(first, "rbpbench-shadow-a", "1.0", {"host_shadow": "host_shadow_a"})
    fake_distribution(second, "rbpbench-shadow-b", "2.0", {"host_shadow": "host_shadow_b"})


def shadow_warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "host_shadow" in line]


def test_a_shadowed_entry_point_is_said_naming_both_distributions(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    two_of_one_name(site, monkeypatch)
    registry = load_registry()
    assert "host-first" in registry.methods and "host-second" not in registry.methods
    (warning,) = shadow_warnings(capsys.readouterr().err)
    assert warning == (
        "warning: rbpbench plugin 'host_shadow' (rbpbench-shadow-b 2.0) is not loaded: entry "
        "point name 'host_shadow' already taken by rbpbench-shadow-a 1.0, whose plugin is "
        "loaded instead; rename one of the two entry points or uninstall one distribution"
    )
    code, out, err = cli(capsys, "list")
    assert code == 0 and len(shadow_warnings(err)) == 1 and "host-first" in out
    code, out, _ = cli(capsys, "plugins")
    assert code == 1
    rows = [line for line in out.splitlines() if line.startswith("host_shadow ")]
    assert [line.split()[3] for line in rows] == ["loaded", "shadowed"]
    code, _, err = cli(capsys, "list", "-p", "no:host_shadow")
    assert code == 0 and shadow_warnings(err) == []  # disabled: neither loads, nothing to say


def test_a_shadowed_entry_point_stays_out_when_the_first_fails(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    two_of_one_name(site, monkeypatch, first_source=BAD_IMPORT)
    registry = load_registry()
    assert "host-second" not in registry.methods  # as `rbpbench plugins` says: shadowed
    err = capsys.readouterr().err
    assert len(shadow_warnings(err)) == 2  # the failure and the shadowing
    statuses, _ = plugin_statuses()
    assert [s.status for s in statuses if s.origin.plugin == "host_shadow"] == [
        "failed",
        "shadowed",
    ]


# -- name conflicts --------------------------------------------------------------------------


def test_a_conflict_marks_only_the_two_plugins_involved(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dup = write_module(site, "host_dup", GOOD, method="neumann-rbp")
    statuses, problems = plugin_statuses(PluginConfig.from_environment(modules=[dup]))
    by_name = {s.origin.plugin: s for s in statuses}
    assert by_name["host_dup"].status == by_name["paper-methods"].status == "conflict"
    assert by_name["host_dup"].methods == ("neumann-rbp",)
    assert "neumann-rbp" in by_name["paper-methods"].methods
    assert by_name["builtin-tasks"].status == "loaded"
    assert "contractive-rnn" in by_name["builtin-tasks"].tasks  # used to be blanked
    assert problems == [
        "method 'neumann-rbp' is provided by two plugins: rbpbench 0.1.0 (plugin "
        "'paper-methods') and host_dup local (plugin 'host_dup'); uninstall or disable one of them"
    ]
    code, out, err = cli(capsys, "plugins", "-p", dup)
    assert code == 1 and err.startswith("rbpbench: error: method 'neumann-rbp' is provided")
    assert row(out, "builtin-tasks").split()[3] == "loaded"
    assert "tasks: contractive-rnn" in row(out, "builtin-tasks")
    assert row(out, "host_dup").split()[3:5] == ["conflict", "rbpbench_methods"]
    assert row(out, "host_dup").endswith("methods: neumann-rbp")
    with pytest.raises(PluginError, match="'neumann-rbp' is provided by two plugins"):
        load_registry(PluginConfig.from_environment(modules=[dup]))


# -- as a user meets it ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_commands_survive_bad_plugins(tmp_path: Path) -> None:
    """What the issue asks, as the outside check runs it: plugins on PYTHONPATH, real processes."""
    site = tmp_path / "site"
    site.mkdir()
    write_module(site, "accept_boom", BOOM)
    write_module(site, "accept_typo", TYPO)
    listing = run_cli("list", "-p", "accept_boom", site=site)
    assert listing.returncode == 0, listing.stderr
    assert "accept_boom" in listing.stderr and "neumann-rbp" in listing.stdout
    assert "Traceback" not in listing.stderr
    out = tmp_path / "out"
    run = run_cli("run", "-p", "accept_boom", "--tasks", "contractive-rnn", "--methods",
                  "neumann-rbp", "--truncation", "5", "--seeds", "0", "--out", str(out),
                  site=site)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert set(pd.read_parquet(out / "results.parquet").status) == {"ok"}
    plugins = run_cli("plugins", "-p", "accept_typo", site=site)
    assert plugins.returncode == 1 and "rbpbench_method" in plugins.stdout
    typo_run = run_cli("run", "-p", "accept_typo", "--tasks", "contractive-rnn", "--methods",
                       "neumann-rbp", "--truncation", "5", "--seeds", "0", "--dry-run",
                       site=site)  # fmt: skip
    assert typo_run.returncode == 0 and "unknown hook rbpbench_method" in typo_run.stderr
    # a second distribution with an entry point of the same name (in which order the two
    # are found depends on the file system): one loads, the other is said in one line
    write_module(site, "accept_one", GOOD, method="accept-one")
    write_module(site, "accept_two", GOOD, method="accept-two")
    fake_distribution(site, "rbpbench-accept-one", "0.8", {"accept_same": "accept_one"})
    fake_distribution(site, "rbpbench-accept-two", "0.9", {"accept_same": "accept_two"})
    shadowed = run_cli("list", site=site)
    assert shadowed.returncode == 0, shadowed.stderr
    (warning,) = [line for line in shadowed.stderr.splitlines() if "accept_same" in line]
    assert "rbpbench-accept-one 0.8" in warning and "rbpbench-accept-two 0.9" in warning
    assert len(method_names(shadowed.stdout) & {"accept-one", "accept-two"}) == 1


def test_the_fake_distributions_are_seen(site: Path) -> None:
    fake_distribution(site, "rbpbench-host-fake", "3.1", {"host_fake": "host_fake"})
    write_module(site, "host_fake", GOOD, method="host-fake")
    registry = load_registry(warn=False)
    assert str(registry.methods["host-fake"][1]) == "rbpbench-host-fake 3.1"


# -- forward solvers are contributed, checked and listed as methods and tasks are ---------------


def test_forward_solvers_are_contributed_like_methods(capsys: pytest.CaptureFixture[str]) -> None:
    from rbpbench.forward import iterate
    from rbpbench.problem import ForwardSolverSpec

    solver = ForwardSolverSpec("host-forward", iterate, "a forward solver", in_order=True)
    registry = load_registry(
        extra_plugins=[("fine", plugin_returning([solver], "rbpbench_forward_solvers"))],
        warn=False,
    )
    assert registry.forwards["host-forward"][1].plugin == "fine"
    assert "iterate" in registry.forwards  # rbpbench's own, whatever the plugins
    odd = load_registry(
        extra_plugins=[("odd", plugin_returning([SPEC], "rbpbench_forward_solvers"))], warn=False
    )
    assert "expected ForwardSolverSpec objects" in odd.load_errors["odd"]
    twice = load_registry(
        extra_plugins=[("odd", plugin_returning([solver, solver], "rbpbench_forward_solvers"))],
        warn=False,
    )
    assert "returned two forward solvers named 'host-forward'" in twice.load_errors["odd"]
    taken = ForwardSolverSpec("iterate", iterate, "takes the core's name")
    with pytest.raises(PluginError, match="forward solver 'iterate' is provided by two plugins"):
        load_registry(
            extra_plugins=[("thief", plugin_returning([taken], "rbpbench_forward_solvers"))],
            warn=False,
        )
    code, out, _ = cli(capsys, "list")
    assert code == 0 and "forward solvers:" in out and "iterate" in out.split("forward solvers:")[1]
