"""The leaderboard printed after a sweep: methods x truncation, mean and spread over seeds."""

from __future__ import annotations

import pandas as pd


def _mean_spread(values: pd.Series, fmt: str) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return format(values.iloc[0], fmt)
    return f"{format(values.mean(), fmt)} ± {format(values.std(ddof=1), fmt)}"


def pivot(frame: pd.DataFrame, metric: str, fmt: str, scale: float = 1.0) -> pd.DataFrame:
    """Mean ± sd over the cells that have the figure (a failed cell has none)."""
    values = frame[["method", "truncation"]].assign(value=frame[metric].astype("float64") * scale)
    methods = list(dict.fromkeys(frame.method))
    table = (
        values.groupby(["method", "truncation"])["value"]
        .apply(lambda s: _mean_spread(s, fmt))
        .unstack("truncation")
    )
    return table.reindex(methods).fillna("-")


def success_rate(frame: pd.DataFrame) -> pd.DataFrame:
    """Percentage of cells that succeeded, out of all cells: a failed cell counts as a failure."""
    methods = list(dict.fromkeys(frame.method))
    counts = frame.assign(hit=frame.success.fillna(False).astype(bool)).groupby(
        ["method", "truncation"]
    )["hit"]
    table = (counts.mean() * 100).map(lambda v: f"{v:.0f}%") + counts.size().map(
        lambda n: f" of {n}"
    )
    return table.unstack("truncation").reindex(methods).fillna("-")


def failures(frame: pd.DataFrame) -> pd.DataFrame:
    bad = frame[frame.status != "ok"]
    return bad.groupby(["method", "status"]).size().rename("cells").reset_index()


def render(frame: pd.DataFrame) -> str:
    blocks = []
    for task, rows in frame.groupby("task", sort=False):
        has_exact = rows.grad_rel_error_exact.notna().any()
        error_metric = "grad_rel_error_exact" if has_exact else "grad_rel_error"
        error_name = "vs exact gradient" if has_exact else "vs BPTT"
        seeds = rows.seed.nunique()
        header = f"== {task}: {len(rows)} cells, {seeds} seed(s), mean ± sd over seeds =="
        trains = bool(rows.train_loss_final.notna().any())
        sections = []
        if rows.success.notna().any():
            sections.append(("success rate (failed cells count as failures)", success_rate(rows)))
        if rows.test_accuracy.notna().any():
            title = "test accuracy (%) at the best validation epoch"
            sections.append((title, pivot(rows, "test_accuracy", ".2f", 100)))
        if trains:
            sections.append(("final training loss", pivot(rows, "train_loss_final", ".3g")))
        if rows.retrieval_error.notna().any():
            title = "retrieval error (fraction of wrong pixels)"
            sections.append((title, pivot(rows, "retrieval_error", ".3f")))
        where = " at the initial parameters" if trains else ""
        sections += [
            (f"relative gradient error {error_name}{where}", pivot(rows, error_metric, ".2e")),
            ("gradient cosine vs BPTT", pivot(rows, "grad_cosine", ".4f")),
            ("wall time (ms)", pivot(rows, "wall_time_s", ".3g", 1e3)),
            ("peak memory (KiB)", pivot(rows, "peak_memory_bytes", ".4g", 1 / 1024)),
        ]
        text = [header]
        for title, table in sections:
            table.columns = [f"K={k}" for k in table.columns]
            text.append(f"-- {title}\n{table.to_string()}")
        bad = failures(rows)
        if len(bad):
            text.append(f"-- cells not ok\n{bad.to_string(index=False)}")
        blocks.append("\n".join(text))
    return "\n\n".join(blocks)
