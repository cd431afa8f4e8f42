"""Table 1 beside the paper: measured success rates, Wilson intervals, Fisher's exact test."""

from __future__ import annotations

from rbpbench.reports.hopfield import fisher_p, percent, table1
from tests.tables import frame, row


def trials(method: str, k: int, successes: int, count: int, **values: object) -> list[dict]:
    return [
        row("hopfield", method, k, seed, success=seed < successes, **values)
        for seed in range(count)
    ]


def test_each_rate_comes_with_its_interval_the_paper_s_and_a_verdict() -> None:
    rows = trials("rbp", 10, 1, 100) + trials("rbp", 20, 30, 100) + trials("bptt", 10, 20, 20)
    lines = table1(frame(rows)).splitlines()
    assert lines[2] == (
        "| rbp | 10 | 100 | 1 | 1.0% (0.2% to 5.4%) | 1% (0.2% to 5.4%) | 1 | agree |"
    )
    rbp20 = lines[3].split(" | ")
    assert rbp20[:4] == ["| rbp", "20", "100", "30"] and rbp20[-1] == "differ |"
    assert float(rbp20[-2]) < 1e-5  # 30 of 100 against the paper's 4 of 100
    assert lines[4].endswith("| 20 | 20 | 100% (84% to 100%) | - | - | no paper figure |")


def test_a_failed_trial_counts_as_a_failure() -> None:
    rows = trials("rbp", 30, 3, 3)
    rows[0].update(status="timeout", success=None)
    assert "| rbp | 30 | 3 | 2 | 67% (21% to 94%) |" in table1(frame(rows))


def test_fisher_s_test_and_percentages_by_hand() -> None:
    assert fisher_p(0, 10, 0, 10) == 1.0
    # 10 of 10 against 0 of 10: one table as extreme each way, of C(20, 10) = 184,756
    assert abs(fisher_p(10, 10, 0, 10) - 2 / 184_756) < 1e-15
    assert [percent(v) for v in (0.0, 1e-9, 0.054, 0.1, 0.565, 1.0)] == [
        "0%", "0%", "5.4%", "10%", "56%", "100%"
    ]  # fmt: skip


def test_a_method_run_with_other_parameters_is_a_row_of_its_own_without_paper_figure() -> None:
    rows = trials("rbp", 10, 0, 4) + [
        {**r, "cell_id": f"zeros-{r['seed']}", "method_params": '{"init": "zeros", "tol": 1e-08}'}
        for r in trials("rbp", 10, 4, 4)
    ]
    table = table1(frame(rows))
    assert "| rbp | 10 | 4 | 0 | 0% (0% to 49%) | 1% (0.2% to 5.4%) | 1 | agree |" in table
    assert (
        "| rbp (init=zeros) | 10 | 4 | 4 | 100% (51% to 100%) | - | - | no paper figure |" in table
    )
