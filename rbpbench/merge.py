"""``rbpbench merge OUT DIR...``: one results folder from several (a sweep split across
machines or days). docs/merge-and-compare.md states the rules; in short:

- **Sources.** Each DIR must be a results folder (``results.parquet``, or ``results.csv``
  alone) whose table has this version's columns (an older one may lack the columns
  added since: they are null in the merged table). When OUT already is a results folder,
  its own table is the first source: merging into a folder adds to it.
- **Rows.** One per cell id, in the order the cells first appear (OUT's rows first, then
  each DIR's in the order given). Rows of one cell id equal in every column are one row;
  rows that differ are a *conflict*, resolved by :func:`resolve`: a result (``ok``, then
  ``diverged``) beats a failure (``timeout``, ``error``, ``oom``, ``crashed``,
  ``skipped``); between equals the row of the more recent run wins (its run's ``time``
  in the folder's ``environment.json``); without two different times, the row read last
  (the later folder on the command line) wins.
- **environment.json.** Every run of every source, by run id. A run id found in two
  folders with different descriptions (a folder copied during its sweep) keeps the
  later folder's description, with the ``nodes`` of both.
- **Curves.** ``curves/<cell_id>.parquet`` of each kept row, from the folder the row came
  from; a curve file in OUT whose row was replaced by one without curves is deleted.
- **Refused** with one line and nothing written (:class:`~rbpbench.config.UsageError`):
  no DIR; a DIR that does not exist, is no results folder, or whose table or
  environment.json cannot be read; a DIR given twice; OUT equal to a DIR, inside one,
  or holding one; OUT a file, or a non-empty folder that is no results folder; OUT or a
  DIR being written by a running sweep (it holds the folder's lock).

OUT's lock (the one a sweep takes) is held while the merge reads OUT and writes it: a
sweep started on OUT meanwhile is refused. The curves are written first, then
environment.json, then results.parquet and results.csv, each atomically.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from rbpbench.config import UsageError
from rbpbench.plugins import one_line
from rbpbench.results import (
    ADDED_COLUMNS,
    COLUMNS,
    CURVES_DIR,
    DIVERGED,
    ENVIRONMENT_FILE,
    JOURNAL,
    LOCK_FILE,
    OK,
    RESULTS_CSV,
    RESULTS_PARQUET,
    SCHEMA,
    StorageError,
    as_dtype,
    atomic_write,
    read_table,
    typed,
    write_table,
)
from rbpbench.sweep import OWN_FILES

# How much a row's status is worth in a conflict: a result beats a failure.
RANK = {OK: 2, DIVERGED: 1}
# What a conflict was decided by (Conflict.rule), in the order the rules apply.
BY_STATUS, BY_TIME, BY_ORDER = "status", "time", "order"
RULES = {
    BY_STATUS: "a result beats a failure",
    BY_TIME: "the more recent run",
    BY_ORDER: "the later folder on the command line",
}
SHOWN_COLUMNS = 6  # differing columns a conflict's line names before "..."


@dataclass
class Source:
    """One folder's table, read and checked, with its runs (environment.json's ``runs``)."""

    folder: Path
    table: Path  # the file the rows came from
    rows: list[dict[str, Any]]
    runs: dict[str, dict[str, Any]]
    extra_columns: list[str] = field(default_factory=list)  # not in the schema: dropped
    is_out: bool = False  # OUT's own table

    def run_time(self, run_id: object) -> datetime.datetime | None:
        """When the run of ``run_id`` started, from this folder's environment.json."""
        run = self.runs.get(str(run_id))
        return _time(run.get("time")) if run else None

    def curves(self, cell_id: str) -> Path:
        return self.folder / CURVES_DIR / f"{cell_id}.parquet"


def _time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


@dataclass
class Candidate:
    """A row of one cell id and the folder it came from."""

    row: dict[str, Any]
    source: Source

    @property
    def status(self) -> str:
        return str(self.row.get("status"))

    @property
    def time(self) -> datetime.datetime | None:
        return self.source.run_time(self.row.get("run_id"))

    def describe(self) -> str:
        when = self.time
        at = f" at {when.isoformat()}" if when else ""
        return f"{self.source.folder} (status {self.status}, run {self.row.get('run_id')}{at})"


@dataclass
class Conflict:
    """Two rows of one cell id that differ, and which was kept by which rule."""

    cell_id: str
    kept: Candidate
    dropped: Candidate
    rule: str  # one of RULES
    columns: list[str]  # the columns that differ

    def line(self) -> str:
        row = self.kept.row
        cell = f"{row.get('task')} {row.get('method')} K={row.get('truncation')} seed={row.get('seed')}"
        shown = ", ".join(self.columns[:SHOWN_COLUMNS])
        if len(self.columns) > SHOWN_COLUMNS:
            shown += ", ..."
        return (
            f"rbpbench: conflict: cell {self.cell_id} ({cell}): kept the row of "
            f"{self.kept.describe()}, dropped that of {self.dropped.describe()}: "
            f"{RULES[self.rule]}; {len(self.columns)} column(s) differ: {shown}"
        )


def resolve(old: Candidate, new: Candidate) -> tuple[Candidate, str]:
    """Which of two differing rows of one cell to keep, and by which rule (``new`` was read later).

    A result beats a failure (ok over diverged over the rest); between equals the more
    recent run wins; without two different run times, ``new``.
    """
    old_rank, new_rank = RANK.get(old.status, 0), RANK.get(new.status, 0)
    if old_rank != new_rank:
        return (old if old_rank > new_rank else new), BY_STATUS
    old_time, new_time = old.time, new.time
    if old_time is not None and new_time is not None and old_time != new_time:
        return (old if old_time > new_time else new), BY_TIME
    return new, BY_ORDER


@dataclass
class Merged:
    """What a merge made of its sources, before (and after) it is written."""

    out: Path
    sources: list[Source]
    kept: dict[str, Candidate]
    runs: dict[str, dict[str, Any]]
    conflicts: list[Conflict] = field(default_factory=list)
    identical: int = 0  # rows dropped as equal to a kept one
    warnings: list[str] = field(default_factory=list)
    curves_copied: int = 0
    curves_removed: int = 0

    @property
    def rows_read(self) -> int:
        return sum(len(s.rows) for s in self.sources)

    def frame(self) -> pd.DataFrame:
        """The merged table: the schema's columns in its types, one row per cell id."""
        rows = [candidate.row for candidate in self.kept.values()]
        return typed(pd.DataFrame(rows, columns=list(COLUMNS)))

    def messages(self) -> list[str]:
        """The lines for stderr: warnings, then one per conflict, then their count by rule."""
        lines = [*self.warnings, *(c.line() for c in self.conflicts)]
        if self.conflicts:
            rules = Counter(c.rule for c in self.conflicts)
            by = ", ".join(f"{rules[r]} by {RULES[r]}" for r in RULES if rules[r])
            lines.append(f"rbpbench: {len(self.conflicts)} conflict(s) resolved: {by}")
        return lines

    def summary(self) -> str:
        folders = [str(s.folder) for s in self.sources if not s.is_out]
        into = " (its own rows included)" if any(s.is_out for s in self.sources) else ""
        return (
            f"merged {len(self.kept)} cells from {len(folders)} folder(s) into {self.out}{into}: "
            f"{self.rows_read} rows read, {self.identical} identical duplicate(s) dropped, "
            f"{len(self.conflicts)} conflict(s) resolved; {len(self.runs)} run(s) in "
            f"{ENVIRONMENT_FILE}, {self.curves_copied} curve file(s) copied"
        )


# ---------------------------------------------------------------- reading and checking


def read_runs(folder: Path) -> dict[str, dict[str, Any]]:
    """environment.json's runs by run id ({} without the file); UsageError when unreadable."""
    path = folder / ENVIRONMENT_FILE
    if not path.exists():
        return {}
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        if not isinstance(runs, dict) or not all(isinstance(v, dict) for v in runs.values()):
            raise ValueError("its runs are not an object of run ids")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else one_line(str(exc))
        raise UsageError(f"{path} cannot be read: {reason or type(exc).__name__}") from None
    return {str(k): v for k, v in runs.items()}


def read_source(folder: Path, *, is_out: bool = False) -> Source:
    """A results folder's table and runs, checked; UsageError saying what is wrong."""
    what = f"OUT {folder}" if is_out else str(folder)
    if not folder.exists():
        raise UsageError(f"{what} does not exist")
    if not folder.is_dir():
        raise UsageError(f"{what} is not a folder")
    try:
        found = read_table(folder)
    except Exception as exc:  # whatever pyarrow or pandas raise for a damaged file
        raise UsageError(
            f"{what}: its results table cannot be read: {one_line(str(exc))}"
        ) from None
    if found is None:
        raise UsageError(f"{what} is not a results folder (no {RESULTS_PARQUET} or {RESULTS_CSV})")
    frame, path = found
    missing = [c for c in COLUMNS if c not in frame and c not in ADDED_COLUMNS]
    if missing:
        raise UsageError(
            f"{path} is not an rbpbench results table of this version "
            f"(no {', '.join(missing[:SHOWN_COLUMNS])}{', ...' if len(missing) > SHOWN_COLUMNS else ''})"
        )
    for column in SCHEMA:
        if column.name in frame:
            try:
                as_dtype(frame[column.name], column.dtype)
            except (TypeError, ValueError):
                raise UsageError(
                    f"{path}: column {column.name} holds values that are not {column.dtype}"
                ) from None
    empty = frame.cell_id.isna() | (frame.cell_id.astype("string").str.strip() == "")
    if empty.any():
        raise UsageError(f"{path}: cell_id is empty in {int(empty.sum())} row(s)")
    frame = typed(frame)
    extra = [c for c in frame.columns if c not in COLUMNS]
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return Source(folder, path, rows, read_runs(folder), extra, is_out)


def locked_by(folder: Path) -> str | None:
    """Who holds the folder's sweep lock (``pid N``), None when no one does. Creates nothing,
    and takes the lock (shared) only for the moment of asking."""
    try:
        handle = open(folder / LOCK_FILE, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        except OSError:
            return None
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _refuse_locked(folder: Path, what: str) -> None:
    holder = locked_by(folder)
    if holder is not None:
        raise UsageError(
            f"{what} {folder} is being written by a running rbpbench sweep ({holder}); "
            "wait for it to finish"
        )


def check_paths(out: Path, sources: Sequence[Path]) -> None:
    """Refuse OUT and DIRs that cannot be merged, from their paths alone."""
    if not sources:
        raise UsageError("merge needs at least one results folder DIR to merge into OUT")
    target = out.resolve()
    seen: dict[Path, Path] = {}
    for source in sources:
        where = source.resolve()
        if where in seen:
            raise UsageError(f"{source} is given twice (as {seen[where]} and {source})")
        seen[where] = source
        if where == target:
            raise UsageError(
                f"OUT {out} is also given as a source: a results folder named as OUT is merged "
                "into, its own rows included; name it once, as OUT"
            )
        if where in target.parents:
            raise UsageError(f"OUT {out} is inside the source {source}; choose a folder outside it")
        if target in where.parents:
            raise UsageError(f"the source {source} is inside OUT {out}; choose another OUT")
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT {out} is a file, not a folder")


def out_source(out: Path, *, check_lock: bool = True) -> Source | None:
    """OUT's own table when OUT is a results folder; None for a new or empty folder.
    UsageError for a folder that holds something else, or (``check_lock``) one a sweep is
    writing."""
    if not out.is_dir():
        return None
    if check_lock:
        _refuse_locked(out, "OUT")
    if not holds_table(out):
        if any(p.name not in OWN_FILES for p in out.iterdir()):
            raise UsageError(
                f"OUT {out} is not empty and holds no rbpbench results; choose a new folder"
            )
        return None
    return read_source(out, is_out=True)


def holds_table(folder: Path) -> bool:
    """Whether the folder has a table to read (a damaged one too: read_source says why)."""
    parquet, csv = folder / RESULTS_PARQUET, folder / RESULTS_CSV
    return (
        parquet.exists() or (csv.exists() and csv.stat().st_size > 0) or (folder / JOURNAL).exists()
    )


# ---------------------------------------------------------------- merging


def _same(a: object, b: object) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a == b)


def merge_sources(out: Path, sources: Sequence[Source]) -> Merged:
    """The merged rows, runs and conflicts of ``sources`` (read in this order); writes nothing."""
    kept: dict[str, Candidate] = {}
    merged = Merged(out, list(sources), kept, {})
    for source in sources:
        if source.extra_columns:
            merged.warnings.append(
                f"rbpbench: warning: {source.table} has columns this version does not know, "
                f"left out of the merged table: {', '.join(source.extra_columns)}"
            )
        for row in source.rows:
            cell_id = str(row["cell_id"])
            new = Candidate(row, source)
            old = kept.get(cell_id)
            if old is None:
                kept[cell_id] = new
                continue
            differ = [c for c in COLUMNS if not _same(old.row.get(c), row.get(c))]
            if not differ:
                merged.identical += 1
                if not old.source.curves(cell_id).exists() and source.curves(cell_id).exists():
                    kept[cell_id] = new  # the same row, and this folder has its curves
                continue
            winner, rule = resolve(old, new)
            loser = new if winner is old else old
            kept[cell_id] = winner
            merged.conflicts.append(Conflict(cell_id, winner, loser, rule, differ))
    merged.runs = merge_runs(sources, merged.warnings)
    return merged


def merge_runs(sources: Sequence[Source], warnings: list[str]) -> dict[str, dict[str, Any]]:
    """Every source's runs by run id. A run id described differently by two folders keeps the
    later folder's description with the nodes of both, and gets a warning naming the keys."""
    runs: dict[str, dict[str, Any]] = {}
    where: dict[str, Path] = {}
    for source in sources:
        for run_id, env in source.runs.items():
            old = runs.get(run_id)
            if old is None or old == env:
                runs[run_id], where[run_id] = dict(env), source.folder
                continue
            nodes_old, nodes_new = old.get("nodes"), env.get("nodes")
            combined = {**old, **env}
            if isinstance(nodes_old, dict) and isinstance(nodes_new, dict):
                combined["nodes"] = {**nodes_old, **nodes_new}
            keys = sorted(
                k for k in set(old) | set(env) if k != "nodes" and old.get(k) != env.get(k)
            )
            if keys:
                warnings.append(
                    f"rbpbench: warning: run {run_id} is described differently in "
                    f"{where[run_id]} and {source.folder} ({', '.join(keys)}): the latter's "
                    "description is kept, with the nodes of both"
                )
            runs[run_id], where[run_id] = combined, source.folder
    return runs


def _plain(cell_id: str) -> bool:
    """A cell id that names a file in curves/ and nothing outside it."""
    return cell_id == Path(cell_id).name and cell_id not in ("", ".", "..") and "\\" not in cell_id


# ---------------------------------------------------------------- writing


@contextmanager
def holding(out: Path) -> Iterator[None]:
    """OUT created if need be and its sweep lock held; a folder created for nothing is removed."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"OUT {out} cannot be written: {exc.strerror or exc}") from None
    try:
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                raise UsageError(
                    f"OUT {out} is being written by a running rbpbench sweep "
                    f"({handle.read().strip() or 'another process'}); wait for it to finish"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            yield
    except UsageError:
        if created and {p.name for p in out.iterdir()} == {LOCK_FILE}:
            (out / LOCK_FILE).unlink()
            out.rmdir()
        raise


def write(merged: Merged) -> None:
    """Write the merge into its OUT: curves, environment.json, then the table; last, delete the
    curve files of OUT's rows that were replaced by rows without curves. StorageError naming the
    file that could not be written."""
    out = merged.out
    curves = out / CURVES_DIR
    stale: list[Path] = []
    for cell_id, candidate in merged.kept.items():
        if not _plain(cell_id) or candidate.source.is_out:
            continue
        source, target = candidate.source.curves(cell_id), curves / f"{cell_id}.parquet"
        if source.is_file():
            try:
                curves.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"could not create {curves}: {exc.strerror or exc}") from exc
            atomic_write(target, partial(shutil.copyfile, source))
            merged.curves_copied += 1
        elif target.exists():
            stale.append(target)
    text = json.dumps({"runs": merged.runs}, indent=2, default=str)
    atomic_write(out / ENVIRONMENT_FILE, lambda p: p.write_text(text, encoding="utf-8"))
    write_table(out, merged.frame())
    for path in stale:
        try:
            path.unlink()
        except OSError as exc:
            raise StorageError(f"could not delete {path}: {exc.strerror or exc}") from exc
        merged.curves_removed += 1


def merge(out: Path, sources: Sequence[Path]) -> Merged:
    """Merge the results folders ``sources`` (and OUT's own table, when OUT is one) into ``out``.

    Every check is made before anything is written (UsageError); OUT is then locked, its
    table read again under the lock, the merge made and written (StorageError when a file
    cannot be written). Returns what was merged, for the caller to report.
    """
    check_paths(out, sources)
    read = [read_source(folder) for folder in sources]
    for folder in sources:
        _refuse_locked(folder, "the source")
    out_source(out)  # every refusal, before OUT is created or locked
    with holding(out):
        own = out_source(out, check_lock=False)  # read again, now that no sweep can write it
        merged = merge_sources(out, [own, *read] if own is not None else read)
        write(merged)
    return merged
