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


def exhausts_memory(problem, truncation, **_):
    torch.empty(2**62, dtype=torch.uint8)  # the allocator refuses at once: nothing is allocated


def wrong_shape(problem, truncation, **_):
    result = bptt(problem, truncation)
    result.grads_f = tuple(g.reshape(-1) for g in result.grads_f)
    return result


@hookimpl
def rbpbench_methods() -> list[MethodSpec]:
    return [
        MethodSpec("hangs", hangs, "sleeps for an hour"),
        MethodSpec("raises", raises, "always raises"),
        MethodSpec("nan", not_a_number, "returns NaN gradients"),
        MethodSpec("dies", dies, "kills its own process"),
        MethodSpec("exhausts-memory", exhausts_memory, "asks for 4 EiB"),
        MethodSpec("wrong-shape", wrong_shape, "returns flattened gradients"),
    ]
