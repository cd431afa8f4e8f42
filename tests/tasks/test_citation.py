"""cora / citeseer / pubmed: real offline loading, splits, the GRU update, Proposition 1, training."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from rbpbench.data import DATA_DIR_ENV, DatasetUnavailable
from rbpbench.methods.implicit import neumann_rbp
from rbpbench.methods.unrolled import bptt
from rbpbench.plugins import Registry
from rbpbench.problem import TrainingRun
from rbpbench.reports import citation as citation_report
from rbpbench.tasks import citation
from tests.helpers import run_cli

CPU = torch.device("cpu")
SHARED_PLANETOID = Path(__file__).resolve().parents[3] / "shared" / "data" / "Planetoid"
SMALL = {"hidden": 8, "steps": 10, "epochs": 2, "eval_every": 1, "probes": 2}


@pytest.fixture(scope="module")
def planetoid_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh data root holding only copies of the shared raw files: every load processes them."""
    if not SHARED_PLANETOID.is_dir():
        pytest.skip("no Planetoid raw files on this machine")
    root = tmp_path_factory.mktemp("data")
    for name in ("Cora", "CiteSeer"):
        shutil.copytree(SHARED_PLANETOID / name / "raw", root / "Planetoid" / name / "raw")
    return root


@pytest.fixture
def data_root(planetoid_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(DATA_DIR_ENV, str(planetoid_root))
    return planetoid_root


@pytest.mark.parametrize(
    ("name", "nodes", "edges", "classes", "labelled"),
    [("Cora", 2708, 10556, 7, 2708), ("CiteSeer", 3327, 9104, 6, 3312)],
)
def test_the_datasets_load_offline_from_the_raw_files(
    planetoid_root: Path, name: str, nodes: int, edges: int, classes: int, labelled: int
) -> None:
    graph = citation.load_graph(name, planetoid_root)
    assert graph.features.shape[0] == nodes and graph.edge_index.shape == (2, edges)
    assert graph.num_classes == classes and len(graph.labelled) == labelled
    assert (graph.edge_index[0] != graph.edge_index[1]).all()  # no self-loops
    assert (planetoid_root / "Planetoid" / name / "processed").is_dir()


def test_the_split_has_the_papers_sizes_is_disjoint_and_depends_only_on_the_seed() -> None:
    labelled = torch.arange(2708)
    split = citation.random_split(labelled, 3, 0.01, 0.49)
    assert [len(s) for s in split] == [27, 1326, 2708 - 27 - 1326]
    assert len(torch.cat(list(split)).unique()) == 2708
    again, other = (
        citation.random_split(labelled, 3, 0.01, 0.49),
        citation.random_split(labelled, 4, 0.01, 0.49),
    )
    assert all(torch.equal(a, b) for a, b in zip(split, again, strict=True))
    assert not torch.equal(split.train, other.train)


def test_a_split_without_test_nodes_is_refused() -> None:
    with pytest.raises(ValueError, match="leave no test nodes"):
        citation.random_split(torch.arange(100), 0, 0.5, 0.5)


def test_pca_features_are_seeded_centred_and_of_the_hidden_size(data_root: Path) -> None:
    a = citation.pca_features("Cora", data_root, 16, 0)
    b = citation.pca_features("Cora", data_root, 16, 0)
    assert a.shape == (2708, 16) and torch.equal(a, b)
    assert a.mean(dim=0).abs().max() < 1e-4
    variances = a.var(dim=0)
    assert (variances[:-1] >= variances[1:] * 0.99).all()  # ordered by explained variance


def test_the_gru_update_is_torchs_gru_cell() -> None:
    cell = torch.nn.GRUCell(5, 5, dtype=torch.float64)
    message, state = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    weights = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    torch.testing.assert_close(citation.gru_update(message, state, weights), cell(message, state))


def test_messages_are_sums_over_neighbours(data_root: Path) -> None:
    model = citation.CORA.model(citation.Settings(hidden=4), 0, CPU, torch.float64)
    state = torch.randn(2708, 4, dtype=torch.float64)
    source, target = model.edge_index
    expected = torch.zeros_like(state).index_add_(0, target, state[source])
    torch.testing.assert_close(model.aggregate(state, model.edge_index), expected)


def test_neumann_rbp_matches_bptt_on_the_gru_once_the_forward_pass_has_converged(
    data_root: Path,
) -> None:
    """Proposition 1 in practice: with the GRU made contractive, the propagation converges and
    Neumann-RBP's gradient of the GRU weights is BPTT's."""
    model = citation.CORA.model(citation.Settings(hidden=8, steps=80), 0, CPU, torch.float64)
    with torch.no_grad():
        model.gru[0].mul_(1e-3)  # messages sum up to 168 neighbours
        model.gru[1].mul_(0.1)
    problem = model.problem()
    reference, neumann = bptt(problem, 0), neumann_rbp(problem, 60)
    assert neumann.forward_residual < 1e-9
    for ours, theirs in zip(
        neumann.grads_f + neumann.grads_g, reference.grads_f + reference.grads_g, strict=True
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("method", ["bptt", "tbptt", "rbp", "cg-rbp", "neumann-rbp"])
def test_an_epoch_with_each_method_trains_and_reports(
    data_root: Path, registry: Registry, method: str
) -> None:
    compute = registry.method(method).compute
    run = TrainingRun(
        seed=1,
        device=CPU,
        dtype=torch.float32,
        params={**citation.CORA.defaults, **SMALL},
        gradient=lambda p: compute(p, 3, diagnostics=False),
        reference=lambda p: bptt(p, 0, diagnostics=False),
    )
    outcome = citation.CORA.train(run)
    metrics, curves = outcome.metrics, outcome.curves
    assert not outcome.diverged and metrics["epochs"] == 2
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["baseline_test_accuracy"] <= 1
    assert metrics["train_nodes"] == 27 and metrics["val_nodes"] == 1326
    assert len(curves["train_loss"]) == 2 and curves["eval_epoch"] == [1.0, 2.0]
    assert len(curves["val_accuracy"]) == 2 and len(curves["difference_norm"]) == 10
    assert curves["probe_epoch"] == [0.0, 1.0] and len(curves["probe_grad_rel_error"]) == 2


def test_pubmed_without_its_files_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("no_proxy", "*")
    with pytest.raises(
        DatasetUnavailable, match=r"place the PubMed raw files .* under .*/Planetoid/PubMed/raw"
    ):
        citation.load_graph("PubMed", tmp_path)
    (tmp_path / "Planetoid").rename(tmp_path / "moved")  # a second call does not try again
    with pytest.raises(DatasetUnavailable, match="download failed"):
        citation.load_graph("PubMed", tmp_path)
    assert not (tmp_path / "Planetoid").exists()


def test_a_pubmed_cell_without_data_is_a_skipped_row(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("run", "--tasks", "pubmed", "--methods", "neumann-rbp", "--seeds", "0")
    result = run_cli(
        *args, "--truncation", "5", "--data-dir", str(tmp_path / "empty"), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    row = pd.read_parquet(out / "results.parquet").iloc[0]
    assert row.status == "skipped"
    assert "place the PubMed raw files" in row.error and "Planetoid/PubMed/raw" in row.error


@pytest.mark.slow
def test_the_quick_preset_runs_cora_end_to_end(planetoid_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "quick"
    args = ("run", "--suite", "quick", "--tasks", "cora", "--seeds", "0", "--device", "cpu")
    result = run_cli(*args, "--data-dir", str(planetoid_root), "--out", str(out))
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 10 and (table.status == "ok").all()
    assert table.test_accuracy.between(0, 1).all() and table.grad_rel_error.notna().all()
    assert len(list((out / "curves").glob("*.parquet"))) == 10
    # the task's report: Table 2 beside the paper's figures, and Fig. 3's curves
    assert citation_report.main([str(out)]) == 0
    table = (out / "citation-table2.md").read_text()
    assert "| cora | baseline |" in table and "| cora | neumann-rbp |" in table
    assert "46.63 ± 8.3" in table  # the paper's Neumann-RBP on Cora
    assert (out / "citation-curves.png").read_bytes().startswith(b"\x89PNG")


# A tiny float64 run on Cora, two ways: plain, and with NaN gradients at the third SGD
# step. The numbers were computed with the code before the probe schedule, the BPTT
# probe, the optimiser step and the divergence check moved into TrainingRun (issue 14),
# and must not move: the diverged run steps SGD on the NaN gradient before it stops, so
# its last forward pass (the difference norms) is NaN, and it keeps the accuracies of
# its best evaluation before that.
PIN_PARAMS = {**SMALL, "epochs": 4, "eval_every": 2, "probes": 3}
PIN_METRICS = ("train_loss_initial", "train_loss_final", "val_accuracy", "test_accuracy")
PIN_METRICS += ("epochs", "best_epoch", "final_difference_norm", "baseline_test_accuracy")
PIN_CURVES = ("train_loss", "val_accuracy", "probe_epoch", "probe_grad_rel_error")
PINNED: dict[str, dict[str, float]] = {
    "poison_at=0": {
        "diverged": 0.0,
        "train_loss_initial": 2.983767560273544,
        "train_loss_final": 2.966221040033434,
        "val_accuracy": 0.12066365007541478,
        "test_accuracy": 0.11143911439114391,
        "epochs": 4.0,
        "best_epoch": 2.0,
        "final_difference_norm": 17.886349367227716,
        "baseline_test_accuracy": 0.23763837638376384,
        "train_loss[0]": 2.983767560273544,
        "train_loss[1]": 2.9801592028443675,
        "train_loss[2]": 2.969695053443481,
        "train_loss[3]": 2.966221040033434,
        "val_accuracy[0]": 0.12066365007541478,
        "val_accuracy[1]": 0.1191553544494721,
        "probe_epoch[0]": 0.0,
        "probe_epoch[1]": 2.0,
        "probe_epoch[2]": 3.0,
        "probe_grad_rel_error[0]": 0.9838899907742263,
        "probe_grad_rel_error[1]": 1.0421563387574093,
        "probe_grad_rel_error[2]": 1.0825163480848963,
    },
    "poison_at=3": {
        "diverged": 1.0,
        "train_loss_initial": 2.983767560273544,
        "train_loss_final": 2.969695053443481,
        "val_accuracy": 0.12066365007541478,
        "test_accuracy": 0.11143911439114391,
        "epochs": 3.0,
        "best_epoch": 2.0,
        "final_difference_norm": math.nan,
        "baseline_test_accuracy": 0.23763837638376384,
        "train_loss[0]": 2.983767560273544,
        "train_loss[1]": 2.9801592028443675,
        "train_loss[2]": 2.969695053443481,
        "val_accuracy[0]": 0.12066365007541478,
        "probe_epoch[0]": 0.0,
        "probe_epoch[1]": 2.0,
        "probe_grad_rel_error[0]": 0.9838899907742263,
        "probe_grad_rel_error[1]": math.nan,
    },
}


@pytest.mark.parametrize("poison_at", [0, 3])
def test_a_tiny_training_run_gives_the_pinned_numbers(data_root: Path, poison_at: int) -> None:
    from tests.tasks.training import fingerprint, poisoned

    gradient = poisoned(lambda p: neumann_rbp(p, 5, diagnostics=False), poison_at)
    run = TrainingRun(
        seed=1,
        device=CPU,
        dtype=torch.float64,
        params={**citation.CORA.defaults, **PIN_PARAMS},
        gradient=gradient,
        reference=lambda p: bptt(p, 0, diagnostics=False),
    )
    numbers = fingerprint(citation.CORA.train(run), PIN_METRICS, PIN_CURVES)
    assert numbers == pytest.approx(PINNED[f"poison_at={poison_at}"], rel=1e-7, nan_ok=True)
