# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""Numba kernels that choose replica counts: min-max allotment and a neighbour search.

Arrays as in :mod:`eplb_rt.algorithms.packing`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from eplb_rt.algorithms.local_search import swap_search
from eplb_rt.algorithms.metrics import row_par, row_rank_loads
from eplb_rt.algorithms.packing import lpt_place, score_place, stable_order

LPT = 0
"""Construction of :func:`construct`: LPT packing, then pairwise swaps (equilibrium)."""
SCORE = 1
"""Construction of :func:`construct`: FlashLB's mean + z * std device score (flashlb)."""


@njit(cache=True, nogil=True)
def allot_more(load, counts, experts, extra, max_replicas):
    """Give ``extra`` replicas to ``experts``, each to the one with the highest load per replica
    (lowest id on ties) below ``max_replicas`` (min-max allotment). ``counts [E]`` is updated in
    place; returns the replicas that found no expert (all at the cap)."""
    for _ in range(extra):
        best = -1
        best_value = -1.0
        for e in experts:
            if counts[e] < max_replicas and load[e] / counts[e] > best_value:
                best_value = load[e] / counts[e]
                best = e
        if best < 0:
            return extra
        counts[best] += 1
        extra -= 1
    return 0


@njit(cache=True, nogil=True)
def allot_replicas(load, num_slots, max_replicas):
    """Min-max replica allotment of one layer: one replica each, then every redundant one to
    the expert with the highest load per replica. ``load [E]``; needs
    ``E <= num_slots <= E * max_replicas``. Returns ``counts [E] int64`` summing to ``num_slots``.
    """
    E = load.shape[0]
    counts = np.ones(E, dtype=np.int64)
    allot_more(load, counts, np.arange(E), num_slots - E, max_replicas)
    return counts


@njit(cache=True, nogil=True)
def construct(mode, W, mu, cov, z, counts, num_ranks, max_swaps):
    """Slots for fixed ``counts``: ``mode`` :data:`LPT` packs by LPT on ``mu [E]`` then swaps
    on the episodes ``W [K, E]``; :data:`SCORE` places by FlashLB's score (``cov [E, E]``,
    ``z``). Returns ``row [P] int64``."""
    if mode == LPT:
        row = lpt_place(mu, counts, num_ranks)
        swap_search(row, W, counts, num_ranks, max_swaps, 1e-3, 0.0)
        return row
    E = mu.shape[0]
    row = np.full(counts.sum(), -1, dtype=np.int64)
    score_place(
        np.arange(E),
        counts,
        mu,
        cov,
        z,
        np.zeros(num_ranks),
        np.zeros(num_ranks),
        row,
        np.zeros(num_ranks, dtype=np.int64),
        np.zeros((num_ranks, E), dtype=np.bool_),
    )
    return row


@njit(cache=True, nogil=True)
def _value(row, W, num_ranks):
    """(mean PAR over episodes, sum of squared rank loads): candidates compare in this order."""
    loads = row_rank_loads(row, W, num_ranks)
    return row_par(row, W, num_ranks), np.sum(loads * loads)


@njit(cache=True, nogil=True)
def count_search(mode, row, W, mu, cov, z, counts, num_ranks, rounds, width, max_swaps, enough):
    """Neighbour search over replica counts from ``(row, counts)``: move one or two replicas from
    donor experts (of the ``width`` whose per-replica load rises least) to recipients (of the
    ``width`` with the largest per-replica load), re-:func:`construct` each neighbour, keep the
    best if it improves the mean PAR over ``W``'s episodes. Two-replica moves matter when too
    many large replicas force two onto one rank: no single move helps then. Stops early once the
    PAR is at most ``enough``. ``counts`` is updated in place; returns the best ``row``.
    """
    E = mu.shape[0]
    D = num_ranks
    val, sq = _value(row, W, D)
    trial = counts.copy()
    gain_key = np.empty(E)
    loss_key = np.empty(E)
    for _ in range(rounds):
        if val <= enough:
            break
        for e in range(E):
            gain_key[e] = -mu[e] / counts[e] if counts[e] < D else np.inf
            loss_key[e] = mu[e] / (counts[e] - 1) if counts[e] > 1 else np.inf
        recipients = stable_order(gain_key)[:width]
        donors = stable_order(loss_key)[:width]
        best_row = row
        best_val = val
        best_sq = sq
        best_trial = counts.copy()
        improved = False
        n = recipients.shape[0]
        for i1 in range(n):
            for i2 in range(-1, n):
                for j1 in range(n):
                    for j2 in range(-1, n):
                        if (i2 < 0) != (j2 < 0) or (i2 >= 0 and (i2 < i1 or j2 < j1)):
                            continue
                        trial[:] = counts
                        trial[recipients[i1]] += 1
                        trial[donors[j1]] -= 1
                        if i2 >= 0:
                            trial[recipients[i2]] += 1
                            trial[donors[j2]] -= 1
                        ok = True
                        for e in range(E):
                            # A replica for an expert without load never helps.
                            if (
                                trial[e] < 1
                                or trial[e] > D
                                or (trial[e] > counts[e] and mu[e] == 0)
                            ):
                                ok = False
                        if not ok:
                            continue
                        r = construct(mode, W, mu, cov, z, trial, D, max_swaps)
                        v, s = _value(r, W, D)
                        tol = 1e-12 * (1.0 + best_val)
                        if v < best_val - tol or (
                            v <= best_val + tol and s < best_sq * (1 - 1e-12)
                        ):
                            best_row = r
                            best_val = v
                            best_sq = s
                            best_trial[:] = trial
                            improved = True
        if not improved:
            break
        counts[:] = best_trial
        row = best_row
        val = best_val
        sq = best_sq
    return row
