"""The machine a sweep ran on, captured once per sweep and written next to its results."""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

import rbpbench
from rbpbench.plugins import Registry

GIT_TIMEOUT_S = 5.0


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo on Linux, else whatever platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor()


def _git(*args: str) -> str | None:
    """``git ARGS`` in the current directory; None when git is missing, fails or hangs."""
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def _cudnn_version() -> int | None:
    try:
        if torch.backends.cudnn.is_available():
            return torch.backends.cudnn.version()
    except RuntimeError:  # a cuDNN that fails to load is reported as absent
        pass
    return None


def _cuda_devices() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            {
                "index": index,
                "name": props.name,
                "total_memory_bytes": int(props.total_memory),
                "capability": f"{props.major}.{props.minor}",
            }
        )
    return devices


def plugin_versions(registry: Registry) -> dict[str, str]:
    """Plugin name -> "distribution version" of every plugin providing a method or a task."""
    return {
        origin.plugin: f"{origin.distribution} {origin.version}"
        for _, origin in [*registry.methods.values(), *registry.tasks.values()]
    }


def capture_environment(run_id: str, plugin_versions: dict[str, str]) -> dict[str, Any]:
    """A JSON-serialisable description of this machine, its software and the checkout."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit is not None else None
    return {
        "run_id": run_id,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **machine_environment(plugin_versions),
        "git_commit": commit.strip() if commit is not None else None,
        "git_dirty": bool(status.strip()) if status is not None else None,
    }


def machine_environment(plugin_versions: dict[str, str]) -> dict[str, Any]:
    """This machine and its software: what environment.json records for each node that ran cells."""
    return {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_cuda_version": torch.version.cuda,
        "cudnn_version": _cudnn_version(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": _cuda_devices(),
        "rbpbench_version": rbpbench.__version__,
        "plugin_versions": dict(plugin_versions),
    }


def write_environment(path: Path, env: dict[str, Any]) -> None:
    """Write ``env`` to ``path`` as indented JSON, atomically: readers see the old file or the new."""
    text = json.dumps(env, indent=2, sort_keys=True) + "\n"
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
