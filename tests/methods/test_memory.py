"""Peak memory against the number of forward steps T, measured by memray (rbpbench.measure)."""

from __future__ import annotations

import functools

import pytest
import torch

from rbpbench.measure import peak_memory
from rbpbench.methods.implicit import cg_rbp, neumann_rbp, rbp
from rbpbench.methods.unrolled import bptt, tbptt
from tests.conftest import contractive_problem

CPU = torch.device("cpu")


def peak_at(method, steps: int, truncation: int = 20) -> int:
    problem = contractive_problem(seed=0, spectral_norm=0.9, steps=steps, hidden=64, batch=8)
    method(
        problem, truncation, diagnostics=False
    )  # warm-up: first-call allocations are not the method's
    call = functools.partial(method, problem, truncation, diagnostics=False)
    return peak_memory(call, CPU, repeats=3).peak_bytes


@pytest.mark.parametrize("method", [neumann_rbp, cg_rbp, rbp, tbptt], ids=lambda m: m.__name__)
def test_memory_does_not_grow_with_T(method) -> None:
    short, long = peak_at(method, 100), peak_at(method, 400)
    assert abs(long - short) <= 0.10 * short, (short, long)


def test_bptt_memory_grows_with_T_and_dwarfs_neumann_rbp() -> None:
    short, long = peak_at(bptt, 100), peak_at(bptt, 400)
    assert long >= 3 * short, (short, long)
    assert long >= 20 * peak_at(neumann_rbp, 400)


@pytest.mark.parametrize("method", [neumann_rbp, cg_rbp, rbp], ids=lambda m: m.__name__)
def test_the_rbp_family_holds_one_gradient_of_the_parameters_and_little_else(method) -> None:
    # Large w_F, tiny state: the peak is the gradient itself. Before the loss's absent direct
    # partial stopped being a tensor of zeros, it was three parameter-sized tensors.
    problem = contractive_problem(seed=0, spectral_norm=0.9, steps=10, hidden=1024, batch=1)
    size = sum(p.numel() * p.element_size() for p in problem.params_f)
    call = functools.partial(method, problem, 5, diagnostics=False)
    call()
    assert peak_memory(call, CPU, repeats=3).peak_bytes <= 1.1 * size
