"""The one check every task's settings share: parameters must be fields of its Settings dataclass."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

S = TypeVar("S")


def settings_from(cls: type[S], params: dict[str, Any], task: str) -> S:
    """``cls(**params)``, refusing names that are not fields of ``cls`` with one clear line."""
    unknown = set(params) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise TypeError(f"{task}: unknown parameters {sorted(unknown)}")
    return cls(**params)
