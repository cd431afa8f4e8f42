"""hopfield: data, corruption, dynamics and Jacobian products, and a short training run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rbpbench.data import DATA_DIR_ENV
from rbpbench.forward import run_without_graph
from rbpbench.linearisation import LinearisedStep
from rbpbench.methods.implicit import neumann_rbp
from rbpbench.methods.unrolled import bptt
from rbpbench.problem import TrainingRun
from rbpbench.tasks import hopfield

CPU = torch.device("cpu")


def test_embedded_digits_equal_the_torchvision_loader_offline(mnist_root: Path) -> None:
    embedded = hopfield.load_digits("embedded")
    assert embedded.shape == (10, 784) and set(embedded.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(hopfield.load_digits("mnist"), embedded)


def test_a_missing_mnist_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rbpbench.data import DatasetUnavailable

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("no_proxy", "*")
    with pytest.raises(DatasetUnavailable, match=r"place the four raw files under .*/MNIST/raw"):
        hopfield.load_digits("mnist")


def test_corruption_drops_half_the_on_pixels_deterministically() -> None:
    images = hopfield.load_digits()
    a, b, c = (hopfield.corrupt(images, 0.5, seed) for seed in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a <= images).all()  # only "on" pixels are switched off
    kept = a.sum(1) / images.sum(1)
    assert torch.allclose(kept, torch.full_like(kept, 0.5), atol=0.01)


def test_the_weight_views_multiply_by_the_symmetric_zero_diagonal_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(9, 9, generator=gen, dtype=torch.float64)
    x = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    symmetric = w + w.T
    symmetric.fill_diagonal_(0)
    torch.testing.assert_close(hopfield.SymmetricWeightViews(w, 3).drive(x), x @ symmetric[:, 3:])


def small_model(seed: int = 0) -> tuple[hopfield.Hopfield, torch.Tensor]:
    model = hopfield.Hopfield(
        seed=seed, device=CPU, dtype=torch.float64, hidden=32, init_scale=0.05
    )
    return model, hopfield.load_digits()[:3].to(torch.float64)


def test_observed_neurons_stay_clamped_and_the_dynamics_settle() -> None:
    model, images = small_model()
    state, norms = model.infer(images)
    assert torch.equal(state[:, : hopfield.OBSERVED], images)
    assert norms[-1] < 1e-6 * max(norms[0], 1.0)


def test_cg_rbp_jacobian_products_agree_with_finite_differences() -> None:
    model, images = small_model()
    problem = model.problem(images, images)
    step = LinearisedStep(problem, run_without_graph(problem, 10))
    v = torch.randn_like(step.h_prev)
    eps = 1e-6
    plus = problem.step(step.h_prev.detach() + eps * v, 0)
    minus = problem.step(step.h_prev.detach() - eps * v, 0)
    torch.testing.assert_close(step.jvp(v), (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)
    u = torch.randn_like(step.h_prev)  # and J^T is the transpose of J: <u, J v> = <J^T u, v>
    assert torch.dot(u.flatten(), step.jvp(v).flatten()).item() == pytest.approx(
        torch.dot(step.vjp(u).flatten(), v.flatten()).item(), rel=1e-10
    )


def test_gradients_at_the_fixed_point_agree_between_bptt_and_neumann_rbp() -> None:
    model, images = small_model()
    problem = model.problem(images, images)
    exact, neumann = bptt(problem, 0), neumann_rbp(problem, 49)
    error = (neumann.grads_f[0] - exact.grads_f[0]).norm() / exact.grads_f[0].norm()
    assert neumann.forward_residual < 1e-8 and error < 1e-6


@pytest.mark.slow
def test_a_short_training_run_with_neumann_rbp_lowers_the_loss() -> None:
    run = TrainingRun(
        seed=0,
        device=CPU,
        dtype=torch.float32,
        params={"epochs": 12, "hidden": 64, "lr": 1e-4, "probes": 2},
        gradient=lambda p: neumann_rbp(p, 20, diagnostics=False),
        reference=lambda p: bptt(p, 0, diagnostics=False),
    )
    outcome = hopfield.train(run)
    losses = outcome.curves["train_loss"]
    assert outcome.metrics["train_loss_final"] < losses[0]
    assert not outcome.diverged and outcome.metrics["epochs"] == 12
    assert len(outcome.curves["difference_norm"]) == 50
    assert outcome.curves["probe_epoch"] == [0.0, 11.0]
    assert all(e < 1e-3 for e in outcome.curves["probe_grad_rel_error"])
    assert 0 <= outcome.metrics["retrieval_error"] <= 1
