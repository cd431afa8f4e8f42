"""The results table: one row per cell, its columns, and its files on disk.

Both files are rewritten atomically (write to a temporary file, then rename)
after every cell, so an interrupted sweep leaves readable files holding every
finished cell.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

# Column name -> meaning. The order is the order of the files.
COLUMNS: dict[str, str] = {
    "run_id": "identifier of the sweep that produced the row",
    "task": "task name",
    "task_params": "task parameters as JSON (defaults merged)",
    "method": "gradient method name",
    "method_params": "method parameters as JSON (defaults merged)",
    "truncation": "K: Jacobian products (RBP family, TBPTT) or solver iterations allowed",
    "seed": "seed of the problem",
    "device": "cpu or cuda[:i]",
    "dtype": "floating-point type of the problem",
    "status": "ok | diverged | error | skipped",
    "error": "why the cell is not ok (empty when ok)",
    "loss": "loss on the final state",
    "grad_rel_error": "||g - g_bptt|| / ||g_bptt|| on w_F, same problem",
    "grad_cosine": "cosine between g and g_bptt on w_F",
    "grad_rel_error_exact": "||g - g_exact|| / ||g_exact|| on w_F (NaN if the task has no exact gradient)",
    "wall_time_s": "median wall time of the gradient computation (timing pass, no profiler)",
    "peak_memory_bytes": "peak memory of the gradient computation above the baseline (memory pass)",
    "memory_method": "how peak_memory_bytes was measured: memray or cuda-allocator",
    "forward_residual": "||h_T - h_{T-1}||",
    "backward_iterations": "backward steps or solver iterations actually taken",
    "backward_residual": "||(I - J^T) z - g|| of the adjoint used (NaN without one)",
    "torch_version": "torch version",
    "rbpbench_version": "rbpbench version",
    "method_distribution": "distribution and version providing the method",
    "task_distribution": "distribution and version providing the task",
}


def empty_row() -> dict[str, Any]:
    return dict.fromkeys(COLUMNS)


def to_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    for column in ("truncation", "seed", "backward_iterations", "peak_memory_bytes"):
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    for column in ("loss", "grad_rel_error", "grad_cosine", "grad_rel_error_exact"):
        frame[column] = pd.to_numeric(frame[column]).astype("float64")
    for column in ("wall_time_s", "forward_residual", "backward_residual"):
        frame[column] = pd.to_numeric(frame[column]).astype("float64")
    return frame


def _atomic_write(path: Path, write: Any) -> None:
    partial = path.with_name(f".{path.name}.partial")
    write(partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)


class ResultsFolder:
    """``<out>/results.parquet`` and ``<out>/results.csv``, kept in step with every finished cell."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rows: list[dict[str, Any]] = []

    @property
    def parquet(self) -> Path:
        return self.folder / "results.parquet"

    @property
    def csv(self) -> Path:
        return self.folder / "results.csv"

    def append(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        self.folder.mkdir(parents=True, exist_ok=True)
        frame = to_frame(self.rows)
        _atomic_write(self.parquet, lambda p: frame.to_parquet(p, index=False))
        _atomic_write(self.csv, lambda p: frame.to_csv(p, index=False))

    def frame(self) -> pd.DataFrame:
        return to_frame(self.rows)


def read(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "results.parquet")
