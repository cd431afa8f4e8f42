"""``deq-mnist``: a deep-equilibrium (implicit-layer) image classifier trained on MNIST.

The implicit layer's state is z, one row of ``hidden`` numbers per image of a
mini-batch (shape ``(batch, hidden)``); its cell is

    z <- tanh(W z + U x + b),     W = rho * V / sigma_max(V),

with x the normalised image (784 pixels), V, U, b the layer's parameters
(w_F) and W spectrally normalised to norm exactly ``spectral_norm`` = rho < 1,
so the cell is a contraction (tanh' <= 1) and z* is unique. A linear readout
R z* + c (w_G) and the mean cross-entropy give the loss. The step does not
depend on t, so every forward solver applies.

What the cell computes from its parameters once per problem (a mini-batch and
one parameter setting): the injection U x + b and the normalised W. Both come
from :class:`_CellConstants`, whose backward keeps no saved tensors that a
first backward pass frees, so a problem can be differentiated as often as the
harness asks (a method, its timing repeats, BPTT's reference), and the
784-wide injection is paid once per problem rather than once per step. The
spectral norm's derivative uses the top singular vectors u, v of V, computed
once per problem (sigma_max = u^T V v, d sigma_max / dV = u v^T): exact, not a
power-iteration estimate.

The exact implicit gradient: examples of a batch do not interact, so
I - J is block diagonal, one ``hidden`` x ``hidden`` block per image; the
blocks come from ``hidden`` products J^T v (autograd, no formula), z* and the
adjoint from float64 solves. See docs/tasks/deq-mnist.md for the protocol.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from rbpbench.data import data_root, mnist
from rbpbench.gradients import grads_or_zeros
from rbpbench.measure import relative_error
from rbpbench.problem import Curve, Problem, TrainingOutcome, TrainingRun
from rbpbench.state import State
from rbpbench.tasks.settings import at_least, settings_from, within

TASK = "deq-mnist"
INPUTS, CLASSES = 784, 10
MNIST_TRAIN = 60000
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the usual normalisation of MNIST's pixels (/255)
EVAL_CHUNK = 2000  # images per forward pass when evaluating


# --------------------------------------------------------------------------------------------
# Data


@functools.lru_cache(maxsize=2)
def _mnist(root: str, train: bool) -> tuple[Tensor, Tensor]:
    dataset = mnist(train=train, root=Path(root))
    images = dataset.data.reshape(len(dataset.data), -1).to(torch.float32) / 255
    return (images - MNIST_MEAN) / MNIST_STD, dataset.targets.clone()


def load_mnist(train: bool) -> tuple[Tensor, Tensor]:
    """MNIST's training (60,000) or test (10,000) images, flattened and normalised; labels."""
    return _mnist(str(data_root()), train)


@dataclass(frozen=True)
class Split:
    """Which training-set images train the model and which are held out for validation.

    The held-out images are the last ``val_examples`` of MNIST's training set,
    whatever the seed; the training images the first ``examples`` of the rest.
    """

    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor

    @classmethod
    def of(cls, examples: int, val_examples: int) -> Split:
        images, labels = load_mnist(train=True)
        held_out = len(images) - val_examples
        return cls(images[:examples], labels[:examples], images[held_out:], labels[held_out:])


def batch_order(examples: int, batch: int, epochs: int, seed: int) -> list[Tensor]:
    """The index tensors of every training step: each epoch a fresh permutation cut into batches
    (a last incomplete batch is dropped)."""
    generator = torch.Generator().manual_seed(seed)
    steps: list[Tensor] = []
    for _ in range(epochs):
        order = torch.randperm(examples, generator=generator)
        steps.extend(order[: examples // batch * batch].view(-1, batch))
    return steps


# --------------------------------------------------------------------------------------------
# The cell


class _CellConstants(torch.autograd.Function):
    """(W, U x + b) from (V, U, b): W = rho V / sigma with sigma = u^T V v (u, v fixed).

    Its backward is written out and reads only tensors held as plain context
    attributes (no ``save_for_backward``), so autograd freeing a graph's saved
    tensors after a backward pass leaves it usable: a problem's steps share
    this one node, whose backward runs once per gradient, not once per step.
    """

    @staticmethod
    def forward(
        ctx: Any,
        v_param: Tensor,
        u_param: Tensor,
        bias: Tensor,
        x: Tensor,
        left: Tensor,
        right: Tensor,
        rho: float,
    ) -> tuple[Tensor, Tensor]:
        sigma = left @ v_param @ right
        ctx.constants = (v_param.detach(), x, left, right, sigma.detach(), rho)
        return rho * v_param / sigma, torch.addmm(bias, x, u_param.T)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_w: Tensor, grad_inj: Tensor) -> tuple[Tensor | None, ...]:
        v_param, x, left, right, sigma, rho = ctx.constants
        # d(rho V / sigma) = rho / sigma (dV - V (u^T dV v) / sigma)
        coupling = torch.sum(grad_w * v_param) / sigma
        grad_v = rho / sigma * (grad_w - coupling * torch.outer(left, right))
        return grad_v, grad_inj.T @ x, grad_inj.sum(0), None, None, None, None


def top_singular_vectors(v_param: Tensor) -> tuple[Tensor, Tensor]:
    """u, v with sigma_max(V) = u^T V v (and d sigma_max / dV = u v^T), as constants."""
    with torch.no_grad():
        left, _, right_t = torch.linalg.svd(v_param.detach())
    return left[:, 0].contiguous(), right_t[0].contiguous()


def cell_step(z: Tensor, w: Tensor, injection: Tensor) -> Tensor:
    """One update of the implicit layer: tanh(z W^T + U x + b), one row per image."""
    return torch.tanh(torch.addmm(injection, z, w.T))


class DEQ:
    """The classifier's parameters: the implicit layer (V, U, b) and the readout (R, c)."""

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
        hidden: int,
        spectral_norm: float,
        steps: int,
        inputs: int = INPUTS,
    ) -> None:
        self.hidden, self.rho, self.steps = hidden, spectral_norm, steps
        generator = torch.Generator().manual_seed(seed)

        def draw(*shape: int, scale: float) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale

        # V = Q diag(s), Q orthogonal, s from 1 down to 1/2: W's eigenvalues lie near the circle
        # of radius rho (the forward at initialisation contracts little faster than rho allows),
        # and its singular values are distinct, so sigma_max(V) is differentiable (at an
        # orthogonal V it is not: every singular vector pair is a top one).
        orthogonal, _ = torch.linalg.qr(draw(hidden, hidden, scale=1.0))
        spread = torch.linspace(1.0, 0.5, hidden, dtype=torch.float64)
        tensors = (
            orthogonal * spread,
            draw(hidden, inputs, scale=1 / math.sqrt(inputs)),
            torch.zeros(hidden, dtype=torch.float64),
            draw(CLASSES, hidden, scale=1 / math.sqrt(hidden)),
            torch.zeros(CLASSES, dtype=torch.float64),
        )
        self.v, self.u, self.b, self.readout, self.readout_bias = (
            t.to(device, dtype).requires_grad_(True) for t in tensors
        )

    @property
    def params_f(self) -> tuple[Tensor, ...]:
        return (self.v, self.u, self.b)

    @property
    def params_g(self) -> tuple[Tensor, ...]:
        return (self.readout, self.readout_bias)

    def constants(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """W and the injection U x + b for these images, with a graph to V, U and b."""
        left, right = top_singular_vectors(self.v)
        with torch.enable_grad():
            w, injection = _CellConstants.apply(
                self.v, self.u, self.b, images, left, right, self.rho
            )
        return w, injection

    def logits(self, z: Tensor) -> Tensor:
        return torch.addmm(self.readout_bias, z, self.readout.T)

    def problem(self, images: Tensor, labels: Tensor, seed: int = 0) -> Problem:
        """One gradient of the training loss on a mini-batch: the Problem every method answers."""
        constants = _Constants(self, images)
        info: dict[str, Any] = {"images": images, "labels": labels}

        def loss(z: State) -> Tensor:
            assert isinstance(z, Tensor)
            logits = self.logits(z)
            with torch.no_grad():  # the accuracy at the state the loss was last taken at
                info["accuracy"] = float((logits.argmax(1) == labels).to(torch.float64).mean())
            return F.cross_entropy(logits, labels)

        return Problem(
            step=lambda z, t: cell_step(z, *constants.get()),  # type: ignore[arg-type]
            initial_state=images.new_zeros(len(images), self.hidden),
            num_steps=self.steps,
            params_f=self.params_f,
            params_g=self.params_g,
            loss=loss,
            seed=seed,
            exact_gradient=functools.partial(exact_gradient, self, images, labels),
            info=info,
        )

    @torch.no_grad()
    def infer(self, images: Tensor) -> tuple[Tensor, float]:
        """z_T of plain iteration (T steps from 0) for many images, and its relative residual."""
        rows, residual, size = [], 0.0, 0.0
        for start in range(0, len(images), EVAL_CHUNK):
            w, injection = self.constants(images[start : start + EVAL_CHUNK])
            z = injection.new_zeros(len(injection), self.hidden)
            previous = z
            for _ in range(self.steps):
                previous, z = z, cell_step(z, w, injection)
            residual += float(torch.sum((z - previous) ** 2))
            size += float(torch.sum(z**2))
            rows.append(z)
        return torch.cat(rows), math.sqrt(residual / size) if size > 0 else math.sqrt(residual)

    @torch.no_grad()
    def evaluate(self, images: Tensor, labels: Tensor) -> tuple[float, float, float]:
        """Mean cross-entropy, accuracy and the forward's relative residual on these images
        (the forward by plain iteration)."""
        z, residual = self.infer(images)
        logits = self.logits(z)
        loss = float(F.cross_entropy(logits, labels.to(logits.device)))
        accuracy = float((logits.argmax(1) == labels.to(logits.device)).to(torch.float64).mean())
        return loss, accuracy, residual


class _Constants:
    """A problem's W and injection, computed again only when a parameter has changed in place.

    The parameters do not change while a method computes a gradient (methods
    leave the problem alone), so every step shares one pair; a change in
    place (the task kit's finite differences) bumps a tensor's version
    counter and the next step sees the new values, as a step computing them
    itself would.
    """

    def __init__(self, model: DEQ, images: Tensor) -> None:
        self.model, self.images = model, images
        self.versions: tuple[int, ...] = ()
        self.values: tuple[Tensor, Tensor] | None = None

    def get(self) -> tuple[Tensor, Tensor]:
        versions = tuple(p._version for p in self.model.params_f)
        if self.values is None or versions != self.versions:
            self.values, self.versions = self.model.constants(self.images), versions
        return self.values


def fixed_point(
    w: Tensor, injection: Tensor, *, tol: float = 1e-13, max_steps: int = 100_000
) -> Tensor:
    """z* by plain iteration until ||z_{t+1} - z_t|| <= tol ||z_{t+1}||."""
    z = injection.new_zeros(injection.shape)
    with torch.no_grad():
        for _ in range(max_steps):
            z_next = cell_step(z, w, injection)
            if float(torch.linalg.vector_norm(z_next - z)) <= tol * float(
                torch.linalg.vector_norm(z_next)
            ):
                return z_next
            z = z_next
    raise RuntimeError(f"{TASK}: the fixed point was not reached to {tol} in {max_steps} steps")


def block_jacobians(step: Any, z: Tensor) -> Tensor:
    """J_i = dF(z)_i / dz_i for every row i, shape (batch, hidden, hidden), from ``hidden`` products
    J^T v by autograd: row k of every block at once, as rows do not interact."""
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        out = step(z)
    rows = []
    for k in range(z.shape[1]):
        one_hot = torch.zeros_like(out)
        one_hot[:, k] = 1
        (row,) = torch.autograd.grad(out, z, one_hot, retain_graph=True)
        rows.append(row)
    return torch.stack(rows, dim=1)


def exact_gradient(model: DEQ, images: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
    """dL/dw_F at the fixed point, in float64: (dF/dw_F)^T a with (I - J)^T a = dL/dz*, solved
    block by block (one ``hidden`` x ``hidden`` system per image)."""
    f64 = torch.float64
    params = tuple(p.detach().to(f64).requires_grad_(True) for p in model.params_f)
    readout = tuple(p.detach().to(f64) for p in model.params_g)
    x = images.to(f64)
    left, right = top_singular_vectors(params[0])
    with torch.enable_grad():
        w, injection = _CellConstants.apply(*params, x, left, right, model.rho)
    z_star = fixed_point(w.detach(), injection.detach())
    blocks = block_jacobians(lambda z: cell_step(z, w.detach(), injection.detach()), z_star)
    z_leaf = z_star.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = torch.addmm(readout[1], z_leaf, readout[0].T)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, labels.to(logits.device)), z_leaf)
    eye = torch.eye(model.hidden, dtype=f64, device=z_star.device)
    adjoint = torch.linalg.solve((eye - blocks).transpose(1, 2), g.unsqueeze(2)).squeeze(2)
    with torch.enable_grad():
        out = cell_step(z_leaf, w, injection)
    grads = grads_or_zeros((out,), params, (adjoint,))
    return tuple(g.to(p.dtype) for g, p in zip(grads, model.params_f, strict=True))


# --------------------------------------------------------------------------------------------
# Settings, build, train


@dataclass(frozen=True)
class Settings:
    """The task's parameters; every one can be set with --task-param or a config file.

    ``examples`` training images (the first of MNIST's training set) and
    ``val_examples`` held out (its last); ``steps`` is T, the forward's
    budget with ``iterate`` and the evaluation's forward; ``probes`` the
    number of training steps at which the gradient is compared with BPTT's
    and the exact one.
    """

    hidden: int = 128
    spectral_norm: float = 0.9
    steps: int = 40
    batch: int = 128
    lr: float = 1e-3
    epochs: int = 5
    examples: int = 55000
    val_examples: int = 5000
    probes: int = 5

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> Settings:
        s = settings_from(cls, dict(params), TASK)
        at_least(TASK, 1, [(n, getattr(s, n)) for n in ("hidden", "steps", "batch", "epochs")])
        at_least(TASK, 1, [("examples", s.examples), ("val_examples", s.val_examples)])
        at_least(TASK, 0, [("probes", s.probes)])
        within(TASK, "spectral_norm", s.spectral_norm, 0, 1, open_low=True, open_high=True)
        within(TASK, "lr", s.lr, 0, open_low=True)
        if s.examples + s.val_examples > MNIST_TRAIN:
            raise ValueError(
                f"{TASK}: examples + val_examples must be at most {MNIST_TRAIN}, "
                f"not {s.examples} + {s.val_examples}"
            )
        if s.batch > s.examples:
            raise ValueError(
                f"{TASK}: batch must be at most examples ({s.examples}), not {s.batch}"
            )
        return s

    def model(self, seed: int, device: torch.device, dtype: torch.dtype) -> DEQ:
        return DEQ(
            seed=seed,
            device=device,
            dtype=dtype,
            hidden=self.hidden,
            spectral_norm=self.spectral_norm,
            steps=self.steps,
        )


def check(params: Mapping[str, Any]) -> None:
    """The task's TaskSpec check: the ranges :meth:`Settings.of` enforces when a cell runs."""
    Settings.of(params)


def build(*, seed: int, device: torch.device, dtype: torch.dtype, **params: Any) -> Problem:
    """The problem at the initial parameters: the first training step's mini-batch."""
    settings = Settings.of(params)
    split = Split.of(settings.examples, settings.val_examples)
    rows = batch_order(settings.examples, settings.batch, 1, seed)[0]
    images = split.train_images[rows].to(device, dtype)
    model = settings.model(seed, device, dtype)
    return model.problem(images, split.train_labels[rows].to(device), seed)


def train(run: TrainingRun) -> TrainingOutcome:
    """Adam on (V, U, b, R, c) with the cell's method for the implicit layer's gradient.

    Each step takes one mini-batch of a per-epoch reshuffle (seeded by the
    cell's seed) and hands its problem to ``run.gradient``, which finds z*
    with the cell's forward solver. Validation after every epoch and the
    test at the end use the same forward for every cell, T steps of plain
    iteration, so accuracies compare what the methods learned.
    """
    s = Settings.of(run.params)
    split = Split.of(s.examples, s.val_examples)
    device, dtype = run.device, run.dtype
    train_images, train_labels = split.train_images.to(device, dtype), split.train_labels.to(device)
    val_images, val_labels = split.val_images.to(device, dtype), split.val_labels.to(device)
    model = s.model(run.seed, device, dtype)
    optimizer = torch.optim.Adam(model.params_f + model.params_g, lr=s.lr)
    order = batch_order(s.examples, s.batch, s.epochs, run.seed)
    per_epoch = len(order) // s.epochs
    probes = run.probes(len(order), s.probes)
    exact_errors: list[float] = []
    initial_loss, _, _ = model.evaluate(train_images, train_labels)
    step_loss: list[float] = []
    step_accuracy: list[float] = []
    forward_residual: list[float] = []
    epoch_loss: list[float] = []
    val_accuracy: list[float] = []
    diverged = False
    step_time = 0.0
    for index, rows in enumerate(order):
        rows = rows.to(device)
        start = time.perf_counter()
        problem = model.problem(train_images[rows], train_labels[rows], run.seed)
        result = run.gradient(problem)
        step_time += time.perf_counter() - start
        step_loss.append(result.loss)
        forward_residual.append(result.forward_residual)
        step_accuracy.append(problem.info.get("accuracy", math.nan))
        if index in probes.points:  # before the parameters move
            probes(index, problem, result)
            exact_errors.append(relative_error(result.grads_f, exact_gradient_of(problem)))
        start = time.perf_counter()
        diverged = run.update(problem, result, optimizer)
        step_time += time.perf_counter() - start
        if diverged:
            break
        if (index + 1) % per_epoch == 0:
            epoch_loss.append(sum(step_loss[-per_epoch:]) / per_epoch)
            val_accuracy.append(model.evaluate(val_images, val_labels)[1])
    final_loss, train_accuracy, _ = model.evaluate(train_images, train_labels)
    test_images, test_labels = load_mnist(train=False)
    test_loss, test_accuracy, test_residual = model.evaluate(
        test_images.to(device, dtype), test_labels
    )
    curves = _curves(run, probes.taken, exact_errors, step_loss, step_accuracy, forward_residual)
    curves += [
        Curve("train_loss", epoch_loss, x=list(range(1, len(epoch_loss) + 1))),
        Curve("val_accuracy", val_accuracy, x=list(range(1, len(val_accuracy) + 1))),
    ]
    return TrainingOutcome(
        metrics={
            "train_loss_initial": initial_loss,
            "train_loss_final": final_loss,
            "val_accuracy": val_accuracy[-1] if val_accuracy else math.nan,
            "test_accuracy": test_accuracy,
            "epochs": len(epoch_loss),
            "train_accuracy": train_accuracy,
            "test_loss": test_loss,
            "training_steps": len(step_loss),
            # gradient and update, without probes and evaluations
            "step_time_s": step_time / max(1, len(step_loss)),
            # ||z_T - z_{T-1}|| / ||z_T|| of the evaluation forward over the test set
            "test_forward_relative_residual": test_residual,
            "max_probe_grad_rel_error": max(probes.errors, default=math.nan),
            "max_probe_grad_rel_error_exact": max(exact_errors, default=math.nan),
        },
        curves=curves,
        diverged=diverged or not math.isfinite(final_loss),
    )


def exact_gradient_of(problem: Problem) -> tuple[Tensor, ...]:
    assert problem.exact_gradient is not None
    return problem.exact_gradient()


def _curves(
    run: TrainingRun,
    taken: list[tuple[int, float]],
    exact_errors: list[float],
    step_loss: list[float],
    step_accuracy: list[float],
    forward_residual: list[float],
) -> list[Curve]:
    probe_steps = [float(point) for point, _ in taken]
    curves = [
        Curve("step_loss", step_loss, label="training loss of each step", x_label="training step"),
        Curve(
            "step_accuracy",
            step_accuracy,
            label="mini-batch accuracy at the method's forward",
            x_label="training step",
        ),
        Curve(
            "step_forward_residual",
            forward_residual,
            label="forward residual \u2016F(z*) \u2212 z*\u2016 as the method reports it",
            x_label="training step",
        ),
        Curve(
            "probe_grad_rel_error",
            [error for _, error in taken],
            x=probe_steps,
            label="relative gradient error vs BPTT",
            x_label="training step",
        ),
        Curve(
            "probe_grad_rel_error_exact",
            exact_errors,
            x=probe_steps,
            label="relative gradient error vs the exact implicit gradient",
            x_label="training step",
        ),
    ]
    costs = run.step_costs[-len(step_loss) :] if step_loss else []
    if len(costs) == len(step_loss):
        for name, label in (
            ("forward_evaluations", "F evaluations per training step"),
            ("backward_vjps", "J\u1d40v products per training step"),
            ("backward_jvps", "J v products per training step"),
        ):
            values = [float(getattr(c, name)) for c in costs]
            curves.append(Curve(f"step_{name}", values, label=label, x_label="training step"))
    return curves
