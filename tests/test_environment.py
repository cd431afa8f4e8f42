from __future__ import annotations

import datetime
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import rbpbench
from rbpbench.environment import capture_environment, write_environment

REPO = Path(__file__).resolve().parents[1]
PLUGINS = {"rbpbench": "0.1.0", "some-plugin": "2.3.4"}

EXPECTED_KEYS = {
    "run_id",
    "time",
    "python_version",
    "python_implementation",
    "platform",
    "hostname",
    "cpu_model",
    "cpu_count",
    "torch_version",
    "torch_num_threads",
    "torch_cuda_version",
    "cudnn_version",
    "cuda_available",
    "cuda_devices",
    "rbpbench_version",
    "plugin_versions",
    "git_commit",
    "git_dirty",
}


@pytest.fixture(scope="module")
def env() -> dict[str, object]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        return capture_environment("run-test", PLUGINS)


def test_every_key_is_present(env: dict[str, object]) -> None:
    assert set(env) == EXPECTED_KEYS
    assert env["run_id"] == "run-test"
    assert env["plugin_versions"] == PLUGINS


def test_software_versions_are_the_running_ones(env: dict[str, object]) -> None:
    assert env["torch_version"] == torch.__version__
    assert env["torch_num_threads"] == torch.get_num_threads()
    assert env["torch_cuda_version"] == torch.version.cuda
    assert env["rbpbench_version"] == rbpbench.__version__
    assert env["cuda_available"] == torch.cuda.is_available()
    cuda_devices = env["cuda_devices"]
    assert isinstance(cuda_devices, list)
    assert len(cuda_devices) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_time_is_utc_iso_8601(env: dict[str, object]) -> None:
    stamp = datetime.datetime.fromisoformat(str(env["time"]))
    assert stamp.utcoffset() == datetime.timedelta(0)
    age = datetime.datetime.now(datetime.timezone.utc) - stamp
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)


def test_machine_description(env: dict[str, object]) -> None:
    assert isinstance(env["cpu_count"], int) and env["cpu_count"] >= 1
    assert isinstance(env["cpu_model"], str)
    assert isinstance(env["hostname"], str) and env["hostname"]


def test_json_round_trip(env: dict[str, object]) -> None:
    assert json.loads(json.dumps(env)) == env


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_inside_a_repository(env: dict[str, object]) -> None:
    assert re.fullmatch(r"[0-9a-f]{40}", str(env["git_commit"]))
    assert isinstance(env["git_dirty"], bool)


def test_no_git_commit_outside_a_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    outside = capture_environment("run-outside", {})
    assert outside["git_commit"] is None
    assert outside["git_dirty"] is None


def test_write_is_atomic_and_leaves_no_temp_file(env: dict[str, object], tmp_path: Path) -> None:
    target = tmp_path / "environment.json"
    target.write_text("old")
    write_environment(target, env)
    assert [p.name for p in tmp_path.iterdir()] == ["environment.json"]
    text = target.read_text()
    assert text.startswith("{\n  ")  # indented
    assert json.loads(text) == env


def test_unserialisable_env_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "environment.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_environment(target, {"bad": object()})
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["environment.json"]
