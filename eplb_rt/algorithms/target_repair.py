# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""Moves that bring every rank's load under a target, ranked by the load they take off the ranks
above it per slot moved.

The move walk (:func:`~eplb_rt.algorithms.move_walk.greedy_moves`) ranks a move by how much
it lowers the smooth peak, so each step relieves the peak rank and its near neighbours, and a rank
that is one move from the target waits until it is the peak. Ranked by the fall of the
*overflow* (the load above a cap, summed over every rank), a step relieves whichever rank over
the cap it relieves most per slot, into a rank with room below the cap: on re-plans of the
DeepSeek-V3 workloads after a phase change it reached PAR 1.01 with about a quarter fewer moved
slots than the walk's prefixes at a tenth of the excess (BENCHMARKS §3 "Fifty-third session"),
and 2-5 % fewer than the walk at the whole excess, which after the largest change stops short
of 1.01 on some layers ("Sixty-first session"). It is a candidate of the re-plan's judge
(:func:`~eplb_rt.algorithms.replan_judge.settle`), not a plan of its own: it
knows no price, its targets are the walk's PAR and, on a window of sampled counts, the fresh
plan's within the window's noise, and it sees one row of load (where the re-plan reads a window
of episodes it is kept only where it leaves them no less balanced than the walk, which ranks its
moves on them). Each step draws its moves from the few ranks furthest over the
cap (:data:`_SCANNED`), as the walk draws from two: scanning every rank over it took 1.5-3
times as long for about 1-2 % fewer slots.

Arrays as in :mod:`eplb_rt.algorithms.packing`: ``row [P] int64`` (expert of each slot, ranks
in blocks of ``S = P // D``), ``w [E] float64`` (expert load; a replica carries ``w / count``).
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.local_search import _swap
from eplb_rt.algorithms.metrics import row_rank_loads
from eplb_rt.algorithms.move_walk import (
    _ranks_of,
    _rewrite,
    _rewrite_slots,
    _swap_slots,
    _take_rewrite,
)
from eplb_rt.algorithms.packing import counts_from_row, holds_from_row
from eplb_rt.algorithms.sums import pairwise_sum

_SCANNED = 4
"""Ranks over the cap whose slots a step's moves are drawn from: the most loaded."""

_TIE = 1e-9
"""Relative margin within which two moves' falls per slot are equal (the first is taken): far
above the rounding of the loads' sums, which would otherwise pick between equal moves."""


@kernel(inline=True)
def _over(load, cap):
    """A rank's load above ``cap``."""
    return max(load - cap, 0.0)


@kernel(inline=True)
def _rewrite_fall(L, cap, w, counts, where, holds, b, x, y):
    """The overflow's fall when rank ``b``'s replica of ``x`` (``counts[x] >= 2``) becomes one of
    ``y`` (not on ``b``): ``x``'s other ranks take its share, ``y``'s ranks give some."""
    cx, cy = counts[x], counts[y]
    dx = w[x] / (cx - 1) - w[x] / cx
    dy = w[y] / (cy + 1) - w[y] / cy
    on_b = L[b] - w[x] / cx + w[y] / (cy + 1)
    fall = _over(L[b], cap) - _over(on_b, cap)
    for i in range(cx):
        r = where[x, i]
        if r != b:
            now = L[r] + dx + (dy if holds[r, y] else 0.0)
            fall += _over(L[r], cap) - _over(now, cap)
    for i in range(cy):
        r = where[y, i]
        if not holds[r, x]:  # ranks of both are counted above
            fall += _over(L[r], cap) - _over(L[r] + dy, cap)
    return fall


@kernel
def repair_to(prev_row, w, num_ranks, target, budget):
    """``prev_row [P] int64`` moved until no rank's load on ``w [E] float64`` exceeds ``target``
    times the mean rank load, or no move it draws lowers the overflow within ``budget`` moved
    slots (a move relieving only a rank over the cap beyond the :data:`_SCANNED` most loaded is
    not drawn).

    A move swaps two slots of different ranks (a replica of one of the :data:`_SCANNED` most
    loaded ranks over the cap for a lighter one) or rewrites a slot whose expert keeps a replica
    elsewhere to another expert, on such a rank or for an expert one of them holds. ``prev_row``
    must hold no expert twice on a rank (as the move walks assume). Each step takes the move
    with the largest fall of the overflow per slot it newly moves away from ``prev_row`` (half a
    slot when it moves none, as :func:`~eplb_rt.algorithms.move_walk.greedy_moves` counts
    them), the first in scan order of equal ones (within :data:`_TIE`). Returns ``row [P]
    int64`` (no rank holds an expert twice where ``prev_row`` does not)."""
    D = num_ranks
    P = prev_row.shape[0]
    S = P // D
    E = w.shape[0]
    row = prev_row.copy()
    total = pairwise_sum(w)
    if total <= 0.0 or budget <= 0:
        return row
    cap = target * total / D
    tol = 1e-12 * total / D  # the loads' rounding: a rank at the cap is not over it
    counts = counts_from_row(row, E)
    holds = holds_from_row(row, D, E)
    W = w.reshape((1, E))
    loads = row_rank_loads(row, W, D)  # [1, D]: the rewrites' load update reads rows
    L = loads[0]
    hot = np.zeros(D, dtype=np.bool_)
    on_hot = np.zeros(E, dtype=np.bool_)
    hot_experts = np.empty(E, dtype=np.int64)
    reach = np.zeros(E)  # what one replica more of an expert takes off its ranks over the cap
    moves = 0
    for _ in range(8 * P):  # every step lowers the overflow; the cap only bounds rounding loops
        # Moves are drawn from the ranks furthest over the cap (every rank's overflow scores
        # them): the most loaded, the lower rank first of equal loads.
        hot[:] = False
        for _ in range(min(_SCANNED, D)):
            top = -1
            for r in range(D):
                if not hot[r] and L[r] > cap + tol and (top < 0 or L[r] > L[top]):
                    top = r
            if top < 0:
                break
            hot[top] = True
        if not hot.any():
            break
        on_hot[:] = False
        n_hot = 0
        for p in range(P):
            e = row[p]
            if hot[p // S] and not on_hot[e]:
                on_hot[e] = True
                hot_experts[n_hot] = e
                n_hot += 1
        where = _ranks_of(row, counts, D)
        reach[:] = 0.0
        for p in range(P):
            y = row[p]
            give = w[y] / counts[y] - w[y] / (counts[y] + 1)
            reach[y] += min(_over(L[p // S], cap), give)
        best, best_p, best_q, best_y = 0.0, -1, -1, -1
        # Rewrites: slot q (expert x, which keeps a replica elsewhere) takes expert y; the
        # overflow falls only where q's rank or one of y's ranks is over the cap.
        for q in range(P):
            b = q // S
            x = row[q]
            if counts[x] < 2:
                continue
            over_b = _over(L[b], cap)
            vx = w[x] / counts[x]
            n = E if hot[b] else n_hot
            for i in range(n):
                y = i if hot[b] else hot_experts[i]
                if y == x or holds[b, y] or counts[y] >= D:
                    continue
                extra = _rewrite_slots(prev_row, q, x, y)
                c = max(extra, 0.5)
                # At most what b sheds, to its cap, and what y's ranks over the cap give.
                bound = min(over_b, max(vx - w[y] / (counts[y] + 1), 0.0)) + reach[y]
                if moves + extra > budget or bound <= c * best:
                    continue
                fall = _rewrite_fall(L, cap, w, counts, where, holds, b, x, y)
                if fall <= tol:
                    continue
                g = fall / c
                if g > best * (1.0 + _TIE):
                    best, best_p, best_q, best_y = g, -1, q, y
        # Swaps: a replica x of a rank a over the cap for a lighter replica y of rank b.
        for a in range(D):
            over_a = _over(L[a], cap)
            # No swap takes more than a's overflow off it, nor moves less than half a slot.
            if not hot[a] or 2.0 * over_a <= best:
                continue
            for p in range(a * S, (a + 1) * S):
                x = row[p]
                vx = w[x] / counts[x]
                for q in range(P):
                    b = q // S
                    y = row[q]
                    if b == a or holds[b, x] or holds[a, y]:
                        continue
                    d = vx - w[y] / counts[y]
                    if d <= 0.0:
                        continue
                    extra = _swap_slots(prev_row, p, q, x, y)
                    c = max(extra, 0.5)
                    if moves + extra > budget or min(over_a, d) <= c * best:
                        continue
                    fall = over_a - _over(L[a] - d, cap)
                    fall += _over(L[b], cap) - _over(L[b] + d, cap)
                    if fall <= tol:
                        continue
                    g = fall / c
                    if g > best * (1.0 + _TIE):
                        best, best_p, best_q, best_y = g, p, q, -1
        if best_q < 0:
            break
        if best_p >= 0:
            x, y = row[best_p], row[best_q]
            d = w[x] / counts[x] - w[y] / counts[y]
            L[best_p // S] -= d
            L[best_q // S] += d
            moves += _swap_slots(prev_row, best_p, best_q, x, y)
            _swap(row, holds, best_p, best_q)
        else:
            x, y, b = row[best_q], best_y, best_q // S
            _rewrite(L, loads, 0, holds, W, counts, b, x, y)
            moves += _rewrite_slots(prev_row, best_q, x, y)
            _take_rewrite(row, holds, counts, best_q, y)
    return row
