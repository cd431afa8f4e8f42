"""The convention for a training cell's curves, so that reports draw any task's curves unaided.

A task hands the runner ``curves``: a list of typed :class:`~rbpbench.Curve`
(``Curve(name, values, x=None, label=None, x_label=None)``), or a mapping from
a curve's name to its list of numbers. They are stored per cell in
``<out>/curves/<cell_id>.parquet`` as rows ``(curve, step, value)``, ``step``
being the index in the list, plus the columns ``x``, ``label`` and
``x_label`` when a typed curve gives any of them (files without those
columns, written before, are read as before). The report reads them back and
draws every curve it finds, one figure per curve name, one line per method
(the mean over seeds), one panel per truncation K.

A typed curve says what it is: its x values, its label and its x axis's name
are its own, and the rules below do not apply to it. Where it gives none of
them it is stored, and read, as a plain list. The rules, for the lists of a
mapping:

1. **A series** is a list indexed by its x: epoch, meta step, inference step.
   Name it for what it measures (``train_loss``, ``val_accuracy``,
   ``difference_norm``, ``meta_loss``) and, if you like, give it a label and an
   x-axis name in :data:`LABELS`; otherwise the name is the label and the x
   axis is "step".
2. **An x companion**: where a series is not sampled at every step, store its
   x values as a curve named ``<word>_..._epoch``, ``<word>_..._step`` or
   ``<word>_..._x`` and the values as ``<word>_<what>`` of the same length:
   the x curve serves the curves that share its first word (hopfield:
   ``probe_epoch`` and ``probe_grad_rel_error``; hyperopt: ``probe_meta_step``
   and ``probe_grad_rel_error``). The x axis is named by the x curve's
   remaining words ("epoch", "meta step"). Where the names do not share a
   first word, :data:`X_OF` pairs them (citation: ``val_accuracy`` with
   ``eval_epoch``).
3. **Not a series**: a curve whose name starts with ``image_`` or ``raw_`` (or
   is in :data:`NOT_SERIES`) holds data that a line plot would garble (pixels,
   say) and is left to the task's own figure.
4. A single number per cell is a column of the results table (or a key of
   ``extra_metrics``), not a curve of length one.

A series drawn on a log scale: every value positive and spanning over two
decades.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rbpbench.problem import Curve, Curves
from rbpbench.results import CURVES_DIR

X_SUFFIXES = ("_epoch", "_step", "_x")
NOT_SERIES_PREFIXES = ("image_", "raw_")
# Curves written before this convention that are not series: hopfield's pixels.
NOT_SERIES = frozenset({"corrupted", "retrieved"})

# Labels are plain Unicode, not TeX: a label is both an axis label and the text of an HTML
# caption. This one reads ||h_t - h_{t-1}|| with a double bar, subscripts and a minus sign.
STEP_NORM = "\u2016h\u209c \u2212 h\u209c\u208b\u2081\u2016"

# name -> (label of the values, label of the x axis); curves not listed use their name and "step".
LABELS: dict[str, tuple[str, str]] = {
    "train_loss": ("training loss", "epoch"),
    "step_loss": ("training loss of each update", "update"),
    "val_loss": ("validation loss", "epoch"),
    "val_accuracy": ("validation accuracy", "epoch"),
    "test_accuracy": ("test accuracy", "epoch"),
    "difference_norm": (f"{STEP_NORM} in the last inference pass", "inference step"),
    "forward_difference_norm": (f"{STEP_NORM} in the last forward pass", "step t"),
    "meta_loss": ("meta-training loss", "meta step"),
    "inner_loss": ("inner training loss", "training step"),
    "final_inner_loss": ("inner training loss at the last meta step", "training step"),
    "probe_grad_rel_error": ("relative gradient error vs BPTT", "epoch"),
    "hypergradient_rel_error": ("relative hypergradient error vs BPTT", "meta step"),
}


# series -> the x curve it is plotted against when a cell has both, for x curves that do not
# share the series' first word (the citation tasks evaluate every few epochs).
X_OF: dict[str, str] = {
    "val_accuracy": "eval_epoch",
    "test_accuracy": "eval_epoch",
    "val_loss": "eval_epoch",
}


COLUMNS = ["curve", "step", "value"]
# written only when a typed curve gives them; read as missing from older files
TYPED_COLUMNS = ["x", "label", "x_label"]


@dataclass(frozen=True)
class Series:
    """A curve to draw: its name, and where its x values come from.

    ``x_curve``: a companion curve holding them (the naming convention);
    ``typed_x``: the curve's own ``x`` column (a typed :class:`Curve`); neither:
    the step index. ``typed_label`` and ``typed_x_label`` are a typed curve's own.
    """

    name: str
    x_curve: str | None = None
    typed_x: bool = False
    typed_label: str | None = None
    typed_x_label: str | None = None

    @property
    def label(self) -> str:
        if self.typed_label:
            return self.typed_label
        return LABELS.get(self.name, (self.name.replace("_", " "), "step"))[0]

    @property
    def x_label(self) -> str:
        if self.typed_x_label:
            return self.typed_x_label
        if self.x_curve is not None:
            return self.x_curve.split("_", 1)[1].replace("_", " ")
        return LABELS.get(self.name, ("", "step"))[1]


def typed(curves: Curves) -> list[Curve]:
    """Curves as typed :class:`Curve` objects, whichever form a task gave them in."""
    if isinstance(curves, Mapping):
        return [Curve(str(name), values) for name, values in curves.items()]
    out = []
    for curve in curves:
        if not isinstance(curve, Curve):
            raise TypeError(f"a curve is a {type(curve).__name__}, not a rbpbench.Curve")
        out.append(curve)
    return out


def to_frame(curves: Curves) -> pd.DataFrame:
    """The stored form of one cell's curves: ``curve, step, value`` rows, and ``x, label,
    x_label`` where a typed curve gives any of them."""
    given = typed(curves)
    rows = [
        {"curve": c.name, "step": step, "value": float(value)}
        for c in given
        for step, value in enumerate(c.values)
    ]
    if not any(c.x is not None or c.label or c.x_label for c in given):
        return pd.DataFrame(rows, columns=COLUMNS)
    extra = [
        {
            "x": math.nan if c.x is None else float(c.x[step]),
            "label": c.label,
            "x_label": c.x_label,
        }
        for c in given
        for step in range(len(c.values))
    ]
    return pd.concat(
        [pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(extra, columns=TYPED_COLUMNS)], axis=1
    )


def read(folder: Path, cell_id: str) -> pd.DataFrame:
    """One cell's stored curves, with the typed columns (missing ones empty)."""
    frame = pd.read_parquet(folder / "curves" / f"{cell_id}.parquet")
    for column in TYPED_COLUMNS:
        if column not in frame:
            frame[column] = math.nan if column == "x" else None
    return frame


def is_x_curve(name: str) -> bool:
    return name.endswith(X_SUFFIXES) and "_" in name.strip("_")


def series_of(names: set[str]) -> list[Series]:
    """The series among a cell's curve names, each with its x companion if it has one."""
    x_curves = {name.split("_", 1)[0]: name for name in sorted(names) if is_x_curve(name)}
    out = []
    for name in sorted(names):
        if name in NOT_SERIES or name.startswith(NOT_SERIES_PREFIXES) or is_x_curve(name):
            continue
        named = X_OF.get(name)
        x_curve = named if named in names else x_curves.get(name.split("_", 1)[0])
        out.append(Series(name, x_curve))
    return out


def series_in(curves: pd.DataFrame) -> list[Series]:
    """The series of a frame from :func:`load`: typed curves as they say, the rest by the rules."""
    plain: set[str] = set()
    out = []
    for name, rows in curves.groupby("curve", sort=True):
        has_x = bool(rows.x.notna().any())
        label, x_label = _first(rows.label), _first(rows.x_label)
        if has_x or label or x_label:
            out.append(Series(str(name), None, has_x, label, x_label))
        else:
            plain.add(str(name))
    out += series_of(plain)
    return sorted(out, key=lambda s: s.name)


def _first(column: pd.Series) -> str | None:
    given = [v for v in column if isinstance(v, str) and v]
    return given[0] if given else None


def load(folder: Path, cell_ids: list[str]) -> pd.DataFrame:
    """The curves of these cells in one long frame (``cell_id, curve, step, value, x, label,
    x_label``)."""
    frames = []
    for cell_id in cell_ids:
        path = folder / CURVES_DIR / f"{cell_id}.parquet"
        if path.exists():
            frames.append(read(folder, cell_id).assign(cell_id=cell_id))
    if not frames:
        return pd.DataFrame(columns=["cell_id", *COLUMNS, *TYPED_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def xy(curves: pd.DataFrame, series: Series) -> pd.DataFrame:
    """``cell_id, x, value`` of one series for every cell that has it."""
    if series.typed_x:
        mine = curves[curves.curve == series.name]
        return mine[["cell_id", "x", "value"]].astype({"x": "float64"})
    values = curves[curves.curve == series.name][["cell_id", "step", "value"]]
    if series.x_curve is None:
        return values.rename(columns={"step": "x"})
    xs = curves[curves.curve == series.x_curve][["cell_id", "step", "value"]]
    merged = values.merge(xs.rename(columns={"value": "x"}), on=["cell_id", "step"])
    return merged[["cell_id", "x", "value"]]
