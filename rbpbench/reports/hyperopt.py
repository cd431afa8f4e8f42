"""Table 3, cost against T, and figures like Figs. 4-5, from a hyperopt results folder.

    python -m rbpbench.reports.hyperopt RESULTS_DIR

writes ``RESULTS_DIR/hyperopt-report.md`` with the sections the folder's cells
allow, and, where cells trained, ``hyperopt-fig4.png`` (meta loss per meta
step) and ``hyperopt-fig5.png`` (inner training loss at the last meta step).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from rbpbench.problem import TaskFigure
from rbpbench.results import read, read_curves

# Table 3 of the paper: BPTT's cost over Neumann-RBP's at T = 1000 (one GPU).
PAPER_TABLE3 = {"time": {10: 3.02, 50: 2.87, 100: 2.68}, "memory": {10: 4.35, 50: 4.25, 100: 4.11}}
METHOD_ORDER = ["bptt", "tbptt", "rbp", "cg-rbp", "neumann-rbp"]
MIB = 2**20


def hyperopt_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The hyperopt rows with their T and RBP linearisation as columns."""
    rows = frame[frame.task == "hyperopt"].copy()
    params = rows.task_params.map(json.loads)
    rows["steps"] = params.map(lambda p: int(p["steps"]))
    rows["jacobian"] = params.map(lambda p: str(p["rbp_jacobian"]))
    rows["meta_steps"] = params.map(lambda p: int(p["meta_steps"]))
    return rows


def fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}g}"


def table3(rows: pd.DataFrame) -> str:
    """BPTT over Neumann-RBP in time and memory, per T, linearisation and K, beside the paper."""
    lines = [
        "| T | seed | RBP Jacobian | K | time ratio (paper) | memory ratio (paper) | bptt time s | "
        "neumann time s | bptt MiB | neumann MiB | neumann grad rel. error | rho(J) |",
        "|---" * 12 + "|",
    ]
    ok = rows[rows.status == "ok"]
    for (steps, seed, jacobian), group in ok.groupby(["steps", "seed", "jacobian"]):
        # BPTT does not depend on the RBP linearisation: any of its cells at this T and seed
        reference = ok[(ok.method == "bptt") & (ok.steps == steps) & (ok.seed == seed)]
        if reference.empty:
            continue
        bptt_time = float(reference.wall_time_s.median())
        bptt_memory = float(reference.peak_memory_bytes.median())
        neumann = group[group.method == "neumann-rbp"].sort_values("truncation")
        for _, row in neumann.iterrows():
            k = int(row.truncation)
            paper = {
                kind: PAPER_TABLE3[kind].get(k) if steps == 1000 else None for kind in PAPER_TABLE3
            }
            lines.append(
                f"| {steps} | {seed} | {jacobian} | {k} "
                f"| x{bptt_time / row.wall_time_s:.2f} ({'x' + str(paper['time']) if paper['time'] else '-'}) "
                f"| x{bptt_memory / row.peak_memory_bytes:.1f} ({'x' + str(paper['memory']) if paper['memory'] else '-'}) "
                f"| {bptt_time:.2f} | {row.wall_time_s:.2f} | {bptt_memory / MIB:.1f} "
                f"| {row.peak_memory_bytes / MIB:.1f} | {fmt(row.grad_rel_error)} | {fmt(row.spectral_radius, 4)} |"
            )
    return "\n".join(lines) + "\n"


def cost_against_steps(rows: pd.DataFrame) -> str:
    """Median time (s) and peak memory (MiB) of one meta step per method and K, one column per T."""
    ok = rows[rows.status == "ok"]
    steps = sorted(ok.steps.unique())
    lines = [
        "| method | K | RBP Jacobian | " + " | ".join(f"T={t}: s / MiB" for t in steps) + " |",
        "|---" * (3 + len(steps)) + "|",
    ]
    # BPTT depends on neither K nor the RBP linearisation: one row for it
    unrolled = ok.method == "bptt"
    keyed = ok.assign(
        order=ok.method.map(lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99),
        truncation=ok.truncation.where(~unrolled, 0),
        jacobian=ok.jacobian.where(~unrolled, "-"),
    )
    groups = keyed.groupby(["order", "method", "truncation", "jacobian"])
    for (_, method, k, jacobian), group in groups:
        cells = []
        for t in steps:
            at = group[group.steps == t]
            cells.append(
                f"{at.wall_time_s.median():.2f} / {at.peak_memory_bytes.median() / MIB:.1f}"
                if len(at)
                else "-"
            )
        k_text = "-" if method == "bptt" else str(k)
        lines.append(f"| {method} | {k_text} | {jacobian} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def meta_training(rows: pd.DataFrame) -> str:
    """Per trained cell: meta loss before and after, the worst probed hypergradient error, status."""
    trained = rows[rows.meta_steps > 0]
    lines = [
        "| T | K | seed | method | RBP Jacobian | status | meta steps | meta loss first | meta loss final "
        "| max probe grad rel. error | learned lr W1 / W4 | learned momentum W1 / W4 |",
        "|---" * 12 + "|",
    ]
    for _, row in trained.sort_values(["steps", "truncation", "seed", "jacobian"]).iterrows():
        extra = json.loads(row.extra_metrics) if isinstance(row.extra_metrics, str) else {}
        lines.append(
            f"| {row.steps} | {row.truncation} | {row.seed} | {row.method} | {row.jacobian} | {row.status} "
            f"| {row.epochs} | {fmt(row.train_loss_initial, 4)} | {fmt(row.train_loss_final, 4)} "
            f"| {fmt(extra.get('max_probe_grad_rel_error', math.nan))} "
            f"| {fmt(extra.get('lr_W1', math.nan))} / {fmt(extra.get('lr_W4', math.nan))} "
            f"| {fmt(extra.get('momentum_W1', math.nan))} / {fmt(extra.get('momentum_W4', math.nan))} |"
        )
    return "\n".join(lines) + "\n"


def curve_figure(folder: Path, rows: pd.DataFrame, curve: str, ylabel: str, path: Path) -> None:
    """One panel per (T, K), one line per method and linearisation, log y (like Figs. 4 and 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = rows[rows.meta_steps > 0]
    panels = sorted({(int(r.truncation), int(r.steps)) for _, r in trained.iterrows()})
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for axis, (k, steps) in zip(axes[0], panels, strict=True):
        group = trained[(trained.truncation == k) & (trained.steps == steps)]
        for _, row in group.iterrows():
            values = read_curves(folder, str(row.cell_id))
            values = values[values.curve == curve]
            label = (
                row.method if row.method in ("bptt", "tbptt") else f"{row.method} ({row.jacobian})"
            )
            axis.plot(values.step, values.value, label=label)
        axis.set_yscale("log")
        axis.set_title(f"T = {steps}, K = {k}")
        axis.set_xlabel("meta step" if curve == "meta_loss" else "training step")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _meta_figure(curve: str, ylabel: str) -> Callable[[Path, pd.DataFrame, Path], bool]:
    def draw(folder: Path, rows: pd.DataFrame, path: Path) -> bool:
        if not (folder / "curves").exists():
            return False
        try:
            rows = hyperopt_rows(rows)
            rows = rows[rows.status.isin(["ok", "diverged"])]
            if not (rows.meta_steps > 0).any():
                return False
            curve_figure(folder, rows, curve, ylabel, path)
        except (ValueError, FileNotFoundError, KeyError):
            return False
        return True

    return draw


FIGURES = (
    TaskFigure(
        "fig4",
        "Like the paper's Fig. 4: the meta-training loss per meta step, one panel per T and K, "
        "one line per cell",
        _meta_figure("meta_loss", "meta training loss"),
    ),
    TaskFigure(
        "fig5",
        "Like the paper's Fig. 5: the inner training loss at the last meta step, one panel per "
        "T and K, one line per cell",
        _meta_figure("inner_train_loss", "training loss, last meta step"),
    ),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rbpbench.reports.hyperopt")
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    rows = hyperopt_rows(read(args.results))
    if rows.empty:
        print(f"no hyperopt cells in {args.results}", file=sys.stderr)
        return 1
    sections = [
        "## BPTT over Neumann-RBP (Table 3)\n\n" + table3(rows),
        "## Cost of one meta step against T\n\n" + cost_against_steps(rows),
    ]
    written = [args.results / "hyperopt-report.md"]
    if (rows.meta_steps > 0).any():
        sections.append("## Meta-training (Figs. 4-5)\n\n" + meta_training(rows))
        for curve, ylabel, name in (
            ("meta_loss", "meta training loss", "hyperopt-fig4.png"),
            ("inner_train_loss", "training loss, last meta step", "hyperopt-fig5.png"),
        ):
            curve_figure(args.results, rows, curve, ylabel, args.results / name)
            written.append(args.results / name)
    (args.results / "hyperopt-report.md").write_text("\n".join(sections))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
