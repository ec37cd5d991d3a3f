# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""Numba local search on one layer's slots: pairwise swaps, and moves that pay for themselves.

Arrays as in :mod:`eplb_rt.algorithms.packing`; ``W [K, E] float64`` holds ``K`` episodes of
expert load (``K = 1`` for one aggregate load).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from eplb_rt.algorithms.packing import counts_from_row, holds_from_row, stable_order


@njit(cache=True, nogil=True)
def _swap(row, holds, p, q):
    """Exchange the experts of slots ``p`` and ``q`` (on different ranks), ``holds`` kept."""
    S = row.shape[0] // holds.shape[0]
    x, y = row[p], row[q]
    row[p], row[q] = y, x
    holds[p // S, x] = holds[q // S, y] = False
    holds[p // S, y] = holds[q // S, x] = True


@njit(cache=True, nogil=True)
def _top2(loads, k, skip):
    """Episode ``k`` of ``loads [D, K]`` over the ranks but ``skip``: the largest load's rank and
    value, and the second largest value (-inf where there is none)."""
    i1, v1, v2 = -1, -np.inf, -np.inf
    for r in range(loads.shape[0]):
        v = loads[r, k]
        if r != skip and v > v1:
            i1, v1, v2 = r, v, v1
        elif r != skip and v > v2:
            v2 = v
    return i1, v1, v2


@njit(cache=True, nogil=True)
def _pair_episodes(loads, a, b, rest1, idx1, rest2, scale, order, la, lb, top, tail):
    """Episodes of the pair of ranks ``(a, b)`` in the order :func:`swap_search` scores a swap in.

    First come those where ``a`` or ``b`` is above every other rank, the only ones where a swap
    can lower the peak; returns how many. ``order [K]`` gets the episodes, ``la``, ``lb``, ``top``
    the pair's loads and the other ranks' peak in that order (``rest1``, ``idx1``, ``rest2``: as
    in :func:`swap_search`), ``tail [K + 1]``: the most that episodes ``j..K-1`` can add to a
    swap's gain (the peak term is at most 0 there, the tie term at most
    ``scale * (la - lb)^2 / 4``)."""
    K = order.shape[0]
    n = 0
    for k in range(K):
        rest = rest1[k] if idx1[k] != b else rest2[k]
        if max(loads[a, k], loads[b, k]) > rest:
            order[n] = k
            n += 1
    m = n
    for k in range(K):
        rest = rest1[k] if idx1[k] != b else rest2[k]
        if max(loads[a, k], loads[b, k]) <= rest:
            order[m] = k
            m += 1
    tail[K] = 0.0
    for j in range(K - 1, -1, -1):
        k = order[j]
        la[j] = loads[a, k]
        lb[j] = loads[b, k]
        top[j] = rest1[k] if idx1[k] != b else rest2[k]
        tail[j] = tail[j + 1] + 0.25 * scale * (la[j] - lb[j]) * (la[j] - lb[j])
    return n


@njit(cache=True, nogil=True)
def swap_search(row, W, counts, num_ranks, max_rounds, tie_weight, min_gain):
    """Swap replicas between a bottleneck rank and any other rank, best swap first (in place).

    Objective: the sum over episodes of the peak rank load, plus ``tie_weight * D`` times the sum
    of squared rank loads (a potential, so swaps never cycle, and lowering one of several equal
    peaks counts). Each round takes the best swap of the first episode-peak rank (largest lead
    first) that has one gaining more than ``min_gain``; at most ``max_rounds``. A rank that had
    none is passed over until a swap changes it, and retried before the search stops, so the
    search still ends where no peak rank has a gaining swap. Returns swaps.
    """
    K, E = W.shape
    D = num_ranks
    S = row.shape[0] // D
    per = np.empty((E, K))
    for e in range(E):
        for k in range(K):
            per[e, k] = W[k, e] / counts[e]
    loads = np.zeros((D, K))  # episode-minor: the innermost loops run over episodes
    for p in range(row.shape[0]):
        for k in range(K):
            loads[p // S, k] += per[row[p], k]
    holds = holds_from_row(row, D, E)
    scale = 2.0 * tie_weight * D
    floor = max(min_gain, 1e-12)
    lead = np.empty(D)
    is_peak = np.empty(D, dtype=np.bool_)
    tried = np.empty(D, dtype=np.bool_)
    stuck = np.zeros(D, dtype=np.bool_)  # no swap found for the rank, and it has not changed
    rest1 = np.empty(K)  # per episode: max load over ranks other than a ...
    idx1 = np.empty(K, dtype=np.int64)
    rest2 = np.empty(K)  # ... and other than a and idx1
    upper = np.empty(D)
    order = np.empty(K, dtype=np.int64)  # a pair's episodes: those it can gain on first
    ea = np.empty(K)  # rank a's, rank b's loads and the peak of the other ranks, in that order
    eb = np.empty(K)
    top = np.empty(K)
    tail = np.empty(K + 1)  # bound on what the episodes from j on can add
    swaps = 0
    while swaps < max_rounds:
        lead[:] = 0.0
        is_peak[:] = False
        tried[:] = False
        for k in range(K):
            m, first, second = _top2(loads, k, -1)
            is_peak[m] = True
            lead[m] += first - second
        best_p = -1
        best_q = -1
        while best_p < 0:
            a = -1
            skipped = False
            for r in range(D):
                if is_peak[r] and not tried[r] and stuck[r]:
                    skipped = True
                elif is_peak[r] and not tried[r] and (a < 0 or lead[r] > lead[a]):
                    a = r
            if a < 0 and skipped:
                stuck[:] = False
                continue
            if a < 0:
                break
            tried[a] = True
            stuck[a] = True
            for k in range(K):
                idx1[k], rest1[k], rest2[k] = _top2(loads, k, a)
            # A swap's gain with rank b is at most this: the pair's new max is at least the mean
            # of the two loads, and d * (la - lb - d) <= (la - lb)^2 / 4. Ranks whose bound
            # cannot beat the best swap so far are skipped without looking at their slots.
            for b in range(D):
                bound = 0.0
                for k in range(K):
                    la = loads[a, k]
                    lb = loads[b, k]
                    rest = rest1[k] if idx1[k] != b else rest2[k]
                    bound += max(la, lb, rest) - max(0.5 * (la + lb), rest)
                    bound += 0.25 * scale * (la - lb) * (la - lb)
                upper[b] = bound
            best_gain = floor
            # Most promising ranks first: once a rank's bound is beaten, so are the rest's.
            for b in stable_order(-upper):
                if b == a:
                    continue
                if upper[b] <= best_gain:
                    break
                n_pos = _pair_episodes(
                    loads, a, b, rest1, idx1, rest2, scale, order, ea, eb, top, tail
                )
                # A swap is scored where it can gain first; past those episodes every term is
                # at most its tie part, so most swaps are refuted after an episode or two.
                for sa in range(S):
                    x = row[a * S + sa]
                    if holds[b, x]:
                        continue
                    for sb in range(S):
                        y = row[b * S + sb]
                        if holds[a, y]:
                            continue
                        gain = 0.0
                        for j in range(n_pos):
                            k = order[j]
                            d = per[x, k] - per[y, k]
                            gain += max(ea[j], eb[j], top[j]) - max(ea[j] - d, eb[j] + d, top[j])
                            gain += scale * d * (ea[j] - eb[j] - d)
                        if gain + tail[n_pos] <= best_gain:
                            continue
                        for j in range(n_pos, K):
                            k = order[j]
                            d = per[x, k] - per[y, k]
                            gain += top[j] - max(ea[j] - d, eb[j] + d, top[j])
                            gain += scale * d * (ea[j] - eb[j] - d)
                            if gain + tail[j + 1] <= best_gain:
                                break
                        if gain > best_gain:
                            best_gain = gain
                            best_p = a * S + sa
                            best_q = b * S + sb
        if best_p < 0:
            break
        for k in range(K):
            d = per[row[best_p], k] - per[row[best_q], k]
            loads[best_p // S, k] -= d
            loads[best_q // S, k] += d
        _swap(row, holds, best_p, best_q)
        stuck[best_p // S] = stuck[best_q // S] = False
        swaps += 1
    return swaps


_FAR = 600.0
"""A rank this many temperatures above the peak makes any move a loss (and exp would overflow)."""


@njit(cache=True, nogil=True)
def _soft_peak(loads, tau):
    """``tau * log(sum(exp(loads / tau)))``: a smooth maximum that credits lowering any of
    several tied peaks (computed around the true maximum, so it never overflows)."""
    m = loads.max()
    acc = 0.0
    for r in range(loads.shape[0]):
        acc += np.exp((loads[r] - m) / tau)
    return m + tau * np.log(acc)


@njit(cache=True, nogil=True)
def _rewrite(out, loads, holds, w, counts, b, x, y):
    """``out [D]``: rank ``loads`` once rank ``b``'s slot of expert ``x`` holds ``y`` (the other
    replicas of ``x`` grow, those of ``y`` shrink)."""
    dx = w[x] / (counts[x] - 1) - w[x] / counts[x]
    dy = w[y] / (counts[y] + 1) - w[y] / counts[y]
    for r in range(loads.shape[0]):
        out[r] = loads[r] + (dx if holds[r, x] else 0.0) + (dy if holds[r, y] else 0.0)
    out[b] += w[y] / (counts[y] + 1) - w[x] / (counts[x] - 1)


@njit(cache=True, nogil=True)
def _moved(expert, before):
    """1 if a slot that held ``before`` holding ``expert`` counts as moved, else 0."""
    return 1 if expert != before else 0


@njit(cache=True, nogil=True)
def greedy_moves(prev_row, w, num_ranks, budget, move_cost, tau_min, tau_share):
    """Improve ``prev_row`` move by move, best marginal gain per moved slot first.

    A move rewrites one slot to another expert or swaps two slots between ranks; it costs the
    slots it newly moves away from ``prev_row`` (0 to 2: a slot already moved changes again for
    free, one put back refunds its slot). Each step takes the move of the peak rank with the
    largest drop of the smooth peak (:func:`_soft_peak`) per slot it costs (half a slot when it
    costs none, so a free move of equal drop comes first), within ``budget`` slots, until the
    best drop per slot is below a quarter of ``move_cost`` (PAR): at the budget the walk goes on
    with free moves, re-using slots it moved early for what later moves showed they are best
    for. It returns the walk's prefix with the least ``PAR + move_cost * moved slots`` (a dip
    before a large gain is walked through). ``w [E]``: the load the moves are judged on.

    The smooth peak's temperature is ``max(tau_min, tau_share * (peak - mean))``: far from
    balance, lowering the group of ranks near the peak is progress even where the single
    largest stays (a step the exact maximum would not see, so the walk would spend slots on the
    peak alone); near balance it is the peak itself. Returns ``(row [P] int64, moved slots)``.
    """
    E = w.shape[0]
    D = num_ranks
    P = prev_row.shape[0]
    S = P // D
    total = w.sum()
    row = prev_row.copy()
    if total <= 0.0 or budget <= 0:
        return row, 0
    mean = total / D
    counts = counts_from_row(row, E)
    holds = holds_from_row(row, D, E)
    loads = np.zeros(D)
    for p in range(P):
        loads[p // S] += w[row[p]] / counts[row[p]]
    best_row = row.copy()
    best_cost = loads.max() / mean
    best_moves = 0
    moves = 0
    trial = np.empty(D)
    # Every step lowers the smooth peak; the cap only bounds rounding loops.
    for _ in range(8 * P):
        a = 0
        for r in range(1, D):
            if loads[r] > loads[a]:
                a = r
        tau = max(tau_min, tau_share * (loads[a] - mean))
        # The smooth peak is tau * log(Z) above the peak; a move changes the terms of its ranks
        # only, so a candidate costs the ranks it touches, not all D.
        ex = np.exp((loads - loads[a]) / tau)
        Z = ex.sum()
        base = loads[a] + tau * np.log(Z)
        best_gain = 0.0
        best_p = -1
        best_q = -1
        best_y = -1
        # Swaps: a replica x of the peak rank a for a lighter replica y of rank b.
        for sa in range(S):
            p = a * S + sa
            x = row[p]
            for q in range(P):
                b = q // S
                y = row[q]
                d = w[x] / counts[x] - w[y] / counts[y]
                if b == a or d <= 0.0 or holds[b, x] or holds[a, y]:
                    continue
                # Slots newly moved (a slot already moved costs nothing to change again).
                extra = _moved(y, prev_row[p]) + _moved(x, prev_row[q])
                extra -= _moved(x, prev_row[p]) + _moved(y, prev_row[q])
                if moves + extra > budget:
                    continue
                if loads[b] + d - loads[a] > _FAR * tau:
                    continue
                z = max(Z - ex[a] - ex[b], 0.0) + np.exp(-d / tau)
                z += np.exp((loads[b] + d - loads[a]) / tau)
                new = loads[a] + tau * np.log(max(z, 1e-300))
                if z < 1e-200:  # every term underflowed: score the move on all ranks
                    trial[:] = loads
                    trial[a] -= d
                    trial[b] += d
                    new = _soft_peak(trial, tau)
                gain = (base - new) / max(extra, 0.5)
                if gain > best_gain:
                    best_gain = gain
                    best_p = p
                    best_q = q
        # Rewrites: slot q (expert x, which keeps a replica elsewhere) takes expert y; either y
        # is on the peak rank (one more replica of y lightens it) or q is on the peak rank.
        for q in range(P):
            b = q // S
            x = row[q]
            if counts[x] < 2:
                continue
            for y in range(E):
                if y == x or holds[b, y] or counts[y] >= D or not (holds[a, y] or b == a):
                    continue
                extra = _moved(y, prev_row[q]) - _moved(x, prev_row[q])
                if moves + extra > budget:
                    continue
                _rewrite(trial, loads, holds, w, counts, b, x, y)
                z = Z
                for r in range(D):
                    if trial[r] != loads[r]:
                        z += np.exp(min(trial[r] - loads[a], _FAR * tau) / tau) - ex[r]
                new = loads[a] + tau * np.log(max(z, 1e-300))
                if z < 1e-200:  # every term underflowed: score the move on all ranks
                    new = _soft_peak(trial, tau)
                gain = (base - new) / max(extra, 0.5)
                if gain > best_gain:
                    best_gain = gain
                    best_p = -1
                    best_q = q
                    best_y = y
        if best_q < 0 or best_gain < 0.25 * move_cost * mean:
            break
        if best_p >= 0:
            d = w[row[best_p]] / counts[row[best_p]] - w[row[best_q]] / counts[row[best_q]]
            loads[a] -= d
            loads[best_q // S] += d
            _swap(row, holds, best_p, best_q)
        else:
            b = best_q // S
            x = row[best_q]
            y = best_y
            _rewrite(loads, loads.copy(), holds, w, counts, b, x, y)
            row[best_q] = y
            holds[b, x] = False
            holds[b, y] = True
            counts[x] -= 1
            counts[y] += 1
        # Slots that differ from the previous row (a later move may put one back).
        moves = 0
        for p in range(P):
            moves += row[p] != prev_row[p]
        cost = loads.max() / mean + move_cost * moves
        if cost < best_cost - 1e-12:
            best_cost = cost
            best_row[:] = row
            best_moves = moves
    return best_row, best_moves
