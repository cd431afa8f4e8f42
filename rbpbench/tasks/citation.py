"""``cora``, ``citeseer``, ``pubmed``: semi-supervised document classification with a GNN (section 5.2).

Every node of a citation network holds a state h_v, started from its
bag-of-words features reduced by PCA to ``hidden`` dimensions. One propagation
step sums the states of a node's neighbours (torch_geometric's message
passing) and updates the node with a GRU cell,

    m_v = sum_{u -> v} h_u,        h_v <- GRU(m_v, h_v),

for ``steps`` steps; a linear readout of the final states is scored by
cross-entropy on the training nodes. The GRU's weights are w_F, the readout's
are w_G. A random split per seed puts 1% of the labelled nodes in training,
49% in validation and the rest in test. These follow the authors' code; see
docs/tasks/citation.md for where rbpbench departs from it and why.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rbpbench.data import DATA_DIR_ENV, DatasetUnavailable, data_root
from rbpbench.problem import Problem, TrainingOutcome, TrainingRun
from rbpbench.tasks.settings import at_least, settings_from, within

RAW_SUFFIXES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


class Graph(NamedTuple):
    """A citation network as the task uses it: features, labels, edges, and the labelled nodes."""

    features: Tensor  # (N, F) float32, bag of words
    labels: Tensor  # (N,) int64
    edge_index: Tensor  # (2, E), both directions, no self-loops
    labelled: Tensor  # (L,) indices of the nodes that carry a document and a label
    num_classes: int


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed): one process at a time processes a dataset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def raw_files_present(folder: Path, name: str) -> bool:
    return all((folder / f"ind.{name.lower()}.{suffix}").exists() for suffix in RAW_SUFFIXES)


# Datasets that could not be had, by (name, root): a worker tries a download once, not once per cell.
UNAVAILABLE: dict[tuple[str, Path], str] = {}


@functools.lru_cache(maxsize=4)
def load_graph(name: str, root: Path) -> Graph:
    """torch_geometric's Planetoid ``name`` from ``<root>/Planetoid/<name>/raw`` (downloaded if possible).

    Where the raw files are missing and cannot be downloaded, raises
    :class:`DatasetUnavailable` naming the folder they belong in.
    """
    from rbpbench.tasks.geometric import Planetoid

    if (name, root) in UNAVAILABLE:
        raise DatasetUnavailable(UNAVAILABLE[name, root])
    planetoid_root = root / "Planetoid"
    raw = planetoid_root / name / "raw"
    with exclusive(planetoid_root / f".{name}.lock"):
        if raw_files_present(raw, name):
            data = Planetoid(str(planetoid_root), name)[0]
        else:
            try:
                data = Planetoid(str(planetoid_root), name)[0]
            except Exception as exc:  # DNS, HTTP and file errors all mean: not available here
                UNAVAILABLE[name, root] = (
                    f"{name} is not available offline: place the {name} raw files "
                    f"(ind.{name.lower()}.{{{','.join(RAW_SUFFIXES)}}}) under {raw} "
                    f"(or point --data-dir / {DATA_DIR_ENV} at a root that has them); "
                    f"download failed: {type(exc).__name__}: {exc}"
                )
                raise DatasetUnavailable(UNAVAILABLE[name, root]) from exc
    # CiteSeer's Planetoid files lack some test documents; the loader adds them
    # as all-zero feature rows with label 0, which are not labelled documents.
    labelled = (data.x.abs().sum(dim=1) > 0).nonzero().flatten()
    return Graph(data.x, data.y, data.edge_index, labelled, int(data.y.max()) + 1)


@functools.lru_cache(maxsize=8)
def pca_features(name: str, root: Path, dim: int, seed: int) -> Tensor:
    """The features projected on their first ``dim`` principal components (randomised PCA, seeded)."""
    features = load_graph(name, root).features.to(torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean = features.mean(dim=0, keepdim=True)
        _, _, components = torch.pca_lowrank(features, q=dim, center=True, niter=6)
    return ((features - mean) @ components[:, :dim]).to(torch.float32)


class Split(NamedTuple):
    train: Tensor
    val: Tensor
    test: Tensor


def random_split(labelled: Tensor, seed: int, train_fraction: float, val_fraction: float) -> Split:
    """A random split of the labelled nodes: ``int(train_fraction L)`` (at least 1), ``int(val_fraction L)``, the rest."""
    count = len(labelled)
    num_train = max(1, int(train_fraction * count))
    num_val = int(val_fraction * count)
    if num_train + num_val >= count:
        raise ValueError(
            f"citation: train_fraction {train_fraction} + val_fraction {val_fraction} "
            f"leave no test nodes among {count}"
        )
    order = labelled[torch.randperm(count, generator=torch.Generator().manual_seed(seed))]
    return Split(
        order[:num_train], order[num_train : num_train + num_val], order[num_train + num_val :]
    )


def gru_update(message: Tensor, state: Tensor, weights: tuple[Tensor, ...]) -> Tensor:
    """``torch.nn.GRUCell``'s update h' = GRU(m, h), written with plain ops so that it can be differentiated twice on every device."""
    weight_ih, weight_hh, bias_ih, bias_hh = weights
    reset_i, update_i, new_i = (message @ weight_ih.T + bias_ih).chunk(3, dim=1)
    reset_h, update_h, new_h = (state @ weight_hh.T + bias_hh).chunk(3, dim=1)
    reset = torch.sigmoid(reset_i + reset_h)
    update = torch.sigmoid(update_i + update_h)
    candidate = torch.tanh(new_i + reset * new_h)
    return candidate + update * (state - candidate)


def kaiming_normal(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    return torch.randn(rows, cols, generator=generator) * math.sqrt(2.0 / cols)


class GNN:
    """A GRU graph network on one graph and split; makes the :class:`Problem` of its training loss."""

    def __init__(
        self,
        graph: Graph,
        initial: Tensor,
        split: Split,
        *,
        steps: int,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        hidden = initial.shape[1]
        generator = torch.Generator().manual_seed(seed)
        gru = (
            kaiming_normal(3 * hidden, hidden, generator),
            kaiming_normal(3 * hidden, hidden, generator),
            torch.zeros(3 * hidden),
            torch.zeros(3 * hidden),
        )
        readout = (
            kaiming_normal(graph.num_classes, hidden, generator),
            torch.zeros(graph.num_classes),
        )
        self.gru = tuple(p.to(device, dtype).requires_grad_(True) for p in gru)
        self.readout = tuple(p.to(device, dtype).requires_grad_(True) for p in readout)
        self.initial = initial.to(device, dtype)
        self.edge_index = graph.edge_index.to(device)
        self.labels = graph.labels.to(device)
        self.split = Split(*(s.to(device) for s in split))
        self.steps = steps
        from rbpbench.tasks.geometric import NeighbourSum

        self.aggregate = NeighbourSum()

    @property
    def parameters(self) -> list[Tensor]:
        return [*self.gru, *self.readout]

    def step(self, state: Tensor) -> Tensor:
        return gru_update(self.aggregate(state, self.edge_index), state, self.gru)

    def logits(self, state: Tensor) -> Tensor:
        weight, bias = self.readout
        return state @ weight.T + bias

    def problem(self, seed: int = 0) -> Problem:
        train = self.split.train

        def loss(state: Any) -> Tensor:
            return F.cross_entropy(self.logits(state[train]), self.labels[train])

        return Problem(
            step=lambda h, t: self.step(h),  # type: ignore[arg-type]
            initial_state=self.initial,
            num_steps=self.steps,
            params_f=self.gru,
            params_g=self.readout,
            loss=loss,
            seed=seed,
            info={"nodes": int(self.initial.shape[0]), "edges": int(self.edge_index.shape[1])},
        )

    @torch.no_grad()
    def infer(self) -> tuple[Tensor, list[float]]:
        """The final states and the difference norm ||h_t - h_{t-1}|| of every step (Fig. 3c)."""
        state, norms = self.initial, []
        for _ in range(self.steps):
            following = self.step(state)
            norms.append(float(torch.linalg.vector_norm(following - state)))
            state = following
        return state, norms


def accuracy(logits: Tensor, labels: Tensor, nodes: Tensor) -> float:
    return float((logits[nodes].argmax(dim=1) == labels[nodes]).to(torch.float64).mean())


@dataclass(frozen=True)
class Settings:
    """The task's parameters; every one can be set with --task-param or a config file."""

    hidden: int = 64
    steps: int = 100
    epochs: int = 2000
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_every: int = 20
    train_fraction: float = 0.01
    val_fraction: float = 0.49
    probes: int = 3

    @classmethod
    def of(cls, params: dict[str, Any], task: str) -> Settings:
        settings = settings_from(cls, params, task)
        s = settings
        names = ("hidden", "steps", "epochs", "eval_every", "probes")
        at_least(task, 1, [(name, getattr(s, name)) for name in names])
        within(task, "lr", s.lr, 0, open_low=True)
        within(task, "momentum", s.momentum, 0, 1, open_high=True)
        within(task, "weight_decay", s.weight_decay, 0)
        within(task, "train_fraction", s.train_fraction, 0, 1, open_low=True, open_high=True)
        within(task, "val_fraction", s.val_fraction, 0, 1, open_high=True)
        if not s.train_fraction + s.val_fraction < 1:
            raise ValueError(
                f"{task}: train_fraction + val_fraction must be below 1 to leave test nodes, "
                f"not {s.train_fraction} + {s.val_fraction}"
            )
        return settings


@dataclass(frozen=True)
class CitationTask:
    """One Planetoid dataset as an rbpbench task: ``build`` and ``train`` for the task registry."""

    dataset: str  # Planetoid's name: Cora, CiteSeer, PubMed
    hidden: int = 64  # the authors' configurations: 64 for Cora, 16 for PubMed

    @property
    def name(self) -> str:
        return self.dataset.lower()

    @property
    def defaults(self) -> dict[str, Any]:
        return dataclasses.asdict(Settings(hidden=self.hidden))

    def setup(self, settings: Settings, seed: int) -> tuple[Graph, Tensor, Split]:
        root = data_root()
        graph = load_graph(self.dataset, root)
        initial = pca_features(self.dataset, root, settings.hidden, seed)
        split = random_split(graph.labelled, seed, settings.train_fraction, settings.val_fraction)
        return graph, initial, split

    def model(self, settings: Settings, seed: int, device: torch.device, dtype: torch.dtype) -> GNN:
        graph, initial, split = self.setup(settings, seed)
        return GNN(
            graph, initial, split, steps=settings.steps, seed=seed, device=device, dtype=dtype
        )

    def check(self, params: Mapping[str, Any]) -> None:
        """The task's TaskSpec check: the ranges :meth:`Settings.of` enforces when a cell runs."""
        Settings.of(dict(params), self.name)

    def build(
        self, *, seed: int, device: torch.device, dtype: torch.dtype, **params: Any
    ) -> Problem:
        """The problem at the initial weights: the training loss of the untrained GNN."""
        settings = Settings.of(params, self.name)
        return self.model(settings, seed, device, dtype).problem(seed)

    def train(self, run: TrainingRun) -> TrainingOutcome:
        """``epochs`` full-graph SGD steps with the cell's method; test accuracy at the best validation epoch.

        Validation (and test) accuracy is evaluated every ``eval_every`` epochs
        and after the last; the reported test accuracy is the one at the first
        evaluation with the best validation accuracy. The logistic-regression
        baseline (Table 2's first column) is fitted on the same split with the
        same optimiser and reported beside it.
        """
        settings = Settings.of(run.params, self.name)
        model = self.model(settings, run.seed, run.device, run.dtype)
        optimizer = torch.optim.SGD(
            model.parameters,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
        probes = run.probes(settings.epochs, settings.probes)
        curves: dict[str, list[float]] = {
            "train_loss": [],
            "eval_epoch": [],
            "val_accuracy": [],
            "test_accuracy": [],
        }
        best = Evaluation(-1, -math.inf, math.nan)
        diverged = False
        for epoch in range(settings.epochs):
            problem = model.problem(run.seed)
            result = run.gradient(problem)
            curves["train_loss"].append(result.loss)
            probes(epoch, problem, result)
            diverged = run.update(problem, result, optimizer)
            if diverged:
                break
            if (epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs:
                evaluation = evaluate(model, epoch + 1)
                curves["eval_epoch"].append(float(evaluation.epoch))
                curves["val_accuracy"].append(evaluation.val)
                curves["test_accuracy"].append(evaluation.test)
                if evaluation.val > best.val:
                    best = evaluation
        curves.update(probes.curves("probe_epoch"))
        _, difference_norms = model.infer()
        curves["difference_norm"] = difference_norms
        baseline = fit_baseline(model, settings)
        losses = curves["train_loss"]
        return TrainingOutcome(
            metrics={
                "train_loss_initial": losses[0],
                "train_loss_final": losses[-1],
                "val_accuracy": best.val if best.epoch >= 0 else math.nan,
                "test_accuracy": best.test,
                "epochs": len(losses),
                "best_epoch": best.epoch,
                "final_difference_norm": difference_norms[-1],
                "baseline_val_accuracy": baseline.val,
                "baseline_test_accuracy": baseline.test,
                "train_nodes": len(model.split.train),
                "val_nodes": len(model.split.val),
                "test_nodes": len(model.split.test),
            },
            curves=curves,
            diverged=diverged,
        )


class Evaluation(NamedTuple):
    epoch: int
    val: float
    test: float


def evaluate(model: GNN, epoch: int) -> Evaluation:
    state, _ = model.infer()
    with torch.no_grad():
        logits = model.logits(state)
    return Evaluation(
        epoch,
        accuracy(logits, model.labels, model.split.val),
        accuracy(logits, model.labels, model.split.test),
    )


def fit_baseline(model: GNN, settings: Settings) -> Evaluation:
    """Logistic regression on each node's PCA features alone, trained and selected as the GNN is."""
    generator = torch.Generator().manual_seed(0)
    hidden, classes = model.initial.shape[1], model.readout[0].shape[0]
    weight = kaiming_normal(classes, hidden, generator).to(model.initial).requires_grad_(True)
    bias = torch.zeros(classes).to(model.initial).requires_grad_(True)
    optimizer = torch.optim.SGD(
        [weight, bias],
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    train, val, test = model.split
    best = Evaluation(-1, -math.inf, math.nan)
    for epoch in range(settings.epochs):
        optimizer.zero_grad()
        F.cross_entropy(model.initial[train] @ weight.T + bias, model.labels[train]).backward()
        optimizer.step()
        if (epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs:
            with torch.no_grad():
                logits = model.initial @ weight.T + bias
            evaluation = Evaluation(
                epoch + 1,
                accuracy(logits, model.labels, val),
                accuracy(logits, model.labels, test),
            )
            if evaluation.val > best.val:
                best = evaluation
    return best


CORA = CitationTask("Cora")
CITESEER = CitationTask("CiteSeer")
PUBMED = CitationTask("PubMed", hidden=16)
