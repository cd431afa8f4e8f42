"""The plugin host, through installed distributions and entry points, as a third party uses it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rbpbench.plugins import PluginError, load_registry
from rbpbench.problem import MethodSpec
from tests.helpers import install_plugin, run_cli
from tests.plugin_sources import BROKEN, DUPLICATE, TINY


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    return folder


def test_builtins_come_through_entry_points(registry) -> None:
    for name in ("bptt", "tbptt", "rbp", "cg-rbp", "neumann-rbp"):
        _, origin = registry.methods[name]
        assert origin.distribution == "rbpbench"
        assert origin.plugin == "paper-methods"
    assert registry.tasks["contractive-rnn"][1].plugin == "builtin-tasks"


@pytest.mark.slow
def test_an_installed_plugin_is_listed_and_runs(tmp_path: Path, site: Path) -> None:
    install_plugin(
        tmp_path,
        site,
        distribution="rbpbench-tiny",
        module="rbpbench_tiny",
        source=TINY,
        version="0.3.0",
    )
    listing = run_cli("list", site=site)
    assert listing.returncode == 0, listing.stderr
    line = next(row for row in listing.stdout.splitlines() if "tiny-neumann" in row)
    assert "rbpbench-tiny 0.3.0" in line
    out = tmp_path / "out"
    result = run_cli(
        "run", "--methods", "tiny-neumann,neumann-rbp", "--truncation", "8", "--seeds", "0",
        "--out", str(out), site=site,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(out / "results.parquet").set_index("method")
    assert set(frame.status) == {"ok"}
    assert frame.loc["tiny-neumann", "method_distribution"] == "rbpbench-tiny 0.3.0"
    # K // 2 products: a coarser gradient than neumann-rbp's at the same K
    assert (
        frame.loc["tiny-neumann", "grad_rel_error_exact"]
        > frame.loc["neumann-rbp", "grad_rel_error_exact"]
    )


@pytest.mark.slow
def test_a_plugin_that_fails_to_import_is_skipped_with_a_warning(
    tmp_path: Path, site: Path
) -> None:
    install_plugin(
        tmp_path, site, distribution="rbpbench-broken", module="rbpbench_broken", source=BROKEN
    )
    listing = run_cli("list", site=site)
    assert listing.returncode == 0
    warnings = [line for line in listing.stderr.splitlines() if "rbpbench_broken" in line]
    assert len(warnings) == 1
    assert "rbpbench-broken 0.1.0" in warnings[0] and "broken on purpose" in warnings[0]
    assert "neumann-rbp" in listing.stdout and "contractive-rnn" in listing.stdout


@pytest.mark.slow
def test_two_plugins_with_one_name_is_a_clear_error(tmp_path: Path, site: Path) -> None:
    install_plugin(
        tmp_path, site, distribution="rbpbench-dup", module="rbpbench_dup", source=DUPLICATE
    )
    listing = run_cli("list", site=site)
    assert listing.returncode == 2
    message = listing.stderr.strip().splitlines()[-1]
    assert "'neumann-rbp'" in message
    assert "rbpbench 0.1.0" in message and "rbpbench-dup 0.1.0" in message
    out = tmp_path / "out"
    assert run_cli("run", "--out", str(out), site=site).returncode == 2
    assert not out.exists()


def test_an_in_process_plugin_object_registers_too() -> None:
    from rbpbench import hookimpl
    from rbpbench.methods.unrolled import tbptt

    class Extra:
        @hookimpl
        def rbpbench_methods(self) -> list[MethodSpec]:
            return [MethodSpec("my-tbptt", tbptt, "tbptt under another name", unrolls=True)]

    registry = load_registry(extra_plugins=[("extra", Extra())])
    assert registry.method("my-tbptt").unrolls
    with pytest.raises(PluginError, match="my-tbptt"):
        load_registry(extra_plugins=[("extra", Extra()), ("again", Extra())])


def test_a_plugin_returning_the_wrong_kind_of_object_fails_alone_and_is_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rbpbench import hookimpl

    class Confused:
        @hookimpl
        def rbpbench_methods(self) -> list[object]:
            return ["not a MethodSpec"]

    registry = load_registry(extra_plugins=[("confused", Confused())])
    assert "neumann-rbp" in registry.methods  # the others load
    assert registry.load_errors == {
        "confused": "rbpbench_methods() returned 'not a MethodSpec' in its list; "
        "expected MethodSpec objects"
    }
    assert capsys.readouterr().err == (
        "warning: rbpbench plugin 'confused' (confused local) failed: rbpbench_methods() "
        "returned 'not a MethodSpec' in its list; expected MethodSpec objects\n"
    )
