"""Numba building blocks of replica allotment and packing, shared by the policies.

All kernels are ``@njit(cache=True, nogil=True)`` so a balancer thread runs them without the
GIL. They work on one layer at a time, use ``int64`` indices and break ties deterministically
(lowest expert id, lowest rank id), so equal inputs give equal placements on every rank.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def allot_replicas(load: np.ndarray, num_slots: int, max_replicas: int) -> np.ndarray:
    """Min-max replica allotment of one layer.

    Every expert starts with one replica; each of the ``num_slots - E`` redundant replicas goes
    to the expert with the highest load per replica (lowest id on ties) that has fewer than
    ``max_replicas``. Needs ``E <= num_slots <= E * max_replicas``.

    Args:
        load: ``[E] float64`` load of each expert.
        num_slots: replicas in all, ``P``.
        max_replicas: cap on an expert's replicas (the number of ranks it may spread over).

    Returns:
        ``[E] int64`` replicas per expert, summing to ``num_slots``.
    """
    num_experts = load.shape[0]
    counts = np.ones(num_experts, dtype=np.int64)
    for _ in range(num_slots - num_experts):
        best = -1
        best_value = -1.0
        for e in range(num_experts):
            if counts[e] < max_replicas:
                value = load[e] / counts[e]
                if value > best_value:
                    best_value = value
                    best = e
        counts[best] += 1
    return counts


@njit(cache=True, nogil=True)
def expand_replicas(load: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The replicas of an allotment, hottest first.

    Args:
        load: ``[E] float64`` expert loads.
        counts: ``[E] int64`` replicas per expert (each >= 1).

    Returns:
        ``(experts [P] int64, weights [P] float64)``: each replica's expert and load
        (``load / count``), sorted by descending weight; ties keep ascending expert id, so the
        replicas of one expert are adjacent.
    """
    num_experts = load.shape[0]
    per_replica = load / counts
    # A stable sort of -weight keeps equal weights in ascending expert id.
    order = np.argsort(-per_replica, kind="mergesort")
    total = 0
    for e in range(num_experts):
        total += counts[e]
    experts = np.empty(total, dtype=np.int64)
    weights = np.empty(total, dtype=np.float64)
    k = 0
    for i in range(num_experts):
        e = order[i]
        for _ in range(counts[e]):
            experts[k] = e
            weights[k] = per_replica[e]
            k += 1
    return experts, weights


@njit(cache=True, nogil=True)
def pack_distinct(
    experts: np.ndarray,
    weights: np.ndarray,
    num_experts: int,
    num_ranks: int,
    slots_per_rank: int,
) -> np.ndarray:
    """Longest-processing-time packing with a cardinality limit and no duplicate on a rank.

    Items are taken in the given order (callers sort them hottest first); each goes to the
    least-loaded rank (lowest id on ties) that has a free slot and does not hold the item's
    expert yet. When every rank with a free slot already holds the expert (possible near the
    end), one item of a full rank that lacks the expert is moved to a free slot, which always
    exists when no expert has more replicas than ranks and ranks hold distinct experts.

    Args:
        experts: ``[P] int64`` expert of each item, ``P = num_ranks * slots_per_rank``.
        weights: ``[P] float64`` load of each item.
        num_experts: ``E``, experts ids are in ``[0, E)``.
        num_ranks: ``D``.
        slots_per_rank: ``S``.

    Returns:
        ``[D, S] int64``: expert held by each slot of each rank, in order of assignment.
    """
    num_items = experts.shape[0]
    grid = np.full((num_ranks, slots_per_rank), -1, dtype=np.int64)
    grid_weight = np.zeros((num_ranks, slots_per_rank), dtype=np.float64)
    filled = np.zeros(num_ranks, dtype=np.int64)
    rank_load = np.zeros(num_ranks, dtype=np.float64)
    holds = np.zeros((num_ranks, num_experts), dtype=np.bool_)
    for i in range(num_items):
        e = experts[i]
        w = weights[i]
        best = -1
        for r in range(num_ranks):
            if filled[r] < slots_per_rank and not holds[r, e]:
                if best < 0 or rank_load[r] < rank_load[best]:
                    best = r
        if best < 0:
            best = _make_room(e, grid, grid_weight, filled, rank_load, holds)
        grid[best, filled[best]] = e
        grid_weight[best, filled[best]] = w
        filled[best] += 1
        rank_load[best] += w
        holds[best, e] = True
    return grid


@njit(cache=True, nogil=True)
def _make_room(e, grid, grid_weight, filled, rank_load, holds) -> int:  # noqa: PLR0917
    """Free a slot for expert ``e`` on a full rank that lacks it; return that rank.

    Moves one item from a full rank ``q`` (without ``e``) to a rank ``r`` with a free slot
    (which holds ``e``), choosing the pair and item that keep ``max(load r, load q)`` lowest.
    """
    num_ranks, slots_per_rank = grid.shape
    best_q = -1
    best_slot = -1
    best_r = -1
    best_cost = np.inf
    for r in range(num_ranks):
        if filled[r] == slots_per_rank:
            continue
        for q in range(num_ranks):
            if filled[q] < slots_per_rank or holds[q, e]:
                continue
            for s in range(slots_per_rank):
                x = grid[q, s]
                if holds[r, x]:
                    continue
                w = grid_weight[q, s]
                cost = max(rank_load[r] + w, rank_load[q] - w)
                if cost < best_cost:
                    best_cost = cost
                    best_q = q
                    best_slot = s
                    best_r = r
    x = grid[best_q, best_slot]
    w = grid_weight[best_q, best_slot]
    # Move x from q to r; q's slot is freed by moving its last item into the hole.
    grid[best_r, filled[best_r]] = x
    grid_weight[best_r, filled[best_r]] = w
    filled[best_r] += 1
    rank_load[best_r] += w
    holds[best_r, x] = True
    last = filled[best_q] - 1
    grid[best_q, best_slot] = grid[best_q, last]
    grid_weight[best_q, best_slot] = grid_weight[best_q, last]
    grid[best_q, last] = -1
    grid_weight[best_q, last] = 0.0
    filled[best_q] = last
    rank_load[best_q] -= w
    holds[best_q, x] = False
    return best_q


@njit(cache=True, nogil=True)
def pack_equal_groups(weights: np.ndarray, num_packs: int) -> np.ndarray:
    """Longest-processing-time packing of ``n`` items into packs of exactly ``n / num_packs``.

    Args:
        weights: ``[n] float64``; ``n`` must be a multiple of ``num_packs``.
        num_packs: packs to fill.

    Returns:
        ``[n] int64`` pack of each item. Ties: heavier first, then lower item id; lowest pack id.
    """
    n = weights.shape[0]
    capacity = n // num_packs
    order = np.argsort(-weights, kind="mergesort")
    pack_of = np.empty(n, dtype=np.int64)
    filled = np.zeros(num_packs, dtype=np.int64)
    pack_load = np.zeros(num_packs, dtype=np.float64)
    for i in range(n):
        item = order[i]
        best = -1
        for p in range(num_packs):
            if filled[p] < capacity and (best < 0 or pack_load[p] < pack_load[best]):
                best = p
        pack_of[item] = best
        filled[best] += 1
        pack_load[best] += weights[item]
    return pack_of
