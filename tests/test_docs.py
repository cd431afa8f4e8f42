"""docs/plugins.md cannot rot: its example plugins are installed and run, its tables checked.

Every fenced block preceded by ``<!-- example: PROJECT/PATH -->`` is written to
PROJECT/PATH; the projects are pip-installed as a user would and driven
through ``rbpbench run`` and the conformance kit in fresh processes.

The names the guide shows as importable from ``rbpbench`` (its ``from rbpbench
import`` lines and its table of exports) must be exported, and the table must
list all of ``rbpbench.__all__``. Its signatures are checked too, by this
convention: an inline code span ``NAME(PARAMS)``, optionally followed by ``->
RETURN``, is a signature when NAME (after an optional ``rbpbench.``) is in
``rbpbench.__all__``, is ``Class.method`` of an exported class, or is one of
the roles in :data:`ROLES` (``compute``, ``build``, ``solve``: every installed
method's compute, task's build, built-in solver). PARAMS must parse as a
Python parameter list, with a trailing ``...`` meaning "and further
parameters"; names, order, kinds (``*``, ``**``) and defaults must match
``inspect.signature`` of the real object (a parameter shown without a
default has none; a default matches when it is the real one's repr or a
literal equal to it; a dataclass field's default factory is called). Spans
in fenced blocks are not signatures: the examples are run instead.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest
import torch

import rbpbench
from rbpbench import GradientResult, MethodSpec, Problem, TaskSpec, hookspecs
from rbpbench.measure import relative_error
from rbpbench.plugins import load_registry
from rbpbench.testing import checks_for
from rbpbench.testing.kit import KitSettings
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "plugins.md"
EXAMPLE = re.compile(
    r"<!-- example: (?P<path>\S+) -->\n```(?P<lang>\w+)\n(?P<body>.*?)^```", re.S | re.M
)
FENCED = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.S | re.M)
COMMENT = re.compile(r"<!--.*?-->", re.S)
SPAN = re.compile(r"`([^`]+)`")
SIGNATURE = re.compile(
    r"^(?:rbpbench\.)?(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)\((?P<params>.*)\)(?:\s*->\s*\S.*)?$"
)


def examples() -> dict[str, str]:
    found = {m["path"]: m["body"] for m in EXAMPLE.finditer(GUIDE.read_text())}
    assert found, "docs/plugins.md has no <!-- example: ... --> blocks"
    return found


def write_examples(root: Path) -> list[Path]:
    """Write every example file under ``root``; return the project folders."""
    for path, body in examples().items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    return sorted({root / path.split("/")[0] for path in examples()})


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guide_holds_a_method_plugin_and_a_task_plugin() -> None:
    assert set(examples()) == {
        "rbpbench-relaxed/pyproject.toml",
        "rbpbench-relaxed/rbpbench_relaxed.py",
        "rbpbench-relaxed/tests/test_relaxed.py",
        "rbpbench-linear/pyproject.toml",
        "rbpbench-linear/rbpbench_linear.py",
    }


def test_the_guide_names_every_hook_field_check_and_option() -> None:
    text = GUIDE.read_text()
    hooks = [name for name in vars(hookspecs) if name.startswith("rbpbench_")]
    assert hooks and all(f"`{hook}()`" in text for hook in hooks)
    for cls in (Problem, GradientResult, MethodSpec, TaskSpec):
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in text or f"{f.name}=" in text, (cls.__name__, f.name)
    for check in checks_for(KitSettings()):
        assert check.split("-rho")[0] in text, check
    for option in ("method", "truncation", "tolerance", "param", "plugin", "device"):
        assert f"--rbpbench-{option}" in text


def prose() -> str:
    """The guide without its fenced blocks and HTML comments."""
    return COMMENT.sub("", FENCED.sub("", GUIDE.read_text()))


def spans() -> Iterator[str]:
    for m in SPAN.finditer(prose()):
        yield " ".join(m[1].split())


def python_blocks() -> list[str]:
    return [m["body"] for m in FENCED.finditer(GUIDE.read_text()) if m["lang"] == "python"]


def imported_from_rbpbench(source: str) -> set[str]:
    return {
        alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.module == "rbpbench"
        for alias in node.names
    }


def export_table() -> set[str]:
    """The names in the first column of the table under "What rbpbench exports"."""
    section = GUIDE.read_text().split("## What rbpbench exports", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`(\w+)`", row)}


def test_every_name_the_guide_imports_from_rbpbench_is_exported() -> None:
    shown = export_table()
    for block in python_blocks():
        shown |= imported_from_rbpbench(block)
    for span in spans():
        if span.startswith("from rbpbench import ") and not span.endswith("..."):
            shown |= imported_from_rbpbench(span)
    assert {"implicit_method", "LinearisedStep", "state", "run", "check_method"} <= shown
    missing = sorted(n for n in shown if n not in rbpbench.__all__ or not hasattr(rbpbench, n))
    assert not missing, f"the guide shows {missing} as importable from rbpbench"
    unlisted = sorted(set(rbpbench.__all__) - export_table() - {"__version__"})
    assert not unlisted, f"rbpbench exports {unlisted}, which the guide's table does not list"


def test_the_guides_python_imports_only_the_top_level() -> None:
    for block in python_blocks():
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("rbpbench."), ast.unparse(node)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("rbpbench."), ast.unparse(node)


def _methods() -> list[Callable[..., Any]]:
    return [spec.compute for spec, _ in load_registry().methods.values()]


def _builds() -> list[Callable[..., Any]]:
    return [spec.build for spec, _ in load_registry().tasks.values()]


# Names the guide uses for a role, and the real objects each signature must match.
ROLES: dict[str, Callable[[], list[Callable[..., Any]]]] = {
    "compute": _methods,
    "build": _builds,
    "solve": lambda: [rbpbench.fixed_point, rbpbench.neumann, rbpbench.cg_normal_equations],
}


def real_objects(name: str) -> list[Any] | None:
    """What a signature's NAME stands for; None: not a signature the convention checks."""
    if name in ROLES:
        return ROLES[name]()
    owner, _, attribute = name.partition(".")
    if owner not in rbpbench.__all__:
        return None
    target = getattr(rbpbench, owner)
    return [getattr(target, attribute) if attribute else target]


@dataclasses.dataclass
class Shown:
    """One parameter as the guide shows it."""

    name: str
    kind: inspect._ParameterKind
    default: str | None  # its source text; None: shown without a default


def shown_parameters(text: str) -> tuple[list[Shown], bool]:
    """The parameters of ``text`` (the inside of the parentheses), and whether it ends in ``...``."""
    text = text.strip()
    open_ended = text == "..." or text.endswith(", ...")
    if open_ended:
        text = text.removesuffix("...").rstrip().rstrip(",")
    tree = ast.parse(f"def f({text}): pass").body[0]
    assert isinstance(tree, ast.FunctionDef)
    a = tree.args
    positional = a.posonlyargs + a.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults))
    defaults += a.defaults
    shown = [
        Shown(p.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, d and ast.unparse(d))
        for p, d in zip(positional, defaults, strict=True)
    ]
    if a.vararg:
        shown.append(Shown(a.vararg.arg, inspect.Parameter.VAR_POSITIONAL, None))
    for p, kw_default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        default = None if kw_default is None else ast.unparse(kw_default)
        shown.append(Shown(p.arg, inspect.Parameter.KEYWORD_ONLY, default))
    if a.kwarg:
        shown.append(Shown(a.kwarg.arg, inspect.Parameter.VAR_KEYWORD, None))
    return shown, open_ended


def real_parameters(target: Any) -> list[inspect.Parameter]:
    """``inspect.signature``'s parameters, with ``self`` dropped and default factories called."""
    params = list(inspect.signature(target).parameters.values())
    if inspect.isfunction(target) and params and params[0].name == "self":
        params = params[1:]  # Class.method, looked up on the class
    if dataclasses.is_dataclass(target):
        factories = {
            f.name: f.default_factory
            for f in dataclasses.fields(target)
            if f.default_factory is not dataclasses.MISSING
        }
        params = [
            p.replace(default=factories[p.name]()) if p.name in factories else p for p in params
        ]
    return params


def same_default(text: str, real: Any) -> bool:
    if text == repr(real):
        return True
    try:
        value = ast.literal_eval(text)
    except ValueError:
        return False
    return type(value) is type(real) and value == real


def signature_problems(span: str, target: Any) -> list[str]:
    m = SIGNATURE.match(span)
    assert m is not None
    try:
        shown, open_ended = shown_parameters(m["params"])
    except SyntaxError:
        return [f"`{span}`: not a parameter list (write a call that is no signature without ())"]
    real = real_parameters(target)
    where = f"`{span}` against {getattr(target, '__qualname__', target)}{inspect.signature(target)}"
    if len(real) < len(shown) or (len(real) > len(shown) and not open_ended):
        return [f"{where}: {len(shown)} parameters shown, {len(real)} real"]
    problems = []
    for s, r in zip(shown, real, strict=False):
        if s.name != r.name or s.kind != r.kind:
            problems.append(
                f"{where}: {s.name} ({s.kind.description}) is {r.name} ({r.kind.description})"
            )
        elif s.default is None and r.default is not inspect.Parameter.empty:
            problems.append(f"{where}: {s.name} is shown without its default {r.default!r}")
        elif s.default is not None and (
            r.default is inspect.Parameter.empty or not same_default(s.default, r.default)
        ):
            problems.append(f"{where}: {s.name}={s.default} is really {r.default!r}")
    return problems


def test_the_guides_signatures_match_the_code() -> None:
    checked, problems = set(), []
    for span in spans():
        m = SIGNATURE.match(span)
        targets = real_objects(m["name"]) if m else None
        if not targets:
            continue
        checked.add(m["name"])
        for target in targets:
            problems += signature_problems(span, target)
    assert not problems, "\n".join(problems)
    assert {"implicit_method", "MethodSpec", "TaskSpec", "compute", "build", "solve"} <= checked
    assert {"LinearisedStep", "LinearisedStep.param_vjp", "LossTerms", "fixed_point"} <= checked


def test_the_signature_check_catches_what_it_should() -> None:
    def f(a, b=1, *, c, d=None, **extra):
        pass

    assert signature_problems("f(a, b=1, *, c, d=None, **extra)", f) == []
    assert signature_problems("f(a, b=1, ...)", f) == []
    assert signature_problems("f(a, b=1, *, c, d=None, **extra) -> None", f) == []
    assert signature_problems("f(a, b=2, *, c, d=None, **extra)", f)  # wrong default
    assert signature_problems("f(a, b, *, c, d=None, **extra)", f)  # default left out
    assert signature_problems("f(a, b=1, c, d=None, **extra)", f)  # c is keyword-only
    assert signature_problems("f(a, b=1)", f)  # not open-ended: parameters missing
    assert signature_problems("f(x, ...)", f)  # wrong name
    assert signature_problems('f("x")', f)  # a call, not a signature


def test_the_examples_work_in_process(tmp_path: Path) -> None:
    """Quick: import the two example modules and run the method on the task."""
    write_examples(tmp_path)
    relaxed = load_module(tmp_path / "rbpbench-relaxed" / "rbpbench_relaxed.py")
    linear = load_module(tmp_path / "rbpbench-linear" / "rbpbench_linear.py")
    [method] = relaxed.rbpbench_methods()
    [task] = linear.rbpbench_tasks()
    assert isinstance(method, MethodSpec) and isinstance(task, TaskSpec)
    problem = task.build(seed=0, device=torch.device("cpu"), dtype=task.dtype, **task.defaults)
    result = method.compute(problem, 150, **method.defaults)
    assert problem.exact_gradient is not None
    assert relative_error(result.grads_f, problem.exact_gradient()) < 1e-8
    assert result.backward_iterations <= 150 and result.backward_residual < 1e-8
    assert math.isfinite(result.forward_residual)


@pytest.mark.slow
def test_the_guides_plugins_install_and_run(tmp_path: Path) -> None:
    site = tmp_path / "site"
    projects = write_examples(tmp_path / "projects")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), *map(str, projects)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    listing = run_cli("list", site=site)
    assert listing.returncode == 0, listing.stderr
    assert "rbpbench-relaxed 0.1.0" in next(
        line for line in listing.stdout.splitlines() if "relaxed-rbp" in line
    )
    assert "rbpbench-linear 0.1.0" in next(
        line for line in listing.stdout.splitlines() if "linear-rnn" in line
    )
    out = tmp_path / "run"
    run = run_cli(
        "run", "--tasks", "linear-rnn,contractive-rnn", "--methods", "relaxed-rbp,neumann-rbp",
        "--truncation", "5,100", "--seeds", "0", "--out", str(out), site=site,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    frame = pd.read_parquet(out / "results.parquet").set_index(["task", "method", "truncation"])
    assert set(frame.status) == {"ok"} and len(frame) == 8
    for task in ("linear-rnn", "contractive-rnn"):
        assert frame.loc[(task, "relaxed-rbp", 100), "grad_rel_error_exact"] < 1e-4
        assert (
            frame.loc[(task, "relaxed-rbp", 5), "grad_rel_error_exact"]
            > frame.loc[(task, "relaxed-rbp", 100), "grad_rel_error_exact"]
        )
    assert frame.loc[("linear-rnn", "neumann-rbp", 100), "grad_rel_error_exact"] < 1e-8

    # the guide's conformance commands: its pytest line and its example test file
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    kit = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "--pyargs",
         "rbpbench.testing", "--rbpbench-method", "relaxed-rbp",
         str(projects[1] / "tests" / "test_relaxed.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert kit.returncode == 0, kit.stdout + kit.stderr
    assert "8 passed" in kit.stdout  # seven checks, and the example's test
    assert "conformance of 'relaxed-rbp': passed" in kit.stdout
