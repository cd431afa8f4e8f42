"""docs/plugins.md cannot rot: its example plugins are installed and run, its tables checked.

Every fenced block preceded by ``<!-- example: PROJECT/PATH -->`` is written to
PROJECT/PATH; the projects are pip-installed as a user would and driven
through ``rbpbench run`` and the conformance kit in fresh processes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch

from rbpbench import GradientResult, MethodSpec, Problem, TaskSpec, hookspecs
from rbpbench.measure import relative_error
from rbpbench.testing import checks_for
from rbpbench.testing.kit import KitSettings
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "plugins.md"
EXAMPLE = re.compile(
    r"<!-- example: (?P<path>\S+) -->\n```(?P<lang>\w+)\n(?P<body>.*?)^```", re.S | re.M
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
