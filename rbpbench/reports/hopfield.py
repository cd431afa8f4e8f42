"""Table 1 beside the paper's figures, and a figure like Fig. 2, from a hopfield results folder.

    python -m rbpbench.reports.hopfield RESULTS_DIR [--seed S] [--truncation K]

writes ``RESULTS_DIR/hopfield-table1.md`` and ``RESULTS_DIR/hopfield-retrievals.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from rbpbench.problem import TaskFigure
from rbpbench.reports import paper
from rbpbench.results import DIVERGED, OK, read, read_curves


def paper_table1() -> dict[str, dict[int, float]]:
    """Table 1 of the paper, success rate (%) out of 100 trials, from the package's data file."""
    table: dict[str, dict[int, float]] = {}
    for fig in paper.figures():
        if fig.table == "table1" and fig.truncation is not None:
            table.setdefault(fig.method, {})[fig.truncation] = fig.value
    return table


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


def table1(frame: pd.DataFrame) -> str:
    """Markdown: measured success rate (and trial count) beside the paper's, per method and K."""
    rows = frame[frame.task == "hopfield"]
    measured = success_rate(rows)
    published = paper_table1()
    lines = [
        "| method | " + " | ".join(f"K={k}: measured / paper" for k in measured.columns) + " |"
    ]
    lines.append("|---" * (len(measured.columns) + 1) + "|")
    for method, values in measured.iterrows():
        expected = published.get(str(method), {})
        cells = [
            f"{values[k]} / {expected[k]:g}%" if k in expected else f"{values[k]} / -"
            for k in measured.columns
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def retrieval_figure(
    folder: Path, frame: pd.DataFrame, seed: int, truncation: int, path: Path
) -> None:
    """The corrupted inputs, then each method's retrievals, one row each (like Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = frame[(frame.task == "hopfield") & (frame.seed == seed)]
    rows = rows[(rows.truncation == truncation) | (rows.method == "bptt")].drop_duplicates("method")
    panels: list[tuple[str, list[float]]] = []
    for _, row in rows.iterrows():
        curves = read_curves(folder, str(row.cell_id))
        if not panels:
            panels.append(("corrupted input", curves[curves.curve == "corrupted"].value.tolist()))
        panels.append((str(row.method), curves[curves.curve == "retrieved"].value.tolist()))
    if not panels:
        raise ValueError(
            f"no hopfield cells with seed {seed} and truncation {truncation} in {folder}"
        )
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 1.2 * len(panels)), squeeze=False)
    for axis, (title, values) in zip(axes[:, 0], panels, strict=True):
        images = pd.Series(values).to_numpy().reshape(10, 28, 28)
        axis.imshow(images.transpose(1, 0, 2).reshape(28, 280), cmap="gray_r", vmin=0, vmax=1)
        axis.set_ylabel(title, rotation=0, ha="right", va="center")
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"hopfield retrievals, seed {seed}, K = {truncation}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def retrievals(folder: Path, rows: pd.DataFrame, path: Path) -> bool:
    """The task's figure in ``rbpbench report``: the retrievals at K = 20 (else the middle K)
    for the first seed; False where the cells' curves are not in the folder."""
    rows = rows[rows.status.isin([OK, DIVERGED])]
    if rows.empty or not (folder / "curves").exists():
        return False
    ks = sorted(int(k) for k in rows.truncation.unique())
    k = 20 if 20 in ks else ks[len(ks) // 2]
    try:
        retrieval_figure(folder, rows, int(rows.seed.min()), k, path)
    except (ValueError, FileNotFoundError, KeyError):
        return False
    return True


FIGURES = (
    TaskFigure(
        "retrievals",
        "Retrievals from corrupted digits (like the paper's Fig. 2): the corrupted input, "
        "then each method's binarised output",
        retrievals,
    ),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rbpbench.reports.hopfield")
    parser.add_argument("results", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truncation", type=int, default=20)
    args = parser.parse_args(argv)
    frame = read(args.results)
    (args.results / "hopfield-table1.md").write_text(table1(frame))
    retrieval_figure(
        args.results, frame, args.seed, args.truncation, args.results / "hopfield-retrievals.png"
    )
    print(
        f"wrote {args.results / 'hopfield-table1.md'} and {args.results / 'hopfield-retrievals.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
