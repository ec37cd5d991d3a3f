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


def random_slots(
    rng: np.random.Generator, num_ranks: int, slots_per_rank: int, num_experts: int
) -> np.ndarray:
    """``[P] int64``: a random layer's slots, every expert on one slot and the ``P - E``
    redundant slots on as many other experts (``E >= P / 2``), no rank holding one twice."""
    counts = np.ones(num_experts, dtype=np.int64)
    counts[rng.choice(num_experts, num_ranks * slots_per_rank - num_experts, replace=False)] += 1
    return random_row(rng, counts, num_ranks).astype(np.int64)


def slots_and_episodes(
    rng: np.random.Generator, num_ranks: int, slots_per_rank: int, num_experts: int, episodes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A layer for the re-plan tests: its slots in force (``[P] int64``, random, an expert on
    one or two slots) and ``episodes`` rows of load ``[K, E]``, a heavy-tailed base times
    log-normal noise, in whole counts."""
    prev = random_slots(rng, num_ranks, slots_per_rank, num_experts)
    base = rng.pareto(1.0, num_experts) * 100 + 1
    return prev, np.floor(base * rng.lognormal(0.0, 0.5, (episodes, num_experts)))
