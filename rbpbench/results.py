"""The results table: one row per cell, its columns, and its files on disk.

``<out>/results.parquet`` and ``<out>/results.csv`` are rewritten atomically
(a temporary file, fsync, then rename) after every finished cell, so a sweep
killed at any moment leaves both files readable and holding every finished
cell. A rerun on the same folder loads them (the CSV when the Parquet file
is gone) and replaces a cell's row when that cell runs again, so each cell
appears exactly once. A file that cannot be written raises
:class:`StorageError` naming it: the sweep stops there rather than going on
with rows it cannot keep.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from rbpbench.problem import Curves

# Statuses a cell can end in. "ok" and "diverged" are results (the paper's RBP
# blowing up is a finding); the others say why a cell has no result.
OK, DIVERGED, TIMEOUT, ERROR, OOM, CRASHED, SKIPPED = (
    "ok",
    "diverged",
    "timeout",
    "error",
    "oom",
    "crashed",
    "skipped",
)
STATUSES = (OK, DIVERGED, TIMEOUT, ERROR, OOM, CRASHED, SKIPPED)
FAILED = (TIMEOUT, ERROR, OOM, CRASHED, SKIPPED)

# Column name -> meaning. The order is the order of the files.
COLUMNS: dict[str, str] = {
    "cell_id": "hash of the cell's identity (task, method, their parameters, K, seed, device, dtype, versions)",
    "run_id": "identifier of the sweep invocation that produced the row (see environment.json)",
    "task": "task name",
    "task_params": "task parameters as JSON (defaults merged)",
    "method": "gradient method name",
    "method_params": "method parameters as JSON (defaults merged)",
    "truncation": "K: Jacobian products (RBP family, TBPTT) or solver iterations allowed",
    "seed": "seed of the problem",
    "device": "cpu or cuda[:i]",
    "dtype": "floating-point type of the problem",
    "status": "ok | diverged | timeout | error | oom | crashed | skipped",
    "error": "why the cell is not ok: message and last frame (empty when ok)",
    "loss": "loss on the final state",
    "grad_rel_error": "||g - g_bptt|| / ||g_bptt|| on w_F, same problem",
    "grad_cosine": "cosine between g and g_bptt on w_F",
    "grad_rel_error_g": "||g - g_bptt|| / ||g_bptt|| on w_G (readout)",
    "grad_rel_error_total": "||g - g_bptt|| / ||g_bptt|| on w_F and w_G together",
    "grad_cosine_total": "cosine between g and g_bptt on w_F and w_G together",
    "grad_rel_error_exact": "||g - g_exact|| / ||g_exact|| on w_F (NaN if the task has no exact gradient)",
    "spectral_radius": "spectral radius of J at h_{T-1} (of the first adjoint step where the problem names some), from J^T v products: dense eigenvalues up to 512 state numbers, else ARPACK Arnoldi (docs/measurement.md)",
    "wall_time_s": "median wall time of the gradient computation (timing pass, no profiler)",
    "timing_repeats": "how many timed repeats the median is over",
    "peak_memory_bytes": "peak memory of the gradient computation above the baseline (memory pass, garbage collected first)",
    "memory_method": "how peak_memory_bytes was measured: memray or cuda-allocator",
    "cell_time_s": "wall time of the whole cell: problem, references, all passes",
    "train_loss_initial": "training tasks: loss before the first update",
    "train_loss_final": "training tasks: loss after the last update",
    "success": "training tasks: the task's success criterion (hopfield: final loss < 50% of initial)",
    "retrieval_error": "hopfield: fraction of wrong output pixels retrieving the clean images from corrupted ones",
    "val_accuracy": "best validation accuracy (classification tasks)",
    "test_accuracy": "test accuracy at the epoch of best validation accuracy",
    "epochs": "training epochs (or meta steps) run",
    "train_time_s": "wall time of the training run",
    "extra_metrics": "other task metrics as JSON",
    "forward_residual": "||h_T - h_{T-1}||, as the method reported it",
    "forward_relative_residual": "||h_T - h_{T-1}|| / ||h_T||, measured by the harness on the cell's problem",
    "forward_tolerance": "the relative residual below which the forward counts as converged (NaN: not checked)",
    "forward_converged": "forward_relative_residual <= forward_tolerance (null: not checked, e.g. a task whose forward is no fixed-point iteration)",
    "backward_iterations": "backward steps or solver iterations actually taken",
    "backward_residual": "||(I - J^T) z - g|| of the adjoint used (NaN without one)",
    "adjoint_relative_residual": "backward_residual / ||g||, g = dL/dh_T (NaN without an adjoint)",
    "adjoint_tolerance": "the relative residual below which the adjoint counts as solved (NaN without an adjoint)",
    "adjoint_converged": "adjoint_relative_residual <= adjoint_tolerance (null for methods without an adjoint system)",
    "torch_version": "torch version",
    "rbpbench_version": "rbpbench version",
    "method_distribution": "distribution and version providing the method",
    "task_distribution": "distribution and version providing the task",
    "worker": "host:pid of the process that ran the cell",
    "node": "the machine that ran the cell: its host name (under Ray: host/Ray node id); see environment.json",
}
# Columns added after tables were first written: a table without them is still
# resumed, and its earlier rows hold nulls there.
ADDED_COLUMNS = (
    "node",
    "forward_relative_residual",
    "forward_tolerance",
    "forward_converged",
    "adjoint_relative_residual",
    "adjoint_tolerance",
    "adjoint_converged",
)
INTEGER_COLUMNS = (
    "truncation",
    "seed",
    "backward_iterations",
    "peak_memory_bytes",
    "timing_repeats",
    "epochs",
)
BOOLEAN_COLUMNS = ("success", "forward_converged", "adjoint_converged")
FLOAT_COLUMNS = (
    "loss",
    "grad_rel_error",
    "grad_cosine",
    "grad_rel_error_g",
    "grad_rel_error_total",
    "grad_cosine_total",
    "grad_rel_error_exact",
    "spectral_radius",
    "wall_time_s",
    "cell_time_s",
    "train_loss_initial",
    "train_loss_final",
    "retrieval_error",
    "val_accuracy",
    "test_accuracy",
    "train_time_s",
    "forward_residual",
    "forward_relative_residual",
    "forward_tolerance",
    "backward_residual",
    "adjoint_relative_residual",
    "adjoint_tolerance",
)


# Columns a training task's metrics may fill directly.
TRAINING_COLUMNS = (
    "train_loss_initial",
    "train_loss_final",
    "success",
    "retrieval_error",
    "val_accuracy",
    "test_accuracy",
    "epochs",
)

# A row may carry its curves under this key on its way to the store; they are
# written to <out>/curves/<cell_id>.parquet (columns curve, step, value).
CURVES_KEY = "_curves"
# A row from a machine the sweep had not heard from yet may carry that machine's
# description under this key; the driver adds it to environment.json.
NODE_ENVIRONMENT_KEY = "_node_environment"


def read_curves(folder: Path, cell_id: str) -> pd.DataFrame:
    return pd.read_parquet(folder / "curves" / f"{cell_id}.parquet")


def empty_row() -> dict[str, Any]:
    return dict.fromkeys(COLUMNS)


def to_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    for column in INTEGER_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    for column in FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("float64")
    for column in BOOLEAN_COLUMNS:
        frame[column] = frame[column].astype("boolean")
    for column in set(COLUMNS) - set(INTEGER_COLUMNS) - set(FLOAT_COLUMNS) - set(BOOLEAN_COLUMNS):
        frame[column] = frame[column].astype("string")
    return frame


class StorageError(Exception):
    """A results file could not be written; the message names the file and the reason."""


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` then fsync and rename over ``path``: readers see the old file or the new one.

    Any OSError (a full disk, a read-only folder) becomes a :class:`StorageError`
    naming ``path``; the partial file is removed where it can be, and ``path``
    is left as it was.
    """
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        reason = exc.strerror or str(exc)
        raise StorageError(f"could not write {path}: {reason}") from exc


def _csv_rows(path: Path) -> pd.DataFrame:
    """The table as results.csv holds it, with the types results.parquet would give."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows = [
        {k: (None if v == "" and k != "error" else v) for k, v in record.items()}
        for record in raw.to_dict("records")
    ]
    for row in rows:
        for column in BOOLEAN_COLUMNS:
            if row.get(column) is not None:
                row[column] = {"True": True, "False": False}.get(str(row[column]))
    return to_frame([{**empty_row(), **row} for row in rows])


class ResultsFolder:
    """The table of one results folder, kept on disk in step with every finished cell."""

    def __init__(self, folder: Path, *, read: bool = True) -> None:
        self.folder = folder
        self.rows: dict[str, dict[str, Any]] = {}
        self.source: Path | None = None  # the file the rows were read from, if any
        if not read:
            return
        if self.parquet.exists():
            frame, self.source = pd.read_parquet(self.parquet), self.parquet
        elif self.csv.exists() and self.csv.stat().st_size > 0:
            # The Parquet file is gone but the CSV (written after it, for every row) is
            # not: resume from it rather than start over and overwrite it.
            frame, self.source = _csv_rows(self.csv), self.csv
        else:
            return
        missing = set(COLUMNS) - set(frame.columns) - set(ADDED_COLUMNS)
        if missing:
            raise ValueError(
                f"{self.source} is not an rbpbench results table of this version "
                f"(missing columns {sorted(missing)})"
            )
        for record in frame.astype(object).where(frame.notna(), None).to_dict("records"):
            self.rows[str(record["cell_id"])] = {**dict.fromkeys(ADDED_COLUMNS), **record}

    @property
    def parquet(self) -> Path:
        return self.folder / "results.parquet"

    @property
    def csv(self) -> Path:
        return self.folder / "results.csv"

    def finished(self, *, retry_failed: bool) -> set[str]:
        """Ids of the cells a rerun need not run again."""
        return {
            cell_id
            for cell_id, row in self.rows.items()
            if not (retry_failed and row["status"] in FAILED)
        }

    @property
    def curves(self) -> Path:
        return self.folder / "curves"

    def append(self, row: Mapping[str, Any]) -> None:
        """Store a finished cell: its curves first, so a row on disk always has its curves.

        Raises :class:`StorageError` when a file cannot be written; the row is
        then not kept in memory either, so what the folder holds is what the
        sweep believes it holds.
        """
        row = dict(row)
        curves = row.pop(CURVES_KEY, None)
        if curves:
            self.write_curves(str(row["cell_id"]), curves)
        cell_id = str(row["cell_id"])
        before = self.rows.get(cell_id)
        self.rows[cell_id] = row
        try:
            self.flush()
        except StorageError:
            if before is None:
                del self.rows[cell_id]
            else:
                self.rows[cell_id] = before
            raise

    def write_curves(self, cell_id: str, curves: Curves) -> None:
        from rbpbench.curves import to_frame  # the curve convention's stored form

        try:
            self.curves.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"could not create {self.curves}: {exc.strerror or exc}") from exc
        frame = to_frame(curves)
        atomic_write(self.curves / f"{cell_id}.parquet", lambda p: frame.to_parquet(p, index=False))

    def flush(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"could not create {self.folder}: {exc.strerror or exc}") from exc
        frame = self.frame()
        atomic_write(self.parquet, lambda p: frame.to_parquet(p, index=False))
        atomic_write(self.csv, lambda p: frame.to_csv(p, index=False))

    def frame(self) -> pd.DataFrame:
        return to_frame(list(self.rows.values()))


def read(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "results.parquet")
