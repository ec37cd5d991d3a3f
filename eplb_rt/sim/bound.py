"""A lower bound on the PAR any placement can reach on a load, for "gap to bound" in reports.

The bound holds for every placement on the topology, uniform or weighted replica shares alike:

* the largest rank load ``M`` is at least the mean rank load ``total / D``;
* no replica carries more than its rank, so an expert of load ``l`` needs at least
  ``ceil(l / M)`` replicas, on distinct ranks (at most ``D``), and at least one;
* all replicas fit in the ``P`` slots: ``sum_e max(1, ceil(l_e / M)) <= P``.

The smallest ``M`` meeting all three is found exactly: the replica count only changes where
``M = l_e / k``, so the answer is the mean or one of those points, and a binary search over them
finds it. It ignores how slots group into ranks (``S`` per rank), so real placements can stay
above it; an exact solver would close that gap.
"""

from __future__ import annotations

import numpy as np

from eplb_rt.placement import Topology

_ROUNDING = 1e-9
"""Slack on ``l / M`` before rounding up, so ``M = l / k`` counts ``k`` replicas, not ``k + 1``
(a looser count only lowers the bound, so it stays valid)."""


def max_rank_load_bound(load: np.ndarray, topology: Topology) -> np.ndarray:
    """``[L] float64`` lower bound on the largest rank load per layer. ``load``: ``[L, E]``."""
    load = np.asarray(load, dtype=np.float64)
    D, P = topology.num_ranks, topology.num_slots
    out = np.zeros(load.shape[0])
    splits = np.arange(1, D + 1, dtype=np.float64)
    for layer, row in enumerate(load):
        total = row.sum()
        if total <= 0:
            continue
        floor = max(total / D, row.max() / min(D, P - row.size + 1))
        points = np.unique((row[:, None] / splits[None, :]).ravel())
        candidates = np.concatenate([[floor], points[points > floor]])
        lo, hi = 0, len(candidates) - 1  # the last candidate (the hottest expert whole) fits
        while lo < hi:
            mid = (lo + hi) // 2
            if _replicas_needed(row, candidates[mid]) <= P:
                hi = mid
            else:
                lo = mid + 1
        out[layer] = candidates[lo]
    return out


def par_lower_bound(load: np.ndarray, topology: Topology) -> np.ndarray:
    """``[L]`` lower bound on PAR per layer (bound / mean rank load), NaN where unloaded."""
    load = np.asarray(load, dtype=np.float64)
    mean = load.sum(axis=-1) / topology.num_ranks
    bound = max_rank_load_bound(load, topology)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean > 0, bound / np.where(mean > 0, mean, 1.0), np.nan)


def _replicas_needed(row: np.ndarray, max_load: float) -> int:
    return int(np.maximum(1.0, np.ceil(row / max_load - _ROUNDING)).sum())
