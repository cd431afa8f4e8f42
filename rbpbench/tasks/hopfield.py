"""``hopfield``: a continuous Hopfield network as associative memory (paper section 5.1).

The state u holds 784 observed, ``hidden`` hidden and 784 output neurons. One
update, an Euler step of Eq. 19 with step 1, is

    u <- (1 - a) u + sigmoid(b u) W_sym      on hidden and output neurons,
    u_observed <- image                      (clamped at every step),

with W_sym = W + W^T and a zero diagonal, a = 1, b = 0.5, from u0 = (image,
0, 0). The loss is the mean L1 distance between the raw output neurons and
the image. These follow the authors' code; see docs/tasks/hopfield.md for
where rbpbench departs from it and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import Tensor

from rbpbench.data import mnist
from rbpbench.problem import Problem, TrainingOutcome, TrainingRun
from rbpbench.tasks.settings import at_least, settings_from, within

OBSERVED = OUTPUT = 784
SOURCES = ("auto", "embedded", "mnist")


class SymmetricWeightViews:
    """Views of W giving ``x @ W_sym[:, start:]`` (W_sym = W + W^T, zero diagonal) as two GEMMs.

    W_sym is never materialised: nothing of size N x N is allocated or saved
    per step, so BPTT's memory grows by one state per step as it should. The
    views are taken once per problem, so the gradient of W reaching them from
    every step is summed there and scattered into W once, not once per step.
    Views save no tensors, so a problem can be differentiated more than once.
    """

    def __init__(self, weight: Tensor, start: int) -> None:
        with torch.enable_grad():
            self.columns = weight[:, start:]
            self.rows_transposed = weight[start:, :].T
            self.diagonal = torch.diagonal(weight)[start:]
        self.start = start

    def drive(self, x: Tensor) -> Tensor:
        return x @ self.columns + x @ self.rows_transposed - 2 * x[:, self.start :] * self.diagonal


def load_digits(source: str = "auto") -> Tensor:
    """The first MNIST training image of each digit 0-9, binarised (pixel > 0), as (10, 784).

    ``source``: ``embedded`` (the copy shipped in the package), ``mnist``
    (torchvision's loader from the data root), or ``auto`` (the embedded copy,
    which equals what the loader gives: a test checks it).
    """
    if source == "mnist":
        dataset = mnist(train=True)
        rows = [int((dataset.targets == d).nonzero()[0]) for d in range(10)]
        return (dataset.data[rows].reshape(10, -1) > 0).to(torch.float32)
    if source not in ("auto", "embedded"):
        raise ValueError(f"hopfield: source must be auto, embedded or mnist, not {source!r}")
    text = (resources.files("rbpbench.tasks") / "hopfield_digits.txt").read_text()
    images = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            _, _, bits = line.split()
            images.append([int(b) for b in f"{int(bits, 16):0784b}"])
    return torch.tensor(images, dtype=torch.float32)


def corrupt(images: Tensor, fraction: float, seed: int) -> Tensor:
    """Set ``fraction`` of each image's "on" pixels to zero, chosen by a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    out = images.clone()
    for row in out:
        on = row.nonzero().flatten()
        drop = on[torch.randperm(len(on), generator=generator)[: round(fraction * len(on))]]
        row[drop] = 0
    return out


class Hopfield:
    """The network's parameters and dynamics; makes a :class:`Problem` for given images."""

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
        hidden: int = 1024,
        a: float = 1.0,
        b: float = 0.5,
        steps: int = 50,
        init_scale: float = 1e-3,
    ) -> None:
        self.size = OBSERVED + hidden + OUTPUT
        self.a, self.b, self.steps = a, b, steps
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(self.size, self.size, generator=generator) * init_scale
        self.weight = weight.to(device, dtype).requires_grad_(True)

    def step(self, u: Tensor, clamp: Tensor, views: SymmetricWeightViews) -> Tensor:
        drive = views.drive(torch.sigmoid(self.b * u))
        free = drive if self.a == 1 else (1 - self.a) * u[:, OBSERVED:] + drive
        return torch.cat([clamp, free], dim=1)

    def initial_state(self, clamp: Tensor) -> Tensor:
        return torch.cat([clamp, clamp.new_zeros(clamp.shape[0], self.size - OBSERVED)], dim=1)

    def outputs(self, u: Tensor) -> Tensor:
        return u[:, self.size - OUTPUT :]

    def problem(self, clamp: Tensor, target: Tensor, seed: int = 0) -> Problem:
        views = SymmetricWeightViews(self.weight, OBSERVED)

        def loss(u: Any) -> Tensor:
            return torch.mean(torch.abs(self.outputs(u) - target))

        return Problem(
            step=lambda u, t: self.step(u, clamp, views),  # type: ignore[arg-type]
            initial_state=self.initial_state(clamp),
            num_steps=self.steps,
            params_f=(self.weight,),
            params_g=(),
            loss=loss,
            seed=seed,
        )

    @torch.no_grad()
    def infer(self, clamp: Tensor) -> tuple[Tensor, list[float]]:
        """The final state from ``clamp`` and the difference norm ||u_t - u_{t-1}|| of each step."""
        views = SymmetricWeightViews(self.weight, OBSERVED)
        u, norms = self.initial_state(clamp), []
        for _ in range(self.steps):
            u_next = self.step(u, clamp, views)
            norms.append(float(torch.linalg.vector_norm(u_next - u)))
            u = u_next
        return u, norms


@dataclass(frozen=True)
class Settings:
    """The task's parameters; every one can be set with --task-param or a config file."""

    epochs: int = 10
    batch: int = 1
    lr: float = 1e-3
    steps: int = 50
    hidden: int = 1024
    a: float = 1.0
    b: float = 0.5
    init_scale: float = 1e-3
    corruption: float = 0.5
    source: str = "auto"
    probes: int = 3

    @classmethod
    def of(cls, params: dict[str, Any]) -> Settings:
        """The settings of ``params``; ValueError naming the first value out of range."""
        settings = settings_from(cls, params, "hopfield")
        s = settings
        at_least(
            "hopfield", 1, [(n, getattr(s, n)) for n in ("epochs", "batch", "steps", "hidden")]
        )
        at_least("hopfield", 0, [("probes", s.probes)])
        within("hopfield", "lr", s.lr, 0, open_low=True)
        within("hopfield", "a", s.a)
        within("hopfield", "b", s.b)
        within("hopfield", "init_scale", s.init_scale, 0)
        within("hopfield", "corruption", s.corruption, 0, 1)
        if s.source not in SOURCES:
            raise ValueError(
                f"hopfield: source must be one of {', '.join(SOURCES)}, not {s.source!r}"
            )
        return settings

    def model(self, seed: int, device: torch.device, dtype: torch.dtype) -> Hopfield:
        return Hopfield(
            seed=seed,
            device=device,
            dtype=dtype,
            hidden=self.hidden,
            a=self.a,
            b=self.b,
            steps=self.steps,
            init_scale=self.init_scale,
        )


def check(params: Mapping[str, Any]) -> None:
    """The task's TaskSpec check: the ranges :meth:`Settings.of` enforces when a cell runs."""
    Settings.of(dict(params))


def build(*, seed: int, device: torch.device, dtype: torch.dtype, **params: Any) -> Problem:
    """The problem at the initial weights: store the ten clean digits."""
    settings = Settings.of(params)
    images = load_digits(settings.source).to(device, dtype)
    return settings.model(seed, device, dtype).problem(images, images, seed)


def train(run: TrainingRun) -> TrainingOutcome:
    """Adam on W with the cell's method for the gradient, ``batch`` images per step.

    An epoch is one pass over the ten digits in a fixed order; its training
    loss is the mean of its steps' losses, each taken before its update, as
    the authors' code logs it. Success (the paper's Table 1) is a last epoch's
    loss below half the first epoch's.
    """
    settings = Settings.of(run.params)
    images = load_digits(settings.source).to(run.device, run.dtype)
    model = settings.model(run.seed, run.device, run.dtype)
    optimizer = torch.optim.Adam([model.weight], lr=settings.lr)
    probes = run.probes(settings.epochs, settings.probes)
    epoch_losses: list[float] = []
    step_losses: list[float] = []
    diverged = False
    for epoch in range(settings.epochs):
        first = len(step_losses)
        for start in range(0, len(images), settings.batch):
            batch = images[start : start + settings.batch]
            problem = model.problem(batch, batch, run.seed)
            result = run.gradient(problem)
            step_losses.append(result.loss)
            if start == 0:  # an epoch's probe is at its first step
                probes(epoch, problem, result)
            diverged = run.update(problem, result, optimizer)
            if diverged:
                break
        epoch_losses.append(sum(step_losses[first:]) / len(step_losses[first:]))
        if diverged:
            break
    state, difference_norms = model.infer(images)
    stored = float(torch.mean(torch.abs(model.outputs(state) - images)))
    corrupted = corrupt(images.cpu(), settings.corruption, run.seed).to(run.device, run.dtype)
    retrieved_state, _ = model.infer(corrupted)
    retrieved = (model.outputs(retrieved_state) > 0.5).to(run.dtype)
    initial, final = epoch_losses[0], epoch_losses[-1]
    return TrainingOutcome(
        metrics={
            "train_loss_initial": initial,
            "train_loss_final": final,
            "success": not diverged and math.isfinite(final) and final < 0.5 * initial,
            "retrieval_error": float(torch.mean((retrieved != images).to(torch.float64))),
            "epochs": len(epoch_losses),
            "loss_after_training": stored,
            # the authors' code compared the retrieval with the corrupted input
            "retrieval_error_vs_corrupted": float(
                torch.mean((retrieved != corrupted).to(torch.float64))
            ),
        },
        curves={
            "train_loss": epoch_losses,
            "step_loss": step_losses,
            "difference_norm": difference_norms,
            **probes.curves("probe_epoch"),
            "corrupted": corrupted.reshape(-1).tolist(),
            "retrieved": retrieved.reshape(-1).tolist(),
        },
        diverged=diverged,
    )
