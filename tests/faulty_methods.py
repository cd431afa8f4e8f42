"""A plugin of misbehaving methods, loaded with ``-p tests.faulty_methods`` by the runner tests."""

from __future__ import annotations

import math
import os
import signal
import time

import torch

from rbpbench import GradientResult, MethodSpec, hookimpl
from rbpbench.methods.unrolled import bptt


def hangs(problem, truncation, **_):
    time.sleep(3600)


def raises(problem, truncation, **_):
    raise RuntimeError("solver exploded")


def not_a_number(problem, truncation, **_):
    result = bptt(problem, truncation)
    return GradientResult(
        loss=result.loss,
        grads_f=tuple(torch.full_like(g, math.nan) for g in result.grads_f),
        grads_g=result.grads_g,
        forward_residual=result.forward_residual,
        backward_iterations=1,
    )


def dies(problem, truncation, **_):
    os.kill(os.getpid(), signal.SIGKILL)


def dies_on_seed_2(problem, truncation, **_):
    if problem.seed == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return bptt(problem, truncation)


def hangs_on_seed_2(problem, truncation, **_):
    if problem.seed == 2:
        time.sleep(3600)
    return bptt(problem, truncation)


def fails_when_counted(problem, truncation, **_):
    """BPTT, except in the memory pass (the one pass whose problem counts its steps)."""
    if getattr(problem.step, "__name__", "") == "counted_step":
        raise RuntimeError("the counted pass is refused")
    return bptt(problem, truncation)


def dies_in_the_memory_pass_on_seed_2(problem, truncation, **_):
    if problem.seed == 2 and getattr(problem.step, "__name__", "") == "counted_step":
        os.kill(os.getpid(), signal.SIGKILL)
    return bptt(problem, truncation)


def exhausts_memory(problem, truncation, **_):
    torch.empty(2**62, dtype=torch.uint8)  # the allocator refuses at once: nothing is allocated


def wrong_shape(problem, truncation, **_):
    result = bptt(problem, truncation)
    result.grads_f = tuple(g.reshape(-1) for g in result.grads_f)
    return result


def list_grads(problem, truncation, **_):
    result = bptt(problem, truncation)
    result.grads_f = list(result.grads_f)
    return result


def keeps_graph(problem, truncation, **_):
    result = bptt(problem, truncation)
    result.grads_f = tuple(g.clone().requires_grad_() for g in result.grads_f)
    return result


# A test cluster's worker node gets this file's path in its environment (see tests/test_ray_executor.py).
STALL_FILE_ENV = "RBPBENCH_TEST_STALL_FILE"
_cells_seen: set[tuple[int, int]] = set()


def naps(problem, truncation, **_):
    """BPTT after a nap; where STALL_FILE_ENV is set, from this process's second cell on it
    stalls instead, after creating that file: a node known to be busy, for the node-loss test."""
    _cells_seen.add((problem.seed, truncation))
    stall_file = os.environ.get(STALL_FILE_ENV)
    if stall_file and len(_cells_seen) > 1:
        open(stall_file, "a").close()
        time.sleep(3600)
    time.sleep(0.4)
    return bptt(problem, truncation)


@hookimpl
def rbpbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec("hangs", hangs, "sleeps for an hour"),
        MethodSpec("raises", raises, "always raises"),
        MethodSpec("nan", not_a_number, "returns NaN gradients"),
        MethodSpec("dies", dies, "kills its own process"),
        MethodSpec("dies-on-seed-2", dies_on_seed_2, "BPTT; kills its process at seed 2"),
        MethodSpec("hangs-on-seed-2", hangs_on_seed_2, "BPTT; sleeps for an hour at seed 2"),
        MethodSpec(
            "dies-counted-on-seed-2",
            dies_in_the_memory_pass_on_seed_2,
            "BPTT; kills its process in the memory pass at seed 2",
        ),
        MethodSpec("fails-when-counted", fails_when_counted, "BPTT; raises in the memory pass"),
        MethodSpec("exhausts-memory", exhausts_memory, "asks for 4 EiB"),
        MethodSpec("wrong-shape", wrong_shape, "returns flattened gradients"),
        MethodSpec("list-grads", list_grads, "returns grads_f as a list"),
        MethodSpec("keeps-graph", keeps_graph, "returns gradients that require grad"),
        MethodSpec("naps", naps, "BPTT after a nap; can stall on a chosen node"),
    ]
