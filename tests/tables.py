"""Hand-made results tables for the leaderboard and report tests: real rows, real schema."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from rbpbench.results import empty_row, to_frame


def row(task: str, method: str, k: int, seed: int, **values: Any) -> dict[str, Any]:
    """A results row with the identity columns filled and ``values`` for the rest."""
    out = empty_row()
    params = values.pop("task_params", {})
    out.update(
        cell_id=f"{task}-{method}-{k}-{seed}-{json.dumps(params, sort_keys=True)}",
        run_id="hand-made",
        task=task,
        task_params=json.dumps(params, sort_keys=True),
        method=method,
        method_params="{}",
        truncation=k,
        seed=seed,
        device="cpu",
        dtype="float64",
        status="ok",
        error="",
    )
    out.update(values)
    return out


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return to_frame(rows)
