"""Table 2 from a hand-made results table: means, spreads, the baseline once per seed, failures counted."""

from __future__ import annotations

import json

from rbpbench.reports.citation import table2
from rbpbench.results import empty_row, to_frame


def cell(method: str, seed: int, accuracy: float, baseline: float, status: str = "ok") -> dict:
    row = empty_row()
    row.update(
        task="cora",
        method=method,
        seed=seed,
        truncation=5,
        status=status,
        test_accuracy=None if status == "error" else accuracy,
        extra_metrics=json.dumps({"baseline_test_accuracy": baseline}),
    )
    return row


def test_table2_gives_mean_and_std_beside_the_paper_and_counts_failed_cells() -> None:
    frame = to_frame(
        [
            cell("neumann-rbp", 0, 0.40, 0.30),
            cell("neumann-rbp", 1, 0.50, 0.34),
            cell("bptt", 0, 0.20, 0.30),
            cell("bptt", 1, 0.10, 0.34, status="diverged"),
            cell("tbptt", 0, 0.0, 0.30, status="error"),
        ]
    )
    lines = {line.split(" | ")[1]: line for line in table2(frame).splitlines()[2:]}
    assert lines["neumann-rbp"] == (
        "| cora | neumann-rbp | 45.00 ± 7.1 | 2 | 0 | 0 | 46.63 ± 8.3 | -1.63 |"
    )
    # the baseline is per seed, not per cell: two seeds, whatever the number of methods
    assert (
        lines["baseline"] == "| cora | baseline | 32.00 ± 2.8 | 2 | 0 | 0 | 39.96 ± 3.4 | -7.96 |"
    )
    # a diverged run keeps its best-validation test accuracy; a failed one is counted, not dropped
    assert lines["bptt"] == "| cora | bptt | 15.00 ± 7.1 | 2 | 1 | 0 | 24.48 ± 6.6 | -9.48 |"
    assert lines["tbptt"] == "| cora | tbptt | - | 0 | 0 | 1 | 46.55 ± 6.4 | - |"
    assert "rbp" not in lines
