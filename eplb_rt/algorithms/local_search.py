# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""Numba local search on one layer's slots: pairwise swaps between ranks, on the episodes' peaks
(:func:`swap_search`) or on their variance (:func:`balance_swaps`). The moves that pay for
themselves from a placement in force are :mod:`eplb_rt.algorithms.move_walk`'s.

Arrays as in :mod:`eplb_rt.algorithms.packing`; ``W [K, E] float64`` holds ``K`` episodes of
expert load (``K = 1`` for one aggregate load).
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.packing import holds_from_row, stable_order
from eplb_rt.algorithms.sums import pairwise_sum


@kernel
def _swap(row, holds, p, q):
    """Exchange the experts of slots ``p`` and ``q`` (on different ranks), ``holds`` kept."""
    S = row.shape[0] // holds.shape[0]
    x, y = row[p], row[q]
    row[p], row[q] = y, x
    holds[p // S, x] = holds[q // S, y] = False
    holds[p // S, y] = holds[q // S, x] = True


@kernel
def _top3(loads, k, top_rank, top_load):
    """Episode ``k`` of ``loads [D, K]``: the three largest loads into ``top_load[k]`` and their
    ranks into ``top_rank[k]`` (the lower rank first on ties; -inf and -1 where ``D < 3``)."""
    i1 = i2 = i3 = -1
    v1 = v2 = v3 = -np.inf
    for r in range(loads.shape[0]):
        v = loads[r, k]
        if v > v1:
            i1, v1, i2, v2, i3, v3 = r, v, i1, v1, i2, v2
        elif v > v2:
            i2, v2, i3, v3 = r, v, i2, v2
        elif v > v3:
            i3, v3 = r, v
    top_rank[k, 0], top_rank[k, 1], top_rank[k, 2] = i1, i2, i3
    top_load[k, 0], top_load[k, 1], top_load[k, 2] = v1, v2, v3


@kernel
def _pair_episodes(loads, a, b, rest1, idx1, rest2, scale, order, top, tail):
    """Episodes of the pair of ranks ``(a, b)`` in the order :func:`swap_search` scores a swap in.

    First come those where ``a`` or ``b`` is above every other rank, the only ones where a swap
    can lower the peak; returns how many. Row ``b`` of ``order [D + 1, K]`` gets the episodes,
    of ``top [D + 1, K]`` the other ranks' peak in that order (``rest1``, ``idx1``, ``rest2``: as
    in :func:`swap_search`), of ``tail [D, K + 1]`` the most that episodes ``j..K-1`` can add to
    a swap's gain (the peak term is at most 0 there, the tie term at most
    ``scale * (la - lb)^2 / 4``)."""
    K = order.shape[1]
    n = 0
    for k in range(K):
        rest = rest1[k] if idx1[k] != b else rest2[k]
        if max(loads[a, k], loads[b, k]) > rest:
            order[b, n] = k
            n += 1
    m = n
    for k in range(K):
        rest = rest1[k] if idx1[k] != b else rest2[k]
        if max(loads[a, k], loads[b, k]) <= rest:
            order[b, m] = k
            m += 1
    tail[b, K] = 0.0
    for j in range(K - 1, -1, -1):
        k = order[b, j]
        top[b, j] = rest1[k] if idx1[k] != b else rest2[k]
        gap = loads[a, k] - loads[b, k]
        tail[b, j] = tail[b, j + 1] + 0.25 * scale * gap * gap
    return n


@kernel(inline=True)
def _add_episode(gain, ea, eb, top, d, scale):
    """``gain`` plus a swap's gain in one episode: load ``d`` moves from the rank at ``ea`` to
    the rank at ``eb``, ``top`` the other ranks' peak; the peak part, then the tie part.

    Every scoring path adds through here, so equal swaps get bit-equal gains (the swaps taken
    depend on them, ties included)."""
    gain += max(ea, eb, top) - max(ea - d, eb + d, top)
    return gain + scale * d * (ea - eb - d)


@kernel(inline=True)
def _first_gain(pairs, x, y, a, b, n, r):
    """The gain of swapping expert ``x`` (rank ``a``) for ``y`` (rank ``b``) on the pair's first
    ``n`` episodes, those where it can lower the peak.

    ``pairs``: what :func:`swap_search` scores with, ``(per [E, K], loads [D, K], order, top,
    tail, scale)``: a replica's and a rank's load per episode, the pairs' episodes as
    :func:`_pair_episodes` fills them (row ``r`` of ``order`` and ``top`` is this pair's) and
    the tie weight. Inlined, like :func:`_rest_gain` and :func:`_add_episode`: numba does not
    inline plain calls, and a call per candidate swap made the search 1.23x slower."""
    per, loads, order, top, _, scale = pairs
    gain = 0.0
    for j in range(n):
        k = order[r, j]
        gain = _add_episode(gain, loads[a, k], loads[b, k], top[r, j], per[x, k] - per[y, k], scale)
    return gain


@kernel(inline=True)
def _rest_gain(pairs, x, y, a, b, gain, n, r, start, best):
    """``gain`` (:func:`_first_gain`, same ``pairs``) completed on the pair's other episodes, or
    -inf as soon as it cannot reach ``best`` (it may equal it: of equal gains the search takes
    the one a scan of every pair would meet first).

    What episodes ``j..K-1`` may still add: where ``start < 0``, row ``b`` of ``tail [D, K + 1]``
    (:func:`_pair_episodes`); else ``start`` (the pair's tie bound on them, with a margin for
    rounding) less the bound of each episode scored, which the caller need not prepare per pair
    (a tail per pair costs more than its few swaps save).
    """
    per, loads, order, top, tail, scale = pairs
    left = start
    for j in range(n, order.shape[1]):
        k = order[r, j]
        ea, eb = loads[a, k], loads[b, k]
        gain = _add_episode(gain, ea, eb, top[r, j], per[x, k] - per[y, k], scale)
        if start < 0.0:
            reach = gain + tail[b, j + 1]
        else:
            left -= 0.25 * scale * (ea - eb) * (ea - eb)
            reach = gain + left
        if reach < best:
            return -np.inf
    return gain


@kernel
def _first_at_least(sorted_load, k, value):
    """The first position in ``sorted_load[k]`` (ascending) whose value is at least ``value``."""
    lo, hi = 0, sorted_load.shape[1]
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_load[k, mid] >= value:
            hi = mid
        else:
            lo = mid + 1
    return lo


@kernel
def swap_search(row, W, counts, num_ranks, max_rounds, tie_weight, min_gain, enough):
    """Swap replicas between a bottleneck rank and any other rank, best swap first (in place).

    Objective: the sum over episodes of the peak rank load, plus ``tie_weight * D`` times the sum
    of squared rank loads (a potential, so swaps never cycle, and lowering one of several equal
    peaks counts). Each round takes the best swap of the first episode-peak rank (largest lead
    first) that has one gaining more than ``min_gain``; at most ``max_rounds``, and none once the
    mean over the episodes of the peak rank load over the mean rank load is at most ``enough``
    (0: never; a search stopped so has made the first swaps of the one without the stop). A rank
    that had none is passed over until a swap changes it, and retried before the search stops,
    so the search still ends where no peak rank has a gaining swap. Returns swaps.

    Finding a rank's best swap: in the episode ``k0`` where rank ``a`` leads most (by 0 where
    it only ties another rank for the peak), a swap that moves load ``d`` off ``a`` gains at
    most ``min(d, la - lb - d, lead)``; every other episode adds at most its part of the pair
    bound. So for each replica of ``a`` only the experts whose load at ``k0`` lies in a window
    can win, found by binary search in the experts sorted by load there, and the window shrinks
    as the best gain grows. A swap in the window is scored episodes where the pair can gain
    first, so the gains and the swaps taken are those of scoring every pair, equal gains taken
    in the order of that scan (pairs by their bound, then the slots of ``a`` and of the other
    rank).
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
    # Per episode the three largest rank loads and their ranks, kept across swaps.
    top_rank = np.empty((K, 3), dtype=np.int64)
    top_load = np.empty((K, 3))
    for k in range(K):
        _top3(loads, k, top_rank, top_load)
    rest1 = np.empty(K)  # per episode: max load over ranks other than a ...
    idx1 = np.empty(K, dtype=np.int64)
    rest2 = np.empty(K)  # ... and other than a and idx1
    upper = np.empty(D)
    # Per episode the experts by their replica's load (and those loads), each expert's slots.
    by_load = np.empty((K, E), dtype=np.int64)
    sorted_load = np.empty((K, E))
    for k in range(K):
        by_load[k] = stable_order(per[:, k])
        for i in range(E):
            sorted_load[k, i] = per[by_load[k, i], k]
    replicas = np.empty((E, counts.max()), dtype=np.int64)
    filled = np.zeros(E, dtype=np.int64)
    for p in range(row.shape[0]):
        replicas[row[p], filled[row[p]]] = p
        filled[row[p]] += 1
    # Per rank b at a's episode k0: la - lb, a's lead over the others but a and b, and the bound
    # on what a swap gains elsewhere; made: the pair's episodes as _pair_episodes gives them
    # (rows b of n_b, o_b, top_b, tail_b), needed only where b is some episode's idx1 (the
    # others share row D of o_b and top_b).
    diff = np.empty(D)
    room = np.empty(D)
    other = np.empty(D)
    made = np.empty(D, dtype=np.bool_)
    tail_rest = np.empty(D)
    position = np.empty(D, dtype=np.int64)  # a rank's place in the scan of every pair
    ranked = False
    special = np.empty(D, dtype=np.bool_)  # the rank is some episode's idx1
    n_b = np.empty(D, dtype=np.int64)
    o_b = np.empty((D + 1, K), dtype=np.int64)
    top_b = np.empty((D + 1, K))
    tail_b = np.empty((D, K + 1))
    pairs = (per, loads, o_b, top_b, tail_b, scale)  # what a candidate swap is scored with
    lead0 = 0.0
    swaps = 0
    totals = np.zeros(K)  # each episode's load (swaps keep it)
    for k in range(K):
        for r in range(D):
            totals[k] += loads[r, k]
    while swaps < max_rounds:
        if enough > 0.0:
            par = 0.0
            for k in range(K):
                par += top_load[k, 0] * D / max(totals[k], 1e-300)
            if par <= enough * K:
                break
        lead[:] = 0.0
        is_peak[:] = False
        tried[:] = False
        for k in range(K):
            is_peak[top_rank[k, 0]] = True
            lead[top_rank[k, 0]] += top_load[k, 0] - top_load[k, 1]
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
                # The largest load without rank a, its rank, and the next.
                i = 1 if top_rank[k, 0] == a else 0
                j = 1 if top_rank[k, i + 1] == a else 0
                idx1[k] = top_rank[k, i]
                rest1[k] = top_load[k, i]
                rest2[k] = top_load[k, i + j + 1]
            # A swap's gain with rank b is at most this: the pair's new max is at least the mean
            # of the two loads, and d * (la - lb - d) <= (la - lb)^2 / 4. Ranks whose bound
            # cannot beat the best swap so far are skipped without looking at their slots.
            for b in range(D):
                bound = 0.0
                rest_tie = 0.0
                for k in range(K):
                    la = loads[a, k]
                    lb = loads[b, k]
                    rest = rest1[k] if idx1[k] != b else rest2[k]
                    bound += max(la, lb, rest) - max(0.5 * (la + lb), rest)
                    tie = 0.25 * scale * (la - lb) * (la - lb)
                    bound += tie
                    if max(la, lb) <= rest:
                        rest_tie += tie
                upper[b] = bound
                # What the episodes where the pair cannot gain may add (a margin for rounding).
                tail_rest[b] = rest_tie * (1.0 + 1e-12)
            best_gain = floor
            # The episode where a leads most (see the docstring; a is some episode's peak).
            k0 = -1
            for k in range(K):
                if loads[a, k] >= rest1[k] and (k0 < 0 or loads[a, k] - rest1[k] > lead0):
                    k0 = k
                    lead0 = loads[a, k] - rest1[k]
            # Where b is no episode's idx1 the pair can gain only where a is above every
            # other rank: those episodes first, then the others, with the others' peak, are
            # the same for every such b (row D).
            n_a = 0
            for k in range(K):
                if loads[a, k] > rest1[k]:
                    o_b[D, n_a] = k
                    n_a += 1
            m = n_a
            for k in range(K):
                if loads[a, k] <= rest1[k]:
                    o_b[D, m] = k
                    m += 1
            for j in range(K):
                top_b[D, j] = rest1[o_b[D, j]]
            special[:] = False
            for k in range(K):
                special[idx1[k]] = True
            ranked = False
            most_other = -np.inf  # largest bound on the other terms, over the ranks b
            most_reach = -np.inf  # ... plus la - lb at k0
            la = loads[a, k0]
            for b in range(D):
                lb = loads[b, k0]
                rest = rest1[k0] if idx1[k0] != b else rest2[k0]
                diff[b] = la - lb
                room[b] = la - rest
                # Everything but the peak part at k0 (the rounding of the difference
                # covered by a margin, so the window never drops a swap that can win).
                other[b] = upper[b] - (la - max(0.5 * (la + lb), rest))
                other[b] += 1e-12 * (1.0 + abs(upper[b]))
                made[b] = False
                if b != a:
                    most_other = max(most_other, other[b])
                    most_reach = max(most_reach, other[b] + diff[b])
            for sa in range(S):
                x = row[a * S + sa]
                px = per[x, k0]
                # Experts whose load at k0 is in [px - most_reach + best, px - best +
                # most_other], lighter first; the upper end comes down as best_gain grows.
                # (A swap that can equal the best gain is scored too: of equal gains the
                # search takes the one a scan of every pair takes.)
                i = _first_at_least(sorted_load, k0, px - most_reach + best_gain)
                while i < E:
                    y = by_load[k0, i]
                    d0 = px - sorted_load[k0, i]
                    if d0 < best_gain - most_other:
                        break
                    i += 1
                    if holds[a, y]:
                        continue
                    for r in range(counts[y]):
                        q = replicas[y, r]
                        b = q // S
                        if holds[b, x]:
                            continue
                        # b's own window.
                        if min(d0, diff[b] - d0, room[b]) + other[b] < best_gain:
                            continue
                        # The pair's episodes as _pair_episodes orders them, so the
                        # sums are those of the scan of every pair.
                        if special[b]:
                            if not made[b]:
                                made[b] = True
                                n_b[b] = _pair_episodes(
                                    loads, a, b, rest1, idx1, rest2, scale, o_b, top_b, tail_b
                                )
                            row_b, n, start = b, n_b[b], -1.0
                        else:
                            # a's episodes; the bound on the others comes down as they are
                            # scored, from tail_rest, rather than a tail per pair.
                            row_b, n, start = D, n_a, tail_rest[b]
                        gain = _first_gain(pairs, x, y, a, b, n, row_b)
                        if gain + tail_rest[b] < best_gain:
                            continue
                        gain = _rest_gain(pairs, x, y, a, b, gain, n, row_b, start, best_gain)
                        if gain < best_gain or (gain == best_gain and best_p < 0):
                            continue
                        if gain == best_gain:
                            # Of equal gains the one scanning every pair meets first: pairs
                            # by their bound, then the slots of a and of b.
                            if not ranked:
                                ranked = True
                                scan = stable_order(-upper)
                                for i_b in range(D):
                                    position[scan[i_b]] = i_b
                            key = (position[b] * S + sa) * S + q - b * S
                            p_b = best_q // S
                            held = (position[p_b] * S + best_p - a * S) * S + best_q - p_b * S
                            if key >= held:
                                continue
                        best_gain = gain
                        best_p = a * S + sa
                        best_q = q
        if best_p < 0:
            break
        for k in range(K):
            d = per[row[best_p], k] - per[row[best_q], k]
            loads[best_p // S, k] -= d
            loads[best_q // S, k] += d
        x, y = row[best_p], row[best_q]
        for r in range(counts[x]):
            if replicas[x, r] == best_p:
                replicas[x, r] = best_q
        for r in range(counts[y]):
            if replicas[y, r] == best_q:
                replicas[y, r] = best_p
        _swap(row, holds, best_p, best_q)
        ra, rb = best_p // S, best_q // S
        stuck[ra] = stuck[rb] = False
        for k in range(K):
            # Rescan an episode only where one of the two ranks is or becomes one of the three.
            changed = max(loads[ra, k], loads[rb, k]) >= top_load[k, 2]
            for i in range(3):
                changed |= top_rank[k, i] == ra or top_rank[k, i] == rb
            if changed:
                _top3(loads, k, top_rank, top_load)
        swaps += 1
    return swaps


@kernel
def _rotated_replicas(row, W, counts):
    """Each slot's replica load over the rows, ``[P, K]``, in an orthonormal basis whose first
    axis is the direction of the rows' total load (so coordinate 0 is a replica's size)."""
    K = W.shape[0]
    u = np.zeros(K)
    for k in range(K):
        u[k] = pairwise_sum(W[k])
    norm = np.sqrt((u * u).sum())
    # Householder reflection I - 2 v v^T / |v|^2 with v = e0 - u / |u| maps u onto e0.
    v = -u / max(norm, 1e-300)
    v[0] += 1.0
    vv = (v * v).sum()
    X = np.empty((row.shape[0], K))
    for s in range(row.shape[0]):
        e = row[s]
        for k in range(K):
            X[s, k] = W[k, e] / counts[e]
        if vv > 1e-30:
            t = 0.0
            for k in range(K):
                t += v[k] * X[s, k]
            t *= 2.0 / vv
            for k in range(K):
                X[s, k] -= t * v[k]
    return X


_HEAD = 8
"""Coordinates of a distance :func:`balance_swaps` sums before it first tests the cut-off, and
between its later tests. A constant, so each block compiles to straight-line code (the
walked-from slot's head in registers): 8 % faster than a run-time count, and blocks after the
head 4 % faster than a test after every coordinate. Columns past the rows' count are zeros,
which add nothing."""


@kernel(inline=True)
def _place(heads, order, where, rank_at, s, z, S):
    """Give slot ``s`` the head ``z`` and move it to its place in the order by (first
    coordinate, slot); every other slot must be in that order.

    ``heads [P, _HEAD]``: the slots' first coordinates, in that order; ``order`` the slot at
    each position, ``where`` its inverse, ``rank_at`` the slot's rank at each position (``S``
    slots a rank). An insertion sort's step, for the few slots a swap changes. Inlined: a call
    takes a reference to each array."""
    P = heads.shape[0]
    j = where[s]
    v = z[0]
    while j > 0 and (heads[j - 1, 0] > v or (heads[j - 1, 0] == v and order[j - 1] > s)):
        for k in range(_HEAD):
            heads[j, k] = heads[j - 1, k]
        order[j], rank_at[j] = order[j - 1], rank_at[j - 1]
        where[order[j]] = j
        j -= 1
    while j < P - 1 and (heads[j + 1, 0] < v or (heads[j + 1, 0] == v and order[j + 1] < s)):
        for k in range(_HEAD):
            heads[j, k] = heads[j + 1, k]
        order[j], rank_at[j] = order[j + 1], rank_at[j + 1]
        where[order[j]] = j
        j += 1
    for k in range(_HEAD):
        heads[j, k] = z[k]
    order[j], rank_at[j] = s, s // S
    where[s] = j


@kernel
def balance_swaps(row, W, counts, num_ranks, max_swaps):
    """Swap replicas between ranks to lower the sum over the rows of ``W`` of the squared rank
    loads (in place); returns swaps.

    A rank's loads over the ``K`` rows form a vector ``l_r``; the objective is
    ``sum_r |l_r|^2``, which (the rows' totals being fixed) is the rows' variance of rank load:
    every rank is pulled to the mean in every row at once, not only the peak rank of each.
    Each round takes the best swap of the rank farthest from the mean (``|l_r - mean|``); a
    rank that has none is passed over until a swap changes it, and the search ends when every
    rank has been passed over (at most ``max_swaps``).

    With ``x_s`` the load of slot ``s``'s replica and ``z_s = 2 x_s - l_rank(s)``, swapping
    slot ``a`` of rank ``p`` with slot ``b`` of rank ``q`` lowers the objective by
    ``(|l_p - l_q|^2 - |z_a - z_b|^2) / 2``. So only slots whose ``z`` lies within
    ``|l_p - l_q|`` of ``z_a`` can gain; the search walks the slots sorted by the first
    coordinate of ``z`` in the basis of :func:`_rotated_replicas` (a replica's size, which
    spreads slots far apart) outwards from ``a``, each side until that coordinate alone rules
    out a gain larger than the best found. The swaps taken are those of scoring every pair
    (up to which of two equal gains comes first).
    """
    K, E = W.shape
    D = num_ranks
    P = row.shape[0]
    S = P // D
    X = _rotated_replicas(row, W, counts)
    loads = np.zeros((D, K))
    for s in range(P):
        for k in range(K):
            loads[s // S, k] += X[s, k]
    # [K, D], kept beside loads: the reach reads rows, a rank's updates read its loads (loads
    # kept [K, D] alone is 9 % slower).
    by_row = np.ascontiguousarray(loads.T)
    mean = np.zeros(K)
    for r in range(D):
        for k in range(K):
            mean[k] += loads[r, k] / D
    far = np.zeros(D)  # |l_r - mean|^2
    for r in range(D):
        for k in range(K):
            far[r] += (loads[r, k] - mean[k]) ** 2
    # z in whole blocks of _HEAD columns, zeros past K: a distance sums a block at a time.
    width = -(-K // _HEAD) * _HEAD
    Z = np.zeros((P, width))
    for s in range(P):
        for k in range(K):
            Z[s, k] = 2.0 * X[s, k] - loads[s // S, k]
    # The walk's order: the slots by the first coordinate of z, each slot's head (its first
    # block) kept in that order (the walk reads memory in sequence) with its rank.
    order = np.argsort(Z[:, 0], kind="mergesort")  # ties by slot, as _place keeps them
    heads = np.empty((P, _HEAD))
    rank_at = np.empty(P, dtype=np.int64)
    where = np.empty(P, dtype=np.int64)
    for i in range(P):
        where[order[i]] = i
        rank_at[i] = order[i] // S
        for k in range(_HEAD):
            heads[i, k] = Z[order[i], k]
    holds = holds_from_row(row, D, E)
    # Swaps made when a rank last changed, and when it was last searched in vain: a rank is
    # passed over while searched >= changed, and a pair of ranks need not be searched again
    # while neither changed since one had no gaining swap.
    changed = np.zeros(D, dtype=np.int64)
    searched = np.full(D, -1, dtype=np.int64)
    reach = np.empty(D)  # |l_p - l_q|^2: twice the most a swap of p with q can gain
    # Gains below this are rounding: the loads' own rounding is relative to the mean rank's.
    floor = 2e-12 * max(far.max() + (mean * mean).sum(), 1e-300)
    swaps = 0
    while swaps < max_swaps:
        p = -1
        for r in range(D):
            if searched[r] < changed[r] and (p < 0 or far[r] > far[p]):
                p = r
        if p < 0:
            break
        # Row by row over all ranks at once (``by_row``: the loads transposed): each rank's
        # sum runs in the same order as its own loop would, and the ranks vectorise.
        reach[:] = 0.0
        for k in range(K):
            lp = loads[p, k]
            for q in range(D):
                reach[q] += (lp - by_row[k, q]) ** 2
        widest = 0.0
        for q in range(D):
            if q == p or searched[q] >= max(changed[q], changed[p]):
                reach[q] = -np.inf  # no gaining swap with p
                continue
            widest = max(widest, reach[q])
        best = floor  # twice the gain: reach[q] - |z_a - z_b|^2
        best_a = best_b = -1
        for i in range(S):
            a = p * S + i
            at = where[a]
            za = heads[at, 0]
            for step in (-1, 1):  # below a, then above it
                j = at + step
                while 0 <= j < P:
                    d0 = heads[j, 0] - za
                    if d0 * d0 >= widest - best:
                        break
                    q = rank_at[j]
                    cut = reach[q] - best
                    # The head in one go, the rest until the cut: a test after every
                    # coordinate (or after the first) costs more in mispredicted branches than
                    # it saves (1.6x). Partial sums of squares only grow, so the same swaps pass.
                    dist = d0 * d0
                    for k in range(1, _HEAD):
                        dist += (heads[at, k] - heads[j, k]) ** 2
                    if dist < cut:
                        b = order[j]
                        for k in range(_HEAD, width, _HEAD):  # the next blocks until the cut
                            for c in range(k, k + _HEAD):
                                dist += (Z[a, c] - Z[b, c]) ** 2
                            if dist >= cut:
                                break
                        if dist < cut and not (holds[q, row[a]] or holds[p, row[b]]):
                            best = reach[q] - dist
                            best_a, best_b = a, b
                    j += step
        if best_a < 0:
            searched[p] = swaps
            continue
        q = best_b // S
        for k in range(K):
            t = X[best_a, k] - X[best_b, k]
            loads[p, k] -= t
            loads[q, k] += t
            by_row[k, p], by_row[k, q] = loads[p, k], loads[q, k]
            X[best_a, k], X[best_b, k] = X[best_b, k], X[best_a, k]
        _swap(row, holds, best_a, best_b)
        for r in (p, q):
            t = 0.0
            for k in range(K):
                t += (loads[r, k] - mean[k]) ** 2
            far[r] = t
            for s in range(r * S, (r + 1) * S):
                for k in range(K):
                    Z[s, k] = 2.0 * X[s, k] - loads[r, k]
                _place(heads, order, where, rank_at, s, Z[s], S)
        swaps += 1
        changed[p] = changed[q] = swaps
    return swaps
