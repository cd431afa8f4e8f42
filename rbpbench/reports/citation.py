"""Table 2 beside the paper's figures, and curves like Fig. 3, from a citation results folder.

    python -m rbpbench.reports.citation RESULTS_DIR

writes ``RESULTS_DIR/citation-table2.md`` and ``RESULTS_DIR/citation-curves.png``.
Accuracies are in percent, mean +- standard deviation over seeds, as the
paper reports them; the test accuracy of a cell is the one at its best
validation epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from rbpbench.curves import STEP_NORM
from rbpbench.problem import TaskFigure
from rbpbench.reports import paper
from rbpbench.results import read, read_curves

TASKS = ("cora", "citeseer", "pubmed")
METHODS = ("bptt", "tbptt", "rbp", "cg-rbp", "neumann-rbp")


def paper_table2() -> dict[str, dict[str, tuple[float, float]]]:
    """Table 2 of the paper, test accuracy (%) mean ± std over 10 seeds, from the package's data file."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for fig in paper.figures():
        if fig.table == "table2":
            table.setdefault(fig.task, {})[fig.method] = (fig.value, float(fig.spread or 0.0))
    return table


def accuracies(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, column, seed): the test accuracy in percent; column is a method or ``baseline``.

    A diverged training run keeps the test accuracy of its best validation
    epoch before it diverged, as model selection on the validation set would.
    The baseline does not depend on the method, so it is read once per seed
    from whichever cells of that seed finished. Cells that ended otherwise
    contribute nothing; :func:`table2` counts them.
    """
    rows = frame[frame.task.isin(TASKS) & frame.test_accuracy.notna()]
    records = [
        {"task": r.task, "column": r.method, "seed": r.seed, "accuracy": 100 * r.test_accuracy}
        for r in rows.itertuples()
    ]
    for (task, seed), group in rows.groupby(["task", "seed"]):
        extra = json.loads(group.extra_metrics.iloc[0] or "{}")
        if "baseline_test_accuracy" in extra:
            accuracy = 100 * extra["baseline_test_accuracy"]
            records.append({"task": task, "column": "baseline", "seed": seed, "accuracy": accuracy})
    return pd.DataFrame.from_records(records, columns=["task", "column", "seed", "accuracy"])


def table2(frame: pd.DataFrame) -> str:
    """Markdown: per dataset, each method's measured accuracy beside the paper's, with the difference."""
    measured = accuracies(frame)
    published = paper_table2()
    lines = [
        "| dataset | column | measured (%) | seeds | of which diverged | failed | paper (%) | measured - paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    citation = frame[frame.task.isin(TASKS)]
    for task in [t for t in TASKS if t in set(citation.task)]:
        for column in ("baseline", *METHODS):
            values = measured[(measured.task == task) & (measured.column == column)].accuracy
            cells = citation[(citation.task == task) & (citation.method == column)]
            diverged = int((cells.test_accuracy.notna() & (cells.status == "diverged")).sum())
            failed = int(cells.test_accuracy.isna().sum())
            if values.empty and failed == 0:
                continue
            text = (
                f"{values.mean():.2f} ± {values.std(ddof=1):.1f}"
                if len(values) > 1
                else (f"{values.mean():.2f}" if len(values) else "-")
            )
            expected = published.get(task, {}).get(column)
            paper_text = f"{expected[0]:.2f} ± {expected[1]:.1f}" if expected else "-"
            difference = f"{values.mean() - expected[0]:+.2f}" if expected and len(values) else "-"
            lines.append(
                f"| {task} | {column} | {text} | {len(values)} | {diverged} | {failed} "
                f"| {paper_text} | {difference} |"
            )
    return "\n".join(lines) + "\n"


def curves_figure(folder: Path, frame: pd.DataFrame, path: Path) -> None:
    """Fig. 3: training loss, validation accuracy and the last pass's difference norms, per dataset.

    Each line is one method (at its first truncation), averaged over seeds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = frame[frame.task.isin(TASKS) & (frame.status == "ok")]
    tasks = [t for t in TASKS if t in set(rows.task)]
    if not tasks:
        raise ValueError(f"no finished citation cells in {folder}")
    panels = (
        ("train_loss", None, "training loss"),
        ("val_accuracy", "eval_epoch", "validation accuracy"),
        ("difference_norm", None, STEP_NORM),
    )
    figure, axes = plt.subplots(len(tasks), 3, figsize=(14, 3.6 * len(tasks)), squeeze=False)
    for row_axes, task in zip(axes, tasks, strict=True):
        cells = rows[rows.task == task]
        for method, group in cells.groupby("method", sort=False):
            group = group[group.truncation == group.truncation.min()]
            curves = [read_curves(folder, str(c)) for c in group.cell_id]
            for axis, (name, x_name, label) in zip(row_axes, panels, strict=True):
                series = [c[c.curve == name].value.reset_index(drop=True) for c in curves]
                mean = pd.concat(series, axis=1).mean(axis=1)
                x = curves[0][curves[0].curve == x_name].value.tolist() if x_name else None
                axis.plot(
                    x if x and len(x) == len(mean) else range(1, len(mean) + 1), mean, label=method
                )
                axis.set_title(f"{task}: {label}")
                axis.set_xlabel("propagation step" if name == "difference_norm" else "epoch")
        row_axes[2].set_yscale("log")
        row_axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def fig3(folder: Path, rows: pd.DataFrame, path: Path) -> bool:
    """The task's figure in ``rbpbench report``: :func:`curves_figure` of these rows; False
    where none finished or their curves are not in the folder."""
    try:
        curves_figure(folder, rows, path)
    except (ValueError, FileNotFoundError, KeyError):
        return False
    return True


FIGURES = (
    TaskFigure(
        "fig3",
        "Like the paper's Fig. 3: training loss, validation accuracy and the last pass's "
        "difference norms, one line per method at its smallest K, mean over seeds",
        fig3,
    ),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rbpbench.reports.citation")
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    frame = read(args.results)
    (args.results / "citation-table2.md").write_text(table2(frame))
    curves_figure(args.results, frame, args.results / "citation-curves.png")
    print(f"wrote {args.results / 'citation-table2.md'} and {args.results / 'citation-curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
