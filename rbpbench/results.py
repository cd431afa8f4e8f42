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
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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

# The pandas types of the columns (nullable, so that a cell without a value holds a null).
STRING, INTEGER, FLOAT, BOOLEAN = "string", "Int64", "float64", "boolean"


@dataclass(frozen=True)
class Column:
    """One column of the results table, declared once: its name, type and meaning.

    ``added``: added after tables were first written, so a table without it is
    still resumed and its earlier rows hold nulls there. ``training``: a
    training task's metrics may fill it directly (other metrics go to
    ``extra_metrics``).
    """

    name: str
    dtype: str
    meaning: str
    added: bool = False
    training: bool = False


# The results table's columns, in the order of the files. Everything below derives from it.
SCHEMA: tuple[Column, ...] = (
    Column(
        "cell_id",
        STRING,
        "hash of the cell's identity (task, method, their parameters, K, seed, device, dtype, versions)",
    ),
    Column(
        "run_id",
        STRING,
        "identifier of the sweep invocation that produced the row (see environment.json)",
    ),
    Column("task", STRING, "task name"),
    Column("task_params", STRING, "task parameters as JSON (defaults merged)"),
    Column("method", STRING, "gradient method name"),
    Column("method_params", STRING, "method parameters as JSON (defaults merged)"),
    Column(
        "forward",
        STRING,
        "forward solver that found h* (iterate: T steps of F; rows older than the column: iterate)",
        added=True,
    ),
    Column(
        "forward_params", STRING, "forward solver parameters as JSON (defaults merged)", added=True
    ),
    Column(
        "truncation",
        INTEGER,
        "K: Jacobian products (RBP family, TBPTT) or solver iterations allowed",
    ),
    Column("seed", INTEGER, "seed of the problem"),
    Column("device", STRING, "cpu or cuda[:i]"),
    Column("dtype", STRING, "floating-point type of the problem"),
    Column("status", STRING, "ok | diverged | timeout | error | oom | crashed | skipped"),
    Column("error", STRING, "why the cell is not ok: message and last frame (empty when ok)"),
    Column("loss", FLOAT, "loss on the final state"),
    Column("grad_rel_error", FLOAT, "||g - g_bptt|| / ||g_bptt|| on w_F, same problem"),
    Column("grad_cosine", FLOAT, "cosine between g and g_bptt on w_F"),
    Column("grad_rel_error_g", FLOAT, "||g - g_bptt|| / ||g_bptt|| on w_G (readout)"),
    Column("grad_rel_error_total", FLOAT, "||g - g_bptt|| / ||g_bptt|| on w_F and w_G together"),
    Column("grad_cosine_total", FLOAT, "cosine between g and g_bptt on w_F and w_G together"),
    Column(
        "grad_rel_error_exact",
        FLOAT,
        "||g - g_exact|| / ||g_exact|| on w_F (NaN if the task has no exact gradient)",
    ),
    Column(
        "spectral_radius",
        FLOAT,
        "spectral radius of J at h_{T-1} (of the first adjoint step where the problem names some), from J^T v products: dense eigenvalues up to 512 state numbers, else ARPACK Arnoldi (docs/measurement.md)",
    ),
    Column(
        "wall_time_s",
        FLOAT,
        "median wall time of the gradient computation (timing pass, no profiler)",
    ),
    Column("timing_repeats", INTEGER, "how many timed repeats the median is over"),
    Column(
        "peak_memory_bytes",
        INTEGER,
        "peak memory of the gradient computation above the baseline (memory pass, garbage collected first)",
    ),
    Column("memory_method", STRING, "how peak_memory_bytes was measured: memray or cuda-allocator"),
    Column("cell_time_s", FLOAT, "wall time of the whole cell: problem, references, all passes"),
    Column(
        "train_loss_initial", FLOAT, "training tasks: loss before the first update", training=True
    ),
    Column("train_loss_final", FLOAT, "training tasks: loss after the last update", training=True),
    Column(
        "success",
        BOOLEAN,
        "training tasks: the task's success criterion (hopfield: final loss < 50% of initial)",
        training=True,
    ),
    Column(
        "retrieval_error",
        FLOAT,
        "hopfield: fraction of wrong output pixels retrieving the clean images from corrupted ones",
        training=True,
    ),
    Column("val_accuracy", FLOAT, "best validation accuracy (classification tasks)", training=True),
    Column(
        "test_accuracy",
        FLOAT,
        "test accuracy at the epoch of best validation accuracy",
        training=True,
    ),
    Column("epochs", INTEGER, "training epochs (or meta steps) run", training=True),
    Column("train_time_s", FLOAT, "wall time of the training run"),
    Column("extra_metrics", STRING, "other task metrics as JSON"),
    Column("forward_residual", FLOAT, "||h_T - h_{T-1}||, as the method reported it"),
    Column(
        "forward_relative_residual",
        FLOAT,
        "||h_T - h_{T-1}|| / ||h_T||, measured by the harness on the cell's problem",
        added=True,
    ),
    Column(
        "forward_tolerance",
        FLOAT,
        "the relative residual below which the forward counts as converged (NaN: not checked)",
        added=True,
    ),
    Column(
        "forward_converged",
        BOOLEAN,
        "forward_relative_residual <= forward_tolerance (null: not checked, e.g. a task whose forward is no fixed-point iteration)",
        added=True,
    ),
    Column(
        "forward_evaluations",
        INTEGER,
        "calls of the step function F while the method ran, counted by the harness (docs/measurement.md)",
        added=True,
    ),
    Column(
        "backward_vjps",
        INTEGER,
        "backward passes through an evaluation of F (J^T v and (dF/dw)^T v products), counted",
        added=True,
    ),
    Column(
        "backward_jvps",
        INTEGER,
        "Jacobian-vector products J v (double backward through a VJP), counted",
        added=True,
    ),
    Column("backward_iterations", INTEGER, "backward steps or solver iterations actually taken"),
    Column("backward_residual", FLOAT, "||(I - J^T) z - g|| of the adjoint used (NaN without one)"),
    Column(
        "adjoint_relative_residual",
        FLOAT,
        "backward_residual / ||g||, g = dL/dh_T (NaN without an adjoint)",
        added=True,
    ),
    Column(
        "adjoint_tolerance",
        FLOAT,
        "the relative residual below which the adjoint counts as solved (NaN without an adjoint)",
        added=True,
    ),
    Column(
        "adjoint_converged",
        BOOLEAN,
        "adjoint_relative_residual <= adjoint_tolerance (null for methods without an adjoint system)",
        added=True,
    ),
    Column("torch_version", STRING, "torch version"),
    Column("rbpbench_version", STRING, "rbpbench version"),
    Column("method_distribution", STRING, "distribution and version providing the method"),
    Column("task_distribution", STRING, "distribution and version providing the task"),
    Column(
        "forward_distribution",
        STRING,
        "distribution and version providing the forward solver",
        added=True,
    ),
    Column("worker", STRING, "host:pid of the process that ran the cell"),
    Column(
        "node",
        STRING,
        "the machine that ran the cell: its host name (under Ray: host/Ray node id); see environment.json",
        added=True,
    ),
)
# Column name -> meaning.
COLUMNS: dict[str, str] = {c.name: c.meaning for c in SCHEMA}
DTYPES: dict[str, str] = {c.name: c.dtype for c in SCHEMA}
ADDED_COLUMNS = tuple(c.name for c in SCHEMA if c.added)
INTEGER_COLUMNS = tuple(c.name for c in SCHEMA if c.dtype == INTEGER)
BOOLEAN_COLUMNS = tuple(c.name for c in SCHEMA if c.dtype == BOOLEAN)
FLOAT_COLUMNS = tuple(c.name for c in SCHEMA if c.dtype == FLOAT)
STRING_COLUMNS = tuple(c.name for c in SCHEMA if c.dtype == STRING)
# Columns a training task's metrics may fill directly.
TRAINING_COLUMNS = tuple(c.name for c in SCHEMA if c.training)

# What a results folder holds, named once.
RESULTS_PARQUET = "results.parquet"  # the table
RESULTS_CSV = "results.csv"  # the same table as text, written after the Parquet file
# Rows finished since the table was last compacted, one JSON line each, appended and fsync'd
# per cell; every reader of the folder adds them to the table (see ResultsFolder).
JOURNAL = "results.pending.jsonl"
DEFAULT_COMPACT_EVERY_S = 5.0
COMPACT_EVERY_ENV = "RBPBENCH_COMPACT_EVERY_S"
ENVIRONMENT_FILE = "environment.json"  # each run's software and machines, by run id
CURVES_DIR = "curves"  # <cell_id>.parquet per cell with curves: columns curve, step, value
LOCK_FILE = ".lock"  # held by the sweep writing the folder
REPORT_PAGE = "report.html"  # rbpbench report's page...
REPORT_DIR = "report"  # ...and the folder of its figures


def partial_name(name: str) -> str:
    """The temporary file :func:`atomic_write` writes before renaming it to ``name``."""
    return f".{name}.partial"


@dataclass
class CellOutcome:
    """A finished cell on its way from the worker to the store: its row, and beside it what
    is no column. Picklable: it crosses the worker's pipe and comes back from Ray tasks.

    ``curves`` (name -> values by step) are written to ``<out>/curves/<cell_id>.parquet``;
    ``node_environment`` describes the machine that ran the cell, for a machine the
    sweep has not heard from yet, and goes into ``environment.json``.
    """

    row: dict[str, Any]
    curves: Curves | None = None
    node_environment: dict[str, Any] | None = field(default=None)


def _json_value(value: Any) -> Any:
    """What json cannot write itself: numpy and pandas scalars as Python ones, else text."""
    if hasattr(value, "item"):
        return value.item()
    if value is pd.NA:
        return None
    return str(value)


def read_curves(folder: Path, cell_id: str) -> pd.DataFrame:
    return pd.read_parquet(folder / CURVES_DIR / f"{cell_id}.parquet")


def empty_row() -> dict[str, Any]:
    return dict.fromkeys(COLUMNS)


def as_dtype(values: pd.Series, dtype: str) -> pd.Series:
    if dtype in (INTEGER, FLOAT):
        values = pd.to_numeric(values)
    return values.astype(dtype)


def typed(frame: pd.DataFrame, *, strict: bool = True) -> pd.DataFrame:
    """``frame`` with each column of the schema it holds in the schema's type (others as they
    are). Not ``strict``: a column that does not convert (a truncation of 2.5 in a hand-made
    table) is left as it is, for the leaderboard to say what is wrong with it."""
    frame = frame.copy()
    for column in SCHEMA:
        if column.name not in frame:
            continue
        try:
            frame[column.name] = as_dtype(frame[column.name], column.dtype)
        except (TypeError, ValueError):
            if strict:
                raise
    return frame


def to_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return typed(pd.DataFrame(list(rows), columns=list(COLUMNS)))


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


def _csv_table(path: Path) -> pd.DataFrame:
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
    return typed(pd.DataFrame(rows, columns=list(raw.columns)), strict=False)


def read_journal(folder: Path) -> list[dict[str, Any]]:
    """The rows of ``<folder>/results.pending.jsonl``, in order; a last line cut short by a
    killed writer is not a row (that cell was still in flight)."""
    path = folder / JOURNAL
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("cell_id"):
            rows.append(record)
    return rows


def _compacted_table(folder: Path) -> tuple[pd.DataFrame, Path] | None:
    parquet, csv = folder / RESULTS_PARQUET, folder / RESULTS_CSV
    if parquet.exists():
        return typed(pd.read_parquet(parquet), strict=False), parquet
    if csv.exists() and csv.stat().st_size > 0:
        return _csv_table(csv), csv
    return None


def read_table(folder: Path) -> tuple[pd.DataFrame, Path] | None:
    """The table of a results folder and the file it came from, with the schema's types;
    None when the folder holds none.

    Reads results.parquet or, where it is gone, results.csv (written after it, for
    every row), and adds the rows of the journal (``results.pending.jsonl``: cells
    finished since the sweep last compacted its table), a journal row replacing a
    table row of the same cell id. The one reader of a folder's table: :func:`read`,
    ``rbpbench.load``, ``rbpbench leaderboard`` and ``report``, and a sweep resuming
    a folder all come here, so each sees compacted and pending rows alike. Columns
    the table lacks are not added (an older table lacks the added ones), and a
    column whose values do not fit its type is left as it is (see :func:`typed`).
    """
    # The journal first: a compaction writes the table and only then removes the journal,
    # so rows missing from a journal read before it are in any table read after it.
    pending = read_journal(folder)
    found = _compacted_table(folder)
    if not pending:
        return found
    recent = to_frame(pending)
    if found is None:
        return recent, folder / JOURNAL
    table, source = found
    kept = table[~table.cell_id.isin(set(recent.cell_id))]
    columns = list(dict.fromkeys([*table.columns, *recent.columns]))
    merged = pd.concat([kept, recent[[c for c in recent.columns if c in columns]]])
    return typed(merged.reset_index(drop=True)[columns], strict=False), source


def read(folder: Path) -> pd.DataFrame:
    """The table of a results folder (see :func:`read_table`); FileNotFoundError when it holds none."""
    found = read_table(folder)
    if found is None:
        raise FileNotFoundError(
            f"{folder} holds no rbpbench results ({RESULTS_PARQUET} or {RESULTS_CSV})"
        )
    return found[0]


class ResultsFolder:
    """The table of one results folder, kept on disk in step with every finished cell.

    A finished cell costs one appended, fsync'd line of the journal
    (``results.pending.jsonl``), whatever the table's size. The table itself
    (results.parquet, then results.csv) is rewritten from every row, and the
    journal removed, by :meth:`compact`: when the sweep starts and ends, when it
    is interrupted, and while it runs at most every ``compact_every_s`` seconds
    (or ten times as long as the last compaction took, so that compacting a
    large table never takes more than a tenth of the sweep). Killed at any
    moment, even during a compaction, the folder loses no finished row: the
    journal is removed only once both files are written, and a reader takes a
    journal row over the table's row of the same cell.
    """

    def __init__(self, folder: Path, *, read: bool = True) -> None:
        self.folder = folder
        # RBPBENCH_COMPACT_EVERY_S (seconds, default 5) is there for tests and the curious.
        self.compact_every_s = float(os.environ.get(COMPACT_EVERY_ENV, DEFAULT_COMPACT_EVERY_S))
        self.rows: dict[str, dict[str, Any]] = {}
        self.source: Path | None = None  # the file the rows were read from, if any
        self._last_compaction = time.monotonic()
        self._compaction_s = 0.0
        self._pending = 0
        if not read:
            return
        found = read_table(folder)
        if found is None:
            return
        frame, self.source = found
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
        return self.folder / RESULTS_PARQUET

    @property
    def csv(self) -> Path:
        return self.folder / RESULTS_CSV

    def finished(self, *, retry_failed: bool) -> set[str]:
        """Ids of the cells a rerun need not run again."""
        return {
            cell_id
            for cell_id, row in self.rows.items()
            if not (retry_failed and row["status"] in FAILED)
        }

    @property
    def curves(self) -> Path:
        return self.folder / CURVES_DIR

    def append(self, outcome: CellOutcome | Mapping[str, Any]) -> None:
        """Store a finished cell (its outcome, or a row without curves): its curves first, so a
        row on disk always has its curves.

        Raises :class:`StorageError` when a file cannot be written; the row is
        then not kept in memory either, so what the folder holds is what the
        sweep believes it holds.
        """
        if not isinstance(outcome, CellOutcome):
            outcome = CellOutcome(dict(outcome))
        row = dict(outcome.row)
        if outcome.curves:
            self.write_curves(str(row["cell_id"]), outcome.curves)
        self.record(row)
        self.rows[str(row["cell_id"])] = row
        self._pending += 1
        if self._pending and self.compaction_due():
            self.compact()

    @property
    def journal(self) -> Path:
        return self.folder / JOURNAL

    def record(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` to the journal as one JSON line and fsync it."""
        line = json.dumps(dict(row), default=_json_value, allow_nan=True) + "\n"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.journal, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise StorageError(f"could not write {self.journal}: {exc.strerror or exc}") from exc

    def compaction_due(self) -> bool:
        waited = time.monotonic() - self._last_compaction
        return waited >= max(self.compact_every_s, 10 * self._compaction_s)

    def write_curves(self, cell_id: str, curves: Curves) -> None:
        from rbpbench.curves import to_frame  # the curve convention's stored form

        try:
            self.curves.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"could not create {self.curves}: {exc.strerror or exc}") from exc
        frame = to_frame(curves)
        atomic_write(self.curves / f"{cell_id}.parquet", lambda p: frame.to_parquet(p, index=False))

    def compact(self) -> None:
        """Write every row to results.parquet and results.csv, then drop the journal."""
        start = time.monotonic()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"could not create {self.folder}: {exc.strerror or exc}") from exc
        frame = self.frame()
        atomic_write(self.parquet, lambda p: frame.to_parquet(p, index=False))
        atomic_write(self.csv, lambda p: frame.to_csv(p, index=False))
        try:
            self.journal.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"could not remove {self.journal}: {exc.strerror or exc}") from exc
        self._pending = 0
        self._last_compaction = time.monotonic()
        self._compaction_s = self._last_compaction - start

    flush = compact

    def frame(self) -> pd.DataFrame:
        return to_frame(list(self.rows.values()))


def write_table(folder: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as the folder's whole table: results.parquet, then results.csv, each
    atomically, then remove the journal, whose rows ``frame`` must hold (what
    :meth:`ResultsFolder.compact` does, for a table made elsewhere: ``rbpbench merge``, which
    reads the folder with :func:`read_table`). :class:`StorageError` naming the file that
    could not be written."""
    atomic_write(folder / RESULTS_PARQUET, lambda p: frame.to_parquet(p, index=False))
    atomic_write(folder / RESULTS_CSV, lambda p: frame.to_csv(p, index=False))
    journal = folder / JOURNAL
    try:
        journal.unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"could not remove {journal}: {exc.strerror or exc}") from exc
