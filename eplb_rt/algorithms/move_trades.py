# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""Fewer moved slots for the same peak: a re-plan's moves traded one at a time for cheaper ones.

The move walk (:func:`~eplb_rt.algorithms.move_walk.greedy_moves`) takes the move with the
best gain per slot at each step and never revisits it, so a move taken early, when it paid
most, can stay although a later one made it unnecessary. Against an exact solver of the
fewest moved slots at the same peak (CP-SAT, gpt-oss-20b's change of phase) the walk moved
11 % / 7 % more slots at 8x5 / 8x6 (BENCHMARKS §3 "Move selection against the exact optimum").

:func:`trade_moves` takes a re-plan's row and lowers its moved slots while no rank ends above
its peak: it puts one moved slot back (the rank's old expert returns, by a rewrite or by a
swap with a replica of it elsewhere), then, where that lifts a rank above the peak, takes up
to :data:`DEPTH` moves that move no more slots (an already moved slot changed again, or an old
expert put back), each the one that lowers the peak most. A trade is kept only where the peak
comes back under its cap, so each one saves a slot. DeepSeek-V3 32x9, the policy's re-plans
after a phase change (each expert's load times ``exp(sigma N(0, 1))``, sigma 1.0 / 1.5): 16.6 /
23.0 % of the slots -> 15.8 / 19.8 % at the same PAR; gpt-oss-20b's change of phase 34.5 ->
32.2 % (8x5) and 23.1 -> 22.3 % (8x6), about half of the gap to the solver (BENCHMARKS §3
"Sixty-sixth session" and "Sixty-seventh session").

A put-back fills other ranks up to the peak, the slack that the walk's smooth peak had left
them. From the layout before any heat (:mod:`eplb_rt.algorithms.starting`), where no load chose
the slots a trade would keep, that slack is all it changes: on DeepSeek-V3's prompt lengths,
switching each interval, the first plans' trades cost 1.2 % of the throughput at 32x9.
:func:`~eplb_rt.algorithms.equilibrium.plan_layers` trades only the layers whose placement in
force is not that layout.

Arrays as in :mod:`eplb_rt.algorithms.packing`: ``row [P] int64`` (expert of each slot, ranks in
blocks of ``S = P // D``), ``w [E] float64`` (expert load; a replica carries ``w / count``).
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.align import keep_slots
from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.local_search import _swap as swap_slots
from eplb_rt.algorithms.metrics import row_rank_loads
from eplb_rt.algorithms.move_walk import _rewrite as rewrite_loads
from eplb_rt.algorithms.move_walk import _take_rewrite
from eplb_rt.algorithms.packing import counts_from_row, holds_from_row

DEPTH = 3
"""Moves that may repair a put-back slot's overflow. At DeepSeek-V3 32x9 after the largest
phase change (sigma 1.5) one / two / three reach 21.2 / 20.1 / 19.8 % of the slots from the
walk's 23.0 %, each costing about as much again as the one before."""

_CAP_SLACK = 1e-12
"""Relative room above the peak for the loads' rounding: a trade that keeps the peak keeps it
within this, not to the last bit."""


@kernel(inline=True)
def _top2(loads):
    """The most and the second most loaded rank (-1 for none)."""
    a, b = -1, -1
    for r in range(loads.shape[0]):
        if a < 0 or loads[r] > loads[a]:
            b, a = a, r
        elif b < 0 or loads[r] > loads[b]:
            b = r
    return a, b


@kernel(inline=True)
def _peak_without(loads, r1, r2):
    """The largest load of the ranks other than ``r1`` and ``r2``."""
    peak = -np.inf
    for r in range(loads.shape[0]):
        if r != r1 and r != r2 and loads[r] > peak:  # noqa: PLR1714 (numba)
            peak = loads[r]
    return peak


@kernel(inline=True)
def _rewrite_terms(loads, counts, w, r, u, v):
    """``(rise, fall, load)`` of the rewrite of rank ``r``'s replica of ``u`` (``counts[u] >=
    2``) to one of ``v`` (not on ``r``): what each other rank of ``u`` gains, what each rank of
    ``v`` sheds, and ``r``'s new load, rounded as :func:`_rewrite` will leave them."""
    cu, cv = counts[u], counts[v]
    rise = w[u] / (cu - 1) - w[u] / cu
    fall = w[v] / cv - w[v] / (cv + 1)
    return rise, fall, loads[r] + rise + (w[v] / (cv + 1) - w[u] / (cu - 1))


@kernel(inline=True)
def _rewrite_peak(loads, holds, counts, w, r, u, v, limit):
    """The largest load of the ranks that do not fall when rank ``r``'s replica of ``u``
    (``counts[u] >= 2``) becomes one of ``v`` (not on ``r``): ``r`` itself and ``u``'s other
    ranks, which share its load once more (less ``v``'s fall where they hold it too). Stops
    once above ``limit``. Each load rounded as :func:`_rewrite` will leave it."""
    rise, fall, peak = _rewrite_terms(loads, counts, w, r, u, v)
    for q in range(loads.shape[0]):
        if peak > limit:
            break
        if q != r and holds[q, u]:
            peak = max(peak, loads[q] + rise - (fall if holds[q, v] else 0.0))
    return peak


@kernel(inline=True)
def _rewrite_max(loads, holds, counts, w, r, u, v):
    """The peak after the rewrite of :func:`_rewrite_peak`, every rank scanned."""
    rise, fall, peak = _rewrite_terms(loads, counts, w, r, u, v)
    for q in range(loads.shape[0]):
        if q != r:
            load = loads[q]
            if holds[q, u]:
                load += rise
            if holds[q, v]:
                load -= fall
            peak = max(peak, load)
    return peak


@kernel(inline=True)
def _rewrite(row, holds, counts, loads, w, q, v):
    """Slot ``q`` (expert ``u``, ``counts[u] >= 2``) takes expert ``v`` (not on its rank), the
    rank loads ``loads [D]`` kept."""
    D, E = holds.shape
    one = loads.reshape((1, D))
    rewrite_loads(
        one[0], one, 0, holds, w.reshape((1, E)), counts, q // (row.shape[0] // D), row[q], v
    )
    _take_rewrite(row, holds, counts, q, v)


@kernel(inline=True)
def _swap(row, holds, counts, loads, w, p, q):
    """Slots ``p`` and ``q`` (on different ranks, neither holding the other's expert) swap, the
    rank loads ``loads [D]`` kept."""
    S = row.shape[0] // holds.shape[0]
    u, v = row[p], row[q]
    d = w[u] / counts[u] - w[v] / counts[v]
    loads[p // S] -= d
    loads[q // S] += d
    swap_slots(row, holds, p, q)


@kernel(inline=True)
def _new(prev_holds, r, e):
    """1 where rank ``r`` did not hold expert ``e`` before (a slot of it there is moved)."""
    return int(not prev_holds[r, e])


@kernel
def _best_fix(row, holds, counts, loads, prev_holds, w, best):
    """Of the moves that move no more slots and lower the peak rank, the one that leaves the
    lowest peak below ``best``: ``(kind, i, j, peak)``, kind 0 a rewrite of slot ``i`` to expert
    ``j``, 1 a swap of slots ``i`` and ``j``, -1 none.

    Only the peak rank ``a`` can be lowered, so a move swaps one of its slots, rewrites one of
    them, or gives another rank a replica of one of its experts. Each candidate is first
    bounded by the load of ``a`` (or of the rank that receives) and refuted on it, most before
    the ranks it changes are scanned."""
    D, E = holds.shape
    P = row.shape[0]
    S = P // D
    a, second = _top2(loads)
    rest = loads[second]  # the peak of the ranks a move leaves as they are
    if rest >= best:
        return -1, -1, -1, best
    kind, i1, i2 = -1, -1, -1
    for sa in range(S):
        p = a * S + sa
        u = row[p]
        lu = w[u] / counts[u]
        for q in range(P):
            c = q // S
            v = row[q]
            d = lu - w[v] / counts[v]
            if c == a or d <= 0.0 or loads[a] - d >= best or loads[c] + d >= best:
                continue
            if holds[c, u] or holds[a, v]:
                continue
            if _new(prev_holds, a, v) + _new(prev_holds, c, u) > _new(prev_holds, a, u) + _new(
                prev_holds, c, v
            ):
                continue
            other = rest if c != second else _peak_without(loads, a, c)
            peak = max(loads[a] - d, loads[c] + d, other)
            if peak < best:
                kind, i1, i2, best = 1, p, q, peak
        if counts[u] < 2:
            continue
        u_moved = _new(prev_holds, a, u)
        for v in range(E):
            if holds[a, v] or _new(prev_holds, a, v) > u_moved:
                continue
            if loads[a] - lu + w[v] / (counts[v] + 1) >= best:
                continue
            peak = _rewrite_peak(loads, holds, counts, w, a, u, v, best)
            if peak >= best:
                continue
            # The second rank is left as it was, or every rank is scored.
            if holds[second, u] or holds[second, v]:
                peak = _rewrite_max(loads, holds, counts, w, a, u, v)
            else:
                peak = max(peak, rest)
            if peak < best:
                kind, i1, i2, best = 0, p, v, peak
    for q in range(P):
        c = q // S
        u = row[q]
        if c == a or counts[u] < 2:
            continue
        u_moved = _new(prev_holds, c, u)
        for sa in range(S):
            v = row[a * S + sa]
            if holds[c, v] or _new(prev_holds, c, v) > u_moved:
                continue
            new_a = loads[a] - (w[v] / counts[v] - w[v] / (counts[v] + 1))
            if new_a >= best:
                continue
            peak = max(new_a, _rewrite_peak(loads, holds, counts, w, c, u, v, best))
            if peak >= best:
                continue
            if second == c or holds[second, u] or holds[second, v]:
                peak = _rewrite_max(loads, holds, counts, w, c, u, v)
            else:
                peak = max(peak, rest)
            if peak < best:
                kind, i1, i2, best = 0, q, v, peak
    return kind, i1, i2, best


@kernel
def _repair(row, holds, counts, loads, prev_holds, w, cap, depth, log):
    """Up to ``depth`` moves of :func:`_best_fix` until the peak is at most ``cap``, each
    logged in ``log[1:]`` as ``(kind, slot, slot or the slot's old expert)``; returns
    ``(peak, moves)``."""
    a, _ = _top2(loads)
    peak = loads[a]
    n = 0
    while n < depth and peak > cap:
        kind, i, j, _ = _best_fix(row, holds, counts, loads, prev_holds, w, peak)
        if kind < 0:
            break
        n += 1
        log[n, 0], log[n, 1] = kind, i
        if kind == 0:
            log[n, 2] = row[i]
            _rewrite(row, holds, counts, loads, w, i, j)
        else:
            log[n, 2] = j
            _swap(row, holds, counts, loads, w, i, j)
        a, _ = _top2(loads)
        peak = loads[a]
    return peak, n


@kernel
def _undo(row, holds, counts, loads, w, log, n, saved_loads, saved_counts):
    """Take back the ``n`` moves of ``log``, last first; loads and counts as saved (bit for bit,
    not as the moves' sums would leave them)."""
    for t in range(n - 1, -1, -1):
        if log[t, 0] == 0:
            _rewrite(row, holds, counts, loads, w, log[t, 1], log[t, 2])
        else:
            _swap(row, holds, counts, loads, w, log[t, 1], log[t, 2])
    loads[:] = saved_loads
    counts[:] = saved_counts


@kernel
def _put_back(row, holds, counts, loads, prev_holds, prev, w, p, cap, depth, log, saved):
    """One trade at slot ``p``, if it is moved and one exists: its rank's old expert ``x``
    returns, by a rewrite of the slot (while its expert keeps a replica) or by a swap with a
    replica of ``x`` elsewhere that moves no slot there, and at most ``depth`` moves of
    :func:`_best_fix` bring the peak back to ``cap``. Returns whether one was made (else every
    array is as it was). ``saved``: room for the loads and counts."""
    S = row.shape[0] // holds.shape[0]
    b = p // S
    y = row[p]
    if prev_holds[b, y]:
        return False
    for i in range(b * S, (b + 1) * S):
        x = prev[i]
        if holds[b, x]:
            continue
        for q in range(-1, row.shape[0]):  # -1: slot p rewritten to x; else a swap with slot q
            if q < 0 and counts[y] < 2:
                continue
            if q >= 0:
                c = q // S
                if row[q] != x or c == b or holds[c, y]:
                    continue
                if _new(prev_holds, c, y) > _new(prev_holds, c, x):
                    continue
            saved[0][:] = loads
            saved[1][:] = counts
            log[0, 1] = p
            if q < 0:
                log[0, 0], log[0, 2] = 0, y
                _rewrite(row, holds, counts, loads, w, p, x)
            else:
                log[0, 0], log[0, 2] = 1, q
                _swap(row, holds, counts, loads, w, p, q)
            peak, n = _repair(row, holds, counts, loads, prev_holds, w, cap, depth, log)
            if peak <= cap:
                return True
            _undo(row, holds, counts, loads, w, log, n + 1, saved[0], saved[1])
    return False


@kernel
def trade_moves(row, prev, w, num_ranks, depth):
    """``row [P]`` with fewer slots moved from ``prev [P]`` and no rank above ``row``'s peak
    on ``w [E]`` (within :data:`_CAP_SLACK`): returns ``(row [P] int64, trades)``, each trade
    one slot fewer or two (a swap that puts back the old experts of both its ranks). Experts
    kept on a rank stay in their previous slots.

    Each trade puts a moved slot of rank ``b`` back: the old expert ``x`` of one of ``b``'s
    slots returns, by a rewrite of the slot's expert ``y`` (while ``y`` keeps a replica) or by
    a swap with a replica of ``x`` on another rank (one that costs no slot there); where a rank
    then ends above the cap, up to ``depth`` moves of :func:`_best_fix` must bring it back, or
    the trade is taken back. The slots are swept in turn, first with no repair (the cheap
    trades), then with ``depth``; a sweep goes on from the last trade and ends after a whole
    round of the slots without one."""
    E = w.shape[0]
    D = num_ranks
    P = row.shape[0]
    row = row.copy()
    if D < 2 or w.sum() <= 0.0:
        return row, 0
    holds = holds_from_row(row, D, E)
    prev_holds = holds_from_row(prev, D, E)
    counts = counts_from_row(row, E)
    loads = row_rank_loads(row, w.reshape((1, E)), D)[0]
    cap = loads.max() * (1.0 + _CAP_SLACK)
    log = np.empty((depth + 1, 3), dtype=np.int64)
    saved = (np.empty(D), np.empty(E, dtype=np.int64))
    trades = 0
    for reach in (0, depth):
        p = 0
        idle = 0
        while idle < P:
            if _put_back(row, holds, counts, loads, prev_holds, prev, w, p, cap, reach, log, saved):
                trades += 1
                idle = 0
            else:
                idle += 1
                p = (p + 1) % P
    return keep_slots(row, prev, D), trades
