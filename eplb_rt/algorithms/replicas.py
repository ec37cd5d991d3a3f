# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""Numba kernels that choose replica counts: min-max allotment and a neighbour search.

Arrays as in :mod:`eplb_rt.algorithms.packing`.
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.local_search import swap_search
from eplb_rt.algorithms.metrics import row_par, row_rank_loads
from eplb_rt.algorithms.packing import lpt_place, score_place, stable_order

LPT = 0
"""Construction of :func:`construct`: LPT packing, then pairwise swaps (equilibrium)."""
SCORE = 1
"""Construction of :func:`construct`: FlashLB's mean + z * std device score (flashlb)."""
PAIR_WIDTH = 3
"""Recipients and donors of :func:`count_search`'s two-replica moves: the first three of each,
whatever its width. A pair is for two large replicas forced onto one rank, and those are the
replicas of the experts of most load per replica; the pairs grow with the fourth power of the
width (441 constructions at six against 36), and wider pairs changed no decision of the
runtime's, only its time (BENCHMARKS §3, "Sixty-second session")."""


@kernel(inline=True)
def _per_replica(load, counts, e, max_replicas):
    """Expert ``e``'s load per replica, or -inf once it is at ``max_replicas`` (it takes no
    more)."""
    return load[e] / counts[e] if counts[e] < max_replicas else -np.inf


@kernel
def allot_replicas(load, num_slots, max_replicas):
    """Min-max replica allotment of one layer: one replica each, then every redundant one to
    the expert with the highest load per replica (lowest id on ties) below ``max_replicas``.
    ``load [E]``; needs ``E <= num_slots <= E * max_replicas``. Returns ``counts [E] int64``
    summing to ``num_slots``. (DeepSeek's EPLB rule: ``deepseek`` and ``swift`` keep it.)
    """
    return _allot(load, num_slots, max_replicas, 0)


@kernel
def allot_packable(load, num_slots, max_replicas, num_ranks):
    """:func:`allot_replicas`, but a redundant replica that would put more than ``num_ranks``
    replicas above half the mean rank load, or leave two experts' largest replicas above the
    mean rank load together, goes to the expert with the least load per replica instead, where
    that lowers the packing's lower bound (two of the ``num_ranks + 1`` largest replicas share
    a rank, two experts' replicas): with a few experts carrying the load, they
    get a replica a rank, and the surplus slots hold experts with little or none. Min-max gave
    them all to the hot experts (two hot experts of 78 / 22 % on 64 x 5 ranks and slots: 66
    replicas, PAR 1.8).
    A candidate next to min-max's, not a rule for every load: where two replicas a rank are
    the norm (256 x 2), min-max's counts pack better."""
    return _allot(load, num_slots, max_replicas, num_ranks)


@kernel(inline=True)
def _allot(load, num_slots, max_replicas, num_ranks):
    """:func:`allot_replicas` (``num_ranks`` 0) or :func:`allot_packable`."""
    E = load.shape[0]
    counts = np.ones(E, dtype=np.int64)
    # Each expert's load per replica, -inf at the cap: a redundant replica changes one of them,
    # so it costs one division, not one per expert.
    per = np.empty(E)
    for e in range(E):
        per[e] = _per_replica(load, counts, e, max_replicas)
    half = 0.5 * load.sum() / max(num_ranks, 1)
    big = 0  # replicas above half the mean rank load
    if num_ranks:
        for e in range(E):
            if load[e] > half:
                big += 1
    for _ in range(num_slots - E):
        best = -1
        best_value = -1.0
        second = 0.0  # the largest load per replica of an expert other than best
        least = -1
        for e in range(E):
            if per[e] > best_value:
                second = max(second, best_value)
                best_value = per[e]
                best = e
            elif per[e] > second:
                second = per[e]
            if num_ranks and per[e] > -np.inf and (least < 0 or per[e] < per[least]):
                least = e
        if best < 0:
            break
        if num_ranks:
            rise = _rise(load, counts, best, half)
            # Two replicas above the mean rank load together may have to share a rank even
            # where none is above half of it: best's own two halves cannot (three equal hot
            # experts on three ranks and one spare slot: its halves pair with the others).
            after = load[best] / (counts[best] + 1)
            pairs = second + max(after, second) > 2.0 * half
            if (big + rise > num_ranks or pairs) and least != best:
                with_best = _packing_bound(load, counts, best, num_ranks, 2.0 * half)
                if _packing_bound(load, counts, least, num_ranks, 2.0 * half) < with_best:
                    best = least
                    rise = _rise(load, counts, best, half)
            big += rise
        counts[best] += 1
        per[best] = _per_replica(load, counts, best, max_replicas)
    return counts


@kernel(inline=True)
def _rise(load, counts, e, half):
    """How many more replicas of load above ``half`` there are once expert ``e`` takes one
    more: its ``counts[e]`` replicas become ``counts[e] + 1`` smaller ones."""
    now = load[e] / counts[e]
    after = load[e] / (counts[e] + 1)
    return (counts[e] + 1 if after > half else 0) - (counts[e] if now > half else 0)


@kernel
def _packing_bound(load, counts, extra, num_ranks, mean):
    """A lower bound on the peak rank load of any packing of ``load [E]`` on ``counts`` replicas
    with one more for expert ``extra``: the mean rank load ``mean``, the largest replica, and
    the least two of the ``num_ranks + 1`` largest replicas that may share a rank (two of them
    do, and no expert is twice on a rank: two experts' replicas)."""
    E = load.shape[0]
    per = np.empty(E)
    for e in range(E):
        per[e] = load[e] / (counts[e] + (e == extra))
    order = np.argsort(-per)
    seen = 0
    pair = 0.0
    for j in range(E):
        i = order[j]
        seen += counts[i] + (i == extra)
        if seen > num_ranks:
            # Expert ``i`` holds the (num_ranks + 1)-th largest replica: the least of the set,
            # and the least of another expert's is the expert's before it.
            other = per[order[j - 1]] if j > 0 else per[i]
            pair = per[i] + other
            break
    return max(mean, per[order[0]], pair)


@kernel
def construct(mode, W, mu, cov, z, counts, num_ranks, max_swaps, enough):
    """Slots for fixed ``counts``: ``mode`` :data:`LPT` packs by LPT on ``mu [E]`` then swaps
    on the episodes ``W [K, E]`` (until their mean PAR is at most ``enough``; 0: to the end);
    :data:`SCORE` places by FlashLB's score (``cov [E, E]``, ``z``). Returns ``row [P] int64``."""
    if mode == LPT:
        row = lpt_place(mu, counts, num_ranks)
        swap_search(row, W, counts, num_ranks, max_swaps, 1e-3, 0.0, enough)
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


@kernel
def _value(row, W, num_ranks):
    """(mean PAR over episodes, sum of squared rank loads): candidates compare in this order."""
    loads = row_rank_loads(row, W, num_ranks)
    return row_par(row, W, num_ranks), np.sum(loads * loads)


@kernel
def _feasible(trial, num_ranks):
    """Whether replica counts ``trial [E]`` (a neighbour of the counts searched) are 1 to
    ``num_ranks`` each. (An expert without load may take one: the donor's replica is parked
    there, where a few experts carry the load and a spare slot packs better than one more
    replica of theirs.)"""
    for e in range(trial.shape[0]):
        if trial[e] < 1 or trial[e] > num_ranks:
            return False
    return True


@kernel
def _with_park(order, gain_key, width):
    """The recipients of a round: the first ``width`` experts of ``order`` (by ``gain_key``),
    then the last one that may take a replica (the least load per replica), where it is not
    among them: a replica parked there splits next to nothing, and frees its donor's rank where
    a hot expert's replicas cannot share one (four equal hot experts on two ranks)."""
    n = min(width, order.shape[0])
    for k in range(order.shape[0] - 1, n - 1, -1):
        if gain_key[order[k]] < np.inf:
            out = np.empty(n + 1, dtype=np.int64)
            out[:n] = order[:n]
            out[n] = order[k]
            return out
    return order[:n]


@kernel
def count_search(
    mode, row, W, mu, cov, z, counts, num_ranks, rounds, width, max_swaps, enough, min_gain,
    swap_enough,
):  # fmt: skip
    """Neighbour search over replica counts from ``(row, counts)``: move one or two replicas from
    donor experts (of the ``width`` whose per-replica load rises least) to recipients (of the
    ``width`` with the largest per-replica load), re-:func:`construct` each neighbour, keep the
    best if it improves the mean PAR over ``W``'s episodes. A round tries the single moves; where
    none improves, those to the expert of least load per replica (:func:`_with_park`); then the
    two-replica moves between the first :data:`PAIR_WIDTH` recipients and donors: those matter
    when too many large replicas force two onto one rank. Stops
    early once the PAR is at most ``enough``, or after a round that gained less than
    ``min_gain``. Each neighbour's swaps stop at ``swap_enough`` (:func:`construct`'s
    ``enough``). ``counts`` is updated in place; returns the best ``row``.
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
        recipients = _with_park(stable_order(gain_key), gain_key, width)
        donors = stable_order(loss_key)[:width]
        best_row = row
        best_val = val
        best_sq = sq
        best_trial = counts.copy()
        improved = False
        top = min(width, E)  # the recipients by load; then the park, where there is one
        m = donors.shape[0]
        # Single moves to the top recipients; where none improves, to the park; then pairs.
        for phase in range(3):
            if phase and improved:
                break
            pairs = phase == 2
            lo, hi = (top, recipients.shape[0]) if phase == 1 else (0, top)
            give = m
            if pairs:
                hi, give = min(top, PAIR_WIDTH), min(m, PAIR_WIDTH)
            for i1 in range(lo, hi):
                # A single move has i2 = j2 = -1; a pair takes i2 >= i1 and j2 >= j1.
                for i2 in range(i1 if pairs else -1, hi if pairs else 0):
                    for j1 in range(give):
                        for j2 in range(j1 if pairs else -1, give if pairs else 0):
                            trial[:] = counts
                            trial[recipients[i1]] += 1
                            trial[donors[j1]] -= 1
                            if pairs:
                                trial[recipients[i2]] += 1
                                trial[donors[j2]] -= 1
                            if not _feasible(trial, D):
                                continue
                            r = construct(mode, W, mu, cov, z, trial, D, max_swaps, swap_enough)
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
        gain = val - best_val
        counts[:] = best_trial
        row = best_row
        val = best_val
        sq = best_sq
        if gain < min_gain:
            break
    return row
