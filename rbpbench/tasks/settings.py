"""The checks every task's settings share: parameters must be fields of its Settings dataclass,
counts and rates must lie in their ranges."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import fields
from typing import Any, TypeVar

S = TypeVar("S")


def settings_from(cls: type[S], params: dict[str, Any], task: str) -> S:
    """``cls(**params)``, refusing names that are not fields of ``cls`` with one clear line."""
    unknown = set(params) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise TypeError(f"{task}: unknown parameters {sorted(unknown)}")
    return cls(**params)


def at_least(task: str, low: int, values: Iterable[tuple[str, Any]]) -> None:
    """Each (name, value) is a count of at least ``low``; ValueError naming the first that is not."""
    for name, value in values:
        if not value >= low:
            raise ValueError(f"{task}: {name} must be at least {low}, not {value!r}")


def within(
    task: str,
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """``value`` is finite and in the interval from ``low`` to ``high`` (ends open where said)."""
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    if math.isfinite(value) and above and below:
        return
    if math.isinf(low) and math.isinf(high):
        wanted = "a finite number"
    elif math.isinf(high):
        wanted = f"{'>' if open_low else '>='} {low:g}"
    elif math.isinf(low):
        wanted = f"{'<' if open_high else '<='} {high:g}"
    else:
        wanted = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    raise ValueError(f"{task}: {name} must be {wanted}, not {value!r}")
