"""Table 1 beside the paper's figures, and a figure like Fig. 2, from a hopfield results folder.

    python -m rbpbench.reports.hopfield RESULTS_DIR [--seed S] [--truncation K]

writes ``RESULTS_DIR/hopfield-table1.md`` and ``RESULTS_DIR/hopfield-retrievals.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from rbpbench.problem import TaskFigure
from rbpbench.reports import paper
from rbpbench.results import DIVERGED, OK, read, read_curves
from rbpbench.stats import wilson_interval


def paper_table1() -> dict[str, dict[int, float]]:
    """Table 1 of the paper, success rate (%) out of 100 trials, from the package's data file."""
    table: dict[str, dict[int, float]] = {}
    for fig in paper.figures():
        if fig.table == "table1" and fig.truncation is not None:
            table.setdefault(fig.method, {})[fig.truncation] = fig.value
    return table


PAPER_TRIALS = 100  # Table 1's rates are out of 100 trials each


def percent(value: float) -> str:
    """A rate as a percentage: whole percents, tenths below 10%, 0% for what rounds to it."""
    share = 100 * value
    return f"{share:.0f}%" if share >= 10 or round(share, 1) == 0 else f"{share:.1f}%"


def fisher_p(hits: int, trials: int, other_hits: int, other_trials: int) -> float:
    """Two-sided p-value of Fisher's exact test that two success rates are equal."""
    from scipy.stats import fisher_exact

    table = [[hits, trials - hits], [other_hits, other_trials - other_hits]]
    return float(fisher_exact(table, alternative="two-sided").pvalue)


def method_labels(rows: pd.DataFrame) -> pd.Series:
    """Each row's method, with the parameters it ran with where they are not the method's
    defaults (``rbp (init=zeros)``); a method that is not installed here keeps its name."""
    from rbpbench.plugins import load_registry

    methods = load_registry(warn=False).methods

    def label(method: str, params: str) -> str:
        if method not in methods:
            return method
        defaults = methods[method][0].defaults
        given = json.loads(params) if isinstance(params, str) and params else {}
        changed = {k: v for k, v in given.items() if defaults.get(k) != v}
        return (
            f"{method} ({', '.join(f'{k}={v}' for k, v in changed.items())})" if changed else method
        )

    params = rows.method_params if "method_params" in rows else pd.Series("", index=rows.index)
    return pd.Series(
        [label(str(m), p) for m, p in zip(rows.method, params, strict=True)], index=rows.index
    )


def table1(frame: pd.DataFrame) -> str:
    """Markdown: per method and K, the measured success rate with its 95% Wilson interval,
    the paper's (out of its 100 trials) with its own, and Fisher's exact test of the two.

    A failed cell (timeout, error) counts as a failed trial. "agree" means the two
    rates are not told apart at the 5% level (two-sided Fisher's exact test on the
    two counts); the paper's counts are its percentages of 100 trials. A method
    run with other parameters than its defaults is a row of its own, named with
    them, and has no paper figure: the paper ran the defaults.
    """
    rows = frame[frame.task == "hopfield"]
    rows = rows.assign(method=method_labels(rows))
    published = paper_table1()
    hit = rows.success.fillna(False).astype(bool)
    counts = hit.groupby([rows.method, rows.truncation]).agg(["sum", "size"])
    lines = [
        "| method | K | trials | succeeded | measured (95% Wilson interval) "
        "| paper, of 100 (95% interval) | Fisher's exact p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(rows.method):
        for k in sorted(int(k) for k in rows[rows.method == method].truncation.unique()):
            hits, trials = (int(v) for v in counts.loc[(method, k)])
            measured = wilson_interval(hits, trials)
            rate = published.get(str(method), {}).get(k)
            if rate is None:
                paper_cell, p_cell, verdict = "-", "-", "no paper figure"
            else:
                paper_hits = round(rate * PAPER_TRIALS / 100)
                paper = wilson_interval(paper_hits, PAPER_TRIALS)
                p = fisher_p(hits, trials, paper_hits, PAPER_TRIALS)
                paper_cell = f"{rate:g}% ({percent(paper.low)} to {percent(paper.high)})"
                p_cell = f"{p:.2g}"
                verdict = "agree" if p >= 0.05 else "differ"
            lines.append(
                f"| {method} | {k} | {trials} | {hits} | {percent(measured.mean)} "
                f"({percent(measured.low)} to {percent(measured.high)}) "
                f"| {paper_cell} | {p_cell} | {verdict} |"
            )
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
