"""``hyperopt``: hyperparameter optimisation through training (paper section 5.3).

The inner training of an MLP 784-50-50-50-10 (tanh on the hidden layers, a
linear output, cross-entropy) by SGD with momentum is the recurrent network.
Its state is the weights and velocities of the 8 weight and bias tensors; its
parameters are 16 hyperparameters, one log learning rate ``lambda`` and one
momentum logit ``mu`` per tensor. One step on mini-batch t is

    v <- beta v - (1 - beta) grad_theta L_t(theta),   theta <- theta + alpha v,

with alpha = exp(lambda) and beta = sigmoid(mu), from v = 0 and weights drawn
N(0, 1) * exp(-3). Step t sees mini-batch t of a fixed schedule (``batch``
images, reshuffled each epoch), so the same seed gives the same initial
weights and batch order at every meta step. The meta-objective is the
cross-entropy of the final weights on the whole training subset. Which
Jacobian the RBP family uses at the end is the parameter ``rbp_jacobian``;
see docs/tasks/hyperopt.md.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rbpbench.data import data_root, mnist
from rbpbench.problem import Problem, TrainingOutcome, TrainingRun
from rbpbench.state import State
from rbpbench.tasks.settings import at_least, settings_from, within

INPUTS, CLASSES = 784, 10
TENSOR_NAMES = tuple(f"{kind}{layer}" for layer in range(1, 5) for kind in ("W", "b"))
JACOBIANS = ("last", "full", "average")
MNIST_TRAIN = 60000  # images in MNIST's training set


@functools.lru_cache(maxsize=2)
def _mnist_subset(root: str, examples: int) -> tuple[Tensor, Tensor]:
    dataset = mnist(train=True, root=Path(root))
    images = dataset.data[:examples].reshape(examples, -1).to(torch.float64) / 255
    return images - images.mean(0), dataset.targets[:examples].clone()


def load_subset(examples: int) -> tuple[Tensor, Tensor]:
    """The first ``examples`` MNIST training images, /255, minus their per-pixel mean; labels."""
    if not 0 < examples <= MNIST_TRAIN:
        raise ValueError(f"hyperopt: examples must be in 1..{MNIST_TRAIN}, not {examples}")
    return _mnist_subset(str(data_root()), examples)


def batch_schedule(examples: int, batch: int, steps: int, seed: int) -> Tensor:
    """Indices (steps, batch): mini-batch t of an epoch-wise reshuffled pass over the examples."""
    if not 0 < batch <= examples:
        raise ValueError(f"hyperopt: batch must be in 1..examples ({examples}), not {batch}")
    per_epoch = examples // batch
    generator = torch.Generator().manual_seed(seed)
    rows: list[Tensor] = []
    while len(rows) < steps:
        order = torch.randperm(examples, generator=generator)
        rows.extend(order[: per_epoch * batch].view(per_epoch, batch))
    return torch.stack(rows[:steps])


def mlp_loss(weights: tuple[Tensor, ...], inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of the MLP whose 8 tensors are ``weights`` (W1, b1, ..., W4, b4)."""
    x = inputs
    for layer in range(4):
        x = x @ weights[2 * layer] + weights[2 * layer + 1]
        if layer < 3:
            x = torch.tanh(x)
    return F.cross_entropy(x, targets)


def momentum_step(
    state: State, inputs: Tensor, targets: Tensor, log_lr: Tensor, momentum_logit: Tensor
) -> State:
    """One SGD-with-momentum step on one batch.

    The inner gradient always needs autograd; it keeps a graph (so that
    methods can differentiate through the step) only when grad mode is on
    outside, i.e. when a method asks for one.
    """
    assert isinstance(state, tuple)
    weights, velocities = state[:8], state[8:]
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = tuple(w if w.requires_grad else w.detach().requires_grad_(True) for w in weights)
        grads = torch.autograd.grad(
            mlp_loss(leaves, inputs, targets), leaves, create_graph=keep_graph
        )
    alpha, beta = torch.exp(log_lr), torch.sigmoid(momentum_logit)
    new_v = tuple(
        beta[i] * v - (1 - beta[i]) * g
        for i, (v, g) in enumerate(zip(velocities, grads, strict=True))
    )
    new_w = tuple(w + alpha[i] * v for i, (w, v) in enumerate(zip(leaves, new_v, strict=True)))
    return new_w + new_v


@dataclass(frozen=True)
class Settings:
    """The task's parameters; every one can be set with --task-param or a config file.

    ``rbp_jacobian``: which map the RBP family linearises at the end: ``last``
    (the last step with its own mini-batch), ``full`` (a step on the whole
    training subset, as the authors' code), or ``average`` (the paper's
    averaging: the hypergradient averaged over the last ``rbp_batches``
    mini-batches' steps).
    """

    steps: int = 100
    meta_steps: int = 20
    examples: int = 10000
    batch: int = 200
    hidden: int = 50
    init_log_lr: float = -1.0
    init_momentum_logit: float = 0.0
    init_log_scale: float = -3.0
    meta_lr: float = 0.05
    meta_lr_drop_at: int = 50
    rbp_jacobian: str = "full"
    rbp_batches: int = 10
    probes: int = 3

    @classmethod
    def of(cls, params: dict[str, Any]) -> Settings:
        settings = settings_from(cls, params, "hyperopt")
        s = settings
        if s.rbp_jacobian not in JACOBIANS:
            raise ValueError(
                f"hyperopt: rbp_jacobian must be one of {', '.join(JACOBIANS)}, "
                f"not {s.rbp_jacobian!r}"
            )
        counts = ("steps", "examples", "batch", "hidden", "rbp_batches")
        at_least("hyperopt", 1, [(name, getattr(s, name)) for name in counts])
        at_least("hyperopt", 0, [("meta_steps", s.meta_steps), ("probes", s.probes)])
        if s.examples > MNIST_TRAIN:
            raise ValueError(f"hyperopt: examples must be at most {MNIST_TRAIN}, not {s.examples}")
        if s.batch > s.examples:
            raise ValueError(
                f"hyperopt: batch must be at most examples ({s.examples}), not {s.batch}"
            )
        for name in ("init_log_lr", "init_momentum_logit", "init_log_scale"):
            within("hyperopt", name, getattr(s, name))
        within("hyperopt", "meta_lr", s.meta_lr, 0, open_low=True)
        return settings


class InnerTraining:
    """Data, batch schedule, initial weights and hyperparameters; makes one meta step's Problem."""

    def __init__(
        self, settings: Settings, *, seed: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.settings = settings
        images, labels = load_subset(settings.examples)
        self.images, self.labels = images.to(device, dtype), labels.to(device)
        self.schedule = batch_schedule(settings.examples, settings.batch, settings.steps, seed)
        sizes = [INPUTS, settings.hidden, settings.hidden, settings.hidden, CLASSES]
        generator = torch.Generator().manual_seed(seed)
        scale = math.exp(settings.init_log_scale)
        weights: list[Tensor] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            weights.append(torch.randn(fan_in, fan_out, generator=generator) * scale)
            weights.append(torch.randn(fan_out, generator=generator) * scale)
        self.initial_weights = tuple(w.to(device, dtype) for w in weights)
        self.log_lr = torch.full((8,), settings.init_log_lr, device=device, dtype=dtype)
        self.momentum_logit = torch.full(
            (8,), settings.init_momentum_logit, device=device, dtype=dtype
        )
        self.log_lr.requires_grad_(True)
        self.momentum_logit.requires_grad_(True)

    def initial_state(self) -> tuple[Tensor, ...]:
        return self.initial_weights + tuple(torch.zeros_like(w) for w in self.initial_weights)

    def batch(self, t: int) -> tuple[Tensor, Tensor]:
        rows = self.schedule[t].to(self.images.device)
        return self.images[rows], self.labels[rows]

    def step(self, state: State, t: int) -> State:
        return momentum_step(state, *self.batch(t), self.log_lr, self.momentum_logit)

    def full_step(self, state: State) -> State:
        return momentum_step(state, self.images, self.labels, self.log_lr, self.momentum_logit)

    def meta_loss(self, state: State) -> Tensor:
        assert isinstance(state, tuple)
        return mlp_loss(state[:8], self.images, self.labels)

    def adjoint_steps(self) -> tuple[Callable[[State], State], ...]:
        choice, steps = self.settings.rbp_jacobian, self.settings.steps
        if choice == "last":
            return ()
        if choice == "full":
            return (self.full_step,)
        first = max(0, steps - self.settings.rbp_batches)
        return tuple(functools.partial(self.step, t=t) for t in range(first, steps))

    def problem(self, seed: int) -> Problem:
        return Problem(
            step=self.step,
            initial_state=self.initial_state(),
            num_steps=self.settings.steps,
            params_f=(self.log_lr, self.momentum_logit),
            params_g=(),
            loss=self.meta_loss,
            seed=seed,
            adjoint_steps=self.adjoint_steps(),
            time_varying=True,  # a mini-batch per step: no fixed point for a solver to find
        )

    @torch.no_grad()
    def train_inner(self) -> tuple[float, list[float]]:
        """Train with the current hyperparameters: the meta loss and each step's mini-batch loss."""
        state: State = self.initial_state()
        losses: list[float] = []
        for t in range(self.settings.steps):
            assert isinstance(state, tuple)
            losses.append(float(mlp_loss(state[:8], *self.batch(t))))
            state = self.step(state, t)
        return float(self.meta_loss(state)), losses


def check(params: Mapping[str, Any]) -> None:
    """The task's TaskSpec check: the ranges :meth:`Settings.of` enforces when a cell runs."""
    Settings.of(dict(params))


def build(*, seed: int, device: torch.device, dtype: torch.dtype, **params: Any) -> Problem:
    """The problem at the initial hyperparameters: one meta step's hypergradient."""
    return InnerTraining(Settings.of(params), seed=seed, device=device, dtype=dtype).problem(seed)


def learned(model: InnerTraining) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, name in enumerate(TENSOR_NAMES):
        out[f"lr_{name}"] = float(torch.exp(model.log_lr[i].detach()))
        out[f"momentum_{name}"] = float(torch.sigmoid(model.momentum_logit[i].detach()))
    return out


def train(run: TrainingRun) -> TrainingOutcome:
    """Adam on the 16 hyperparameters with the cell's method for the hypergradient.

    Every meta step trains from the same initial weights with the same batch
    order; its meta loss is the loss of that training's final weights. The
    meta learning rate drops x0.1 at meta step ``meta_lr_drop_at``.
    """
    settings = Settings.of(run.params)
    if settings.meta_steps == 0:  # a cost measurement only (Table 3): nothing to train
        return TrainingOutcome(metrics={"epochs": 0})
    model = InnerTraining(settings, seed=run.seed, device=run.device, dtype=run.dtype)
    optimizer = torch.optim.Adam([model.log_lr, model.momentum_logit], lr=settings.meta_lr)
    probes = run.probes(settings.meta_steps, settings.probes)
    meta_losses: list[float] = []
    diverged = False
    for meta_step in range(settings.meta_steps):
        if meta_step == settings.meta_lr_drop_at:
            for group in optimizer.param_groups:
                group["lr"] = settings.meta_lr * 0.1
        problem = model.problem(run.seed)
        result = run.gradient(problem)
        meta_losses.append(result.loss)
        probes(meta_step, problem, result)
        # a NaN hypergradient must not reach the hyperparameters: they are reported
        diverged = run.update(problem, result, optimizer, skip_non_finite=True)
        if diverged:
            break
    final_meta_loss, inner_losses = model.train_inner()
    initial = meta_losses[0]
    metrics: dict[str, Any] = {
        "train_loss_initial": initial,
        "train_loss_final": final_meta_loss,
        "epochs": len(meta_losses),
        "final_inner_batch_loss": inner_losses[-1],
        "max_probe_grad_rel_error": max(probes.errors, default=math.nan),
        **learned(model),
    }
    return TrainingOutcome(
        metrics=metrics,
        curves={
            "meta_loss": meta_losses,
            "inner_train_loss": inner_losses,
            **probes.curves("probe_meta_step"),
        },
        diverged=diverged or not math.isfinite(final_meta_loss),
    )
