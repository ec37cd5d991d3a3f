"""Small synthetic workloads for the tests that replay distinct ones in turn."""

from __future__ import annotations

import numpy as np


def task_aggregates(num_tasks: int, seed: int) -> list[np.ndarray]:
    """``num_tasks`` aggregates ``[2, 12] float64`` (layers x experts) of one model: the same
    popular experts in every task (a Pareto skew), each task's own on top (a log-normal factor
    per expert), in counts whose imbalance outweighs a move at the default prices."""
    rng = np.random.default_rng(seed)
    base = rng.pareto(1.2, size=(2, 12)) * 1e7 + 1e5
    return [base * rng.lognormal(0, 0.5, base.shape) for _ in range(num_tasks)]
