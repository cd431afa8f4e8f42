"""Sweeps from Python (a notebook, a script): ``rbpbench.run`` and ``rbpbench.load``.

:func:`run` is ``rbpbench run`` as a function, with the command's guarantees:
the same checks of every value before anything is written (a bad one raises
:class:`~rbpbench.config.UsageError`, a ValueError, with the command's one-line
message), the same worker processes, and the same results folder, rewritten
atomically after every cell and resumed when run again. It returns the
sweep's cells as a pandas DataFrame; :func:`load` reads any results folder.

The command line's ``run`` is built on the functions below (:func:`resolve_sweep`,
:func:`execute`, ...), so the two cannot drift apart.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rbpbench import config
from rbpbench.config import OPTIONS, SweepSettings, UsageError
from rbpbench.data import DATA_DIR_ENV
from rbpbench.executors import usable_cores
from rbpbench.plugins import PluginConfig, PluginError, Registry, load_registry
from rbpbench.results import RESULTS_CSV, RESULTS_PARQUET, ResultsFolder
from rbpbench.sweep import Sweep

if TYPE_CHECKING:
    import pandas as pd

# A results folder, a data root: a str or a path.
Folder = str | os.PathLike[str]


# -- shared with the command line ---------------------------------------------------------


def refuse_empty(out: Folder | None, data_dir: Folder | None) -> None:
    """A folder given as an empty string is a mistake (an unset shell variable), never a
    request for the default."""
    for option, value in (("--out", out), ("--data-dir", data_dir)):
        if value is not None and not os.fspath(value).strip():
            raise UsageError(f"{option} takes a folder, not {os.fspath(value)!r}")


@contextmanager
def data_root(data_dir: Folder | None) -> Iterator[None]:
    """``RBPBENCH_DATA_DIR`` set to ``data_dir`` while the sweep runs (workers are spawned
    with this environment, so they read the same root); as it was afterwards."""
    if not data_dir:
        yield
        return
    before = os.environ.get(DATA_DIR_ENV)
    os.environ[DATA_DIR_ENV] = str(Path(data_dir).expanduser().resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DATA_DIR_ENV, None)
        else:
            os.environ[DATA_DIR_ENV] = before


def plugin_config(names: Sequence[str] = (), disabled: Sequence[str] = ()) -> PluginConfig:
    """``-p MODULE`` and ``-p no:NAME`` values, and ``--disable-plugin NAME`` ones."""
    off = [n.removeprefix("no:") for n in names if n.startswith("no:")]
    modules = [n for n in names if not n.startswith("no:")]
    return PluginConfig.from_environment(modules, off + list(disabled))


def resolve_sweep(
    registry: Registry,
    *,
    flags: Mapping[str, Any],
    suite: str | None = None,
    config_file: str | None = None,
    task_params: Mapping[str, Any] | Sequence[str] | None = None,
    method_params: Mapping[str, Any] | Sequence[str] | None = None,
    forward_params: Mapping[str, Any] | Sequence[str] | None = None,
) -> SweepSettings:
    """The checked settings of a sweep: the suite, overridden by the config file,
    overridden by ``flags`` (None: not given), with ``--task-param``,
    ``--method-param`` and ``--forward-param`` values (``KEY=VALUE`` strings, or a mapping of ``KEY`` or
    ``NAME.KEY`` to a value) over the parameter tables. Raises UsageError."""
    layers = []
    if suite is not None:
        layers.append(config.load_suite(suite))
    if config_file is not None:
        layers.append(config.load_config(config_file))
    layers.append({k: v for k, v in flags.items() if v is not None})
    settings = config.layer(*layers)
    return config.resolve(
        settings,
        registry,
        task_param_flags=param_flags(task_params, "--task-param", registry.tasks),
        method_param_flags=param_flags(method_params, "--method-param", registry.methods),
        forward_param_flags=param_flags(forward_params, "--forward-param", registry.forwards),
    )


def param_flags(
    params: Mapping[str, Any] | Sequence[str] | None, option: str, names: Mapping[str, Any]
) -> dict[str, Any]:
    """``KEY=VALUE`` strings as the flags give them, or a mapping: ``KEY`` or ``NAME.KEY``
    to a value, or ``NAME`` (an installed task or method) to a mapping of its keys."""
    if params is None:
        return {}
    if isinstance(params, str):
        params = [params]
    if not isinstance(params, Mapping):
        return config.parse_params(list(params), option)
    flags: dict[str, Any] = {}
    for key, value in params.items():
        if key in names and isinstance(value, Mapping):
            flags.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flags[str(key)] = value
    return flags


def warn_about_jobs(settings: SweepSettings) -> None:
    """One line on stderr when the local pool would start more workers than there are cores."""
    cores = usable_cores()
    if settings.executor == "local" and settings.jobs > cores:
        print(
            f"rbpbench: warning: --jobs {settings.jobs} is more than the {cores} usable cores; "
            "the workers will compete for them (and each holds its own memory)",
            file=sys.stderr,
        )


class Progress:
    """A bar on a terminal; otherwise a plain line per cell with the time left."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.counts: dict[str, int] = {}
        self.start = time.monotonic()
        self.bar = None
        if sys.stderr.isatty() and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="cell", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, row: Mapping[str, Any]) -> None:
        self.done += 1
        self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        summary = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        if self.bar is not None:
            self.bar.set_postfix_str(summary)
            self.bar.update()
            return
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.total - self.done)
        detail = f" ({row['error']})" if row["error"] else ""
        print(
            f"[{self.done}/{self.total}, ~{left:.0f}s left, {summary}] {row['task']} "
            f"{row['method']} K={row['truncation']} seed={row['seed']} {row['device']}: "
            f"{row['status']}{detail}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def execute(sweep: Sweep, *, progress: bool = True) -> None:
    """Take the folder's lock, read what is finished, and run the rest.

    Says on stderr how many cells are resumed and, with ``progress``, one line
    per cell (a bar on a terminal). Every finished cell is on disk when this
    returns or raises: KeyboardInterrupt stops the sweep (its workers too), a
    file that cannot be written raises StorageError, a folder in use UsageError.
    """
    bar: Progress | None = None
    try:
        with sweep.hold():
            resumed = len(sweep.cells) - len(sweep.todo)
            if resumed:
                print(
                    f"resuming {sweep.out}: {resumed} of {len(sweep.cells)} cells already finished",
                    file=sys.stderr,
                )
            if progress:
                bar = Progress(len(sweep.todo))
                sweep.run(bar)
            else:
                sweep.run()
    finally:
        if bar is not None:
            bar.close()


# -- the notebook API ---------------------------------------------------------------------


def fresh_folder() -> Path:
    """A new folder under the temporary directory (not made yet: a refused sweep leaves none)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"rbpbench-run-{stamp}-{uuid.uuid4().hex[:8]}"


def run(
    tasks: str | Sequence[str] | None = None,
    methods: str | Sequence[str] | None = None,
    truncation: int | str | Sequence[int] | None = None,
    seeds: int | str | Sequence[int] | None = None,
    device: str | Sequence[str] | None = None,
    *,
    out: Folder | None = None,
    jobs: int | None = None,
    timeout: float | str | None = None,
    task_params: Mapping[str, Any] | Sequence[str] | None = None,
    method_params: Mapping[str, Any] | Sequence[str] | None = None,
    forward: str | Sequence[str] | None = None,
    forward_params: Mapping[str, Any] | Sequence[str] | None = None,
    suite: str | None = None,
    config: str | os.PathLike[str] | None = None,
    retry_failed: bool = False,
    plugins: str | Sequence[str] | None = None,
    disable_plugins: str | Sequence[str] | None = None,
    data_dir: Folder | None = None,
    executor: str | None = None,
    address: str | None = None,
    cpus_per_cell: float | None = None,
    gpus_per_cell: float | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run a sweep as ``rbpbench run`` does and return its cells' rows.

    Each argument is the flag of the same name and takes what it takes, as a
    string (``"bptt,rbp"``, ``"0-4"``) or as Python values (``["bptt", "rbp"]``,
    ``[5, 10]``, ``range(5)``); None means not given, so the suite's, the
    config file's or the command's default applies (``timeout=0`` or
    ``"none"`` is no limit). ``task_params`` and ``method_params`` are the
    ``--task-param`` and ``--method-param`` flags: ``{"steps": 100}`` for every
    selected task that has ``steps``, ``{"contractive-rnn.steps": 100}`` or
    ``{"contractive-rnn": {"steps": 100}}`` for one, or ``["steps=100"]``.
    ``forward`` names the forward solvers (``"iterate,anderson"``) and
    ``forward_params`` are the ``--forward-param`` flags, given the same ways.
    ``plugins`` are ``-p`` values (a module to load, ``no:NAME`` to skip one).

    ``out`` is the results folder; an earlier sweep's folder is resumed: only
    the missing cells run (``retry_failed``: failed ones too). ``out=None``
    writes a new folder under the temporary directory. The returned DataFrame
    holds this sweep's cells (finished earlier or now) in the order of the
    plan, with the columns of ``results.parquet``; ``frame.attrs["out"]`` is the
    folder. ``progress`` prints a line per cell on stderr.

    Raises :class:`~rbpbench.config.UsageError` (a ValueError) with the
    command's message for bad input, a conflict between plugins or a folder in
    use, before anything is written; :class:`~rbpbench.results.StorageError`
    when a results file cannot be written (the cells stored before stay).
    KeyboardInterrupt stops the sweep with every finished cell stored.
    """
    given = locals()  # the keywords, before any other name is bound here
    # A keyword per setting the command takes as a flag, named as the setting (a test checks
    # the signature against config.OPTIONS).
    flags = {s.key: s.python_value(given[s.key]) for s in OPTIONS}
    refuse_empty(out, data_dir)
    with data_root(data_dir):
        chosen = plugin_config(as_names(plugins), as_names(disable_plugins))
        try:
            registry = load_registry(chosen)
        except PluginError as exc:
            raise UsageError(str(exc)) from exc
        settings = resolve_sweep(
            registry,
            flags=flags,
            suite=suite,
            config_file=None if config is None else os.fspath(config),
            task_params=task_params,
            method_params=method_params,
            forward_params=forward_params,
        )
        warn_about_jobs(settings)
        folder = Path(out) if out is not None else fresh_folder()
        sweep = Sweep(settings, registry, chosen, folder, retry_failed=retry_failed)
        try:
            execute(sweep, progress=progress)
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: finished cells are in {sweep.results.parquet}; "
                f"run again with out={str(folder)!r} to resume",
                file=sys.stderr,
            )
            raise
    frame = sweep.frame()
    frame.attrs["out"] = str(folder)
    return frame


def as_names(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def load(folder: Folder) -> pd.DataFrame:
    """The results table of a folder that ``run`` (or ``rbpbench run``) wrote, one row per cell.

    Reads ``results.parquet``, or ``results.csv`` where the Parquet file is
    gone, with the same column types. Raises FileNotFoundError for a folder
    that holds neither, ValueError for a table of another version.
    """
    path = Path(folder)
    results = ResultsFolder(path)
    if results.source is None:
        raise FileNotFoundError(
            f"{path} holds no rbpbench results ({RESULTS_PARQUET} or {RESULTS_CSV})"
        )
    frame = results.frame()
    frame.attrs["out"] = str(path)
    return frame
