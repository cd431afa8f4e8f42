"""Fixtures shared by the task tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rbpbench.data import DATA_DIR_ENV

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "MNIST" / "raw"


@pytest.fixture
def mnist_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root holding MNIST's raw files: the CI copy if set, else links to the shared ones."""
    if os.environ.get(DATA_DIR_ENV) and (Path(os.environ[DATA_DIR_ENV]) / "MNIST" / "raw").is_dir():
        return Path(os.environ[DATA_DIR_ENV])
    if not SHARED_MNIST.is_dir():
        pytest.skip("no MNIST raw files on this machine")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for source in SHARED_MNIST.iterdir():
        (raw / source.name).symlink_to(source)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    return tmp_path
