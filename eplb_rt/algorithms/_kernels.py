# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""Numba kernels shared by the policies: replica allotment, constructive placement, local search.

Everything here works on ONE layer and plain arrays:

* ``w [E] float64`` or ``W [K, E] float64``: expert load (``K`` episodes);
* ``counts [E] int64``: replicas per expert, ``1 <= counts[e] <= D``, summing to ``P = D * S``;
* ``row [P] int64``: expert held by each slot, slot ``p`` on rank ``p // S``;
* ``holds [D, E] bool``: whether a rank holds an expert (kept in sync with ``row``).

All kernels are ``@njit(cache=True, nogil=True)`` so a balancer thread runs them without the GIL,
and deterministic (ties break towards the lower index).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_EPS = 1e-12


@njit(cache=True, nogil=True)
def stable_order(values):
    """Indices sorting ``values`` ascending; ties keep index order (bottom-up merge sort).

    The same order as ``np.argsort(values, kind="stable")``, written out because numba's argsort
    adds over a second of compile time to every kernel that uses it.
    """
    n = values.shape[0]
    idx = np.arange(n)
    tmp = np.empty(n, dtype=np.int64)
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i = lo
            j = mid
            k = lo
            while i < mid and j < hi:
                if values[idx[j]] < values[idx[i]]:
                    tmp[k] = idx[j]
                    j += 1
                else:
                    tmp[k] = idx[i]
                    i += 1
                k += 1
            while i < mid:
                tmp[k] = idx[i]
                i += 1
                k += 1
            while j < hi:
                tmp[k] = idx[j]
                j += 1
                k += 1
        idx, tmp = tmp, idx
        width *= 2
    return idx


@njit(cache=True, nogil=True)
def holds_from_row(row, num_ranks, num_slots_per_rank, num_experts):
    """``[D, E] bool``: rank r holds expert e somewhere in ``row``."""
    holds = np.zeros((num_ranks, num_experts), dtype=np.bool_)
    for p in range(row.shape[0]):
        holds[p // num_slots_per_rank, row[p]] = True
    return holds


@njit(cache=True, nogil=True)
def counts_from_row(row, num_experts):
    counts = np.zeros(num_experts, dtype=np.int64)
    for p in range(row.shape[0]):
        counts[row[p]] += 1
    return counts


@njit(cache=True, nogil=True)
def rank_loads(row, W, counts, num_ranks, num_slots_per_rank):
    """``[K, D]``: per-episode rank loads with uniform shares."""
    K = W.shape[0]
    out = np.zeros((K, num_ranks))
    for p in range(row.shape[0]):
        e = row[p]
        r = p // num_slots_per_rank
        for k in range(K):
            out[k, r] += W[k, e] / counts[e]
    return out


@njit(cache=True, nogil=True)
def _place_one(e, value, loads, fill, holds, row, num_slots_per_rank):
    """Put one replica of ``e`` (load ``value``) on the least-loaded rank with a free slot that does
    not hold ``e``. When every rank with a free slot already holds ``e``, make room: move some
    expert ``f`` from a rank ``q`` without ``e`` to the free slot, and put ``e`` where ``f`` was."""
    D = loads.shape[0]
    S = num_slots_per_rank
    best = -1
    for r in range(D):
        if fill[r] < S and not holds[r, e] and (best < 0 or loads[r] < loads[best] - _EPS):
            best = r
    if best >= 0:
        row[best * S + fill[best]] = e
        fill[best] += 1
        holds[best, e] = True
        loads[best] += value
        return
    free = -1
    for r in range(D):
        if fill[r] < S and (free < 0 or loads[r] < loads[free]):
            free = r
    for q in range(D):
        if holds[q, e] or fill[q] == 0:
            continue
        for s in range(fill[q]):
            f = row[q * S + s]
            if not holds[free, f]:
                # f moves q -> free; e takes f's old slot on q. Loads: f's replica value moves.
                row[free * S + fill[free]] = f
                fill[free] += 1
                holds[free, f] = True
                holds[q, f] = False
                row[q * S + s] = e
                holds[q, e] = True
                loads[q] += value
                return
    # Unreachable when counts[e] <= D and the slot totals agree (see lpt_place).


@njit(cache=True, nogil=True)
def lpt_place(w, counts, num_ranks, num_slots_per_rank):
    """Longest-processing-time placement of the replicas given by ``counts`` (uniform shares).

    Replicas in decreasing load per replica each go to the least-loaded rank with a free slot that
    does not hold their expert. Returns ``row [P] int64``.
    """
    E = w.shape[0]
    S = num_slots_per_rank
    D = num_ranks
    per = np.empty(E)
    for e in range(E):
        per[e] = w[e] / counts[e]
    # Experts by decreasing per-replica load; stable so equal loads keep expert order.
    order = stable_order(-per)
    row = np.full(D * S, -1, dtype=np.int64)
    fill = np.zeros(D, dtype=np.int64)
    holds = np.zeros((D, E), dtype=np.bool_)
    loads = np.zeros(D)
    for i in range(E):
        e = order[i]
        for _ in range(counts[e]):
            _place_one(e, per[e], loads, fill, holds, row, S)
    # _place_one may have moved experts between ranks; recompute loads is the caller's business.
    return row


@njit(cache=True, nogil=True)
def _top3(values):
    """Indices of the three largest entries of a 1-d array (-1 where fewer exist)."""
    a = -1
    b = -1
    c = -1
    for i in range(values.shape[0]):
        v = values[i]
        if a < 0 or v > values[a]:
            c = b
            b = a
            a = i
        elif b < 0 or v > values[b]:
            c = b
            b = i
        elif c < 0 or v > values[c]:
            c = i
    return a, b, c


@njit(cache=True, nogil=True)
def _swap_search_single(
    row, w, counts, num_ranks, num_slots_per_rank, max_rounds, tie_weight, min_gain
):
    """:func:`swap_search` for one episode (``w [E]``), with the rank loop pruned: a swap can only
    help when the other rank is lighter than the bottleneck by more than the load it receives."""
    D = num_ranks
    S = num_slots_per_rank
    E = w.shape[0]
    loads = np.zeros(D)
    per = np.empty(E)
    for e in range(E):
        per[e] = w[e] / counts[e]
    for p in range(row.shape[0]):
        loads[p // S] += per[row[p]]
    holds = holds_from_row(row, D, S, E)
    floor = min_gain if min_gain > 1e-12 else 1e-12
    swaps = 0
    while swaps < max_rounds:
        a, b2, c3 = _top3(loads)
        la = loads[a]
        best_gain = floor
        best_p = -1
        best_q = -1
        for sa in range(S):
            p = a * S + sa
            x = row[p]
            px = per[x]
            for b in range(D):
                lb = loads[b]
                gap = la - lb
                if b == a or gap <= floor or holds[b, x]:
                    continue
                rest = loads[b2] if b2 != b else (loads[c3] if c3 >= 0 else -np.inf)
                for sb in range(S):
                    q = b * S + sb
                    y = row[q]
                    d = px - per[y]
                    if d <= 0.0 or d >= gap or holds[a, y]:
                        continue
                    na = la - d
                    nb = lb + d
                    new = na if na > nb else nb
                    new_peak = new if new > rest else rest
                    gain = la - new_peak + tie_weight * (la - new)
                    if gain > best_gain:
                        best_gain = gain
                        best_p = p
                        best_q = q
        if best_p < 0:
            break
        b = best_q // S
        x = row[best_p]
        y = row[best_q]
        row[best_p] = y
        row[best_q] = x
        holds[a, x] = False
        holds[a, y] = True
        holds[b, y] = False
        holds[b, x] = True
        d = per[x] - per[y]
        loads[a] -= d
        loads[b] += d
        swaps += 1
    return swaps


@njit(cache=True, nogil=True)
def swap_search(row, W, counts, num_ranks, num_slots_per_rank, max_rounds, tie_weight, min_gain):
    """Pairwise swaps of replicas between a bottleneck rank and any other rank (in place).

    Objective: sum over episodes of the max rank load (``W`` rows are episodes, each normalised),
    plus ``tie_weight * D`` times the sum of squared rank loads, so that swaps that only lower
    one of several equal peaks still count as progress. Best improving swap per bottleneck
    rank; stops when no swap gains more than ``min_gain`` (objective units) or after
    ``max_rounds`` accepted swaps.
    Returns the number of swaps made.
    """
    K = W.shape[0]
    if K == 1:
        return _swap_search_single(
            row, W[0], counts, num_ranks, num_slots_per_rank, max_rounds, tie_weight, min_gain
        )
    D = num_ranks
    S = num_slots_per_rank
    E = W.shape[1]
    # Episode-minor layouts keep the innermost loop (over episodes) contiguous.
    loads0 = rank_loads(row, W, counts, D, S)
    loads = np.ascontiguousarray(loads0.T)  # [D, K]
    holds = holds_from_row(row, D, S, E)
    per = np.empty((E, K))
    for k in range(K):
        for e in range(E):
            per[e, k] = W[k, e] / counts[e]
    bottlenecks = np.empty(K, dtype=np.int64)
    rest1 = np.empty(K)  # per episode: max load over ranks other than a
    idx1 = np.empty(K, dtype=np.int64)
    rest2 = np.empty(K)  # ... other than a and idx1
    col = np.empty(D)
    upper = np.empty(D)
    scale = tie_weight * D * 2.0
    swaps = 0
    while swaps < max_rounds:
        for k in range(K):
            m = 0
            for r in range(1, D):
                if loads[r, k] > loads[m, k]:
                    m = r
            bottlenecks[k] = m
        best_gain = min_gain if min_gain > 1e-12 else 1e-12
        best_p = -1
        best_q = -1
        for ki in range(K):
            a = bottlenecks[ki]
            seen = False
            for kj in range(ki):
                if bottlenecks[kj] == a:
                    seen = True
            if seen:
                continue
            for k in range(K):
                for r in range(D):
                    col[r] = loads[r, k]
                t1, t2, t3 = _top3(col)
                if t1 == a:
                    t1, t2 = t2, t3
                elif t2 == a:
                    t2 = t3
                idx1[k] = t1
                rest1[k] = col[t1] if t1 >= 0 else -np.inf
                rest2[k] = col[t2] if t2 >= 0 else -np.inf
            # Upper bound of any swap's gain with rank b: a pair's new max is at least the mean
            # of the two loads, and d * (la - lb - d) <= (la - lb)^2 / 4. Ranks whose bound
            # cannot beat the best swap so far are skipped without looking at their slots.
            for b in range(D):
                bound = 0.0
                for k in range(K):
                    la = loads[a, k]
                    lb = loads[b, k]
                    rest = rest1[k] if idx1[k] != b else rest2[k]
                    old = la if la > lb else lb
                    old_peak = old if old > rest else rest
                    floor = 0.5 * (la + lb)
                    bound += old_peak - (floor if floor > rest else rest)
                    bound += 0.25 * scale * (la - lb) * (la - lb)
                upper[b] = bound
            for sa in range(S):
                p = a * S + sa
                x = row[p]
                for b in range(D):
                    if b == a or holds[b, x] or upper[b] <= best_gain:
                        continue
                    for sb in range(S):
                        q = b * S + sb
                        y = row[q]
                        if holds[a, y]:
                            continue
                        gain = 0.0
                        for k in range(K):
                            d = per[x, k] - per[y, k]
                            la = loads[a, k]
                            lb = loads[b, k]
                            old = la if la > lb else lb
                            na = la - d
                            nb = lb + d
                            new = na if na > nb else nb
                            rest = rest1[k] if idx1[k] != b else rest2[k]
                            old_peak = old if old > rest else rest
                            new_peak = new if new > rest else rest
                            # Secondary term: the drop of the sum of squared loads (a global
                            # potential, so accepted swaps can never cycle), scaled to peaks.
                            gain += old_peak - new_peak + scale * d * (la - lb - d)
                        if gain > best_gain:
                            best_gain = gain
                            best_p = p
                            best_q = q
        if best_p < 0:
            break
        a = best_p // S
        b = best_q // S
        x = row[best_p]
        y = row[best_q]
        row[best_p] = y
        row[best_q] = x
        holds[a, x] = False
        holds[a, y] = True
        holds[b, y] = False
        holds[b, x] = True
        for k in range(K):
            d = per[x, k] - per[y, k]
            loads[a, k] -= d
            loads[b, k] += d
        swaps += 1
    return swaps


@njit(cache=True, nogil=True)
def peak_sum(loads):
    """Sum over episodes of the max rank load, ``loads [K, D]``."""
    total = 0.0
    for k in range(loads.shape[0]):
        m = loads[k, 0]
        for r in range(1, loads.shape[1]):
            m = max(m, loads[k, r])
        total += m
    return total


@njit(cache=True, nogil=True)
def reallot_step(row, W, counts, num_ranks, num_slots_per_rank, min_gain):
    """One re-allotment move (in place): give a replica to an expert on a bottleneck rank, taken
    from an expert with spare replicas, by rewriting one slot. Best move by the episode
    objective; returns True when a move improved it by more than ``min_gain``."""
    K = W.shape[0]
    E = W.shape[1]
    D = num_ranks
    S = num_slots_per_rank
    loads = rank_loads(row, W, counts, D, S)
    holds = holds_from_row(row, D, S, E)
    base = peak_sum(loads)
    trial = np.empty_like(loads)
    best_val = base - max(min_gain, 1e-12 * (1.0 + base))
    best_slot = -1
    best_y = -1
    for k0 in range(K):
        a = 0
        for r in range(1, D):
            if loads[k0, r] > loads[k0, a]:
                a = r
        for sa in range(S):
            y = row[a * S + sa]
            if counts[y] >= D:
                continue
            for q in range(D * S):
                x = row[q]
                b = q // S
                if x == y or counts[x] < 2 or holds[b, y]:
                    continue
                # Apply: slot q switches x -> y.
                for k in range(K):
                    for r in range(D):
                        trial[k, r] = loads[k, r]
                for p in range(D * S):
                    e = row[p]
                    r = p // S
                    if e == y:
                        for k in range(K):
                            trial[k, r] += W[k, y] / (counts[y] + 1) - W[k, y] / counts[y]
                    elif e == x and p != q:
                        for k in range(K):
                            trial[k, r] += W[k, x] / (counts[x] - 1) - W[k, x] / counts[x]
                for k in range(K):
                    trial[k, b] += W[k, y] / (counts[y] + 1) - W[k, x] / counts[x]
                val = peak_sum(trial)
                if val < best_val:
                    best_val = val
                    best_slot = q
                    best_y = y
    if best_slot < 0:
        return False
    counts[row[best_slot]] -= 1
    counts[best_y] += 1
    row[best_slot] = best_y
    return True


@njit(cache=True, nogil=True)
def episode_mean(W):
    """``[E]``: mean over the episode rows of ``W [K, E]``."""
    K = W.shape[0]
    E = W.shape[1]
    out = np.zeros(E)
    for k in range(K):
        for e in range(E):
            out[e] += W[k, e] / K
    return out


@njit(cache=True, nogil=True)
def construct(W, counts, num_ranks, num_slots_per_rank, max_swaps):
    """LPT placement of ``counts`` on the episode mean, then :func:`swap_search` on all episodes.

    Returns ``(row [P] int64, peak_sum, sum of squared rank loads)``; the last two rank candidates
    lexicographically (the second breaks ties between equal peaks).
    """
    row = lpt_place(episode_mean(W), counts, num_ranks, num_slots_per_rank)
    swap_search(row, W, counts, num_ranks, num_slots_per_rank, max_swaps, 1e-3, 0.0)
    loads = rank_loads(row, W, counts, num_ranks, num_slots_per_rank)
    return row, peak_sum(loads), np.sum(loads * loads)


@njit(cache=True, nogil=True)
def _better(val, sq, best_val, best_sq):
    tol = 1e-12 * (1.0 + abs(best_val))
    if val < best_val - tol:
        return True
    return val <= best_val + tol and sq < best_sq * (1.0 - 1e-12)


@njit(cache=True, nogil=True)
def search_counts(
    W, counts, num_ranks, num_slots_per_rank, rounds, width, max_swaps, good_enough=0.0
):
    """Neighbour search over replica counts: move one or two replicas from donor experts (of the
    ``width`` whose per-replica load rises least) to recipients (of the ``width`` with the largest
    per-replica load), re-construct, keep the best neighbour if it improves. Two-replica moves
    matter when too many large replicas force two onto one rank: no single move helps then.

    The search stops early once the peak sum is at most ``good_enough``.
    ``counts`` is updated in place; returns ``(row, peak_sum, sumsq)`` of the best placement.
    """
    E = W.shape[1]
    D = num_ranks
    w = episode_mean(W)
    row, val, sq = construct(W, counts, D, num_slots_per_rank, max_swaps)
    trial = counts.copy()
    gain_key = np.empty(E)
    loss_key = np.empty(E)
    for _ in range(rounds):
        if val <= good_enough:
            break
        for e in range(E):
            gain_key[e] = -w[e] / counts[e] if counts[e] < D else np.inf
            loss_key[e] = w[e] / (counts[e] - 1) if counts[e] > 1 else np.inf
        recipients = stable_order(gain_key)[:width]
        donors = stable_order(loss_key)[:width]
        best_row = row
        best_val = val
        best_sq = sq
        improved = False
        best_trial = counts.copy()
        n = recipients.shape[0]
        for i1 in range(n):
            for i2 in range(-1, n):
                for j1 in range(donors.shape[0]):
                    for j2 in range(-1, donors.shape[0]):
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
                            if (
                                trial[e] < 1
                                or trial[e] > D
                                or (trial[e] != counts[e] and w[e] == 0.0 and trial[e] > 1)
                            ):
                                ok = False
                                break
                        if not ok:
                            continue
                        r, v, s = construct(W, trial, D, num_slots_per_rank, max_swaps)
                        if _better(v, s, best_val, best_sq):
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
    return row, val, sq


@njit(cache=True, nogil=True)
def _soft_peak(loads, tau):
    """``tau * log(sum(exp(loads / tau)))``, a smooth maximum that credits lowering any of several
    tied peaks (computed around the true maximum, so it never overflows)."""
    m = loads.max()
    acc = 0.0
    for r in range(loads.shape[0]):
        acc += np.exp((loads[r] - m) / tau)
    return m + tau * np.log(acc)


@njit(cache=True, nogil=True)
def greedy_moves(prev_row, w, num_ranks, num_slots_per_rank, budget, move_cost, tau):
    """Improve ``prev_row`` move by move, best marginal gain per moved slot first.

    A move rewrites one slot to another expert (1 slot; changes two replica counts) or swaps two
    slots between ranks (2 slots). Each step takes the move with the largest drop of the smooth
    peak (:func:`_soft_peak`) per moved slot, among moves that touch the peak rank. The walk stops
    at ``budget`` moved slots or when the best drop per slot falls below a quarter of
    ``move_cost`` (PAR units); it returns the prefix of the walk with the least
    ``PAR + move_cost * moved slots`` (the previous row itself when no prefix pays).
    Returns ``(row [P] int64, moved slots)``.
    """
    E = w.shape[0]
    D = num_ranks
    S = num_slots_per_rank
    P = prev_row.shape[0]
    total = w.sum()
    row = prev_row.copy()
    if total <= 0.0 or budget <= 0:
        return row, 0
    mean = total / D
    counts = counts_from_row(row, E)
    holds = holds_from_row(row, D, S, E)
    loads = np.zeros(D)
    for p in range(P):
        loads[p // S] += w[row[p]] / counts[row[p]]
    best_row = row.copy()
    best_cost = loads.max() / mean
    best_moves = 0
    moves = 0
    trial = np.empty(D)
    while moves < budget:
        base = _soft_peak(loads, tau)
        a = 0
        for r in range(1, D):
            if loads[r] > loads[a]:
                a = r
        best_gain = 0.0
        kind = -1
        best_p = -1
        best_q = -1
        # Swaps: a replica x of the peak rank a for a lighter replica y of rank b.
        if moves + 2 <= budget:
            for sa in range(S):
                p = a * S + sa
                x = row[p]
                px = w[x] / counts[x]
                for q in range(P):
                    b = q // S
                    y = row[q]
                    d = px - w[y] / counts[y]
                    if b == a or d <= 0.0 or holds[b, x] or holds[a, y]:
                        continue
                    trial[:] = loads
                    trial[a] -= d
                    trial[b] += d
                    gain = 0.5 * (base - _soft_peak(trial, tau))
                    if gain > best_gain:
                        best_gain = gain
                        kind = 0
                        best_p = p
                        best_q = q
        # Rewrites: slot q (expert x, another replica elsewhere) now holds y; either y is held
        # by the peak rank (more replicas of y lighten it) or q is on the peak rank.
        for q in range(P):
            b = q // S
            x = row[q]
            if counts[x] < 2:
                continue
            for y in range(E):
                if y == x or holds[b, y] or counts[y] >= D or not (holds[a, y] or b == a):
                    continue
                trial[:] = loads
                ox = w[x] / counts[x]
                nx = w[x] / (counts[x] - 1)
                oy = w[y] / counts[y]
                ny = w[y] / (counts[y] + 1)
                for r in range(D):
                    if holds[r, x]:
                        trial[r] += nx - ox
                    if holds[r, y]:
                        trial[r] += ny - oy
                trial[b] += ny - nx
                gain = base - _soft_peak(trial, tau)
                if gain > best_gain:
                    best_gain = gain
                    kind = 1
                    best_p = q
                    best_q = y
        if kind < 0 or best_gain < 0.25 * move_cost * mean:
            break
        if kind == 0:
            b = best_q // S
            x = row[best_p]
            y = row[best_q]
            d = w[x] / counts[x] - w[y] / counts[y]
            row[best_p] = y
            row[best_q] = x
            holds[a, x] = False
            holds[a, y] = True
            holds[b, y] = False
            holds[b, x] = True
            loads[a] -= d
            loads[b] += d
            moves += 2
        else:
            q = best_p
            b = q // S
            x = row[q]
            y = best_q
            ox = w[x] / counts[x]
            nx = w[x] / (counts[x] - 1)
            oy = w[y] / counts[y]
            ny = w[y] / (counts[y] + 1)
            for r in range(D):
                if holds[r, x]:
                    loads[r] += nx - ox
                if holds[r, y]:
                    loads[r] += ny - oy
            loads[b] += ny - nx
            row[q] = y
            holds[b, x] = False
            holds[b, y] = True
            counts[x] -= 1
            counts[y] += 1
            moves += 1
        cost = loads.max() / mean + move_cost * moves
        if cost < best_cost - 1e-12:
            best_cost = cost
            best_row[:] = row
            best_moves = moves
    return best_row, best_moves
