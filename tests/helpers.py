"""Helpers for tests that run rbpbench as a user does: a real process, real plugin installs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def run_cli(
    *args: str, site: Path | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m rbpbench ARGS`` in a fresh process, with ``site`` on its path."""
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "rbpbench", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def install_plugin(
    workdir: Path,
    site: Path,
    *,
    distribution: str,
    module: str,
    source: str,
    version: str = "0.1.0",
) -> None:
    """Build and pip-install a one-module plugin distribution into ``site`` (pip --target)."""
    project = workdir / distribution
    project.mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{distribution}"
            version = "{version}"

            [project.entry-points.rbpbench]
            {module} = "{module}"
            """
        )
    )
    (project / f"{module}.py").write_text(textwrap.dedent(source))
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--target", str(site), str(project),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
