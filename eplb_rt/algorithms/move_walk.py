# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""The move walk: a placement in force improved move by move, best marginal gain per moved slot
first (:func:`greedy_moves`), and the slot edits it shares with the walks and repairs built on it
(:mod:`.episode_moves`, :mod:`.target_repair`, :mod:`.move_trades`).

Arrays as in :mod:`eplb_rt.algorithms.packing`: ``row [P] int64`` (expert of each slot, ranks in
blocks of ``S = P // D``), ``holds [D, E] bool``, ``counts [E] int64``.
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.local_search import _swap
from eplb_rt.algorithms.packing import counts_from_row, holds_from_row
from eplb_rt.algorithms.prices import judged_cost, move_price

_FAR = 600.0
"""A rank this many temperatures above the peak makes any move a loss (and exp would overflow)."""

_REFUTE_MARGIN = 1e-9
"""A candidate is refuted on a partial sum only this far (relative) above the cut-off: far
above the rounding of the sums, so the moves taken are those of scoring every candidate."""


@kernel(inline=True)
def _soft_peak(loads, tau):
    """``tau * log(sum(exp(loads / tau)))``: a smooth maximum that credits lowering any of
    several tied peaks (computed around the true maximum, so it never overflows).

    Inlined, and its maximum a loop (``max()`` raises on an empty array): a kernel that calls
    one that may raise keeps the references it took on its arrays (see :mod:`.jit`)."""
    m = loads[0]
    for r in range(1, loads.shape[0]):
        m = max(m, loads[r])
    acc = 0.0
    for r in range(loads.shape[0]):
        acc += np.exp((loads[r] - m) / tau)
    return m + tau * np.log(acc)


@kernel(inline=True)
def _rewrite(out, loads, k, holds, w, counts, b, x, y):
    """``out [D]``: row ``k``'s rank loads (``loads [K, D]``, expert loads ``w [K, E]``) once rank
    ``b``'s slot of expert ``x`` holds ``y`` (the other replicas of ``x`` grow, those of ``y``
    shrink). Rows by index, as :func:`_rewrite_z` reads them."""
    dx = w[k, x] / (counts[x] - 1) - w[k, x] / counts[x]
    dy = w[k, y] / (counts[y] + 1) - w[k, y] / counts[y]
    for r in range(loads.shape[1]):
        out[r] = loads[k, r] + (dx if holds[r, x] else 0.0) + (dy if holds[r, y] else 0.0)
    out[b] += w[k, y] / (counts[y] + 1) - w[k, x] / (counts[x] - 1)


@kernel(inline=True)
def _refute_above(cut, Z, gain, tau):
    """``cut [3]``: the sum of smooth-peak terms above which a move costing ``max(c, 1/2)``
    slots (``c`` = 0, 1, 2) surely gains less than ``gain`` per slot, with a margin far above
    rounding; infinite where the bound underflows (such moves are scored in full)."""
    for c in range(3):
        bound = Z * np.exp(-gain * max(c, 0.5) / tau)
        cut[c] = bound * (1.0 + _REFUTE_MARGIN) if bound > 1e-200 else np.inf


@kernel
def _ranks_of(row, counts, num_ranks):
    """``where [E, max count] int64``: the ranks holding each expert, in increasing order
    (the first ``counts[e]`` entries of row ``e``)."""
    E = counts.shape[0]
    S = row.shape[0] // num_ranks
    where = np.empty((E, max(counts.max(), 1)), dtype=np.int64)
    filled = np.zeros(E, dtype=np.int64)
    for p in range(row.shape[0]):
        e = row[p]
        where[e, filled[e]] = p // S
        filled[e] += 1
    return where


@kernel(inline=True)
def _rewrite_z(Z, ex, loads, where, w, counts, k, a, b, x, y, tau):
    """Row ``k``'s smooth peak's sum ``Z`` (terms ``ex [K, D]`` of loads ``loads [K, D]``, around
    peak rank ``a``; expert loads ``w [K, E]``) once rank ``b``'s slot of ``x`` holds ``y``: the
    terms of the ranks of ``x`` and of ``y`` change, added in rank order with the rounding of
    :func:`_rewrite` (so equal to a scan of every rank). The row by its index, not as a view: a
    view takes a reference on its array, two atomic operations at each of the walks' calls."""
    dx = w[k, x] / (counts[x] - 1) - w[k, x] / counts[x]
    dy = w[k, y] / (counts[y] + 1) - w[k, y] / counts[y]
    to_b = w[k, y] / (counts[y] + 1) - w[k, x] / (counts[x] - 1)
    z = Z
    i = 0
    j = 0
    nx = counts[x]
    ny = counts[y]
    D = loads.shape[1]
    while i < nx or j < ny:
        rx = where[x, i] if i < nx else D
        ry = where[y, j] if j < ny else D
        r = min(rx, ry)
        t = loads[k, r] + (dx if rx == r else 0.0) + (dy if ry == r else 0.0)
        if r == b:
            t += to_b
        if rx == r:
            i += 1
        if ry == r:
            j += 1
        if t != loads[k, r]:
            z += np.exp(min(t - loads[k, a], _FAR * tau) / tau) - ex[k, r]
    return z


@kernel
def _take_rewrite(row, holds, counts, q, y):
    """Slot ``q`` holds expert ``y`` from now on (``holds`` and ``counts`` kept in sync)."""
    S = row.shape[0] // holds.shape[0]
    x = row[q]
    row[q] = y
    holds[q // S, x] = False
    holds[q // S, y] = True
    counts[x] -= 1
    counts[y] += 1


@kernel
def _moved_slots(row, prev_row):
    """Slots of ``row`` that hold another expert than in ``prev_row``."""
    moved = 0
    for p in range(row.shape[0]):
        moved += row[p] != prev_row[p]
    return moved


@kernel(inline=True)
def _swap_slots(prev_row, p, q, x, y):
    """Slots newly moved away from ``prev_row`` when ``x`` (slot ``p``) and ``y`` (slot ``q``)
    swap: -2 to 2 (a slot already moved changes again for free, one put back refunds its slot).
    """
    now = int(y != prev_row[p]) + int(x != prev_row[q])
    return now - int(x != prev_row[p]) - int(y != prev_row[q])


@kernel(inline=True)
def _rewrite_slots(prev_row, q, x, y):
    """Slots newly moved away from ``prev_row`` when slot ``q`` (expert ``x``) takes ``y``."""
    return int(y != prev_row[q]) - int(x != prev_row[q])


@kernel(inline=True)
def _walk_price(row, prev_row, moves, num_ranks, move_cost, slowest_rank):
    """A walk's prefix priced as its judge prices it: ``move_cost`` (PAR) a moved slot, as the
    walk ranks its moves, or with ``slowest_rank``
    :func:`~eplb_rt.algorithms.prices.move_price` at ``move_cost * D`` a slot moved on every
    rank. Per slot it is not routed through ``move_price``: ``(move_cost * D) * moves / D`` is
    one ulp off ``move_cost * moves`` in about a quarter of the cases, and the walk's ties
    would fall otherwise than they did."""
    if slowest_rank:
        return move_price(row, prev_row, moves, num_ranks, move_cost * num_ranks, True)
    return move_cost * moves


@kernel(inline=True)
def _priced_out(slot_price, in_force, best_cost, lifetime):
    """Whether no later prefix of a move walk would be taken: PAR is at least 1, and the slots a
    prefix has moved (``slot_price``: ``move_cost`` each) price it at least that much either
    way (by the slowest rank a transfer to every rank costs ``D`` slots), so once they cost
    this much no later prefix pays before the next plan against the PAR ``in_force`` or costs
    less than ``best_cost`` (:func:`~eplb_rt.algorithms.prices.judged_cost`). Moved slots fall
    only where a later move puts one back; by the slowest rank's price the walk may also
    spread its transfers later, lowering the price at as many slots, so that price is no bound
    (a walk stopped on it missed prefixes that paid)."""
    return 1.0 + slot_price >= in_force or 1.0 + slot_price / lifetime >= best_cost


@kernel
def greedy_moves(
    prev_row, w, num_ranks, budget, move_cost, tau_min, tau_share, slowest_rank, lifetime
):
    """Improve ``prev_row`` move by move, best marginal gain per moved slot first.

    A move rewrites one slot to another expert or swaps two slots between ranks; it costs the
    slots it newly moves away from ``prev_row`` (0 to 2: a slot already moved changes again for
    free, one put back refunds its slot). Each step takes the move of the peak rank with the
    largest drop of the smooth peak (:func:`_soft_peak`) per slot it costs (half a slot when it
    costs none, so a free move of equal drop comes first), within ``budget`` slots, until the
    best drop per slot is below a quarter of ``move_cost`` (PAR): at the budget the walk goes on
    with free moves, re-using slots it moved early for what later moves showed they are best
    for. It returns the walk's prefix that costs least as a re-plan's judge prices it
    (:func:`~eplb_rt.algorithms.prices.judged_cost` of its PAR and of its moves' price at
    ``move_cost * D`` a slot moved on every rank, with ``slowest_rank`` by the experts the
    slowest rank receives, over ``lifetime`` plans; with neither, the least ``PAR + move_cost *
    moved slots``): a dip before a large gain is walked through. ``w [E]``: the load the moves
    are judged on.

    The smooth peak's temperature is ``max(tau_min, tau_share * (peak - mean))``: far from
    balance, lowering the group of ranks near the peak is progress even where the single
    largest stays (a step the exact maximum would not see, so the walk would spend slots on the
    peak alone); within ``tau_min / tau_share`` of the mean it is the peak itself. Returns
    ``(row [P] int64, moved slots)``.

    Most candidates are refuted before they are scored in full: a move beats the best gain so
    far only if its sum of smooth-peak terms stays below a cut-off, and a lower bound of that
    sum is often above it already -- a swap's terms added one by one, the one of the rank that
    receives first; a rewrite's from the ranks that take x's load (the other replicas of x),
    with the terms that fall taken at nothing. A rewrite that is scored is scored on the ranks
    it changes (those of its two experts). The moves taken are those of scoring every candidate
    on every rank (``tests/algorithms/test_move_walk.py`` holds that scan).
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
    # One-row views for _rewrite_z, which reads rows of 2-D arrays (loads changes in place; a
    # strided w is copied, as numba reshapes only contiguous arrays).
    w2, loads2 = np.ascontiguousarray(w).reshape((1, E)), loads.reshape((1, D))
    best_row = row.copy()
    in_force = loads.max() / mean
    best_cost = in_force
    best_moves = 0
    moves = 0
    trial = np.empty(D)
    rank_of = np.arange(P) // S  # a table, not a division per candidate (as in the rows' walk)
    slot_load = np.empty(P)
    held_terms = np.empty(E)
    rise = np.empty(D)
    cut = np.empty(3)
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
        ex2 = ex.reshape((1, D))
        Z = ex.sum()
        base = loads[a] + tau * np.log(Z)
        best_gain = 0.0
        best_p = -1
        best_q = -1
        best_y = -1
        # Swaps: a replica x of the peak rank a for a lighter replica y of rank b.
        for q in range(P):
            slot_load[q] = w[row[q]] / counts[row[q]]
        # A swap beats the best gain g per slot only if its sum of terms z is below
        # Z exp(-g c / tau), c = max(slots it costs, 0.5) (1 / 2, 1 or 2): z only grows with each
        # term added, so most candidates are refuted before their second exp and their log.
        _refute_above(cut, Z, best_gain, tau)
        for sa in range(S):
            p = a * S + sa
            x = row[p]
            for q in range(P):
                b = rank_of[q]
                y = row[q]
                d = slot_load[p] - slot_load[q]
                if b == a or d <= 0.0 or holds[b, x] or holds[a, y]:
                    continue
                # Slots newly moved (a slot already moved costs nothing to change again).
                extra = _swap_slots(prev_row, p, q, x, y)
                if moves + extra > budget:
                    continue
                if loads[b] + d - loads[a] > _FAR * tau:
                    continue
                rest = max(Z - ex[a] - ex[b], 0.0)
                limit = cut[max(extra, 0)]
                if rest > limit:
                    continue
                # b's new term first: a swap that lifts b near the peak is refuted on it, most
                # before its exp (exp(u) >= 1 + u).
                u = (loads[b] + d - loads[a]) / tau
                if rest + 1.0 + u > limit:
                    continue
                lifted = np.exp(u)
                if rest + lifted > limit:
                    continue
                z = rest + np.exp(-d / tau)
                if z > limit:
                    continue
                z += lifted
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
                    _refute_above(cut, Z, best_gain, tau)
        # Rewrites: slot q (expert x, which keeps a replica elsewhere) takes expert y; either y
        # is on the peak rank (one more replica of y lightens it) or q is on the peak rank. A
        # rewrite changes the ranks of x and of y only: they are scored in rank order, as a
        # scan of every rank would add them.
        where = _ranks_of(row, counts, D)
        on_a = np.sort(row[a * S : (a + 1) * S])
        # For refuting a rewrite without scoring it: per expert, the terms of its ranks (they
        # all fall when it gains a replica); the ranks of x rise, and are left out.
        held_terms[:] = 0.0
        for p in range(P):
            held_terms[row[p]] += ex[rank_of[p]]
        for q in range(P):
            b = rank_of[q]
            x = row[q]
            if counts[x] < 2:
                continue
            # The other ranks of x take its load (a, if it holds x, is scored with y below).
            dx = w[x] / (counts[x] - 1) - w[x] / counts[x]
            for j in range(counts[x]):
                r = where[x, j]
                rise[j] = 0.0
                if r not in (a, b):
                    rise[j] = np.exp(min(loads[r] + dx - loads[a], _FAR * tau) / tau) - ex[r]
            # By index, not over an array bound per slot (numba takes a reference on it).
            for i in range(E if b == a else S):
                y = i if b == a else on_a[i]
                if y == x or holds[b, y] or counts[y] >= D:
                    continue
                extra = _rewrite_slots(prev_row, q, x, y)
                if moves + extra > budget:
                    continue
                # A lower bound of the new sum of terms: the risen terms of the ranks of x that
                # lack y, then a's new term; every other changed rank's term at nothing.
                limit = cut[max(extra, 0)] + _REFUTE_MARGIN * Z
                low = Z - ex[a] - (held_terms[y] - (ex[a] if holds[a, y] else 0.0))
                if b != a:
                    low -= ex[b]
                for j in range(counts[x]):
                    if not holds[where[x, j], y]:
                        low += rise[j]
                if low > limit:
                    continue
                t = (dx if holds[a, x] else 0.0) + (
                    w[y] / (counts[y] + 1) - w[y] / counts[y] if holds[a, y] else 0.0
                )
                if b == a:
                    t += w[y] / (counts[y] + 1) - w[x] / (counts[x] - 1)
                if low + np.exp(min(t, _FAR * tau) / tau) > limit:
                    continue
                z = _rewrite_z(Z, ex2, loads2, where, w2, counts, 0, a, b, x, y, tau)
                new = loads[a] + tau * np.log(max(z, 1e-300))
                if z < 1e-200:  # every term underflowed: score the move on all ranks
                    _rewrite(trial, loads2, 0, holds, w2, counts, b, x, y)
                    new = _soft_peak(trial, tau)
                gain = (base - new) / max(extra, 0.5)
                if gain > best_gain:
                    best_gain = gain
                    best_p = -1
                    best_q = q
                    best_y = y
                    _refute_above(cut, Z, best_gain, tau)
        if best_q < 0 or best_gain < 0.25 * move_cost * mean:
            break
        if _priced_out(move_cost * moves, in_force, best_cost, lifetime):
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
            _rewrite(loads, loads2.copy(), 0, holds, w2, counts, b, x, y)
            _take_rewrite(row, holds, counts, best_q, y)
        # Slots that differ from the previous row (a later move may put one back).
        moves = _moved_slots(row, prev_row)
        price = _walk_price(row, prev_row, moves, D, move_cost, slowest_rank)
        cost = judged_cost(loads.max() / mean, price, in_force, lifetime)
        if cost < best_cost - 1e-12:
            best_cost = cost
            best_row[:] = row
            best_moves = moves
    return best_row, best_moves
