"""Registers the built-in tasks; found through the ``rbpbench`` entry-point group."""

from __future__ import annotations

import dataclasses

import torch

from rbpbench.hookspecs import hookimpl
from rbpbench.problem import TaskSpec
from rbpbench.reports import citation as citation_report
from rbpbench.reports import hopfield as hopfield_report
from rbpbench.reports import hyperopt as hyperopt_report
from rbpbench.tasks import citation, contractive, deq, hopfield, hyperopt


@hookimpl
def rbpbench_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            "contractive-rnn",
            contractive.build,
            "tanh RNN with ||W||_2 = rho < 1; exact implicit gradient by a dense solve",
            defaults={"spectral_norm": 0.9, "hidden": 32, "batch": 4, "steps": 300},
            dtype=torch.float64,
            check=contractive.check,
        ),
        TaskSpec(
            "hopfield",
            hopfield.build,
            "continuous Hopfield associative memory on 10 MNIST digits, trained with Adam (section 5.1)",
            defaults=dataclasses.asdict(hopfield.Settings()),
            dtype=torch.float32,
            train=hopfield.train,
            check=hopfield.check,
            figures=hopfield_report.FIGURES,
        ),
        *(
            TaskSpec(
                task.name,
                task.build,
                f"GRU graph network classifying {task.dataset} documents from 1% labelled nodes, "
                "trained with SGD (section 5.2)",
                defaults=task.defaults,
                dtype=torch.float32,
                train=task.train,
                check=task.check,
                figures=citation_report.FIGURES,
            )
            for task in (citation.CORA, citation.CITESEER, citation.PUBMED)
        ),
        TaskSpec(
            "hyperopt",
            hyperopt.build,
            "16 learning rates and momenta of an MNIST MLP's SGD, learned through training (section 5.3)",
            defaults=dataclasses.asdict(hyperopt.Settings()),
            dtype=torch.float32,
            train=hyperopt.train,
            check=hyperopt.check,
            figures=hyperopt_report.FIGURES,
            # Its recurrent network is SGD itself: the weights keep moving, there is no fixed
            # point to reach, and its rows say "not checked" rather than "did not converge".
            forward_converges=False,
        ),
        TaskSpec(
            deq.TASK,
            deq.build,
            "deep-equilibrium MNIST classifier z = tanh(W z + U x + b), ||W||_2 = rho, trained "
            "with Adam; exact implicit gradient by blockwise dense solves",
            defaults=dataclasses.asdict(deq.Settings()),
            dtype=torch.float32,
            train=deq.train,
            check=deq.check,
        ),
    ]
