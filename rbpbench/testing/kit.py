"""The checks of the conformance kit, and :func:`check_method`, which runs them all.

Every check takes the method's :class:`~rbpbench.problem.MethodSpec` and the
:class:`KitSettings`, builds its own ``contractive-rnn`` problems (the task
whose exact implicit gradient is known) and raises :class:`ConformanceError`
with a message naming what is wrong, or :class:`CheckSkipped`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rbpbench import LossTerms, config, run_without_graph
from rbpbench import state as S
from rbpbench.measure import peak_memory, relative_error
from rbpbench.plugins import Origin, PluginConfig, Registry, load_registry
from rbpbench.problem import GradientResult, MethodSpec, Problem, TaskSpec
from rbpbench.tasks import contractive


class ConformanceError(AssertionError):
    """A method breaks the contract; the message says which part and how."""


class CheckSkipped(Exception):
    """A check that does not apply to this method (e.g. memory of an unrolling method)."""


@dataclass(frozen=True)
class KitSettings:
    """What the kit asks of a method; every field can be set by the method's author.

    ``truncation`` is the K the accuracy checks run with: generous, so that a
    convergent method reaches ``tolerance`` (relative error against the exact
    gradient of w_F, and against the readout's gradient dL/dw_G at h_T) at every
    spectral norm in ``spectral_norms``. The forward pass of those problems
    runs until ``rho ** T <= 1e-12``, so that h_T is the fixed point to
    working precision. The memory check compares peak memory at the two
    ``memory_steps`` with ``memory_truncation``, allowing ``memory_slack``
    (a fraction) of growth.
    """

    truncation: int = 1000
    tolerance: float = 1e-6
    spectral_norms: tuple[float, ...] = (0.5, 0.9, 0.99)
    params: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    seed: int = 0
    memory_steps: tuple[int, int] = (100, 400)
    memory_truncation: int = 20
    memory_slack: float = 0.10


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict: ``status`` is ``passed``, ``failed`` or ``skipped``."""

    check: str
    status: str
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class ConformanceReport:
    """Every check's outcome for one method, or for one task (``kind`` ``"task"``).

    ``method`` is the name of what was checked, a task's too.
    """

    method: str
    outcomes: list[CheckOutcome] = field(default_factory=list)
    kind: str = "method"

    @property
    def subject(self) -> str:
        """What was checked, as the report names it: ``'name'``, or ``task 'name'``."""
        return f"{self.method!r}" if self.kind == "method" else f"{self.kind} {self.method!r}"

    @property
    def ok(self) -> bool:
        return all(o.status != "failed" for o in self.outcomes)

    @property
    def failures(self) -> list[CheckOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def seconds(self) -> float:
        return sum(o.seconds for o in self.outcomes)

    def __str__(self) -> str:
        lines = [f"conformance of {self.subject}: {'passed' if self.ok else 'FAILED'}"]
        for o in self.outcomes:
            lines.append(f"  {o.status:<7} {o.check:<26} {o.seconds:6.2f}s  {o.detail}")
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        if not self.ok:
            raise ConformanceError(
                f"{self.subject} fails {len(self.failures)} conformance check(s):\n"
                + "\n".join(f"- {o.check}: {o.detail}" for o in self.failures)
            )


def steps_to_converge(spectral_norm: float) -> int:
    """T such that rho ** T <= 1e-12: the forward pass has reached the fixed point."""
    return max(10, math.ceil(math.log(1e-12) / math.log(spectral_norm)))


def contractive_problem(
    settings: KitSettings,
    spectral_norm: float,
    *,
    steps: int | None = None,
    dtype: torch.dtype = torch.float64,
    **params: Any,
) -> Problem:
    return contractive.build(
        seed=settings.seed,
        device=torch.device(settings.device),
        dtype=dtype,
        spectral_norm=spectral_norm,
        steps=steps_to_converge(spectral_norm) if steps is None else steps,
        **params,
    )


def compute(
    spec: MethodSpec,
    settings: KitSettings,
    problem: Problem,
    truncation: int | None = None,
    *,
    diagnostics: bool = True,
) -> GradientResult:
    params = {**spec.defaults, **settings.params}
    k = settings.truncation if truncation is None else truncation
    return spec.compute(problem, k, diagnostics=diagnostics, **params)


# -- the checks ---------------------------------------------------------------------------


def _check_float(result: GradientResult, name: str, *, nan_ok: bool) -> None:
    value = getattr(result, name)
    if isinstance(value, bool) or not isinstance(value, float):
        raise ConformanceError(f"{name} is {type(value).__name__} {value!r}; it must be a float")
    if math.isnan(value) and nan_ok:
        return
    if not math.isfinite(value):
        raise ConformanceError(f"{name} is {value} on a contractive problem")
    if name != "loss" and value < 0:
        raise ConformanceError(f"{name} is {value}; a norm cannot be negative")


def check_result_contract(spec: MethodSpec, settings: KitSettings) -> str:
    """Types, shapes, dtypes and devices of the result and its diagnostics, in float64 and float32.

    Also: gradients are detached tensors, the loss is the loss at h_T, and
    ``diagnostics=False`` gives the same gradients (the runner times that
    variant and reports the errors of the other).
    """
    from rbpbench.problem import check_result  # the very check the runner applies to every cell

    for dtype in (torch.float64, torch.float32):
        problem = contractive_problem(settings, 0.9, steps=60, dtype=dtype)
        where = f"(contractive-rnn in {str(dtype).removeprefix('torch.')})"
        result = compute(spec, settings, problem, 10)
        try:
            check_result(result, problem)
        except (TypeError, ValueError) as exc:
            raise ConformanceError(f"{exc} {where}") from None
        for group in ("grads_f", "grads_g"):
            for i, g in enumerate(getattr(result, group)):
                if not bool(torch.isfinite(g).all()):
                    raise ConformanceError(
                        f"{group}[{i}] holds NaN or Inf on a contractive problem {where}"
                    )
        _check_float(result, "loss", nan_ok=False)
        _check_float(result, "forward_residual", nan_ok=False)
        _check_float(result, "backward_residual", nan_ok=True)
        expected = float(problem.loss(run_without_graph(problem, problem.num_steps)).detach())
        if not math.isclose(result.loss, expected, rel_tol=1e-5, abs_tol=1e-12):
            raise ConformanceError(
                f"loss is {result.loss!r} but the loss at h_T is {expected!r} {where}"
            )
        quick = compute(spec, settings, problem, 10, diagnostics=False)
        for name, a, b in _pairs(result, quick):
            if not _identical(a, b):
                raise ConformanceError(
                    f"{name} with diagnostics=False differs from diagnostics=True "
                    f"(relative difference {relative_error([b], [a]):.1e}) {where}"
                )
    return "result, gradients and diagnostics well formed in float64 and float32"


def check_exact_gradient(spec: MethodSpec, settings: KitSettings, spectral_norm: float) -> str:
    """At K = ``settings.truncation``, the gradient matches the exact one to ``settings.tolerance``."""
    problem = contractive_problem(settings, spectral_norm)
    exact = problem.exact_gradient() if problem.exact_gradient else ()
    reference_g = LossTerms(problem, run_without_graph(problem, problem.num_steps)).grads_g
    result = compute(spec, settings, problem)
    if not all(bool(torch.isfinite(g).all()) for g in result.grads_f + result.grads_g):
        raise ConformanceError(
            f"non-finite gradient at spectral norm {spectral_norm}, K={settings.truncation}"
        )
    error_f = relative_error(result.grads_f, exact)
    error_g = relative_error(result.grads_g, reference_g)
    if not error_f <= settings.tolerance:
        raise ConformanceError(
            f"relative error {error_f:.2e} against the exact gradient of w_F at spectral norm "
            f"{spectral_norm}, K={settings.truncation} (T={problem.num_steps}); the tolerance is "
            f"{settings.tolerance:.0e} (a larger K or tolerance: --rbpbench-truncation, "
            "--rbpbench-tolerance)"
        )
    if not error_g <= settings.tolerance:
        raise ConformanceError(
            f"relative error {error_g:.2e} against the readout's gradient dL/dw_G at h_T, "
            f"spectral norm {spectral_norm}; the tolerance is {settings.tolerance:.0e}"
        )
    return (
        f"relative error {error_f:.1e} (w_F), {error_g:.1e} (w_G), "
        f"{result.backward_iterations} backward iterations"
    )


def _pairs(a: GradientResult, b: GradientResult) -> Iterable[tuple[str, Tensor, Tensor]]:
    for group in ("grads_f", "grads_g"):
        for i, (x, y) in enumerate(zip(getattr(a, group), getattr(b, group), strict=True)):
            yield f"{group}[{i}]", x, y


def _identical(a: Tensor, b: Tensor) -> bool:
    """Equal in shape, dtype and every value (NaN equal to NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    return torch.equal(a, b) or bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all())


def _same_number(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def check_deterministic(spec: MethodSpec, settings: KitSettings) -> str:
    """The same problem twice, and a rebuilt one, give identical gradients and diagnostics."""
    problem = contractive_problem(settings, 0.9, steps=100)
    first = compute(spec, settings, problem, 30)
    again = compute(spec, settings, problem, 30)
    rebuilt = compute(spec, settings, contractive_problem(settings, 0.9, steps=100), 30)
    for label, other in (
        ("a second call on the same problem", again),
        ("a rebuilt problem", rebuilt),
    ):
        for name, a, b in _pairs(first, other):
            if not _identical(a, b):
                raise ConformanceError(
                    f"{name} differs between the first call and {label} "
                    f"(relative difference {relative_error([b], [a]):.1e}); "
                    "seed any randomness from problem.seed"
                )
        for name in ("loss", "forward_residual", "backward_iterations", "backward_residual"):
            x, y = getattr(first, name), getattr(other, name)
            if not _same_number(x, y):
                raise ConformanceError(f"{name} is {x!r} at the first call but {y!r} at {label}")
    return "identical on the same problem twice and on a rebuilt one"


@dataclass
class _TensorRecord:
    value: Tensor
    requires_grad: bool
    grad: Tensor | None


def _record(tensors: Sequence[Tensor]) -> list[_TensorRecord]:
    return [
        _TensorRecord(
            t.detach().clone(),
            t.requires_grad,
            None if t.grad is None else t.grad.detach().clone(),
        )
        for t in tensors
    ]


def _compare(
    label: str, before: list[_TensorRecord], after: Sequence[Tensor], by: str = "the method"
) -> None:
    """Each tensor of ``after`` as ``before`` recorded it; ``by``: who would have changed it."""
    if len(after) != len(before):
        raise ConformanceError(f"{label} held {len(before)} tensors and now holds {len(after)}")
    for i, (was, now) in enumerate(zip(before, after, strict=True)):
        name = f"{label}[{i}]"
        if now.requires_grad != was.requires_grad:
            raise ConformanceError(
                f"{name}.requires_grad was {was.requires_grad} and is now {now.requires_grad}"
            )
        if was.grad is None and now.grad is not None:
            raise ConformanceError(
                f"{name}.grad was None and is now set: {by} accumulated into .grad "
                "(use torch.autograd.grad, not .backward())"
            )
        if was.grad is not None and (now.grad is None or not torch.equal(was.grad, now.grad)):
            raise ConformanceError(f"{name}.grad was changed by {by}")
        if (
            now.shape != was.value.shape
            or now.dtype != was.value.dtype
            or not torch.equal(now.detach(), was.value)
        ):
            raise ConformanceError(f"{name} was modified by {by}")


def check_leaves_problem_unchanged(spec: MethodSpec, settings: KitSettings) -> str:
    """Parameters, their requires_grad and .grad, the initial state, the trajectory and grad mode."""
    problem = contractive_problem(settings, 0.9, steps=100)
    fields = {"params_f": problem.params_f, "params_g": problem.params_g}
    fields["initial_state"] = S.as_tuple(problem.initial_state)
    records = {name: _record(tensors) for name, tensors in fields.items()}
    scalars = (problem.num_steps, problem.seed)
    final_state = S.as_tuple(run_without_graph(problem, problem.num_steps))
    grad_mode = torch.is_grad_enabled()
    compute(spec, settings, problem, 30)
    if torch.is_grad_enabled() != grad_mode:
        raise ConformanceError(f"the method left autograd {'on' if grad_mode else 'off'} flipped")
    if (problem.num_steps, problem.seed) != scalars:
        raise ConformanceError("the method changed problem.num_steps or problem.seed")
    for name, record in records.items():
        now = getattr(problem, name)
        _compare(name, record, S.as_tuple(now))
    again = S.as_tuple(run_without_graph(problem, problem.num_steps))
    if not all(torch.equal(a, b) for a, b in zip(final_state, again, strict=True)):
        raise ConformanceError(
            "the forward pass gives another h_T after the method ran: "
            "it changed something the step function closes over"
        )
    return "parameters, requires_grad, .grad, initial state and trajectory untouched"


def check_memory_flat_in_t(spec: MethodSpec, settings: KitSettings) -> str:
    """Peak memory at T = memory_steps[1] is within ``memory_slack`` of that at memory_steps[0]."""
    if spec.unrolls:
        raise CheckSkipped(f"{spec.name!r} declares unrolls=True: its memory may grow with T")
    device = torch.device(settings.device)
    peaks = []
    for steps in settings.memory_steps:
        problem = contractive_problem(settings, 0.9, steps=steps, hidden=64, batch=8)
        k = settings.memory_truncation
        call = functools.partial(compute, spec, settings, problem, k, diagnostics=False)
        call()  # warm-up: first-call allocations are not the method's
        peaks.append(peak_memory(call, device, repeats=3).peak_bytes)
    short, long = peaks
    (t_short, t_long) = settings.memory_steps
    if long > (1 + settings.memory_slack) * short:
        raise ConformanceError(
            f"peak memory grows with T: {short} bytes at T={t_short}, {long} bytes at T={t_long} "
            f"(+{(long - short) / max(short, 1):.0%}, more than {settings.memory_slack:.0%}); "
            "run the steps no gradient needs under torch.no_grad(), or declare "
            "MethodSpec(..., unrolls=True) if the method unrolls by design"
        )
    return f"peak {short} bytes at T={t_short}, {long} bytes at T={t_long}"


Check = Callable[[MethodSpec, KitSettings], str]


def checks_for(settings: KitSettings) -> dict[str, Check]:
    """The checks by name, in the order they run."""
    checks: dict[str, Check] = {"result-contract": check_result_contract}
    for rho in settings.spectral_norms:
        checks[f"exact-gradient-rho{rho}"] = functools.partial(
            check_exact_gradient, spectral_norm=rho
        )
    checks["deterministic"] = check_deterministic
    checks["leaves-problem-unchanged"] = check_leaves_problem_unchanged
    checks["memory-flat-in-T"] = check_memory_flat_in_t
    return checks


def run_check(name: str, spec: MethodSpec, settings: KitSettings) -> CheckOutcome:
    """Run one check; an exception inside the method is a failure that names it."""
    checks = checks_for(settings)
    if name not in checks:
        raise KeyError(f"no conformance check {name!r}; the checks are {sorted(checks)}")
    start = time.perf_counter()
    try:
        detail = checks[name](spec, settings)
        status = "passed"
    except CheckSkipped as skip:
        detail, status = str(skip), "skipped"
    except ConformanceError as exc:
        detail, status = str(exc), "failed"
    except Exception as exc:
        detail, status = f"the method raised {type(exc).__name__}: {exc}", "failed"
    return CheckOutcome(name, status, detail, time.perf_counter() - start)


def checked_params(
    kind: str, spec: MethodSpec | TaskSpec, params: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """``params`` for one method or task, checked as ``rbpbench run`` checks its flags.

    Names against the parameters it takes, ``NAME.KEY`` scoping, each value
    against its default's type, and for a task its own ``check``: the very
    functions of :mod:`rbpbench.config`. Raises ValueError with the CLI's
    message (naming the parameter) instead of running the defaults.
    """
    origin = Origin(spec.name, "conformance kit", "-")
    if isinstance(spec, MethodSpec):
        registry = Registry(methods={spec.name: (spec, origin)})
    else:
        registry = Registry(tasks={spec.name: (spec, origin)})
    plugins = config.plugins_of(registry, kind)
    try:
        scoped = config.scope_flags(params, [spec.name], plugins, where, kind)[spec.name]
        if kind == "task":
            config.run_task_checks(plugins, {spec.name: scoped}, {})
    except config.UsageError as exc:
        raise ValueError(str(exc)) from None
    return scoped


def resolve_method(
    method: str | MethodSpec, *, registry: Registry | None = None, plugins: Sequence[str] = ()
) -> MethodSpec:
    """A MethodSpec as given, or the installed one of that name (``plugins``: extra -p modules)."""
    if isinstance(method, MethodSpec):
        return method
    registry = registry or load_registry(PluginConfig.from_environment(modules=plugins))
    if method not in registry.methods:
        raise KeyError(
            f"no rbpbench method {method!r} is installed; installed: {', '.join(registry.methods)}"
        )
    return registry.method(method)


def check_method(
    method: str | MethodSpec,
    *,
    truncation: int = KitSettings.truncation,
    tolerance: float = KitSettings.tolerance,
    spectral_norms: Sequence[float] = KitSettings.spectral_norms,
    params: Mapping[str, Any] | None = None,
    device: str = KitSettings.device,
    checks: Iterable[str] | None = None,
    plugins: Sequence[str] = (),
    registry: Registry | None = None,
    raise_on_failure: bool = True,
) -> ConformanceReport:
    """Run the conformance kit on one method and return its report.

    ``method`` is an installed method's name (looked up through the plugin
    host, with ``plugins`` as extra ``-p`` modules) or a ``MethodSpec``.
    ``truncation`` and ``tolerance`` set the accuracy checks, ``params`` the
    method's parameters (over its defaults), ``checks`` a subset of the checks
    by name. Every selected check runs; then, with ``raise_on_failure``, a
    :class:`ConformanceError` lists every failure. A parameter the method
    does not take, or a value of the wrong type, raises ValueError naming it
    before any check runs, as ``rbpbench run --method-param`` refuses it.
    """
    spec = resolve_method(method, registry=registry, plugins=plugins)
    settings = KitSettings(
        truncation=truncation,
        tolerance=tolerance,
        spectral_norms=tuple(spectral_norms),
        params=checked_params("method", spec, params or {}, "params"),
        device=device,
    )
    names = list(checks_for(settings)) if checks is None else list(checks)
    report = ConformanceReport(spec.name, [run_check(n, spec, settings) for n in names])
    if raise_on_failure:
        report.raise_for_failures()
    return report
