"""``rbpbench compare A B``: the same cells in two results folders, side by side.

Two versions of a method, two machines, before and after a change: A is the baseline,
B the folder compared with it. docs/merge-and-compare.md states the rules; in short:

- **Matching.** A cell of A and one of B are the same when they agree on task, task
  parameters, method, method parameters, forward solver, its parameters, truncation K,
  seed, device and dtype (:data:`KEY`). Not on ``cell_id``: it hashes the versions of
  rbpbench and of the plugins, which is what a before-and-after comparison changes. A
  row without a forward solver ran on ``iterate`` (parameters ``{}``). Within one
  folder, of the rows of one cell the last is used (:attr:`Comparison.repeated` counts
  the others).
- **Groups.** One per task setting, method setting, forward and K (:data:`KEY` without
  the seed), in the order they first appear in A, then in B.
- **Figures per group** over the matched cells ok in both folders: the wall-time and
  peak-memory ratios B/A as the geometric mean of the per-seed ratios, with the 95%
  interval of the Student t interval of their logarithms, exponentiated; the
  differences B - A of ``grad_rel_error`` and ``grad_rel_error_exact``, mean and 95% t
  interval; status changes: matched cells ok in A and not ok in B, and the reverse;
  the cells found only in A and only in B.
- **Regressions** (:func:`regressions`, ``--fail-on-regression PCT``): a group whose time
  or memory ratio is above 1 + PCT/100 with the whole interval (its lower bound; the
  ratio itself where one pair gives no interval), and every matched cell ok in A and
  not ok in B. Cells in only one folder are no regression.

The functions take tables as :func:`rbpbench.leaderboard.prepared` returns them (what
``rbpbench leaderboard`` and ``report`` read), so a method on another forward is
``METHOD @ FORWARD`` here too.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from rbpbench.results import OK
from rbpbench.stats import Aggregate, t_interval

FORMATS = ("text", "markdown", "csv")
DEFAULT_FORWARD = "iterate"
# What makes two rows the same cell, versions left out; a group is all but the seed.
KEY = (
    "task",
    "task_params",
    "method",
    "method_params",
    "forward",
    "forward_params",
    "truncation",
    "seed",
    "device",
    "dtype",
)
GROUP_KEY = tuple(k for k in KEY if k != "seed")
JSON_KEYS = ("task_params", "method_params", "forward_params")
LEGEND = (
    "A is the baseline, B the folder compared with it; cells are matched on task, method, "
    "forward solver, their parameters, K, seed, device and dtype (not on versions). "
    "time B/A and memory B/A: over the seeds ok in both, the geometric mean of B's wall time "
    "(peak memory) divided by A's for the same cell, with its 95% interval (Student t on the "
    "log ratios; none from one seed); grad error B - A: the mean difference of the relative "
    "gradient error against BPTT (against the exact gradient) ± the half-width of its 95% "
    "t interval; ok->not ok: cells ok in A and not ok in B; not ok->ok: the reverse."
)
HEADINGS = (
    "task",
    "method",
    "K",
    "cells in both",
    "only in A",
    "only in B",
    "time B/A",
    "memory B/A",
    "grad error vs BPTT, B - A",
    "grad error vs exact, B - A",
    "ok->not ok",
    "not ok->ok",
)


@dataclass
class Change:
    """A matched cell whose status is not the same in the two folders."""

    seed: int
    status_a: str
    status_b: str


@dataclass
class GroupComparison:
    """The matched cells of one task setting, method setting, forward and K."""

    key: dict[str, Any]  # GROUP_KEY's values
    task_label: str = ""
    method_label: str = ""
    matched: int = 0
    only_a: int = 0
    only_b: int = 0
    time: Aggregate = field(default_factory=lambda: t_interval([]))
    memory: Aggregate = field(default_factory=lambda: t_interval([]))
    grad_error: Aggregate = field(default_factory=lambda: t_interval([]))
    grad_error_exact: Aggregate = field(default_factory=lambda: t_interval([]))
    broke: list[Change] = field(default_factory=list)  # ok in A, not ok in B
    fixed: list[Change] = field(default_factory=list)  # not ok in A, ok in B

    @property
    def truncation(self) -> int:
        return int(self.key["truncation"])


@dataclass
class Comparison:
    """Folder B against folder A, group by group."""

    a: str  # how the folders are named in the output
    b: str
    cells_a: int
    cells_b: int
    groups: list[GroupComparison]
    repeated: tuple[int, int] = (0, 0)  # rows of A, of B left out as repeats of a cell

    @property
    def matched(self) -> int:
        return sum(g.matched for g in self.groups)

    @property
    def only_a(self) -> int:
        return sum(g.only_a for g in self.groups)

    @property
    def only_b(self) -> int:
        return sum(g.only_b for g in self.groups)

    def header(self) -> str:
        return (
            f"A: {self.a} ({self.cells_a} cells); B: {self.b} ({self.cells_b} cells); "
            f"{self.matched} cells in both, {self.only_a} only in A, {self.only_b} only in B"
        )

    def warnings(self) -> list[str]:
        lines = []
        for name, count in zip((self.a, self.b), self.repeated, strict=True):
            if count:
                lines.append(
                    f"rbpbench: warning: {name}: {count} row(s) repeat a cell (same task, "
                    "method, parameters, K, seed, device, dtype; other versions); the last "
                    "row of each cell is compared"
                )
        if not self.matched:
            lines.append(f"rbpbench: warning: no cell of {self.a} is also in {self.b}")
        return lines


def _normal_json(value: object) -> str:
    """A parameter column's JSON with sorted keys (``{}`` when null), so that equal parameters
    compare equal whatever wrote them."""
    if not isinstance(value, str) or not value.strip():
        return "{}"
    try:
        return json.dumps(json.loads(value), sort_keys=True)
    except ValueError:
        return value


def _records(frame: pd.DataFrame) -> tuple[dict[tuple[Any, ...], dict[str, Any]], int]:
    """The rows by :data:`KEY` (the last of repeated ones) and how many repeats were left out."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    repeated = 0
    for row in rows:
        for column in JSON_KEYS:
            row[column] = _normal_json(row.get(column))
        row["forward"] = row.get("forward") or DEFAULT_FORWARD
        for column in ("device", "dtype"):
            row[column] = "" if row.get(column) is None else str(row[column])
        row["truncation"], row["seed"] = int(row["truncation"]), int(row["seed"])
        key = tuple(row[k] for k in KEY)
        repeated += key in out
        out[key] = row
    return out, repeated


def _value(row: dict[str, Any], column: str) -> float:
    value = row.get(column)
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def ratio(pairs: Sequence[tuple[float, float]], cells: int | None = None) -> Aggregate:
    """B/A over (a, b) pairs with both finite and positive: the geometric mean of the ratios
    and its 95% interval (the t interval of the log ratios, exponentiated). ``cells``: how
    many cells there were (default: the pairs)."""
    logs = [
        math.log(b / a)
        for a, b in pairs
        if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0
    ]
    agg = t_interval(logs, len(pairs) if cells is None else cells)
    return Aggregate(math.exp(agg.mean), math.exp(agg.low), math.exp(agg.high), agg.n, agg.cells)


def difference(pairs: Sequence[tuple[float, float]], cells: int | None = None) -> Aggregate:
    """B - A over the (a, b) pairs with both finite: mean and 95% t interval."""
    diffs = [b - a for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    return t_interval(diffs, len(pairs) if cells is None else cells)


def _settings(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[dict[str, str]]:
    out = []
    for row in rows:
        settings: dict[str, str] = {}
        for column in columns:
            if column in JSON_KEYS:
                try:
                    values = json.loads(row[column])
                except ValueError:
                    values = {column: row[column]}
                if not isinstance(values, dict):
                    values = {column: values}
                prefix = "forward." if column == "forward_params" else ""
                settings |= {f"{prefix}{k}": json.dumps(v) for k, v in values.items()}
            else:
                settings[column] = str(row[column])
        out.append(settings)
    return out


def _label(name: str, settings: dict[str, str], varying: set[str], brackets: str) -> str:
    shown = ", ".join(f"{k}={settings.get(k, '-')}" for k in sorted(varying))
    return f"{name} {brackets[0]}{shown}{brackets[1]}" if shown else name


def _labels(groups: list[GroupComparison]) -> None:
    """A task's label names the settings (parameters, device, dtype) that vary within it; a
    method's, the method and forward parameters that vary within its task and name."""
    keys = [g.key for g in groups]
    tasks = _settings(keys, ("task_params", "device", "dtype"))
    methods = _settings(keys, ("method_params", "forward_params"))

    def varying(settings: list[dict[str, str]], indices: list[int]) -> set[str]:
        names = {k for i in indices for k in settings[i]}
        return {n for n in names if len({settings[i].get(n) for i in indices}) > 1}

    by_task: dict[str, list[int]] = {}
    by_method: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(keys):
        by_task.setdefault(key["task"], []).append(i)
        by_method.setdefault((key["task"], key["method"]), []).append(i)
    for task, indices in by_task.items():
        shown = varying(tasks, indices)
        for i in indices:
            groups[i].task_label = _label(task, tasks[i], shown, "()")
    for (_, method), indices in by_method.items():
        shown = varying(methods, indices)
        for i in indices:
            groups[i].method_label = _label(method, methods[i], shown, "[]")


def _group_of(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """A cell's :data:`KEY` without the seed: its group's."""
    return tuple(v for k, v in zip(KEY, key, strict=True) if k != "seed")


def compare(a: pd.DataFrame, b: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> Comparison:
    """Table ``b`` against table ``a`` (both as :func:`rbpbench.leaderboard.prepared` gives them)."""
    rows_a, repeated_a = _records(a)
    rows_b, repeated_b = _records(b)
    members: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for key in [*rows_a, *(k for k in rows_b if k not in rows_a)]:
        members.setdefault(_group_of(key), []).append(key)
    groups = []
    for group_key, keys in members.items():
        group = GroupComparison(dict(zip(GROUP_KEY, group_key, strict=True)))
        both: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for key in keys:
            in_a, in_b = rows_a.get(key), rows_b.get(key)
            if in_a is None:
                group.only_b += 1
            elif in_b is None:
                group.only_a += 1
            else:
                both.append((in_a, in_b))
        group.matched = len(both)
        for row_a, row_b in both:
            status_a, status_b = str(row_a["status"]), str(row_b["status"])
            change = Change(int(row_a["seed"]), status_a, status_b)
            if status_a == OK and status_b != OK:
                group.broke.append(change)
            elif status_a != OK and status_b == OK:
                group.fixed.append(change)
        ok = [(x, y) for x, y in both if x["status"] == OK and y["status"] == OK]

        def pairs(column: str, ok: list[Any] = ok) -> list[tuple[float, float]]:
            return [(_value(x, column), _value(y, column)) for x, y in ok]

        # n of cells: the matched cells ok in both with the figure, of all matched
        group.time = ratio(pairs("wall_time_s"), len(both))
        group.memory = ratio(pairs("peak_memory_bytes"), len(both))
        group.grad_error = difference(pairs("grad_rel_error"), len(both))
        group.grad_error_exact = difference(pairs("grad_rel_error_exact"), len(both))
        groups.append(group)
    _labels(groups)
    return Comparison(name_a, name_b, len(rows_a), len(rows_b), groups, (repeated_a, repeated_b))


def regressions(comparison: Comparison, percent: float) -> list[str]:
    """What ``--fail-on-regression PERCENT`` fails on, one phrase each; empty: no regression.

    A group's time or memory ratio B/A regresses when the lower bound of its 95% interval
    (the ratio itself where one pair gives no interval) is above 1 + PERCENT/100; a
    matched cell ok in A and not ok in B always does.
    """
    threshold = 1 + percent / 100
    found = []
    for group in comparison.groups:
        where = f"{group.task_label} {group.method_label} K={group.truncation}"
        for what, agg in (("time", group.time), ("memory", group.memory)):
            if agg.n == 0:
                continue
            bound = agg.low if agg.has_interval else agg.mean
            if bound > threshold:
                found.append(
                    f"{where}: {what} B/A {format_ratio(agg)}, above {threshold:.3g} "
                    f"(+{percent:g}%)" + ("" if agg.has_interval else " (one seed, no interval)")
                )
        if group.broke:
            seeds = ", ".join(f"seed {c.seed} {c.status_b}" for c in group.broke)
            found.append(f"{where}: {len(group.broke)} cell(s) ok in A are not ok in B ({seeds})")
    return found


# ---------------------------------------------------------------- formatting


def format_ratio(agg: Aggregate) -> str:
    if agg.n == 0:
        return "-"
    text = f"{agg.mean:.3g}"
    if agg.has_interval:
        text += f" [{agg.low:.3g}, {agg.high:.3g}]"
    if agg.n < agg.cells:
        text += f" ({agg.n} of {agg.cells})"
    return text


def format_difference(agg: Aggregate) -> str:
    if agg.n == 0:
        return "-"
    text = f"{agg.mean:+.2e}"
    if agg.has_interval:
        text += f" ± {agg.half_width:.1e}"
    if agg.n < agg.cells:
        text += f" ({agg.n} of {agg.cells})"
    return text


def _changes(changes: list[Change], with_status: bool) -> str:
    if not changes:
        return "0"
    if not with_status:
        return str(len(changes))
    statuses = sorted({c.status_b for c in changes})
    return f"{len(changes)} ({', '.join(statuses)})"


def cells(group: GroupComparison) -> list[str]:
    """One group's row as printed, in the order of :data:`HEADINGS`."""
    return [
        group.task_label,
        group.method_label,
        str(group.truncation),
        str(group.matched),
        str(group.only_a),
        str(group.only_b),
        format_ratio(group.time),
        format_ratio(group.memory),
        format_difference(group.grad_error),
        format_difference(group.grad_error_exact),
        _changes(group.broke, True),
        _changes(group.fixed, False),
    ]


def render_text(comparison: Comparison) -> str:
    grid = pd.DataFrame([cells(g) for g in comparison.groups], columns=list(HEADINGS))
    table = grid.to_string(index=False) if len(grid) else "(no cells)"
    return f"{comparison.header()}\n{LEGEND}\n\n{table}\n"


def render_markdown(comparison: Comparison) -> str:
    lines = ["| " + " | ".join(HEADINGS) + " |", "|" + "---|" * len(HEADINGS)]
    for group in comparison.groups:
        row = [c.replace("|", "\\|") for c in cells(group)]
        lines.append("| " + " | ".join(row) + " |")
    return f"{comparison.header()}\n\n_{LEGEND}_\n\n" + "\n".join(lines) + "\n"


def _bounds(prefix: str, agg: Aggregate) -> dict[str, Any]:
    return {
        prefix: agg.mean if agg.n else math.nan,
        f"{prefix}_low": agg.low,
        f"{prefix}_high": agg.high,
        f"{prefix}_n": agg.n,
    }


def render_csv(comparison: Comparison) -> str:
    """One row per group: its key, counts and figures, unformatted."""
    records = []
    for group in comparison.groups:
        records.append(
            {
                **group.key,
                "task_label": group.task_label,
                "method_label": group.method_label,
                "matched": group.matched,
                "only_a": group.only_a,
                "only_b": group.only_b,
                **_bounds("time_ratio", group.time),
                **_bounds("memory_ratio", group.memory),
                **_bounds("grad_rel_error_diff", group.grad_error),
                **_bounds("grad_rel_error_exact_diff", group.grad_error_exact),
                "ok_to_not_ok": len(group.broke),
                "not_ok_to_ok": len(group.fixed),
            }
        )
    buffer = io.StringIO()
    pd.DataFrame(records).to_csv(buffer, index=False)
    return buffer.getvalue()


def render(comparison: Comparison, fmt: str = "text") -> str:
    """The comparison in one of :data:`FORMATS`."""
    if fmt == "text":
        return render_text(comparison)
    if fmt == "markdown":
        return render_markdown(comparison)
    if fmt == "csv":
        return render_csv(comparison)
    raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def render_html_fragment(comparison: Comparison) -> str:
    """The comparison as HTML (no document around it) for the report; every text escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADINGS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(group)) + "</tr>"
        for group in comparison.groups
    )
    notes = "".join(f"<p>{html.escape(line)}</p>" for line in comparison.warnings())
    return (
        f"<p>{html.escape(comparison.header())}</p>{notes}"
        f'<p class="legend">{html.escape(LEGEND)}</p>'
        f'<table class="board"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )
