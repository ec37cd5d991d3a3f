# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""Numba move walk ranked on several rows of load at once (episodes and their sum).

:func:`~eplb_rt.algorithms.move_walk.greedy_moves` ranks each move on one load. On a short
window that load is mostly sampling noise, and a walk ranked on it alone fits the noise.
:func:`greedy_moves_rows` ranks a move by the drop of the *sum over rows* of each row's smooth
peak, so a move must pay on the episodes as well as on the load it is judged on.

Arrays as in :mod:`eplb_rt.algorithms.packing`; ``V [K, E] float64`` holds ``K`` rows of expert
load, ``loads [K, D] float64`` each row's rank loads.
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.local_search import _swap
from eplb_rt.algorithms.move_walk import (
    _FAR,
    _moved_slots,
    _priced_out,
    _ranks_of,
    _rewrite,
    _rewrite_slots,
    _rewrite_z,
    _soft_peak,
    _swap_slots,
    _take_rewrite,
    _walk_price,
)
from eplb_rt.algorithms.packing import counts_from_row, holds_from_row
from eplb_rt.algorithms.prices import judged_cost

_TOL = 1e-9
"""Margin of the bounds that refute a move, relative to the rows' summed mean rank load: far
above the rounding of their sums, so the moves taken are those of scoring every move."""
_MANY_REPLICAS = 8
"""Replicas of ``x`` and ``y`` above which a rewrite's rows are first bounded from the sums of
their terms (:func:`_rewrite_bound`): below, a full score costs about as much."""
_BOUND_MARGIN = 1e-9
"""Relative margin of a row's bound from the sums of an expert's terms: far above the rounding
of those sums (and of ``exp(a) exp(b)`` against ``exp(a + b)``) at any temperature the walk uses."""


@kernel
def _row_terms(loads, means, tau_min, tau_share, terms):
    """Each row of ``loads [K, D]`` around its peak, into ``terms = (peak [K], tau [K], ex [K, D],
    Z [K], base [K], prob [K, D], top [K, 3])``: the peak, the temperature (as in
    ``greedy_moves``), each rank's term ``exp((load - peak) / tau)``, their sum, the smooth peak
    ``peak + tau * log(Z)``, each rank's weight ``ex / Z`` (the smooth peak's gradient) and the
    three most loaded ranks (the lower rank first on ties; -1 where ``D < 3``)."""
    peak, tau, ex, Z, base, prob, top = terms
    K, D = loads.shape
    for k in range(K):
        i1 = i2 = i3 = -1
        for r in range(D):
            v = loads[k, r]
            if i1 < 0 or v > loads[k, i1]:
                i1, i2, i3 = r, i1, i2
            elif i2 < 0 or v > loads[k, i2]:
                i2, i3 = r, i2
            elif i3 < 0 or v > loads[k, i3]:
                i3 = r
        top[k, 0], top[k, 1], top[k, 2] = i1, i2, i3
        m = loads[k, i1]
        peak[k] = m
        tau[k] = max(tau_min[k], tau_share * (m - means[k]))
        z = 0.0
        for r in range(D):
            ex[k, r] = np.exp((loads[k, r] - m) / tau[k])
            z += ex[k, r]
        Z[k] = z
        base[k] = m + tau[k] * np.log(z)
        for r in range(D):
            prob[k, r] = ex[k, r] / z


@kernel(inline=True)
def _swap_drop(rest, la, lb, peak, base, t, d):
    """Drop of a row's smooth peak (``peak``, ``base``, temperature ``t``) when load ``d`` moves
    from rank ``a`` (load ``la``) to rank ``b`` (``lb``); ``rest``: the row's sum of terms less
    those two. The two new terms capped at ``_FAR`` temperatures above the peak (such a move
    loses). Returns ``(drop, True)``, or ``(0, False)`` where every term underflows
    (:func:`_spread_drop` scores the row then)."""
    z = max(rest, 0.0)
    # (load - peak) first: 0 on the peak rank, so one row takes greedy_moves' steps to the bit.
    z += np.exp(min((la - peak) - d, _FAR * t) / t)
    z += np.exp(min(lb + d - peak, _FAR * t) / t)
    if z < 1e-200:
        return 0.0, False
    return base - (peak + t * np.log(max(z, 1e-300))), True


@kernel(inline=True)
def _spread_drop(loads, base, k, a, b, d, t, trial):
    """:func:`_swap_drop` where every term underflowed: row ``k`` scored on all its ranks (row by
    index, no view: inlined into :func:`_swap_gain`, whose references numba then drops)."""
    for r in range(loads.shape[1]):
        trial[r] = loads[k, r]
    trial[a] -= d
    trial[b] += d
    return base[k] - _soft_peak(trial, t)


@kernel
def _rewrite_drop(loads, terms, k, V, where, counts, b, x, y):
    """Drop of row ``k``'s smooth peak when rank ``b``'s slot of expert ``x`` takes ``y``: the
    ranks of ``x`` (``where [E, max count]``) take its load, those of ``y`` lose some; only
    their terms change. Returns ``(drop, True)``, or ``(0, False)`` where every term underflows
    (:func:`_rewrite_spread` scores the row then).

    No call of a kernel that may raise and no view of an array, here and in the kernels
    inlined into the gains: numba then drops the references it takes on the arguments, two
    atomic operations each at every call (once per candidate move and row: they took nearly
    half the walk's time; :mod:`eplb_rt.algorithms.jit`)."""
    peak, tau, ex, Z, base, _, top = terms
    t = tau[k]
    z = _rewrite_z(Z[k], ex, loads, where, V, counts, k, top[k, 0], b, x, y, t)
    if z < 1e-200:
        return 0.0, False
    return base[k] - (peak[k] + t * np.log(max(z, 1e-300))), True


@kernel(inline=True)
def _rewrite_spread(loads, terms, k, V, holds, counts, b, x, y, trial):
    """:func:`_rewrite_drop` where every term underflowed: row ``k`` scored on all its ranks
    (inlined, as :func:`_spread_drop`)."""
    _, tau, _, _, base, _, _ = terms
    _rewrite(trial, loads, k, holds, V, counts, b, x, y)
    return base[k] - _soft_peak(trial, tau[k])


@kernel
def _swap_gain(V, judge, loads, terms, counts, a, b, x, y, trial, first):
    """Drop of the summed smooth peaks when ``x`` (rank ``a``) and ``y`` (rank ``b``) swap:
    ``first``, the judged row's drop (which the scan computes to bound the move), plus the
    others' in order (every path adds them so: equal moves get bit-equal drops, and ties are
    broken by the scan alone)."""
    peak, tau, ex, Z, base, _, _ = terms
    drop = first
    for k in range(V.shape[0]):
        if k != judge:
            d = V[k, x] / counts[x] - V[k, y] / counts[y]
            rest = Z[k] - ex[k, a] - ex[k, b]
            e, ok = _swap_drop(rest, loads[k, a], loads[k, b], peak[k], base[k], tau[k], d)
            drop += e if ok else _spread_drop(loads, base, k, a, b, d, tau[k], trial)
    return drop


@kernel
def _rewrite_gain(V, judge, loads, terms, where, holds, counts, b, x, y, trial, first):
    """Drop of the summed smooth peaks when rank ``b``'s slot of ``x`` takes ``y`` (rows added
    as in :func:`_swap_gain`)."""
    drop = first
    for k in range(V.shape[0]):
        if k != judge:
            e, ok = _rewrite_drop(loads, terms, k, V, where, counts, b, x, y)
            drop += e if ok else _rewrite_spread(loads, terms, k, V, holds, counts, b, x, y, trial)
    return drop


@kernel(inline=True)
def _vanish_bound(tau, f):
    """At least ``-tau * log(1 - f)``: how far a row's smooth peak can fall when ranks holding
    the share ``f`` of its weight (``ex / Z``) vanish. A division where ``f`` is small, the log
    only near 1."""
    if f <= 0.5:
        return tau * f / (1.0 - f)
    return -tau * np.log(max(1.0 - f, 1e-300))


@kernel(inline=True)
def _rewrite_load(v, on_b, vx, vy, cx, cy, has_x, has_y):
    """A rank's load ``v`` in a row once rank ``b``'s slot of ``x`` holds ``y``: ``on_b`` the
    rank is ``b``; ``vx``, ``vy`` the row's load of ``x`` and ``y``, ``cx``, ``cy`` their
    replicas, ``has_x``, ``has_y`` whether the rank holds them (scalars: see
    :func:`_swap_drop`)."""
    if on_b:
        return v - vx / cx + vy / (cy + 1)
    if has_x:
        v += vx / (cx - 1) - vx / cx
    if has_y:
        v += vy / (cy + 1) - vy / cy
    return v


@kernel(inline=True)
def _rewrite_bound(terms, k, pi, where, holds, loads, counts, b, x, y, vx, vy, fx):
    """At least row ``k``'s drop when rank ``b``'s slot of ``x`` takes ``y``, from the sums of
    ``x``'s and ``y``'s terms (``pi * Z``) instead of their every rank: ``x``'s other ranks'
    terms all grow by ``exp(dx / tau)``, ``y``'s shrink by ``exp(dy / tau)``, ranks holding
    both count as nothing, ``b``'s new term exactly; less a margin far above the rounding of
    summing in this order. A term per rank holding both (the fewer of ``x``'s and ``y``'s
    ranks), not per replica of each: an expert of many replicas makes the full score dear.
    ``inf`` where a term could reach the cap of ``_FAR`` temperatures (scored in full)."""
    peak, tau, ex, Z, base, _, _ = terms
    t = tau[k]
    cx, cy = counts[x], counts[y]
    dx = vx * fx
    dy = vy * (1.0 / (cy + 1) - 1.0 / cy)
    if dx > 0.5 * _FAR * t:
        return np.inf
    sx = pi[x, k] * Z[k]
    sy = pi[y, k] * Z[k]
    both = 0.0
    if cx <= cy:
        for i in range(cx):
            r = where[x, i]
            if holds[r, y]:
                both += ex[k, r]
    else:
        for i in range(cy):
            r = where[y, i]
            if holds[r, x]:
                both += ex[k, r]
    eb = ex[k, b]
    new_b = np.exp(min(loads[k, b] - vx / cx + vy / (cy + 1) - peak[k], _FAR * t) / t)
    grow = np.exp(dx / t)
    shrink = np.exp(dy / t)
    rest = Z[k] - sx - sy + both
    low = rest + grow * (sx - eb - both) + shrink * (sy - both) + new_b
    low -= _BOUND_MARGIN * (Z[k] + grow * sx + sy + new_b)
    if low < 1e-200:
        return np.inf
    return base[k] - (peak[k] + t * np.log(low))


@kernel
def _scan_rank(a, st, best, ids):
    """Score the moves of rank ``a`` in the walk's scan order -- swaps (a slot of ``a``, then
    any slot ``q``), then rewrites (slot ``q``, then expert ``y`` ascending) -- into ``best[0]``
    (gain per slot) and ``ids`` (``p``, ``q``, ``y``; ``p = -1`` for a rewrite) where one beats
    it: the outcome of scoring every move on every row in scan order, ties to the first.

    A move is scored in full only where bounds on its drop of the summed smooth peaks, cheapest
    first, can reach the best so far. The judged row ``j`` (half the rows' weight) is bounded
    on its own, as ``greedy_moves`` bounds its one row; the other rows together:

    * to first order: each row's smooth peak is convex in the rank loads, so a move that
      changes them by ``delta`` lowers it by at most ``-sum(prob * delta)`` (``prob``: the
      ranks' weights before the move), summed over the rows from tables made per step
      (``by_slot``, ``held``) and per rank here (``to_a``, ``to_rank``);
    * a swap's by what the rows lose if ``a`` and ``b`` vanished (``cap_b``);
    * then row by row without an exp: a row's new smooth peak is at least that of the ranks
      the move does not lower, and at least each new rank load.
    """
    (V, judge, loads, terms, row, prev_row, counts, holds, where, share, on_slot, by_slot,
     held, pi, to_a, to_rank, cap_b, rise, inv_c, inv_up, gone, per_j, up_j, moves, budget, tol,
     trial) = st  # fmt: skip
    K, E = V.shape
    D = loads.shape[1]
    P = row.shape[0]
    S = P // D
    peak, tau, ex, Z, base, prob, top = terms
    j = judge
    # to_a[e]: the other rows' replica load of e weighed by a's weights (per replica: divided
    # by counts[e]); to_rank[sa, b]: that of a's slot sa weighed by b's; cap_b[b]: what the
    # other rows' smooth peaks can lose by a swap between a and b.
    to_a[:] = 0.0
    to_rank[:] = 0.0
    for k in range(K):
        if k == j:
            continue
        pa = prob[k, a]
        for e in range(E):
            to_a[e] += V[k, e] * pa
        for sa in range(S):
            v = V[k, row[a * S + sa]]
            for b in range(D):
                to_rank[sa, b] += v * prob[k, b]
    for b in range(D):
        acc = 0.0
        for k in range(K):
            if k != j:
                acc += _vanish_bound(tau[k], prob[k, a] + (prob[k, b] if b != a else 0.0))
        cap_b[0, b] = acc
        cap_b[1, b] = _vanish_bound(tau[j], prob[j, a] + (prob[j, b] if b != a else 0.0))
    inv_tau = 1.0 / tau[j]
    # Swaps: a replica x of rank a for a replica y of rank b, lighter on the rows' sum.
    for sa in range(S):
        p = a * S + sa
        x = row[p]
        for b in range(D):
            # No swap with b gains more than the pair's share of weight can lose.
            if b == a or holds[b, x] or cap_b[0, b] + cap_b[1, b] + tol < 0.5 * best[0]:
                continue
            for q in range(b * S, (b + 1) * S):
                y = row[q]
                if holds[a, y] or share[x] - share[y] <= 0.0:
                    continue
                extra = _swap_slots(prev_row, p, q, x, y)
                if moves + extra > budget:
                    continue
                c = max(extra, 0.5)
                lin = (to_a[x] - to_rank[sa, b]) * inv_c[x] - (to_a[y] - by_slot[q]) * inv_c[y]
                rest = min(lin, cap_b[0, b]) + tol
                dj = per_j[x] - per_j[y]
                hj = min(cap_b[1, b], base[j] - max(loads[j, a] - dj, loads[j, b] + dj))
                if hj + rest < c * best[0]:
                    continue
                rest_j = Z[j] - ex[j, a] - ex[j, b]
                ej, ok = _swap_drop(rest_j, loads[j, a], loads[j, b], peak[j], base[j], tau[j], dj)
                if not ok:
                    ej = _spread_drop(loads, base, j, a, b, dj, tau[j], trial)
                if ej + rest < c * best[0]:
                    continue
                # Per row: the least of its first-order bound and of its fall, no exp.
                acc = ej + tol
                for k in range(K):
                    if k != j:
                        d = V[k, x] * inv_c[x] - V[k, y] * inv_c[y]
                        f = _vanish_bound(tau[k], prob[k, a] + prob[k, b])
                        cap = min(f, base[k] - max(loads[k, a] - d, loads[k, b] + d))
                        acc += min(d * (prob[k, a] - prob[k, b]), cap)
                if acc < c * best[0]:
                    continue
                g = _swap_gain(V, judge, loads, terms, counts, a, b, x, y, trial, ej) / c
                if g > best[0]:
                    best[0] = g
                    ids[0], ids[1], ids[2] = p, q, -1
    # Rewrites: slot q (expert x, which keeps a replica elsewhere) takes expert y; either y is
    # on rank a (one more replica of y lightens it) or q is on rank a.
    for b in range(D):
        for q in range(b * S, (b + 1) * S):
            x = row[q]
            cx = counts[x]
            if cx < 2:
                continue
            fx = 1.0 / (cx - 1) - inv_c[x]
            # The judged row's terms of x's other ranks once they take its load.
            dxj = V[j, x] * fx
            for i in range(cx):
                r = where[x, i]
                rise[i] = 0.0
                if r != b:
                    t = min(loads[j, r] + dxj - peak[j], _FAR * tau[j]) * inv_tau
                    rise[i] = np.exp(t) - ex[j, r]
            for i in range(E if b == a else S):
                y = i if b == a else on_slot[i, 0]
                if y == x or holds[b, y] or counts[y] >= D:
                    continue
                extra = _rewrite_slots(prev_row, q, x, y)
                if moves + extra > budget:
                    continue
                c = max(extra, 0.5)
                y_at_b = to_a[y] if b == a else to_rank[on_slot[i, 1], b]
                # x's other ranks take its load, y's give some, b trades x's replica for y's.
                lin = -(
                    fx * (held[x] - by_slot[q])
                    + gone[y] * held[y]
                    + y_at_b * inv_up[y]
                    - by_slot[q] * inv_c[x]
                )
                # The judged row's new sum of terms is at least: y's ranks' terms at nothing,
                # x's risen, b's new one; exp(u) >= 1 + u and log(z) >= 1 - 1 / z, so most
                # moves are refuted before either.
                room = base[j] - peak[j] + lin + tol - c * best[0]
                low = Z[j] - ex[j, b] - pi[y, j] * Z[j]
                for m in range(cx):
                    if not holds[where[x, m], y]:
                        low += rise[m]
                u = min(loads[j, b] - per_j[x] + up_j[y] - peak[j], _FAR * tau[j]) * inv_tau
                near = low + max(1.0 + u, 0.0)
                if near > 0.0 and near * (tau[j] - room) > tau[j]:
                    continue
                low += np.exp(u)
                if low > 0.0 and low * (tau[j] - room) > tau[j]:
                    continue
                if tau[j] * np.log(max(low, 1e-300)) > room:
                    continue
                ej, ok = _rewrite_drop(loads, terms, j, V, where, counts, b, x, y)
                if not ok:
                    ej = _rewrite_spread(loads, terms, j, V, holds, counts, b, x, y, trial)
                acc = ej + lin + tol
                if acc < c * best[0]:
                    continue
                acc = ej + tol
                for k in range(K):
                    if k != j:
                        first = -(
                            fx * V[k, x] * (pi[x, k] - prob[k, b])
                            + gone[y] * V[k, y] * pi[y, k]
                            + prob[k, b] * (V[k, y] * inv_up[y] - V[k, x] * inv_c[x])
                        )
                        # At least row k's drop, without an exp: the new smooth peak is at
                        # least that of the ranks that do not fall (all but y's and b; x's
                        # rise) and at least the new load of b and of the row's top three.
                        vx, vy, cy = V[k, x], V[k, y], counts[y]
                        cap = _vanish_bound(tau[k], pi[y, k] + prob[k, b])
                        high = _rewrite_load(loads[k, b], True, vx, vy, cx, cy, False, False)
                        for t3 in range(3):
                            r = top[k, t3]
                            if r >= 0:
                                high = max(high, _rewrite_load(
                                    loads[k, r], r == b, vx, vy, cx, cy, holds[r, x], holds[r, y]
                                ))  # fmt: skip
                        cap = min(cap, base[k] - high)
                        if cx + cy > _MANY_REPLICAS:  # a full score costs a term a replica
                            cap = min(cap, _rewrite_bound(
                                terms, k, pi, where, holds, loads, counts, b, x, y, vx, vy, fx
                            ))  # fmt: skip
                        acc += min(first, cap)
                if acc < c * best[0]:
                    continue
                g = (
                    _rewrite_gain(V, judge, loads, terms, where, holds, counts, b, x, y, trial, ej)
                    / c
                )
                if g > best[0]:
                    best[0] = g
                    ids[0], ids[1], ids[2] = -1, q, y


@kernel
def greedy_moves_rows(
    prev_row, V, judge, num_ranks, budget, move_cost, tau_min, tau_share, slowest_rank, lifetime
):
    """:func:`~eplb_rt.algorithms.move_walk.greedy_moves` with moves ranked on several rows.

    ``V [K, E] float64``: the rows (e.g. the episodes the fresh plan is scored on, and the load
    the walk is judged on, row ``judge``); ``tau_min [K]``: each row's least temperature. A move
    (a slot rewritten to another expert, or a swap) is ranked by the drop of the SUM over rows
    of each row's smooth peak (each row's temperature as in ``greedy_moves``) per slot it newly
    moves, among the moves of the judged row's peak rank and of the rank with the most weight
    over the rows (the smooth peaks' gradients summed); the walk stops once the best drop per
    slot is below a quarter of ``move_cost`` times the rows' summed mean rank load. Its prefix
    that costs least as ``greedy_moves`` prices them (``slowest_rank``, ``lifetime``), PAR on
    the judged row, is returned. With one row it takes ``greedy_moves``' steps. Returns ``(row
    [P] int64, moved slots)``.

    Most moves are refuted on bounds of their drop before they are scored (:func:`_scan_rank`);
    the moves taken are those of scoring every move on every row
    (``tests/algorithms/test_episode_moves.py`` holds that scan).
    """
    K, E = V.shape
    D = num_ranks
    P = prev_row.shape[0]
    S = P // D
    total = V.sum()
    row = prev_row.copy()
    if total <= 0.0 or budget <= 0 or V[judge].sum() <= 0.0:
        return row, 0
    mean = total / D
    means = np.empty(K)
    for k in range(K):
        means[k] = V[k].sum() / D
    counts = counts_from_row(row, E)
    holds = holds_from_row(row, D, E)
    loads = np.zeros((K, D))
    for p in range(P):
        for k in range(K):
            loads[k, p // S] += V[k, row[p]] / counts[row[p]]
    best_row = row.copy()
    in_force = loads[judge].max() / means[judge]
    best_cost = in_force
    best_moves = 0
    moves = 0
    terms = (
        np.empty(K), np.empty(K), np.empty((K, D)), np.empty(K), np.empty(K), np.empty((K, D)),
        np.empty((K, 3), dtype=np.int64),
    )  # fmt: skip
    summed = V.sum(axis=0)
    share = np.empty(E)  # an expert's replica load, summed over the rows
    per_j = np.empty(E)  # ... in the judged row
    up_j = np.empty(E)  # ... there with one more replica
    inv_c = np.empty(E)  # 1 / counts
    inv_up = np.empty(E)  # 1 / (counts + 1)
    gone = np.empty(E)  # what a replica's share of its expert loses when the expert gains one
    by_slot = np.empty(P)  # a slot's replica load over the other rows, by its rank's weights
    held = np.empty(E)  # ... summed over the expert's slots
    to_a = np.empty(E)
    to_rank = np.empty((S, D))
    cap_b = np.empty((2, D))
    rise = np.empty(D)
    pi = np.empty((E, K))  # an expert's ranks' summed weight, per row
    on_slot = np.empty((S, 2), dtype=np.int64)  # rank a's (expert, slot), experts ascending
    mass = np.empty(D)
    trial = np.empty(D)
    best = np.zeros(1)  # the best move's gain per slot
    ids = np.empty(3, dtype=np.int64)  # ... its slots (p: -1 for a rewrite) and new expert
    tol = _TOL * mean
    rank_of = np.arange(P) // S  # a table, not a division in the loops over rows and slots
    # Every step lowers the summed smooth peaks; the cap only bounds rounding loops.
    for _ in range(8 * P):
        for e in range(E):
            share[e] = summed[e] / counts[e]
            inv_c[e] = 1.0 / counts[e]
            inv_up[e] = 1.0 / (counts[e] + 1)
            gone[e] = inv_up[e] - inv_c[e]
            per_j[e] = V[judge, e] / counts[e]
            up_j[e] = V[judge, e] / (counts[e] + 1)
        _row_terms(loads, means, tau_min, tau_share, terms)
        prob = terms[5]
        # Candidate ranks: the judged row's peak and the rank carrying most of the rows' weight.
        first = terms[6][judge, 0]
        second = first
        if K > 1:
            mass[:] = 0.0
            for k in range(K):
                for r in range(D):
                    mass[r] += prob[k, r]
            second = 0
            for r in range(1, D):
                if mass[r] > mass[second]:
                    second = r
        where = _ranks_of(row, counts, D)
        held[:] = 0.0
        pi[:] = 0.0
        by_slot[:] = 0.0
        for k in range(K):
            for q in range(P):
                pi[row[q], k] += prob[k, rank_of[q]]
                if k != judge:
                    by_slot[q] += V[k, row[q]] * prob[k, rank_of[q]]
        for q in range(P):
            held[row[q]] += by_slot[q]
        st = (V, judge, loads, terms, row, prev_row, counts, holds, where, share, on_slot,
              by_slot, held, pi, to_a, to_rank, cap_b, rise, inv_c, inv_up, gone, per_j, up_j,
              moves, budget, tol, trial)  # fmt: skip
        best[0] = 0.0
        ids[:] = -1
        lo, hi = min(first, second), max(first, second)
        for n in range(1 if lo == hi else 2):
            a = lo if n == 0 else hi
            for sa in range(S):
                on_slot[sa, 0], on_slot[sa, 1] = row[a * S + sa], sa
            for i in range(1, S):  # insertion sort by expert
                m = i
                while m > 0 and on_slot[m - 1, 0] > on_slot[m, 0]:
                    for c in range(2):
                        on_slot[m - 1, c], on_slot[m, c] = on_slot[m, c], on_slot[m - 1, c]
                    m -= 1
            _scan_rank(a, st, best, ids)
        best_gain = best[0]
        best_p, best_q, best_y = ids[0], ids[1], ids[2]
        if best_q < 0 or best_gain < 0.25 * move_cost * mean:
            break
        if _priced_out(move_cost * moves, in_force, best_cost, lifetime):
            break
        if best_p >= 0:
            x, y, a, b = row[best_p], row[best_q], best_p // S, best_q // S
            for k in range(K):
                dk = V[k, x] / counts[x] - V[k, y] / counts[y]
                loads[k, a] -= dk
                loads[k, b] += dk
            _swap(row, holds, best_p, best_q)
        else:
            b = best_q // S
            x = row[best_q]
            y = best_y
            prior = loads.copy()
            for k in range(K):
                _rewrite(loads[k], prior, k, holds, V, counts, b, x, y)
            _take_rewrite(row, holds, counts, best_q, y)
        moves = _moved_slots(row, prev_row)
        price = _walk_price(row, prev_row, moves, D, move_cost, slowest_rank)
        cost = judged_cost(loads[judge].max() / means[judge], price, in_force, lifetime)
        if cost < best_cost - 1e-12:
            best_cost = cost
            best_row[:] = row
            best_moves = moves
    return best_row, best_moves
