"""Plugin controls as a user meets them: real installs, real processes.

Disabling a plugin by name (-p no:NAME, --disable-plugin NAME), turning off
entry-point loading (RBPBENCH_DISABLE_PLUGIN_AUTOLOAD), ``rbpbench plugins``,
and plugins that misbehave: one that fails to import, two that give one name,
methods whose gradients have the wrong shape or dtype.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import install_plugin, run_cli
from tests.plugin_sources import BROKEN, DUPLICATE, TINY

pytestmark = pytest.mark.slow


FORGETFUL = """
    from rbpbench import MethodSpec
    from rbpbench.methods.unrolled import bptt


    def rbpbench_methods():  # no @hookimpl: pluggy does not see it
        return [MethodSpec("forgotten", bptt, "never registered")]
"""

SLOPPY = """
    import dataclasses

    from rbpbench import MethodSpec, hookimpl
    from rbpbench.methods.implicit import neumann_rbp


    def wrong_dtype(problem, truncation, *, diagnostics=True, **params):
        result = neumann_rbp(problem, truncation, diagnostics=diagnostics)
        return dataclasses.replace(result, grads_f=tuple(g.float() for g in result.grads_f))


    def wrong_shape(problem, truncation, *, diagnostics=True, **params):
        result = neumann_rbp(problem, truncation, diagnostics=diagnostics)
        return dataclasses.replace(result, grads_g=tuple(g[..., None] for g in result.grads_g))


    @hookimpl
    def rbpbench_methods():
        return [
            MethodSpec("wrong-dtype", wrong_dtype, "float32 gradients for float64 parameters"),
            MethodSpec("wrong-shape", wrong_shape, "readout gradients with an extra axis"),
        ]
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    return folder


def method_names(listing: str) -> set[str]:
    """The method names of ``rbpbench list`` output."""
    lines = listing.split("tasks:")[0].splitlines()[1:]
    return {line.split()[0] for line in lines if line.strip()}


def plugin_line(listing: str, plugin: str) -> str:
    return next(line for line in listing.splitlines() if line.split()[:1] == [plugin])


def test_a_plugin_disabled_by_name_is_not_loaded(tmp_path: Path, site: Path) -> None:
    install_plugin(
        tmp_path, site, distribution="rbpbench-tiny", module="rbpbench_tiny", source=TINY
    )
    install_plugin(tmp_path, site, distribution="rbpbench-broken", module="rbpbench_broken",
                   source=BROKEN)  # fmt: skip
    listing = run_cli("list", site=site)
    assert "tiny-neumann" in method_names(listing.stdout) and "broken on purpose" in listing.stderr
    # both spellings, and the built-in plugins are plugins like any other
    quiet = run_cli("list", "-p", "no:rbpbench_tiny", "--disable-plugin", "rbpbench_broken",
                    "--disable-plugin", "paper-methods", site=site)  # fmt: skip
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""  # the broken plugin is not even imported
    names = method_names(quiet.stdout)
    assert "tiny-neumann" not in names and "bptt" not in names and "neumann-rbp" not in names
    assert "contractive-rnn" in quiet.stdout
    run = run_cli("run", "--methods", "tiny-neumann", "-p", "no:rbpbench_tiny",
                  "--out", str(tmp_path / "out"), site=site)  # fmt: skip
    assert run.returncode == 2
    assert "unknown method tiny-neumann" in run.stderr
    assert not (tmp_path / "out").exists()
    plugins = run_cli("plugins", "-p", "no:rbpbench_tiny", site=site)
    assert plugin_line(plugins.stdout, "rbpbench_tiny").split()[3] == "disabled"


def test_the_environment_variable_turns_off_entry_points(
    tmp_path: Path, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, site, distribution="rbpbench-tiny", module="rbpbench_tiny",
                   source=TINY, version="0.3.0")  # fmt: skip
    monkeypatch.setenv("RBPBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")  # run_cli's processes inherit it
    bare = run_cli("list", site=site)
    assert bare.returncode == 0 and method_names(bare.stdout) == set()
    plugins = run_cli("plugins", site=site)
    assert plugins.returncode == 0
    line = plugin_line(plugins.stdout, "rbpbench_tiny")
    assert "not autoloaded" in line and "RBPBENCH_DISABLE_PLUGIN_AUTOLOAD is set" in line
    chosen = ("-p", "rbpbench_tiny", "-p", "rbpbench.methods.plugin",
              "-p", "rbpbench.tasks.plugin")  # fmt: skip
    listing = run_cli("list", *chosen, site=site)
    assert method_names(listing.stdout) == {
        "tiny-neumann", "bptt", "tbptt", "rbp", "cg-rbp", "neumann-rbp", "jfb", "phantom",
    }  # fmt: skip
    line = next(row for row in listing.stdout.splitlines() if "tiny-neumann" in row)
    assert "rbpbench-tiny 0.3.0" in line
    # the worker processes load the same plugins as the command
    out = tmp_path / "out"
    run = run_cli("run", *chosen, "--tasks", "contractive-rnn", "--methods",
                  "tiny-neumann,neumann-rbp", "--truncation", "6", "--seeds", "0",
                  "--task-param", "steps=100", "--out", str(out), site=site)  # fmt: skip
    assert run.returncode == 0, run.stderr
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame.status) == {"ok"}


def test_rbpbench_plugins_lists_every_plugin_and_its_load_error(tmp_path: Path, site: Path) -> None:
    install_plugin(tmp_path, site, distribution="rbpbench-tiny", module="rbpbench_tiny",
                   source=TINY, version="0.3.0")  # fmt: skip
    install_plugin(tmp_path, site, distribution="rbpbench-broken", module="rbpbench_broken",
                   source=BROKEN)  # fmt: skip
    install_plugin(tmp_path, site, distribution="rbpbench-forgetful", module="rbpbench_forgetful",
                   source=FORGETFUL)  # fmt: skip
    result = run_cli("plugins", site=site)
    assert result.returncode == 1  # a plugin failed to load
    assert result.stdout.splitlines()[0].split() == [
        "plugin", "distribution", "status", "hooks", "provides", "/", "error",
    ]  # fmt: skip
    broken = plugin_line(result.stdout, "rbpbench_broken")
    assert broken.split()[1:4] == ["rbpbench-broken", "0.1.0", "failed"]
    assert broken.endswith("ImportError: this plugin is broken on purpose")
    tiny = plugin_line(result.stdout, "rbpbench_tiny")
    assert tiny.split()[1:5] == ["rbpbench-tiny", "0.3.0", "loaded", "rbpbench_methods"]
    assert tiny.endswith("methods: tiny-neumann")
    forgetful = plugin_line(result.stdout, "rbpbench_forgetful")
    assert forgetful.split()[3:5] == ["loaded", "(none)"]  # a hint: no @hookimpl found
    paper = plugin_line(result.stdout, "paper-methods")
    assert "rbpbench 0.1.0" in paper and paper.endswith(
        "methods: bptt, tbptt, rbp, cg-rbp, neumann-rbp, jfb, phantom"
    )
    assert "tasks: contractive-rnn" in plugin_line(result.stdout, "builtin-tasks")
    assert result.stderr == ""  # no load warnings: the table says it
    healthy = run_cli("plugins", "-p", "no:rbpbench_broken", site=site)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr


def test_rbpbench_plugins_shows_both_sides_of_a_name_conflict(tmp_path: Path, site: Path) -> None:
    install_plugin(tmp_path, site, distribution="rbpbench-dup", module="rbpbench_dup",
                   source=DUPLICATE)  # fmt: skip
    result = run_cli("plugins", site=site)
    assert result.returncode == 1
    dup = plugin_line(result.stdout, "rbpbench_dup")
    assert dup.split()[3] == "conflict" and dup.endswith("methods: neumann-rbp")
    paper = plugin_line(result.stdout, "paper-methods")
    assert paper.split()[3] == "conflict" and "neumann-rbp" in paper
    # only the two plugins involved are marked; the others keep what they provide
    tasks = plugin_line(result.stdout, "builtin-tasks")
    assert tasks.split()[3] == "loaded" and "tasks: contractive-rnn" in tasks
    message = result.stderr.strip()
    assert message.startswith("rbpbench: error: method 'neumann-rbp' is provided by two plugins")
    assert "rbpbench 0.1.0" in message and "rbpbench-dup 0.1.0" in message


def test_wrong_gradients_give_clear_errors_and_the_sweep_completes(
    tmp_path: Path, site: Path
) -> None:
    install_plugin(tmp_path, site, distribution="rbpbench-sloppy", module="rbpbench_sloppy",
                   source=SLOPPY)  # fmt: skip
    out = tmp_path / "out"
    run = run_cli("run", "--tasks", "contractive-rnn", "--methods",
                  "wrong-dtype,wrong-shape,neumann-rbp", "--truncation", "4", "--seeds", "0",
                  "--task-param", "steps=60", "--out", str(out), site=site)  # fmt: skip
    assert run.returncode == 0, run.stderr
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) == 3
    by_method = frame.groupby("method")
    assert set(by_method.get_group("neumann-rbp").status) == {"ok"}
    dtype_rows = by_method.get_group("wrong-dtype")
    assert set(dtype_rows.status) == {"error"}
    assert all(
        "grads_f[0] is (32, 32) torch.float32 cpu; the parameter is (32, 32) "
        "torch.float64 cpu" in error
        for error in dtype_rows.error
    )
    shape_rows = by_method.get_group("wrong-shape")
    assert set(shape_rows.status) == {"error"}
    assert all(
        "grads_g[0] is (4, 32, 1) torch.float64 cpu; the parameter is (4, 32)" in error
        for error in shape_rows.error
    )
    assert set(frame.method_distribution[frame.method != "neumann-rbp"]) == {
        "rbpbench-sloppy 0.1.0"
    }
    # the conformance kit says the same before any sweep is run
    kit = run_cli_pytest(site, "--rbpbench-method", "wrong-dtype", "-k", "result-contract")
    assert kit.returncode == 1
    assert "wrong-dtype: grads_f[0] is (32, 32) torch.float32 cpu" in kit.stdout


def run_cli_pytest(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pytest --pyargs rbpbench.testing ARGS`` in a fresh process, with ``site`` on its path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "rbpbench.testing", "-p", "no:cacheprovider",
         *args],
        capture_output=True, text=True, env=env, cwd=site, timeout=600,
    )  # fmt: skip
