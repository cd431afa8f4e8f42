"""hyperopt: the inner training as a recurrent net, its hypergradients, memory and training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from rbpbench import measure
from rbpbench.methods.implicit import cg_rbp, neumann_rbp, rbp
from rbpbench.methods.unrolled import bptt, tbptt
from rbpbench.problem import Problem, TrainingRun
from rbpbench.tasks import hyperopt

CPU = torch.device("cpu")
F64 = torch.float64
TINY = {"examples": 100, "batch": 20, "hidden": 6, "steps": 8}
METHODS = {"bptt": bptt, "tbptt": tbptt, "rbp": rbp, "cg-rbp": cg_rbp, "neumann-rbp": neumann_rbp}


def tiny(dtype: torch.dtype = F64, **params: Any) -> Problem:
    return hyperopt.build(seed=0, device=CPU, dtype=dtype, **{**TINY, **params})


def test_the_batch_schedule_is_reshuffled_each_epoch_and_fixed_by_the_seed() -> None:
    a = hyperopt.batch_schedule(100, 20, 12, seed=1)
    assert a.shape == (12, 20)
    assert torch.equal(a, hyperopt.batch_schedule(100, 20, 12, seed=1))
    epoch_1, epoch_2 = a[:5].flatten(), a[5:10].flatten()
    assert sorted(epoch_1.tolist()) == list(range(100)) == sorted(epoch_2.tolist())
    assert not torch.equal(epoch_1, epoch_2)


def test_the_data_is_the_centred_first_examples(mnist_root: Path) -> None:
    images, labels = hyperopt.load_subset(100)
    assert images.shape == (100, 784) and labels.shape == (100,)
    assert torch.allclose(images.mean(0), torch.zeros(784, dtype=F64), atol=1e-12)
    assert bool(((images.max(0).values - images.min(0).values) <= 1.0 + 1e-12).all())


def test_the_step_is_momentum_sgd_and_keeps_a_graph_only_when_asked(mnist_root: Path) -> None:
    problem = tiny()
    h0 = problem.initial_state
    with torch.no_grad():
        h1 = problem.step(h0, 0)
    assert all(not x.requires_grad for x in h1)
    # from v = 0: v1 = -(1 - beta) g = -g / 2, theta1 = theta0 + e^-1 v1
    for w0, w1, v1 in zip(h0[:8], h1[:8], h1[8:], strict=True):
        torch.testing.assert_close(w1, w0 + torch.exp(torch.tensor(-1.0, dtype=F64)) * v1)
    assert all(float(v.abs().max()) > 0 for v in h1[8:])
    with torch.enable_grad():
        h2 = problem.step(h1, 1)
    assert all(x.requires_grad for x in h2)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gives_all_16_hyperparameters_a_nonzero_gradient(
    mnist_root: Path, name: str
) -> None:
    for jacobian in (
        ("last", "full", "average") if name in ("rbp", "cg-rbp", "neumann-rbp") else ("full",)
    ):
        result = METHODS[name](tiny(rbp_jacobian=jacobian, rbp_batches=3), 3)
        grads = torch.cat([g.flatten() for g in result.grads_f])
        assert grads.shape == (16,)
        assert bool((grads.abs() > 0).all()), (name, jacobian, grads)
        assert measure.all_finite(result.grads_f)


def test_bptt_agrees_with_finite_differences(mnist_root: Path) -> None:
    problem = tiny()
    result = bptt(problem, 0)
    analytic = torch.cat([g.flatten() for g in result.grads_f])

    def meta_loss() -> float:
        with torch.no_grad():
            h = problem.initial_state
            for t in range(problem.num_steps):
                h = problem.step(h, t)
            return float(problem.loss(h))

    eps = 1e-6
    numeric = []
    for param in problem.params_f:
        for i in range(param.numel()):
            with torch.no_grad():
                param.view(-1)[i] += eps
            up = meta_loss()
            with torch.no_grad():
                param.view(-1)[i] -= 2 * eps
            down = meta_loss()
            with torch.no_grad():
                param.view(-1)[i] += eps
            numeric.append((up - down) / (2 * eps))
    torch.testing.assert_close(analytic, torch.tensor(numeric, dtype=F64), rtol=1e-5, atol=1e-9)


def test_the_rbp_jacobian_choices_linearise_the_maps_they_name(mnist_root: Path) -> None:
    last = neumann_rbp(tiny(rbp_jacobian="last"), 4)
    one_batch = neumann_rbp(tiny(rbp_jacobian="average", rbp_batches=1), 4)
    full = neumann_rbp(tiny(rbp_jacobian="full"), 4)
    # averaging over the last mini-batch alone is the last step's linearisation
    for a, b in zip(last.grads_f, one_batch.grads_f, strict=True):
        torch.testing.assert_close(a, b)
    assert last.loss == one_batch.loss == full.loss  # the meta loss is the real trajectory's
    assert measure.relative_error(full.grads_f, last.grads_f) > 1e-3


def test_neumann_rbp_memory_is_flat_in_t_while_bptt_grows(mnist_root: Path) -> None:
    def peak(method: Any, steps: int) -> int:
        problem = tiny(dtype=torch.float32, steps=steps, rbp_jacobian="last")
        method(problem, 10, diagnostics=False)  # warm-up
        call = lambda: method(problem, 10, diagnostics=False)  # noqa: E731
        return measure.peak_memory(call, CPU, repeats=3).peak_bytes

    neumann_50, neumann_200 = peak(neumann_rbp, 50), peak(neumann_rbp, 200)
    bptt_50, bptt_200 = peak(bptt, 50), peak(bptt, 200)
    assert abs(neumann_200 - neumann_50) <= 0.1 * neumann_50, (neumann_50, neumann_200)
    assert bptt_200 > 2.5 * bptt_50, (bptt_50, bptt_200)


def test_training_learns_the_hyperparameters_and_records_its_curves(mnist_root: Path) -> None:
    run = TrainingRun(
        seed=0,
        device=CPU,
        dtype=F64,
        params={**TINY, "meta_steps": 3, "probes": 2},
        gradient=lambda problem: neumann_rbp(problem, 5, diagnostics=False),
        reference=lambda problem: bptt(problem, 0, diagnostics=False),
    )
    outcome = hyperopt.train(run)
    assert not outcome.diverged
    assert len(outcome.curves["meta_loss"]) == 3 and outcome.metrics["epochs"] == 3
    assert len(outcome.curves["inner_train_loss"]) == TINY["steps"]
    assert outcome.curves["probe_meta_step"] == [0.0, 2.0]
    assert len([k for k in outcome.metrics if k.startswith(("lr_", "momentum_"))]) == 16
    # Adam moves every hyperparameter by about the meta learning rate on its first step
    assert outcome.metrics["lr_W1"] != pytest.approx(torch.exp(torch.tensor(-1.0)).item())
    assert outcome.metrics["momentum_b4"] != pytest.approx(0.5)


def test_bad_parameters_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="rbp_jacobian must be one of last, full, average"):
        hyperopt.Settings.of({"rbp_jacobian": "mean"})
    with pytest.raises(TypeError, match="unknown parameters"):
        hyperopt.Settings.of({"lr": 1})


# A tiny float64 run (the meta learning rate drops after the first meta step), two
# ways: plain, and with NaN hypergradients at the second meta step. The numbers were
# computed with the code before the probe schedule, the BPTT probe, the optimiser step
# and the divergence check moved into TrainingRun (issue 14), and must not move: the
# diverged run stops before Adam sees the NaN, so it keeps the hyperparameters of the
# first meta step.
PIN_PARAMS = {**TINY, "meta_steps": 3, "probes": 2, "meta_lr_drop_at": 1}
PIN_METRICS = ("train_loss_initial", "train_loss_final", "epochs", "final_inner_batch_loss")
PIN_METRICS += ("max_probe_grad_rel_error", "lr_W1", "momentum_W1", "lr_b4", "momentum_b4")
PIN_CURVES = ("meta_loss", "probe_meta_step", "probe_grad_rel_error")
PINNED: dict[str, dict[str, float]] = {
    "poison_at=0": {
        "diverged": 0.0,
        "train_loss_initial": 2.2882878974752505,
        "train_loss_final": 2.2876897940350633,
        "epochs": 3.0,
        "final_inner_batch_loss": 2.2673551115423596,
        "max_probe_grad_rel_error": 0.6180367629293971,
        "lr_W1": 0.39060974593806896,
        "momentum_W1": 0.48726124558383804,
        "lr_b4": 0.3906305117487217,
        "momentum_b4": 0.4850020581834268,
        "meta_loss[0]": 2.2882878974752505,
        "meta_loss[1]": 2.2877902287377143,
        "meta_loss[2]": 2.2877400512279773,
        "probe_meta_step[0]": 0.0,
        "probe_meta_step[1]": 2.0,
        "probe_grad_rel_error[0]": 0.6090721588618183,
        "probe_grad_rel_error[1]": 0.6180367629293971,
    },
    "poison_at=2": {
        "diverged": 1.0,
        "train_loss_initial": 2.2882878974752505,
        "train_loss_final": 2.2877902287377143,
        "epochs": 2.0,
        "final_inner_batch_loss": 2.2675816715076764,
        "max_probe_grad_rel_error": 0.6090721588618183,
        "lr_W1": 0.38672183858927606,
        "momentum_W1": 0.4893634958901739,
        "lr_b4": 0.38674098306957466,
        "momentum_b4": 0.48750263341819255,
        "meta_loss[0]": 2.2882878974752505,
        "meta_loss[1]": 2.2877902287377143,
        "probe_meta_step[0]": 0.0,
        "probe_grad_rel_error[0]": 0.6090721588618183,
    },
}


@pytest.mark.parametrize("poison_at", [0, 2])
def test_a_tiny_training_run_gives_the_pinned_numbers(mnist_root: Path, poison_at: int) -> None:
    from tests.tasks.training import fingerprint, poisoned

    gradient = poisoned(lambda p: neumann_rbp(p, 5, diagnostics=False), poison_at)
    run = TrainingRun(
        seed=2,
        device=CPU,
        dtype=F64,
        params=PIN_PARAMS,
        gradient=gradient,
        reference=lambda p: bptt(p, 0, diagnostics=False),
    )
    numbers = fingerprint(hyperopt.train(run), PIN_METRICS, PIN_CURVES)
    assert numbers == pytest.approx(PINNED[f"poison_at={poison_at}"], rel=1e-7, nan_ok=True)


def test_an_accelerated_forward_is_a_skipped_row_saying_why(mnist_root: Path, registry) -> None:
    """hyperopt's step is a different mini-batch each step: no fixed point to accelerate to."""
    from rbpbench.cells import Cell
    from rbpbench.runner import CellRunner

    assert tiny().time_varying
    runner = CellRunner(registry, "run")
    params = tuple(sorted({**TINY, "meta_steps": 0}.items()))
    for forward in ("anderson", "broyden"):
        row = runner.run(Cell("hyperopt", "neumann-rbp", 3, 0, "cpu", params, (), forward)).row
        assert row["status"] == "skipped" and "depends on t" in row["error"], row["error"]
    row = runner.run(Cell("hyperopt", "neumann-rbp", 3, 0, "cpu", params, (), "iterate")).row
    assert row["status"] == "ok", row["error"]
