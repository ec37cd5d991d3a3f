"""``random``: a seeded random placement, the floor every policy must beat.

Replica counts are drawn proportionally to load (each expert keeps one replica; the redundant
slots go to experts with probability proportional to their load, never beyond ``D`` replicas),
then replicas are dealt to ranks in a random order with the no-duplicate rule. Deterministic for
a given ``seed``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eplb_rt.algorithms.packing import place_replica
from eplb_rt.algorithms.registry import Layer, Options, option, register
from eplb_rt.placement import Topology


@dataclasses.dataclass(frozen=True)
class RandomOptions(Options):
    """Options of the ``random`` policy.

    Attributes:
        seed: seed of the generator; the same seed and load give the same placement.
    """

    seed: int = option(0, low=0)


@register("random", RandomOptions, "random replica counts and ranks (seeded baseline)")
def random_policy(layer: Layer, topo: Topology, opts: RandomOptions) -> np.ndarray:
    """One layer; returns a random valid ``row [P] int64``."""
    w, D = layer.load, topo.num_ranks
    E = w.shape[0]
    rng = np.random.default_rng([opts.seed, layer.index])
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
        # place_replica takes the least-loaded rank that can hold e: random "loads" make that a
        # random admissible rank (and it repairs the rare dead end where none is left).
        place_replica(e, np.zeros(E), rng.random(D), fill, holds, row)
    return row
