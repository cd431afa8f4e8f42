"""The tables of docs/choosing-a-method.md, from a results folder of the forward-solvers suite.

    python -m rbpbench.reports.forward_solvers RESULTS_DIR

writes ``RESULTS_DIR/choosing-a-method.md``: per spectral norm, one row per
forward solver, method and K with the exact-gradient error, the Jacobian
products of the backward pass, the F evaluations, wall time and peak memory
(means over seeds; wall time and memory as medians, which one slow repeat on a
shared machine does not move), and a table of forward solvers' evaluations
alone. Every figure comes from the table; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from rbpbench.results import OK, read

# Methods whose K changes nothing: their rows are shown once, at the smallest K.
K_FREE = ("bptt", "jfb")


def spectral_norm(params: str) -> float:
    return float(json.loads(params).get("spectral_norm", float("nan")))


def prepared(frame: pd.DataFrame) -> pd.DataFrame:
    rows = frame[(frame.task == "contractive-rnn") & (frame.status == OK)].copy()
    rows["rho"] = rows.task_params.map(spectral_norm)
    rows["forward"] = rows["forward"].fillna("iterate")
    rows["products"] = rows.backward_vjps.astype("float64") + rows.backward_jvps.astype("float64")
    smallest = rows.truncation.min()
    keep = ~rows.method.isin(K_FREE) | (rows.truncation == smallest)
    return rows[keep]


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    grouped = rows.groupby(["rho", "forward", "method", "truncation"], sort=True)
    return pd.DataFrame(
        {
            "seeds": grouped.size(),
            "exact error": grouped.grad_rel_error_exact.mean(),
            "J products": grouped.products.mean(),
            "F evaluations": grouped.forward_evaluations.mean(),
            "time (ms)": grouped.wall_time_s.median() * 1e3,
            "memory (KiB)": grouped.peak_memory_bytes.median() / 1024,
            "rho(J)": grouped.spectral_radius.mean(),
        }
    ).reset_index()


def markdown(table: pd.DataFrame, formats: dict[str, str]) -> str:
    columns = list(table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        cells = [format(row[c], formats[c]) if c in formats else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


FORMATS = {
    "exact error": ".2e",
    "J products": ".0f",
    "F evaluations": ".0f",
    "time (ms)": ".2f",
    "memory (KiB)": ".0f",
    "rho(J)": ".4f",
}


def page(frame: pd.DataFrame) -> str:
    rows = prepared(frame)
    table = summary(rows)
    parts = []
    for rho, part in table.groupby("rho", sort=True):
        radius = part["rho(J)"].mean()
        parts.append(f"### spectral norm {rho:g} (rho(J) = {radius:.4f})\n")
        shown = part.drop(columns=["rho", "rho(J)"]).rename(columns={"truncation": "K"})
        parts.append(markdown(shown, FORMATS))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rbpbench.reports.forward_solvers")
    parser.add_argument("results", help="a results folder of the forward-solvers suite")
    args = parser.parse_args(argv)
    folder = Path(args.results)
    try:
        frame = read(folder)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = folder / "choosing-a-method.md"
    out.write_text(page(frame))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
