"""A sweep: the cells a command asks for, minus those already finished in its folder, run and stored."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rbpbench.cells import Cell, cell_axes, expand, identity_row
from rbpbench.config import SweepSettings, UsageError
from rbpbench.environment import capture_environment, plugin_versions
from rbpbench.executors import Executor, LocalPool
from rbpbench.plugins import PluginConfig, Registry
from rbpbench.results import (
    CURVES_DIR,
    ENVIRONMENT_FILE,
    JOURNAL,
    LOCK_FILE,
    RESULTS_CSV,
    RESULTS_PARQUET,
    CellOutcome,
    ResultsFolder,
    StorageError,
    atomic_write,
    partial_name,
)


def plan_cells(settings: SweepSettings) -> list[Cell]:
    """The sweep's cells as a list, refused over the cell limit before any is made."""
    return expand(**cell_axes(settings))


# What a sweep writes: a folder holding only these is one to resume.
OWN_FILES = {
    LOCK_FILE,
    ENVIRONMENT_FILE,
    RESULTS_PARQUET,
    RESULTS_CSV,
    partial_name(RESULTS_PARQUET),
    partial_name(RESULTS_CSV),
    partial_name(ENVIRONMENT_FILE),
    JOURNAL,
    CURVES_DIR,
}
# Keys of a run's environment that describe the run rather than a machine.
RUN_KEYS = ("run_id", "time", "git_commit", "git_dirty", "nodes")


def check_out(out: Path) -> None:
    """Refuse an --out that is a file or a stranger's folder, before anything is written."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if (
        out.is_dir()
        and any(p.name not in OWN_FILES for p in out.iterdir())
        and not (out / RESULTS_PARQUET).exists()
        and not (out / RESULTS_CSV).exists()
    ):
        raise UsageError(
            f"--out {out} is not empty and holds no rbpbench results; choose a new folder"
        )


def open_results(out: Path) -> ResultsFolder:
    """The results folder to write: a new one, or an earlier sweep's to resume. Never a stranger's."""
    check_out(out)
    try:
        return ResultsFolder(out)
    except (ValueError, OSError) as exc:
        raise UsageError(f"--out {out}: cannot resume: {exc}") from None


@contextmanager
def exclusive_writer(out: Path) -> Iterator[None]:
    """Hold ``<out>/.lock`` for the sweep: two sweeps writing one folder would lose each other's rows."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_FILE, "a+")  # noqa: SIM115 (held for the whole sweep)
    except OSError as exc:
        raise UsageError(f"--out {out} cannot be written: {exc.strerror or exc}") from None
    try:
        with handle:
            take_lock(out, handle)
            yield
    except UsageError:
        # Refused before its first write (a Ray cluster out of reach, say): leave no folder.
        if created and {p.name for p in out.iterdir()} == {LOCK_FILE}:
            (out / LOCK_FILE).unlink()
            out.rmdir()
        raise


def take_lock(out: Path, handle: Any) -> None:
    """Lock the open ``.lock`` file, or say which process holds it; record our pid in it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        raise UsageError(
            f"--out {out} is being written by another rbpbench run ({handle.read().strip()}); "
            "wait for it or choose another folder"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()


def record_environment(out: Path, run_id: str, env: dict[str, Any]) -> None:
    """Put this run's environment in ``<out>/environment.json`` (one entry per run id)."""
    path = out / ENVIRONMENT_FILE
    runs: dict[str, Any] = json.loads(path.read_text())["runs"] if path.exists() else {}
    runs[run_id] = env
    atomic_write(path, lambda p: p.write_text(json.dumps({"runs": runs}, indent=2, default=str)))


@dataclass
class Sweep:
    """The cells of one command and the folder they are stored in.

    ``hold()`` takes the folder's lock and only then reads what is finished, so
    two sweeps on one folder cannot both start from the same stale table; the
    lock is kept until the last row is written.
    """

    settings: SweepSettings
    registry: Registry
    plugins: PluginConfig
    out: Path
    retry_failed: bool = False

    def __post_init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:12]
        self.cells = plan_cells(self.settings)
        self.ids = [identity_row(c, self.registry, self.run_id)["cell_id"] for c in self.cells]
        if self.settings.executor == "ray":
            from rbpbench.ray_executor import import_ray

            import_ray()  # not installed: one line and exit 2, before anything is written
        check_out(self.out)
        self.results = ResultsFolder(self.out, read=False)  # read under the lock, in hold()
        self.todo: list[Cell] = []
        self._held = False

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Lock the folder, then read its finished cells into ``results`` and ``todo``."""
        with exclusive_writer(self.out):
            self.results = open_results(self.out)
            done = self.results.finished(retry_failed=self.retry_failed)
            self.todo = [c for c, i in zip(self.cells, self.ids, strict=True) if i not in done]
            self._held = True
            try:
                yield
            finally:
                self._held = False

    def executor(self) -> Executor:
        """The one place where the engine is chosen; a Ray executor is connected here, before any write."""
        s = self.settings
        if s.executor == "ray":
            from rbpbench.ray_executor import RayExecutor

            ray = RayExecutor(
                self.registry,
                self.plugins,
                self.run_id,
                s.timeout,
                s.address,
                s.cpus_per_cell,
                s.gpus_per_cell,
            )
            ray.connect()
            return ray
        return LocalPool(self.registry, self.plugins, self.run_id, s.jobs, s.timeout)

    def run(self, on_row: Callable[[dict[str, Any]], None] = lambda row: None) -> None:
        """Run the cells not finished yet; takes the folder's lock unless ``hold()`` has it."""
        if not self._held:
            with self.hold():
                self.run(on_row)
            return
        executor = self.executor() if self.todo else None  # Ray fails here, before any write
        try:
            self._run(executor, on_row)
        finally:
            if executor is not None:
                executor.close()

    def _run(self, executor: Executor | None, on_row: Callable[[dict[str, Any]], None]) -> None:
        env = capture_environment(self.run_id, plugin_versions(self.registry))
        # One entry per machine that ran cells. The local pool's workers run on this one.
        env["nodes"] = nodes = {}
        record_environment(self.out, self.run_id, env)
        self.results.flush()

        def store(outcome: CellOutcome) -> None:
            row = outcome.row
            node = row.get("node")
            if node and node not in nodes:
                nodes[node] = outcome.node_environment or {
                    **{k: v for k, v in env.items() if k not in RUN_KEYS},
                    "node": node,
                }
                record_environment(self.out, self.run_id, env)
            self.results.append(outcome)
            on_row(row)

        if executor is None:
            return
        try:
            executor.run(self.todo, store)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM, a storage failure): fold the journal into the
            # table if the disk lets us; the journal keeps every row if it does not.
            with contextlib.suppress(StorageError):
                self.results.compact()
            raise
        self.results.compact()

    def frame(self) -> pd.DataFrame:
        """This command's cells (finished earlier or now), in the order of the plan."""
        frame = self.results.frame().set_index("cell_id", drop=False)
        return frame.loc[[i for i in self.ids if i in frame.index]].reset_index(drop=True)
