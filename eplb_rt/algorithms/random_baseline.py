"""``random``: a seeded random placement, the floor every policy must beat.

Replica counts are drawn proportionally to load (each expert keeps one replica; the redundant
slots go to experts with probability proportional to their load, never beyond ``D`` replicas),
then replicas are dealt to ranks in a random order with the no-duplicate rule. Deterministic for
a given ``seed``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eplb_rt.algorithms import _kernels as K
from eplb_rt.algorithms.registry import register
from eplb_rt.placement import Placement, Topology


@dataclasses.dataclass(frozen=True)
class RandomOptions:
    """Options of the ``random`` policy.

    Attributes:
        seed: seed of the generator; the same seed and load give the same placement.
    """

    seed: int = 0


def _random_row(w: np.ndarray, topo: Topology, rng: np.random.Generator) -> np.ndarray:
    E, D, S = w.shape[0], topo.num_ranks, topo.num_slots_per_rank
    counts = np.ones(E, dtype=np.int64)
    weights = w + 1e-12 if w.sum() > 0 else np.ones(E)
    for _ in range(topo.num_slots - E):
        p = np.where(counts < D, weights, 0.0)
        counts[rng.choice(E, p=p / p.sum())] += 1
    replicas = np.repeat(np.arange(E), counts)
    rng.shuffle(replicas)
    row = np.full(topo.num_slots, -1, dtype=np.int64)
    fill = np.zeros(D, dtype=np.int64)
    holds = np.zeros((D, E), dtype=np.bool_)
    for e in replicas:
        # _place_one takes the least-loaded rank that can hold e; random "loads" make that a
        # random admissible rank (and it repairs the rare dead end where none is left).
        K._place_one(e, 0.0, rng.random(D), fill, holds, row, S)
    return row


@register("random", RandomOptions, "random replica counts and ranks (seeded baseline)")
def random_policy(
    load: np.ndarray, previous: Placement | None, topo: Topology, opts: RandomOptions
) -> Placement:
    """load: ``[T, L, E]`` float64. Returns a random valid placement of all ``L`` layers."""
    agg = load.sum(axis=0)
    rng = np.random.default_rng(opts.seed)
    rows = np.stack([_random_row(w, topo, rng) for w in agg])
    return Placement(rows, agg.shape[1], topo.num_ranks)
