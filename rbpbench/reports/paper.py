"""The paper's published figures (``paper_figures.toml``) beside the measured ones.

A table is compared only with the cells run as its preset prescribes: the rows
of the table's task whose task parameters agree with every parameter the
preset (``--suite``) sets for that task. The seeds and the number of trials may
differ; the measured figure says over how many cells it is.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import pandas as pd

from rbpbench import config, leaderboard
from rbpbench.stats import Aggregate, t_interval

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class PaperFigure:
    table: str
    task: str
    method: str
    truncation: int | None
    metric: str
    value: float
    spread: float | None
    extra: str | None = None  # measured from this key of extra_metrics, once per seed


@dataclass(frozen=True)
class Row:
    """One published figure beside the measured one."""

    figure: PaperFigure
    truncation: int | None
    measured: Aggregate
    text: str  # the measured figure as the leaderboard prints it
    group: str  # the leaderboard group: the task, with the settings that vary within it

    @property
    def difference(self) -> float:
        if self.measured.n == 0:
            return math.nan
        scale = 100.0 if self.measured.kind == "wilson" else 1.0
        return self.measured.mean * scale - self.figure.value


@dataclass(frozen=True)
class Comparison:
    table: str
    caption: str
    suite: str
    rows: list[Row]


@cache
def tables() -> dict[str, dict[str, Any]]:
    """The data file as read: table name -> caption, suite, metric, figures."""
    text = (resources.files("rbpbench.reports") / "paper_figures.toml").read_text()
    return tomllib.loads(text)


def figures() -> list[PaperFigure]:
    out = []
    for name, table in tables().items():
        for f in table["figures"]:
            out.append(
                PaperFigure(
                    name,
                    f["task"],
                    f["method"],
                    f.get("truncation"),
                    f.get("metric", table["metric"]),
                    float(f["value"]),
                    f.get("spread"),
                    f.get("extra"),
                )
            )
    return out


def _agrees(params: str, wanted: dict[str, Any]) -> bool:
    have = leaderboard.json_object(params, "task_params")
    return all(have.get(key) == value for key, value in wanted.items())


def preset_rows(frame: pd.DataFrame, suite: str, task: str) -> pd.DataFrame:
    """The rows of ``task`` run with the task parameters of the preset ``suite``."""
    if suite not in config.suite_names():
        return frame.iloc[0:0]
    wanted = config.load_suite(suite).get("task_params", {}).get(task, {})
    rows = frame[frame.task == task]
    keep = pd.Series([_agrees(p, wanted) for p in rows.task_params], index=rows.index, dtype=bool)
    return rows[keep]


def compare(frame: pd.DataFrame) -> list[Comparison]:
    """Each table of the paper that ``frame`` has preset cells for, figure by figure."""
    out = []
    for name, table in tables().items():
        rows: list[Row] = []
        for fig in (f for f in figures() if f.table == name):
            if fig.extra is not None:
                rows += _extra_rows(fig, preset_rows(frame, table["suite"], fig.task))
                continue
            matched = preset_rows(frame, table["suite"], fig.task)
            matched = matched[matched.method == fig.method]
            if matched.empty:
                continue
            # ratios need BPTT's cells beside the method's
            context = preset_rows(frame, table["suite"], fig.task)
            metric = leaderboard.BY_KEY[fig.metric]
            board = leaderboard.build(
                context[context.method.isin([fig.method, leaderboard.REFERENCE])], [metric]
            )
            for group in board:
                result = group.tables[0]
                ks = (
                    [fig.truncation]
                    if fig.truncation is not None
                    else sorted({k for m, k in result.cells if m == fig.method})
                )
                for k in ks:
                    agg = result.cells.get((fig.method, k))
                    if agg is None:
                        continue
                    text = leaderboard.figure(agg, result)
                    rows.append(Row(fig, k, agg, text, group.label))
        if rows:
            out.append(Comparison(name, table["caption"], table["suite"], rows))
    return out


def _extra_rows(fig: PaperFigure, rows: pd.DataFrame) -> list[Row]:
    """A figure measured by every cell alike (a baseline fitted beside each run): one per seed."""
    per_seed: dict[int, float] = {}
    for record in rows.itertuples():
        extra = leaderboard.json_object(getattr(record, "extra_metrics", None))
        value = extra.get(fig.extra) if fig.extra is not None else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            per_seed.setdefault(int(record.seed), float(value))
    if not per_seed:
        return []
    metric = leaderboard.BY_KEY[fig.metric]
    values = pd.Series(list(per_seed.values()), dtype="float64")
    scale = 100.0 if metric.unit == "percent" and values.abs().max() <= 1 else 1.0
    agg = t_interval((values * scale).tolist())
    shown = leaderboard.Table(metric, metric.title, {}, set(), scale)
    return [Row(fig, None, agg, leaderboard.figure(agg, shown), fig.task)]


def markdown(comparisons: list[Comparison]) -> str:
    blocks = []
    for c in comparisons:
        lines = [
            f"**{c.caption}** (measured: cells run with `--suite {c.suite}`'s task parameters)",
            "",
            "| task | method | K | metric | measured | paper | measured - paper |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in c.rows:
            lines.append("| " + " | ".join(cells(row)) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def cells(row: Row) -> list[str]:
    f = row.figure
    paper = f"{f.value:g}" + (f" ± {f.spread:g}" if f.spread is not None else "")
    diff = row.difference
    return [
        row.group,
        f.method,
        "-" if row.truncation is None else str(row.truncation),
        f.metric,
        row.text,
        paper,
        "-" if math.isnan(diff) else f"{diff:+.2f}",
    ]
