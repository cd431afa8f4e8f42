"""The conformance kit for tasks: checks that a task's problems keep rbpbench's contract.

From Python::

    from rbpbench.testing import check_task

    report = check_task("my-task")  # raises ConformanceError listing every failure

From the command line::

    pytest --pyargs rbpbench.testing --rbpbench-task my-task

Every check builds its own problems with the task's ``build`` (its defaults,
overridden by :attr:`TaskKitSettings.params`) and raises
:class:`~rbpbench.testing.kit.ConformanceError` naming what is wrong, or
:class:`~rbpbench.testing.kit.CheckSkipped` (a data-backed task whose data is
missing is skipped with the :class:`~rbpbench.data.DatasetUnavailable`
message). docs/plugins.md says what each check asks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rbpbench import state as S
from rbpbench.convergence import split_params
from rbpbench.data import DatasetUnavailable
from rbpbench.forward import run_without_graph
from rbpbench.linearisation import LossTerms
from rbpbench.plugins import PluginConfig, Registry, describe, load_registry
from rbpbench.problem import Problem, TaskSpec
from rbpbench.state import State
from rbpbench.testing.kit import (
    CheckOutcome,
    CheckSkipped,
    ConformanceError,
    ConformanceReport,
    _compare,
    _identical,
    _record,
    checked_params,
)


@dataclass(frozen=True)
class TaskKitSettings:
    """What the task kit asks of a task; every field can be set by the task's author.

    ``params`` override the task's defaults, ``seed`` is the seed of the
    problems built (``seed + 1`` is the other seed of the determinism check),
    ``seed_independent`` declares a task that draws nothing at random (its
    problems may then be the same for every seed). The exact-gradient check
    compares ``problem.exact_gradient()`` with central finite differences of
    the loss at the fixed point, built in float64: ``fd_entries`` sampled
    entries of each ``params_f`` tensor, each moved by
    ``fd_step * max(1, |w|)`` either way, the forward run until its relative
    residual is at most ``fd_residual`` (at most ``fd_max_steps`` steps past
    T); each entry must agree to ``fd_tolerance`` relative to
    ``max(|exact entry|, 1e-3 * the largest |entry| of the exact gradient)``.
    """

    params: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    seed: int = 0
    seed_independent: bool = False
    fd_entries: int = 3
    fd_step: float = 1e-5
    fd_tolerance: float = 1e-4
    fd_residual: float = 1e-13
    fd_max_steps: int = 20_000


# -- building and running problems ------------------------------------------------------


def _call(what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``; an exception becomes a failure that says ``what`` raised it."""
    try:
        return function(*args, **kwargs)
    except (ConformanceError, CheckSkipped, DatasetUnavailable):
        raise
    except Exception as exc:
        raise ConformanceError(f"{what} raised {describe(exc)}") from exc


def build(
    spec: TaskSpec,
    settings: TaskKitSettings,
    *,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
    params: Mapping[str, Any] | None = None,
) -> Problem:
    """A problem of the task: its defaults, ``settings.params`` (or ``params``) over them."""
    seed = settings.seed if seed is None else seed
    dtype = spec.dtype if dtype is None else dtype
    given = settings.params if params is None else params
    builder_params, _ = split_params({**spec.defaults, **given})
    what = f"build(seed={seed}, dtype={str(dtype).removeprefix('torch.')})"
    try:
        problem = _call(
            what,
            spec.build,
            seed=seed,
            device=torch.device(settings.device),
            dtype=dtype,
            **builder_params,
        )
    except DatasetUnavailable as exc:
        raise CheckSkipped(f"{spec.name}: {exc}") from None
    if not isinstance(problem, Problem):
        raise ConformanceError(f"{what} returned {type(problem).__name__}, not a Problem")
    return problem


def _step(problem: Problem, h: State, t: int) -> State:
    with torch.no_grad():
        return _call(f"step(h, {t})", problem.step, h, t)


def _forward(problem: Problem) -> State:
    """h_T, without a graph."""
    return _call("the forward pass (step)", run_without_graph, problem, problem.num_steps)


def _loss(problem: Problem, h: State) -> Tensor:
    with torch.no_grad():
        return _call("loss(h_T)", problem.loss, h)


def _device_matches(actual: torch.device, asked: torch.device) -> bool:
    return actual.type == asked.type and (asked.index is None or actual.index == asked.index)


def _check_tensor(name: str, value: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    if not isinstance(value, Tensor):
        raise ConformanceError(f"{name} is {type(value).__name__}; it must be a tensor")
    if value.dtype != dtype:
        raise ConformanceError(
            f"{name} is {value.dtype}; the task's dtype is {dtype} "
            "(build every tensor in the dtype it is given)"
        )
    if not _device_matches(value.device, device):
        raise ConformanceError(
            f"{name} is on {value.device}; the problem was asked for on {device} "
            "(build every tensor on the device it is given)"
        )
    return value


def _check_state(name: str, state: Any, dtype: torch.dtype, device: torch.device) -> None:
    if isinstance(state, tuple):
        if not state:
            raise ConformanceError(f"{name} is an empty tuple; a state holds at least one tensor")
        for i, part in enumerate(state):
            _check_tensor(f"{name}[{i}]", part, dtype, device)
    elif isinstance(state, Tensor):
        _check_tensor(name, state, dtype, device)
    else:
        raise ConformanceError(
            f"{name} is {type(state).__name__}; a state is a tensor or a tuple of tensors"
        )


def _structure(state: State) -> Any:
    parts = S.as_tuple(state)
    return (isinstance(state, tuple), [(tuple(p.shape), p.dtype, p.device) for p in parts])


def _describe_structure(state: State) -> str:
    parts = S.as_tuple(state)
    shapes = ", ".join(f"{tuple(p.shape)} {str(p.dtype).removeprefix('torch.')}" for p in parts)
    return f"a tuple of ({shapes})" if isinstance(state, tuple) else f"a tensor {shapes}"


def _check_params(name: str, params: Any, dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(params, tuple):
        raise ConformanceError(f"{name} is a {type(params).__name__}; it must be a tuple")
    for i, p in enumerate(params):
        _check_tensor(f"{name}[{i}]", p, dtype, device)
        if not p.is_leaf:
            raise ConformanceError(
                f"{name}[{i}] is no leaf tensor (it was computed from others); methods "
                "differentiate with respect to leaves: build it, then .requires_grad_()"
            )


# -- the checks ---------------------------------------------------------------------------


def check_defaults_accepted(spec: TaskSpec, settings: TaskKitSettings) -> str:
    """The task's ``check`` (if any) accepts its own defaults, and ``build`` builds with them."""
    if not (isinstance(spec.dtype, torch.dtype) and spec.dtype.is_floating_point):
        raise ConformanceError(
            f"TaskSpec.dtype is {spec.dtype!r}; it must be a floating torch.dtype"
        )
    try:
        checked_params("task", spec, {}, "defaults")  # the task's check, on its defaults
    except ValueError as exc:
        raise ConformanceError(
            f"the TaskSpec's check refuses the task's own defaults: {exc}"
        ) from None
    build(spec, settings, params={})
    checked = "its check accepts them and " if spec.check is not None else ""
    return f"{checked}build(seed={settings.seed}) builds with the defaults {dict(spec.defaults)}"


def check_problem_contract(spec: TaskSpec, settings: TaskKitSettings) -> str:
    """Types, dtypes, devices and shapes of the problem: the contract every method relies on."""
    problem = build(spec, settings)
    dtype, device = spec.dtype, torch.device(settings.device)
    for name in ("step", "loss"):
        if not callable(getattr(problem, name)):
            raise ConformanceError(
                f"{name} is {type(getattr(problem, name)).__name__}; it must be callable"
            )
    steps = problem.num_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConformanceError(f"num_steps is {steps!r}; it must be an int >= 1")
    if isinstance(problem.seed, bool) or problem.seed != settings.seed:
        raise ConformanceError(
            f"problem.seed is {problem.seed!r} for build(seed={settings.seed}); pass the seed "
            "on (Problem(..., seed=seed)): methods seed their randomness from it"
        )
    _check_state("initial_state", problem.initial_state, dtype, device)
    _check_params("params_f", problem.params_f, dtype, device)
    if not problem.params_f:
        raise ConformanceError("params_f is empty: there is no gradient for a method to compute")
    for i, p in enumerate(problem.params_f):
        if not p.requires_grad:
            raise ConformanceError(
                f"params_f[{i}] does not require grad; every recurrent parameter must "
                "(.requires_grad_())"
            )
    _check_params("params_g", problem.params_g, dtype, device)
    if problem.exact_gradient is not None and not callable(problem.exact_gradient):
        raise ConformanceError("exact_gradient must be None or a function")
    if not isinstance(problem.adjoint_steps, tuple) or not all(
        callable(f) for f in problem.adjoint_steps
    ):
        raise ConformanceError("adjoint_steps must be a tuple of functions h -> h'")
    h0 = problem.initial_state
    h1 = _step(problem, h0, 0)
    _check_state("step(h0, 0)", h1, dtype, device)
    if _structure(h1) != _structure(h0):
        raise ConformanceError(
            f"step(h0, 0) is {_describe_structure(h1)}; the initial state is "
            f"{_describe_structure(h0)}: a step must return a state like the one it is given"
        )
    h_final = _forward(problem)
    if _structure(h_final) != _structure(h0):
        raise ConformanceError(
            f"h_T is {_describe_structure(h_final)}; the initial state is {_describe_structure(h0)}"
        )
    loss = _loss(problem, h_final)
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        what = (
            f"a tensor of shape {tuple(loss.shape)}"
            if isinstance(loss, Tensor)
            else type(loss).__name__
        )
        raise ConformanceError(f"loss(h_T) is {what}; it must be a scalar tensor (0-dimensional)")
    _check_tensor("loss(h_T)", loss, dtype, device)
    if not math.isfinite(float(loss)):
        raise ConformanceError(f"loss(h_T) is {float(loss)}")
    terms = _call("differentiating loss(h_T) as every method does", LossTerms, problem, h_final)
    if not all(bool(torch.isfinite(g).all()) for g in S.as_tuple(terms.g)):
        raise ConformanceError("dL/dh_T holds NaN or Inf")
    return (
        f"T={steps}, state {_describe_structure(h0)}, {len(problem.params_f)} params_f, "
        f"{len(problem.params_g)} params_g, loss {float(loss):.4g}"
    )


def _tensors(problem: Problem) -> Iterable[tuple[str, Tensor]]:
    for i, t in enumerate(S.as_tuple(problem.initial_state)):
        yield f"initial_state[{i}]", t
    for group in ("params_f", "params_g"):
        for i, t in enumerate(getattr(problem, group)):
            yield f"{group}[{i}]", t


def _same_tensors(a: Problem, b: Problem) -> str | None:
    """The first tensor of ``a`` that differs from ``b``'s, or None."""
    pairs_a, pairs_b = list(_tensors(a)), list(_tensors(b))
    if [n for n, _ in pairs_a] != [n for n, _ in pairs_b]:
        return "the number of tensors"
    for (name, x), (_, y) in zip(pairs_a, pairs_b, strict=True):
        if not _identical(x.detach(), y.detach()):
            return name
    if a.num_steps != b.num_steps:
        return "num_steps"
    return None


def check_deterministic(spec: TaskSpec, settings: TaskKitSettings) -> str:
    """Two builds with one seed give identical problems and trajectories; another seed another problem."""
    seed = settings.seed
    first, second = build(spec, settings), build(spec, settings)
    where = f"between two builds with seed {seed}"
    differs = _same_tensors(first, second)
    if differs:
        raise ConformanceError(
            f"{differs} differs {where}: draw all randomness from a generator seeded with "
            "seed (torch.Generator().manual_seed(seed)), never from the global one"
        )
    h_a, h_b = S.detach(first.initial_state), S.detach(second.initial_state)
    for t in range(first.num_steps):
        h_a, h_b = _step(first, h_a, t), _step(second, h_b, t)
        if not all(_identical(x, y) for x, y in zip(S.as_tuple(h_a), S.as_tuple(h_b), strict=True)):
            raise ConformanceError(
                f"the trajectory differs {where} from step {t} on (h_{t + 1}): the step "
                "draws randomness that the seed does not fix"
            )
    if not _identical(_loss(first, h_a), _loss(second, h_b)):
        raise ConformanceError(f"loss(h_T) differs {where}")
    other_seed = seed + 1
    other = build(spec, settings, seed=other_seed)
    if other.seed != other_seed:
        raise ConformanceError(
            f"problem.seed is {other.seed!r} for build(seed={other_seed}); pass the seed on"
        )
    if settings.seed_independent:
        return f"identical problems and trajectories {where} (the task declares no randomness)"
    if _same_tensors(first, other) is None:
        h_other = _forward(other)
        if all(_identical(x, y) for x, y in zip(S.as_tuple(h_a), S.as_tuple(h_other), strict=True)):
            raise ConformanceError(
                f"build(seed={other_seed}) gives the same problem as build(seed={seed}): the task "
                "ignores its seed, so every seed of a sweep measures one problem; draw the "
                "randomness from seed, or declare a task without randomness "
                "(--rbpbench-seed-independent, check_task(..., seed_independent=True))"
            )
    return f"identical problems and trajectories {where}; seed {other_seed} gives another"


def check_leaves_problem_unchanged(spec: TaskSpec, settings: TaskKitSettings) -> str:
    """Running the forward (without a graph, and with one back-propagated) changes nothing."""
    from rbpbench.methods.unrolled import bptt  # the reference every cell computes

    problem = build(spec, settings)
    fields = {
        "params_f": problem.params_f,
        "params_g": problem.params_g,
        "initial_state": S.as_tuple(problem.initial_state),
    }
    records = {name: _record(tensors) for name, tensors in fields.items()}
    scalars = (problem.num_steps, problem.seed)
    grad_mode = torch.is_grad_enabled()
    final_state = S.as_tuple(_forward(problem))
    by = "the forward pass (step or loss)"
    for name, record in records.items():
        _compare(name, record, S.as_tuple(getattr(problem, name)), by)
    _call(
        "back-propagating through the forward pass (BPTT, every cell's reference)",
        bptt,
        problem,
        0,
        diagnostics=False,
    )
    if torch.is_grad_enabled() != grad_mode:
        raise ConformanceError(f"{by} left autograd {'on' if grad_mode else 'off'} flipped")
    if (problem.num_steps, problem.seed) != scalars:
        raise ConformanceError(f"{by} changed problem.num_steps or problem.seed")
    for name, record in records.items():
        _compare(name, record, S.as_tuple(getattr(problem, name)), by)
    again = S.as_tuple(_forward(problem))
    if not all(_identical(a, b) for a, b in zip(final_state, again, strict=True)):
        raise ConformanceError(
            "the forward pass gives another h_T the second time: the step changes "
            "something it closes over"
        )
    return "parameters, requires_grad, .grad, initial state and trajectory untouched"


def _fixed_point_loss(spec: TaskSpec, problem: Problem, settings: TaskKitSettings) -> float:
    """The loss at the fixed point of the last step (after T steps), or at h_T if it has none."""
    h = _forward(problem)
    if spec.forward_converges:
        last = problem.num_steps - 1
        for _ in range(settings.fd_max_steps + 1):
            h_next = _step(problem, h, last)
            residual = float(S.norm(S.sub(h_next, h)))
            size = float(S.norm(h_next))
            h = h_next
            if residual <= settings.fd_residual * max(size, 1e-300):
                break
        else:
            raise ConformanceError(
                f"the forward pass (float64) has not converged {settings.fd_max_steps} steps past "
                f"T (relative residual {residual / max(size, 1e-300):.1e} > "
                f"{settings.fd_residual:.0e}): the finite differences need its fixed point"
            )
    return float(_loss(problem, h))


def check_exact_gradient(spec: TaskSpec, settings: TaskKitSettings) -> str:
    """``exact_gradient()`` against central finite differences of the fixed-point loss, in float64."""
    problem = build(spec, settings, dtype=torch.float64)
    if problem.exact_gradient is None:
        raise CheckSkipped(f"{spec.name} gives no exact_gradient")
    exact = _call("exact_gradient()", problem.exact_gradient)
    params = problem.params_f
    if not isinstance(exact, tuple | list) or len(exact) != len(params):
        count = len(exact) if isinstance(exact, tuple | list) else type(exact).__name__
        raise ConformanceError(
            f"exact_gradient() returned {count} for {len(params)} params_f; "
            "it must return one tensor per params_f entry"
        )
    for i, (g, p) in enumerate(zip(exact, params, strict=True)):
        if not isinstance(g, Tensor) or g.shape != p.shape:
            what = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise ConformanceError(
                f"exact_gradient()[{i}] is {what}; params_f[{i}] is {tuple(p.shape)}"
            )
        if not bool(torch.isfinite(g).all()):
            raise ConformanceError(f"exact_gradient()[{i}] holds NaN or Inf")
    exact = [g.detach().to("cpu", torch.float64) for g in exact]
    largest = max((float(g.abs().max()) for g in exact if g.numel()), default=0.0)
    floor = 1e-3 * largest
    _fixed_point_loss(spec, problem, settings)  # fails early if the forward does not converge
    generator = torch.Generator().manual_seed(settings.seed)
    worst, compared = 0.0, 0
    for i, p in enumerate(params):
        count = min(settings.fd_entries, p.numel())
        for flat in torch.randperm(p.numel(), generator=generator)[:count].tolist():
            index = tuple(int(k) for k in _unravel(flat, p.shape))
            with torch.no_grad():
                original = p[index].clone()
            step = settings.fd_step * max(1.0, abs(float(original)))
            values = []
            try:
                for sign in (1, -1):
                    with torch.no_grad():
                        p[index] = original + sign * step
                    values.append(_fixed_point_loss(spec, problem, settings))
                with torch.no_grad():
                    moved = float((original + step) - (original - step))
            finally:
                with torch.no_grad():
                    p[index] = original
            estimate = (values[0] - values[1]) / moved
            given = float(exact[i][index])
            error = abs(estimate - given) / max(abs(given), floor, 1e-300)
            compared += 1
            worst = max(worst, error)
            if not error <= settings.fd_tolerance:
                raise ConformanceError(
                    f"exact_gradient()[{i}]{list(index)} is {given:.6e} but central finite "
                    f"differences of the fixed-point loss give {estimate:.6e} (relative error "
                    f"{error:.1e} > {settings.fd_tolerance:.0e}; float64, step {step:.0e})"
                )
    return f"{compared} entries within {worst:.1e} of central finite differences (float64)"


def _unravel(flat: int, shape: Sequence[int]) -> list[int]:
    index = []
    for size in reversed(shape):
        index.append(flat % size)
        flat //= size
    return index[::-1]


TaskCheck = Callable[[TaskSpec, TaskKitSettings], str]

TASK_CHECKS: dict[str, TaskCheck] = {
    "defaults-accepted": check_defaults_accepted,
    "problem-contract": check_problem_contract,
    "deterministic": check_deterministic,
    "leaves-problem-unchanged": check_leaves_problem_unchanged,
    "exact-gradient": check_exact_gradient,
}


def task_checks() -> dict[str, TaskCheck]:
    """The task checks by name, in the order they run."""
    return dict(TASK_CHECKS)


def run_task_check(name: str, spec: TaskSpec, settings: TaskKitSettings) -> CheckOutcome:
    """Run one task check; an exception inside the task is a failure that names it."""
    checks = task_checks()
    if name not in checks:
        raise KeyError(f"no task conformance check {name!r}; the checks are {sorted(checks)}")
    start = time.perf_counter()
    try:
        detail = checks[name](spec, settings)
        status = "passed"
    except (CheckSkipped, DatasetUnavailable) as skip:
        detail, status = str(skip), "skipped"
    except ConformanceError as exc:
        detail, status = str(exc), "failed"
    except Exception as exc:
        detail, status = f"the task raised {describe(exc)}", "failed"
    return CheckOutcome(name, status, detail, time.perf_counter() - start)


def resolve_task(
    task: str | TaskSpec, *, registry: Registry | None = None, plugins: Sequence[str] = ()
) -> TaskSpec:
    """A TaskSpec as given, or the installed one of that name (``plugins``: extra -p modules)."""
    if isinstance(task, TaskSpec):
        return task
    registry = registry or load_registry(PluginConfig.from_environment(modules=plugins))
    if task not in registry.tasks:
        raise KeyError(
            f"no rbpbench task {task!r} is installed; installed: {', '.join(registry.tasks)}"
        )
    return registry.task(task)


def check_task(
    task: str | TaskSpec,
    *,
    params: Mapping[str, Any] | None = None,
    device: str = TaskKitSettings.device,
    seed: int = TaskKitSettings.seed,
    seed_independent: bool = False,
    fd_tolerance: float = TaskKitSettings.fd_tolerance,
    checks: Iterable[str] | None = None,
    plugins: Sequence[str] = (),
    registry: Registry | None = None,
    raise_on_failure: bool = True,
) -> ConformanceReport:
    """Run the task conformance kit on one task and return its report.

    ``task`` is an installed task's name or a ``TaskSpec``; ``params`` the
    task's parameters over its defaults, checked first as ``rbpbench run
    --task-param`` checks them (names, types, the task's ``check``: ValueError
    naming the parameter). ``checks`` a subset by name. Every selected check
    runs; then, with ``raise_on_failure``, a :class:`ConformanceError` lists
    every failure.
    """
    spec = resolve_task(task, registry=registry, plugins=plugins)
    settings = TaskKitSettings(
        params=checked_params("task", spec, params or {}, "params"),
        device=device,
        seed=seed,
        seed_independent=seed_independent,
        fd_tolerance=fd_tolerance,
    )
    names = list(task_checks()) if checks is None else list(checks)
    report = ConformanceReport(
        spec.name, [run_task_check(n, spec, settings) for n in names], kind="task"
    )
    if raise_on_failure:
        report.raise_for_failures()
    return report
