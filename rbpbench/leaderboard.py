"""The leaderboard: per task, methods x truncation K, a mean and a 95% interval over seeds.

A task's metrics are the ones its rows fill (a column with at least one
value): success rate, accuracies and training loss for training tasks;
gradient error against BPTT and against the exact gradient, wall time, peak
memory and their ratios to BPTT for all. Failed cells are counted, never
dropped: a success rate counts them as failures, and a figure that only some
cells have says "(n of N)". The best figure of each column (each K) is marked.
Statistics: :mod:`rbpbench.stats`.

Convergence, where the table has the columns: a figure that includes cells
whose forward pass did not converge (``forward_converged`` false) carries
``†n``, n such cells; a group's header says how many of its cells did not
converge, or that the task does not check; the share of the cells whose
adjoint converged is a metric of its own.

:func:`prepared` checks a table and reads it as the leaderboard does;
:func:`build` makes the tables; :func:`render` writes them as text, markdown,
html or csv.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from rbpbench.results import FLOAT_COLUMNS, INTEGER_COLUMNS, OK
from rbpbench.stats import Aggregate, t_interval, wilson_interval

FORMATS = ("text", "markdown", "html", "csv")
REFERENCE = "bptt"
DEFAULT_FORWARD = "iterate"
# backward_vjps + backward_jvps, added by prepared(): one cost axis for every method
JACOBIAN_PRODUCTS = "jacobian_products"
# A table needs these, filled in every row; every other column is optional.
REQUIRED = ("cell_id", "task", "method", "truncation", "seed", "status")
# Optional columns the leaderboard and the report read as text: null where a table lacks them.
TEXT_COLUMNS = ("run_id", "task_params", "method_params", "device", "dtype", "error")
TRAINING_MARKERS = ("train_loss_final", "success")  # a training task fills one of them
FORWARD, FORWARD_TOLERANCE = "forward_converged", "forward_tolerance"
FORWARD_RESIDUAL = "forward_relative_residual"
ADJOINT = "adjoint_converged"
UNCONVERGED_MARK = "†"
LEGEND = (
    "mean ± half-width of the 95% confidence interval over seeds (Student t); success rates: "
    "the percentage of all cells with the 95% Wilson interval in brackets, a failed cell "
    "counting as a failure; (n of N): only n of the method's N cells have the figure; "
    "ratios are BPTT's cost divided by the method's, per seed (as in the paper's Table 3); "
    "the best of each column (ties at the printed precision included) is "
)
MARKS = {"text": "marked *", "markdown": "in bold", "html": "in bold green"}
FORWARD_LEGEND = (
    "METHOD @ FORWARD: the method on that forward solver (a bare name: on iterate); its "
    "gradient errors are still against BPTT through iterate and against the exact gradient"
)
UNCONVERGED_LEGEND = (
    f"{UNCONVERGED_MARK}n: the figure includes n cells whose forward pass did not converge "
    f"({FORWARD} false)"
)
NOT_CHECKED = (
    "forward convergence not checked: the task declares that its forward is not a "
    "fixed-point iteration"
)


@dataclass(frozen=True)
class Metric:
    """A figure of the leaderboard: which column, which way is better, how it is printed."""

    key: str
    title: str
    column: str
    better: str | None = "lower"  # "lower", "higher", or None: nothing is marked best
    fmt: str = ".3g"
    scale: float = 1.0
    # "mean" (t interval), "rate" (Wilson interval, every cell a trial), "share" (Wilson
    # interval over the cells that have the flag), "ratio" (BPTT / method)
    kind: str = "mean"
    vs_bptt: bool = False  # relative to BPTT: BPTT is the reference, not a contender
    unit: str = ""  # "percent", "bytes" and "seconds" are scaled to suit the values


CATALOGUE: tuple[Metric, ...] = (
    Metric("success", "success rate", "success", "higher", kind="rate"),
    Metric("test_accuracy", "test accuracy", "test_accuracy", "higher", ".2f", unit="percent"),
    Metric(
        "val_accuracy", "best validation accuracy", "val_accuracy", "higher", ".2f", unit="percent"
    ),
    Metric("train_loss_final", "final training loss", "train_loss_final"),
    Metric(
        "retrieval_error",
        "retrieval error (fraction of wrong pixels)",
        "retrieval_error",
        fmt=".3f",
    ),
    Metric(
        "grad_error_exact",
        "relative gradient error vs exact gradient",
        "grad_rel_error_exact",
        fmt=".2e",
    ),
    Metric(
        "grad_error", "relative gradient error vs BPTT", "grad_rel_error", fmt=".2e", vs_bptt=True
    ),
    Metric("grad_cosine", "gradient cosine vs BPTT", "grad_cosine", "higher", ".4f", vs_bptt=True),
    Metric("wall_time", "wall time of one gradient", "wall_time_s", unit="seconds"),
    Metric(
        "time_ratio",
        "time ratio: BPTT's wall time / the method's",
        "wall_time_s",
        "higher",
        ".2f",
        kind="ratio",
        vs_bptt=True,
        unit="x",
    ),
    Metric(
        "peak_memory", "peak memory of one gradient", "peak_memory_bytes", fmt=".4g", unit="bytes"
    ),
    Metric(
        "memory_ratio",
        "memory ratio: BPTT's peak memory / the method's",
        "peak_memory_bytes",
        "higher",
        ".2f",
        kind="ratio",
        vs_bptt=True,
        unit="x",
    ),
    Metric("forward_evaluations", "F evaluations", "forward_evaluations", fmt=".4g"),
    Metric(
        "jacobian_products",
        "Jacobian products in the backward pass (J^T v and J v)",
        JACOBIAN_PRODUCTS,
        fmt=".4g",
    ),
    Metric("train_time", "training time", "train_time_s", unit="seconds"),
    Metric("adjoint_converged", "adjoint converged", ADJOINT, None, kind="share"),
)
BY_KEY = {metric.key: metric for metric in CATALOGUE}


def metric_names() -> list[str]:
    """What ``--metric`` accepts: the catalogue's keys and any numeric column of the table."""
    numeric = [c for c in (*FLOAT_COLUMNS, *INTEGER_COLUMNS) if c not in ("truncation", "seed")]
    return [*BY_KEY, *[c for c in numeric if c not in BY_KEY]]


def resolve_metrics(names: Sequence[str]) -> list[Metric]:
    """Metrics by key or column name; ValueError naming the valid ones for an unknown name."""
    chosen = []
    for name in names:
        if name in BY_KEY:
            chosen.append(BY_KEY[name])
        elif name in metric_names():
            chosen.append(Metric(name, name, name, None, ".4g"))
        else:
            raise ValueError(f"unknown metric {name!r}; valid: {', '.join(metric_names())}")
    return chosen


@dataclass
class Table:
    """One metric over methods x truncation of one group."""

    metric: Metric
    title: str
    cells: dict[tuple[str, int], Aggregate]
    best: set[tuple[str, int]]
    scale: float
    unit: str = ""  # of the printed figures: "%", "ms", "MiB", "x", ...
    suffix: str = ""  # appended to every printed figure
    # per method and K: how many of the cells in the figure have a forward that did not converge
    unconverged: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass
class Group:
    """The cells of one task with one setting (parameters that vary within a task split it)."""

    task: str
    label: str
    rows: pd.DataFrame
    methods: list[str]
    truncations: list[int]
    counts: dict[tuple[str, int], Counter[str]]
    tables: list[Table] = field(default_factory=list)

    @property
    def seeds(self) -> int:
        return int(self.rows.seed.nunique())

    @property
    def trains(self) -> bool:
        """A training task: its gradient figures are taken at the initial parameters."""
        return any(c in self.rows and self.rows[c].notna().any() for c in TRAINING_MARKERS)

    @property
    def unconverged(self) -> int:
        """Cells whose forward pass did not converge (``forward_converged`` false)."""
        return int(_false(self.rows, FORWARD).sum())


def flags(rows: pd.DataFrame, column: str) -> pd.Series:
    """A nullable boolean column as booleans with NA; all NA where the table lacks it."""
    if column not in rows:
        return pd.Series(pd.NA, index=rows.index, dtype="boolean")
    return rows[column].astype("boolean")


def _false(rows: pd.DataFrame, column: str) -> pd.Series:
    return ~flags(rows, column).fillna(True).astype(bool)


class TableError(ValueError):
    """What makes a results table unreadable for the leaderboard, in one line."""


def json_object(text: object, name: str = "value") -> dict[str, object]:
    """A JSON object column's value as a dict: {} when null, ``{name: text}`` when not an object."""
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {name: text}
    return value if isinstance(value, dict) else {name: text}


def duplicate_cells(frame: pd.DataFrame) -> list[str]:
    """The cell ids that have more than one row."""
    ids = frame.cell_id.astype("string")
    return [str(c) for c in dict.fromkeys(ids[ids.duplicated()])]


def _whole_numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    bad = ~(values.notna() & values.apply(math.isfinite) & (values % 1 == 0))
    if bad.any():
        value = frame[column][bad.idxmax()]
        shown = repr(value) if isinstance(value, str) else str(value)
        raise TableError(
            f"{column} must be a whole number in every row; cell {frame.cell_id[bad.idxmax()]} "
            f"has {shown}"
        )
    return values.astype("int64")


def prepared(frame: pd.DataFrame) -> pd.DataFrame:
    """The table as the leaderboard reads it, or a TableError saying what is wrong with it.

    The :data:`REQUIRED` columns must be present and filled, truncation and seed
    whole numbers; a missing optional column is absent (the text columns read
    as null); of the rows of one cell id, the last is kept.
    """
    missing = [c for c in REQUIRED if c not in frame]
    if missing:
        raise TableError(f"not an rbpbench results table (no {', '.join(missing)})")
    frame = frame.reset_index(drop=True)
    for column in REQUIRED:
        empty = frame[column].isna()
        if empty.any():
            raise TableError(f"{column} is empty in {int(empty.sum())} row(s); it is required")
    frame = frame.drop_duplicates("cell_id", keep="last").reset_index(drop=True)
    frame = frame.assign(
        **{c: frame[c].astype("string") for c in ("cell_id", "task", "method", "status")},
        truncation=_whole_numbers(frame, "truncation"),
        seed=_whole_numbers(frame, "seed"),
    )
    absent = {c: pd.Series(pd.NA, index=frame.index, dtype="string") for c in TEXT_COLUMNS}
    frame = frame.assign(**{c: v for c, v in absent.items() if c not in frame})
    return with_costs(with_forward_labels(frame))


def with_forward_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows on another forward solver than ``iterate`` are methods of their own: METHOD @ FORWARD.

    A row without a forward (a table older than the column) ran on iterate. The
    method's own name is kept in ``method_name`` and the label always derived
    from it, so a prepared table can be prepared again (the report does).
    """
    if "forward" not in frame:
        return frame
    forward = frame["forward"].astype("string").fillna(DEFAULT_FORWARD)
    name = frame.get("method_name", frame.method)
    labels = name.where(forward == DEFAULT_FORWARD, name + " @ " + forward)
    return frame.assign(forward=forward, method_name=name, method=labels.astype("string"))


def with_costs(frame: pd.DataFrame) -> pd.DataFrame:
    """The Jacobian products of the backward pass, J^T v and J v together, where both are counted."""
    if "backward_vjps" not in frame or "backward_jvps" not in frame:
        return frame
    total = pd.to_numeric(frame.backward_vjps) + pd.to_numeric(frame.backward_jvps)
    return frame.assign(**{JACOBIAN_PRODUCTS: total.astype("float64")})


def _varying_params(rows: pd.DataFrame) -> pd.DataFrame:
    """Per row, the task parameters (and device, dtype) that differ within ``rows``."""
    params = pd.DataFrame([json_object(p, "task_params") for p in rows.task_params])
    params.index = rows.index
    params["device"], params["dtype"] = rows.device, rows.dtype
    keep = [c for c in params.columns if params[c].astype(str).nunique() > 1]
    return params[keep].astype(str)


def groups(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """The rows of each task, split by the settings that vary within it, in the table's order."""
    out = []
    for _, rows in frame.groupby("task", sort=False):
        varying = _varying_params(rows)
        if varying.empty or not len(varying.columns):
            out.append(rows)
            continue
        for _, part in rows.groupby([varying[c] for c in varying.columns], sort=False):
            out.append(part)
    return out


def _label(rows: pd.DataFrame, frame: pd.DataFrame) -> str:
    task = str(rows.task.iloc[0])
    varying = _varying_params(frame[frame.task == task]).loc[rows.index]
    settings = ", ".join(f"{c}={varying[c].iloc[0]}" for c in varying.columns)
    return f"{task} ({settings})" if settings else task


def _percent_scale(values: pd.Series) -> float:
    finite = values[values.notna()]
    return 100.0 if len(finite) and float(finite.abs().max()) <= 1.0 else 1.0


def _bytes_scale(values: pd.Series) -> tuple[float, str]:
    finite = values[values.notna() & (values > 0)]
    typical = float(finite.median()) if len(finite) else 1.0
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if typical >= 1024**power:
            return 1 / 1024**power, unit
    return 1.0, "B"


def _seconds_scale(values: pd.Series) -> tuple[float, str]:
    finite = values[values.notna() & (values > 0)]
    typical = float(finite.median()) if len(finite) else 1.0
    for factor, unit in ((1.0, "s"), (1e3, "ms")):
        if typical * factor >= 1:
            return factor, unit
    return 1e6, "µs"


def _ratios(rows: pd.DataFrame, column: str) -> pd.Series:
    """Per row, BPTT's figure (same seed, same K where it ran there) over the row's."""
    values = rows[column].astype("float64")
    reference = rows[rows.method == REFERENCE]
    by_seed_k = reference.groupby(["seed", "truncation"])[column].mean()
    by_seed = reference.groupby("seed")[column].mean()
    out = []
    for index, row in rows.iterrows():
        key = (row.seed, row.truncation)
        ref = by_seed_k.get(key, by_seed.get(row.seed, math.nan))
        value = values[index]
        out.append(float(ref) / value if value and math.isfinite(value) else math.nan)
    return pd.Series(out, index=rows.index, dtype="float64")


def _aggregate(metric: Metric, rows: pd.DataFrame, scale: float) -> Aggregate:
    if metric.kind == "rate":
        hits = int(rows[metric.column].fillna(False).astype(bool).sum())
        return wilson_interval(hits, len(rows))
    if metric.kind == "share":
        checked = flags(rows, metric.column).dropna()
        return wilson_interval(int(checked.astype(bool).sum()), len(checked))
    values = rows["_ratio"] if metric.kind == "ratio" else rows[metric.column].astype("float64")
    return t_interval((values * scale).tolist(), cells=len(rows))


def _included(metric: Metric, rows: pd.DataFrame) -> pd.Series:
    """Which of ``rows`` go into the metric's figure."""
    if metric.kind == "rate":
        return pd.Series(True, index=rows.index)
    if metric.kind == "share":
        return flags(rows, metric.column).notna()
    values = rows["_ratio"] if metric.kind == "ratio" else rows[metric.column].astype("float64")
    return values.notna() & values.apply(math.isfinite)


def _printed(metric: Metric, mean: float) -> str:
    return f"{mean * 100:.0f}" if metric.kind == "rate" else format(mean, metric.fmt)


def _best(metric: Metric, cells: dict[tuple[str, int], Aggregate]) -> set[tuple[str, int]]:
    if metric.better is None:
        return set()
    best: set[tuple[str, int]] = set()
    for k in {k for _, k in cells}:
        contenders = {
            key: agg.mean
            for key, agg in cells.items()
            if key[1] == k
            and agg.n
            and math.isfinite(agg.mean)
            and not (metric.vs_bptt and key[0] == REFERENCE)
        }
        # a column of one method has no best; BPTT as the reference still makes a column
        if not contenders or sum(1 for key in cells if key[1] == k) < 2:
            continue
        pick = max if metric.better == "higher" else min
        # ties at the printed precision are all best
        printed = {key: _printed(metric, value) for key, value in contenders.items()}
        target = printed[pick(contenders, key=contenders.__getitem__)]
        best |= {key for key, text in printed.items() if text == target}
    return best


def applies(metric: Metric, rows: pd.DataFrame) -> bool:
    """Whether a default metric belongs on this group's board: its rows fill the column."""
    if metric.column not in rows or not rows[metric.column].notna().any():
        return False
    if metric.vs_bptt and metric.kind == "ratio":
        return bool((rows.method == REFERENCE).any()) and rows.method.nunique() > 1
    return True


def _scale(metric: Metric, rows: pd.DataFrame) -> tuple[float, str, str]:
    """The factor applied to the column, the unit in the title, and the suffix of each figure."""
    if metric.kind in ("rate", "share"):
        return 1.0, "%", ""
    values = rows[metric.column].astype("float64") if metric.column in rows else pd.Series()
    if metric.unit == "percent":
        scale = _percent_scale(values)
        return scale, "%" if scale == 100 else "", ""
    if metric.unit == "bytes":
        scale, unit = _bytes_scale(values)
        return scale, unit, ""
    if metric.unit == "seconds":
        scale, unit = _seconds_scale(values)
        return scale, unit, ""
    return metric.scale, metric.unit, ""


def make_table(metric: Metric, group: Group) -> Table:
    rows = group.rows
    if metric.kind == "ratio":
        rows = rows.assign(_ratio=_ratios(rows, metric.column))
    scale, unit, suffix = _scale(metric, rows)
    title = f"{metric.title} ({unit})" if unit else metric.title
    if group.trains and metric.key in ("grad_error", "grad_error_exact", "grad_cosine"):
        title += " at the initial parameters"
    if metric.kind == "rate":
        title += ", failed cells counting as failures"
    if metric.kind == "share":
        title += ", of the cells that solve an adjoint system"
    cells, unconverged = {}, {}
    for (method, k), part in rows.groupby(["method", "truncation"], sort=False):
        if metric.kind == "share" and not flags(part, metric.column).notna().any():
            continue
        cells[(str(method), int(k))] = _aggregate(metric, part, scale)
        flagged = int((_false(part, FORWARD) & _included(metric, part)).sum())
        if flagged:
            unconverged[(str(method), int(k))] = flagged
    return Table(metric, title, cells, _best(metric, cells), scale, unit, suffix, unconverged)


def build(frame: pd.DataFrame, metrics: Sequence[Metric] | None = None) -> list[Group]:
    """The leaderboard of a results table: one group per task (and setting), one table per metric."""
    frame = prepared(frame)
    out = []
    for rows in groups(frame):
        methods = list(dict.fromkeys(str(m) for m in rows.method))
        truncations = sorted({int(k) for k in rows.truncation})
        counts: dict[tuple[str, int], Counter[str]] = {}
        for (method, k), part in rows.groupby(["method", "truncation"], sort=False):
            counts[(str(method), int(k))] = Counter(str(s) for s in part.status)
        group = Group(
            str(rows.task.iloc[0]), _label(rows, frame), rows, methods, truncations, counts
        )
        chosen = metrics if metrics is not None else [m for m in CATALOGUE if applies(m, rows)]
        group.tables = [make_table(metric, group) for metric in chosen if metric.column in rows]
        out.append(group)
    return out


# ---------------------------------------------------------------- formatting


def figure(agg: Aggregate | None, table: Table) -> str:
    """One cell of a table as printed, without the best mark."""
    if agg is None:
        return "-"
    if agg.n == 0:
        return f"n/a (0 of {agg.cells})"
    fmt, suffix = table.metric.fmt, table.suffix
    if agg.kind == "wilson":
        text = f"{agg.mean * 100:.0f}%"
        if agg.cells > 1:
            text += f" [{agg.low * 100:.0f}, {agg.high * 100:.0f}]"
        return f"{text} of {agg.cells}"
    text = format(agg.mean, fmt)
    if agg.has_interval:
        # the half-width to two significant figures, unless the figure has a fixed layout
        text += f" ± {format(agg.half_width, fmt if fmt[-1] in 'ef' else '.2g')}"
    text += suffix
    if agg.n < agg.cells:
        text += f" ({agg.n} of {agg.cells})"
    return text


def cell_count(counts: Counter[str] | None) -> str:
    if counts is None:
        return "-"
    total = sum(counts.values())
    bad = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()) if status != OK)
    return f"{total} ({bad})" if bad else str(total)


def forward_count(rows: pd.DataFrame) -> str:
    """How many of the cells whose forward was checked did not converge: ``1 of 3``."""
    checked = int(flags(rows, FORWARD).notna().sum())
    return f"{int(_false(rows, FORWARD).sum())} of {checked}" if checked else "-"


def _cell(group: Group, table: Table | str, key: tuple[str, int], mark: str) -> str:
    if table == "statuses":
        return cell_count(group.counts.get(key))
    if isinstance(table, str):
        rows = group.rows[(group.rows.method == key[0]) & (group.rows.truncation == key[1])]
        return forward_count(rows) if len(rows) else "-"
    text = figure(table.cells.get(key), table)
    if key in table.unconverged:
        text += f" {UNCONVERGED_MARK}{table.unconverged[key]}"
    return mark.format(text) if key in table.best else text


def _grid(group: Group, table: Table | str, mark: str) -> pd.DataFrame:
    """Methods x K as strings; ``mark`` wraps a best figure (``{}``-style template).

    ``table`` is a metric's table, or the name of a count: "statuses" or "forward".
    """
    data = {
        f"K={k}": [_cell(group, table, (method, k), mark) for method in group.methods]
        for k in group.truncations
    }
    return pd.DataFrame(data, index=pd.Index(group.methods, name="method"))


def _header(group: Group) -> str:
    bad = sum(n for c in group.counts.values() for s, n in c.items() if s != OK)
    header = (
        f"{group.label}: {len(group.rows)} cells ({bad} not ok), {group.seeds} seed(s), "
        "methods x truncation K"
    )
    if REFERENCE not in group.methods:
        header += f"; no {REFERENCE} cells in this group, so no cost ratios to {REFERENCE}"
    return header


def _tolerances(rows: pd.DataFrame) -> str:
    if FORWARD_TOLERANCE not in rows:
        return "its tolerance"
    values = sorted({float(v) for v in rows[FORWARD_TOLERANCE].astype("float64").dropna()})
    if not values:
        return "its tolerance"
    if len(values) == 1:
        return f"tolerance {values[0]:.1e}"
    return f"tolerance {values[0]:.1e} to {values[-1]:.1e}"


def convergence_note(group: Group) -> str | None:
    """What the group's header says about its forward passes: how many did not converge, or
    :data:`NOT_CHECKED` where no ok cell was checked; nothing where the table has no
    ``forward_converged`` column or every checked cell converged."""
    rows = group.rows
    if FORWARD not in rows:
        return None
    checked = flags(rows, FORWARD).notna()
    if group.unconverged:
        unconverged = rows[_false(rows, FORWARD)]
        return (
            f"{group.unconverged} of {int(checked.sum())} cells: forward did not converge "
            f"(relative residual above {_tolerances(unconverged)})"
        )
    ok = rows.status == OK
    tolerance = _present(rows, FORWARD_TOLERANCE)
    # A declared task's rows still carry the measured residual; rows written before the
    # convergence columns existed carry nothing, and are not said to be declared.
    measured = _present(rows, FORWARD_RESIDUAL)
    if ok.any() and measured[ok].any() and not (checked[ok].any() or tolerance[ok].any()):
        return NOT_CHECKED
    return None


def _present(rows: pd.DataFrame, column: str) -> pd.Series:
    if column not in rows:
        return pd.Series(False, index=rows.index)
    return rows[column].astype("float64").notna()


def legend(board: Sequence[Group], marks: str) -> str:
    text = LEGEND + marks
    if any(group.unconverged for group in board):
        text += f"; {UNCONVERGED_LEGEND}"
    if any(" @ " in method for group in board for method in group.methods):
        text += f"; {FORWARD_LEGEND}"
    return text + "."


def _sections(group: Group) -> list[tuple[str, Table | str]]:
    sections: list[tuple[str, Table | str]] = [("cells (statuses other than ok)", "statuses")]
    if group.unconverged:
        sections.append(("cells whose forward did not converge, of those checked", "forward"))
    return [*sections, *[(t.title, t) for t in group.tables]]


def render_text(board: Sequence[Group]) -> str:
    blocks = [legend(board, MARKS["text"])]
    for group in board:
        text = [f"== {_header(group)} =="]
        note = convergence_note(group)
        if note:
            text.append(note)
        for title, table in _sections(group):
            text.append(f"-- {title}\n{_grid(group, table, '{} *').to_string()}")
        blocks.append("\n".join(text))
    return "\n\n".join(blocks) + "\n"


def _markdown_table(grid: pd.DataFrame) -> str:
    header = ["method", *grid.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, values in grid.iterrows():
        lines.append("| " + " | ".join([str(method), *values.tolist()]) + " |")
    return "\n".join(lines)


def render_markdown(board: Sequence[Group]) -> str:
    blocks = [f"_{legend(board, MARKS['markdown'])}_"]
    for group in board:
        blocks.append(f"## {_header(group)}")
        note = convergence_note(group)
        if note:
            blocks.append(note)
        for title, table in _sections(group):
            blocks.append(f"**{title}**\n\n{_markdown_table(_grid(group, table, '**{}**'))}")
    return "\n\n".join(blocks) + "\n"


def legend_html(board: Sequence[Group] = ()) -> str:
    return f'<p class="legend">{html.escape(legend(board, MARKS["html"]))}</p>'


def render_html_fragment(board: Sequence[Group], level: int = 2, with_legend: bool = True) -> str:
    """The tables as HTML (no document around them), for the report and ``--format html``."""
    parts = [legend_html(board)] if with_legend else []
    for group in board:
        parts.append(f"<h{level}>{html.escape(_header(group))}</h{level}>")
        note = convergence_note(group)
        if note:
            parts.append(f'<p class="note">{html.escape(note)}</p>')
        for title, table in _sections(group):
            grid = _grid(group, table, "\x00{}\x01")
            rows = []
            for method, values in grid.iterrows():
                cells = "".join(
                    "<td>"
                    + html.escape(v)
                    .replace("\x00", '<strong class="best">')
                    .replace("\x01", "</strong>")
                    + "</td>"
                    for v in values
                )
                rows.append(f"<tr><th>{html.escape(str(method))}</th>{cells}</tr>")
            head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", *grid.columns])
            parts.append(
                f'<table class="board"><caption>{html.escape(title)}</caption>'
                f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            )
    return "\n".join(parts)


STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 80em; color: #222; }
table.board { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
table.board caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
table.board th, table.board td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
table.board th { background: #f0f0f0; }
strong.best { color: #05610f; }
p.legend { font-size: 0.85em; color: #555; }
img { max-width: 100%; height: auto; }
"""


def html_document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<title>{html.escape(title)}</title>\n<link rel="icon" href="data:,">\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _forward_columns(group: Group, table: Table, key: tuple[str, int]) -> dict[str, int]:
    """The csv's convergence counts, where the table has a ``forward_converged`` column."""
    if FORWARD not in group.rows:
        return {}
    rows = group.rows[(group.rows.method == key[0]) & (group.rows.truncation == key[1])]
    return {
        "forward_checked": int(flags(rows, FORWARD).notna().sum()),
        "forward_not_converged": int(_false(rows, FORWARD).sum()),
        "forward_not_converged_in_figure": table.unconverged.get(key, 0),
    }


def render_csv(board: Sequence[Group]) -> str:
    """One row per group, metric, method and K: the figures unformatted."""
    records = []
    for group in board:
        for table in group.tables:
            for (method, k), agg in table.cells.items():
                counts = group.counts.get((method, k), Counter())
                records.append(
                    {
                        "group": group.label,
                        "task": group.task,
                        "metric": table.metric.key,
                        "method": method,
                        "truncation": k,
                        "mean": agg.mean * (100 if agg.kind == "wilson" else 1),
                        "ci_low": agg.low * (100 if agg.kind == "wilson" else 1),
                        "ci_high": agg.high * (100 if agg.kind == "wilson" else 1),
                        "interval": agg.kind,
                        "n": agg.n,
                        "cells": agg.cells,
                        "not_ok": sum(n for s, n in counts.items() if s != OK),
                        "best": (method, k) in table.best,
                        "unit": table.unit,
                        **_forward_columns(group, table, (method, k)),
                    }
                )
    buffer = io.StringIO()
    pd.DataFrame(records).to_csv(buffer, index=False)
    return buffer.getvalue()


def render(frame: pd.DataFrame, fmt: str = "text", metrics: Sequence[Metric] | None = None) -> str:
    """The leaderboard of ``frame`` in one of :data:`FORMATS`."""
    board = build(frame, metrics)
    if fmt == "text":
        return render_text(board)
    if fmt == "markdown":
        return render_markdown(board)
    if fmt == "html":
        return html_document("rbpbench leaderboard", render_html_fragment(board, level=2))
    if fmt == "csv":
        return render_csv(board)
    raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
