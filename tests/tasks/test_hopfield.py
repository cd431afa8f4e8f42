"""hopfield: data, corruption, dynamics and Jacobian products, and a short training run."""

from __future__ import annotations

import math
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


# A tiny float64 run, two ways: plain, and with NaN gradients at the 5th Adam step
# (epoch 1, second batch). The numbers were computed with the code before the probe
# schedule, the BPTT probe, the optimiser step and the divergence check moved into
# TrainingRun (issue 14), and must not move: the diverged run steps Adam on the NaN
# gradient before it stops, so its retrieval is made with NaN weights.
PIN_PARAMS = {"epochs": 3, "batch": 4, "hidden": 16, "steps": 10, "init_scale": 0.05, "probes": 2}
PIN_METRICS = ("train_loss_initial", "train_loss_final", "retrieval_error", "epochs")
PIN_METRICS += ("loss_after_training", "retrieval_error_vs_corrupted")
PIN_CURVES = ("train_loss", "step_loss", "probe_epoch", "probe_grad_rel_error")
PINNED: dict[str, dict[str, float]] = {
    "poison_at=0": {
        "diverged": 0.0,
        "train_loss_initial": 1.0222787322186961,
        "train_loss_final": 0.5635444292604864,
        "retrieval_error": 0.2659438775510204,
        "epochs": 3.0,
        "loss_after_training": 0.4961861136692136,
        "retrieval_error_vs_corrupted": 0.2738520408163265,
        "train_loss[0]": 1.0222787322186961,
        "train_loss[1]": 0.7143257015532324,
        "train_loss[2]": 0.5635444292604864,
        "step_loss[0]": 1.360668025000326,
        "step_loss[1]": 0.9075755982657986,
        "step_loss[2]": 0.7985925733899635,
        "step_loss[3]": 0.7725639985649737,
        "step_loss[4]": 0.7267091823448354,
        "step_loss[5]": 0.6437039237498878,
        "step_loss[6]": 0.6072272647490008,
        "step_loss[7]": 0.5762060090074416,
        "step_loss[8]": 0.5072000140250168,
        "probe_epoch[0]": 0.0,
        "probe_epoch[1]": 2.0,
        "probe_grad_rel_error[0]": 0.0019030806631586796,
        "probe_grad_rel_error[1]": 0.002387742961043768,
    },
    "poison_at=5": {
        "diverged": 1.0,
        "train_loss_initial": 1.0222787322186961,
        "train_loss_final": 0.7496365904549045,
        "retrieval_error": 0.19910714285714284,
        "epochs": 2.0,
        "loss_after_training": math.nan,
        "retrieval_error_vs_corrupted": 0.09961734693877551,
        "train_loss[0]": 1.0222787322186961,
        "train_loss[1]": 0.7496365904549045,
        "step_loss[0]": 1.360668025000326,
        "step_loss[1]": 0.9075755982657986,
        "step_loss[2]": 0.7985925733899635,
        "step_loss[3]": 0.7725639985649737,
        "step_loss[4]": 0.7267091823448354,
        "probe_epoch[0]": 0.0,
        "probe_grad_rel_error[0]": 0.0019030806631586796,
    },
}


@pytest.mark.parametrize("poison_at", [0, 5])
def test_a_tiny_training_run_gives_the_pinned_numbers(poison_at: int) -> None:
    from tests.tasks.training import fingerprint, poisoned

    gradient = poisoned(lambda p: neumann_rbp(p, 5, diagnostics=False), poison_at)
    run = TrainingRun(
        seed=3,
        device=CPU,
        dtype=torch.float64,
        params=PIN_PARAMS,
        gradient=gradient,
        reference=lambda p: bptt(p, 0, diagnostics=False),
    )
    numbers = fingerprint(hopfield.train(run), PIN_METRICS, PIN_CURVES)
    assert numbers == pytest.approx(PINNED[f"poison_at={poison_at}"], rel=1e-7, nan_ok=True)
