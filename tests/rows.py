"""Slot rows for the search tests: random valid starts and each row's load per rank."""

from __future__ import annotations

import numpy as np


def random_row(rng: np.random.Generator, counts: np.ndarray, num_ranks: int) -> np.ndarray:
    """``[P] int64``: the replicas of ``counts [E]`` on random slots, no rank holding an expert
    twice (a random draw may: drawn again until it does not)."""
    row = rng.permutation(np.repeat(np.arange(counts.size), counts))
    while any(len(set(r)) < r.size for r in row.reshape(num_ranks, -1)):
        row = rng.permutation(row)
    return row


def rank_loads(row: np.ndarray, W: np.ndarray, counts: np.ndarray, num_ranks: int) -> np.ndarray:
    """``[K, D]``: each row of ``W [K, E]``'s load per rank, a replica carrying ``1 / counts``
    of its expert's."""
    return (W[:, row] / counts[row]).reshape(W.shape[0], num_ranks, -1).sum(axis=2)
