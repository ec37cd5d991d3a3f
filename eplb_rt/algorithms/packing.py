# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""Numba kernels that put replicas on ranks: orderings, longest-processing-time packing.

Everything here works on ONE layer and plain arrays:

* ``per [E] float64``: load of one replica of each expert (expert load / replica count);
* ``counts [E] int64``: replicas per expert, ``1 <= counts[e] <= D``, summing to ``P = D * S``;
* ``row [P] int64``: expert held by each slot, slot ``p`` on rank ``p // S`` (-1 = empty);
* ``holds [D, E] bool``: whether a rank holds an expert (kept in sync with ``row``).

All kernels are :func:`~eplb_rt.algorithms.jit.kernel` kernels (a balancer thread runs them without
the GIL) and deterministic: ties break towards the lower index.
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jit import kernel

_EPS = 1e-12


_RUN = 16
"""Runs of this many are sorted by insertion before :func:`stable_order` merges them."""


@kernel
def stable_order(values):
    """Indices sorting ``values [n]`` ascending; ties keep index order (bottom-up merge sort).

    The order of ``np.argsort(values, kind="stable")``, written out because numba's argsort
    adds over a second of compile time to every kernel that uses it. Runs of ``_RUN`` are
    sorted by insertion first, and the keys move with their indices: a third less time than
    merging single elements through the indices (any stable sort gives the same order).
    """
    n = values.shape[0]
    key = np.empty(n)
    idx = np.empty(n, dtype=np.int64)
    for i in range(n):
        key[i] = values[i]
        idx[i] = i
    for lo in range(0, n, _RUN):
        for i in range(lo + 1, min(lo + _RUN, n)):
            v, x = key[i], idx[i]
            j = i
            while j > lo and key[j - 1] > v:
                key[j], idx[j] = key[j - 1], idx[j - 1]
                j -= 1
            key[j], idx[j] = v, x
    spare_key = np.empty(n)
    spare_idx = np.empty(n, dtype=np.int64)
    width = _RUN
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j = lo, mid
            for k in range(lo, hi):
                if j >= hi or (i < mid and key[i] <= key[j]):
                    spare_key[k], spare_idx[k] = key[i], idx[i]
                    i += 1
                else:
                    spare_key[k], spare_idx[k] = key[j], idx[j]
                    j += 1
        key, spare_key = spare_key, key
        idx, spare_idx = spare_idx, idx
        width *= 2
    return idx


@kernel
def holds_from_row(row, num_ranks, num_experts):
    """``[D, E] bool``: rank r holds expert e somewhere in ``row [P]``."""
    S = row.shape[0] // num_ranks
    holds = np.zeros((num_ranks, num_experts), dtype=np.bool_)
    for p in range(row.shape[0]):
        holds[p // S, row[p]] = True
    return holds


@kernel
def counts_from_row(row, num_experts):
    """``[E] int64``: replicas of each expert in ``row [P]``."""
    counts = np.zeros(num_experts, dtype=np.int64)
    for p in range(row.shape[0]):
        counts[row[p]] += 1
    return counts


@kernel
def place_replica(e, per, loads, fill, holds, row):
    """Put one replica of ``e`` on the least-loaded rank with a free slot that lacks ``e``.

    ``loads [D]`` and ``fill [D]`` (slots used per rank, filled in slot order) are updated. When
    every rank with a free slot already holds ``e`` (possible near the end), make room: move an
    expert ``x`` from a rank ``q`` without ``e`` to a free slot elsewhere and put ``e`` in ``x``'s
    old slot, choosing the move that keeps the larger of the two ranks' loads lowest. Room always
    exists when no expert has more replicas than ranks.
    """
    D = loads.shape[0]
    S = row.shape[0] // D
    best = -1
    for r in range(D):
        if fill[r] < S and (best < 0 or loads[r] < loads[best] - _EPS) and not holds[r, e]:
            best = r
    if best >= 0:
        row[best * S + fill[best]] = e
        fill[best] += 1
        holds[best, e] = True
        loads[best] += per[e]
        return
    best_cost = np.inf
    free = -1
    slot = -1
    for r in range(D):
        if fill[r] == S:
            continue
        for q in range(D):
            if holds[q, e]:
                continue
            for s in range(fill[q]):
                x = row[q * S + s]
                cost = max(loads[r] + per[x], loads[q] - per[x] + per[e])
                if not holds[r, x] and cost < best_cost:
                    best_cost = cost
                    free = r
                    slot = q * S + s
    q = slot // S
    x = row[slot]
    row[free * S + fill[free]] = x
    fill[free] += 1
    holds[free, x] = True
    loads[free] += per[x]
    row[slot] = e
    holds[q, x] = False
    holds[q, e] = True
    loads[q] += per[e] - per[x]


@kernel
def lpt_place(w, counts, num_ranks):
    """Longest-processing-time placement of the replicas given by ``counts`` (uniform shares).

    Experts by decreasing load per replica (lower id first on ties), each replica to the
    least-loaded rank with a free slot that does not hold its expert (:func:`place_replica`).
    ``w [E]``, ``counts [E]``; returns ``row [P] int64``, ``P = sum(counts)``.
    """
    E = w.shape[0]
    D = num_ranks
    per = w / counts
    order = stable_order(-per)
    row = np.full(counts.sum(), -1, dtype=np.int64)
    fill = np.zeros(D, dtype=np.int64)
    holds = np.zeros((D, E), dtype=np.bool_)
    loads = np.zeros(D)
    for i in range(E):
        e = order[i]
        for _ in range(counts[e]):
            place_replica(e, per, loads, fill, holds, row)
    return row


@kernel
def pack_equal_groups(weights, num_packs):
    """LPT packing of ``n`` items into packs of exactly ``n / num_packs`` items.

    ``weights [n] float64`` (``n`` a multiple of ``num_packs``); returns ``[n] int64``, the pack
    of each item. Heavier items first (lower id on ties), each to the lightest pack with room.
    """
    n = weights.shape[0]
    capacity = n // num_packs
    order = stable_order(-weights)
    pack_of = np.empty(n, dtype=np.int64)
    filled = np.zeros(num_packs, dtype=np.int64)
    pack_load = np.zeros(num_packs)
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


@kernel
def _top_three(loads, top):
    """``top [3]``: the indices of the three heaviest of ``loads [n]`` (the first of equal
    loads first; -1 past ``n``)."""
    top[:] = -1
    for p in range(loads.shape[0]):
        for i in range(3):
            if top[i] < 0 or loads[p] > loads[top[i]]:
                for j in range(2, i, -1):
                    top[j] = top[j - 1]
                top[i] = p
                break


@kernel
def _peak_after_swap(loads, top, a, b, d):
    """The largest of ``loads [n]`` once ``d`` moves from pack ``a`` to pack ``b``; ``top [3]``
    (:func:`_top_three`) holds the heaviest pack that is neither."""
    peak = max(loads[a] - d, loads[b] + d)
    for i in range(3):
        p = top[i]
        if p >= 0 and p not in (a, b):
            return max(peak, loads[p])
    return peak


@kernel
def swap_items(pack_of, rows, num_packs, max_swaps):
    """Swaps of two items between packs that lower the sum over ``rows`` of the heaviest pack's
    load (in place; pack sizes are kept); returns the swaps made.

    ``pack_of [n] int64``: each item's pack; ``rows [K, n] float64``: the items' loads in each of
    ``K`` scenarios (episodes). Each round takes the swap of largest gain (the first of equal
    gains), until no swap lowers the sum by more than rounding, or ``max_swaps``. A swap
    between two packs neither of which is the heaviest in any scenario lowers no peak, and is
    not scored; the others are scored in ``O(K)`` from each scenario's three heaviest packs
    (a round costs ``O(n^2 K)``, not ``O(n^2 K num_packs)``: hundreds of expert groups).
    """
    K, n = rows.shape
    loads = np.zeros((K, num_packs))
    peaks = np.zeros(K)
    top = np.empty((K, 3), dtype=np.int64)
    peak_pack = np.zeros(num_packs, dtype=np.bool_)
    total = 0.0
    for k in range(K):
        for i in range(n):
            loads[k, pack_of[i]] += rows[k, i]
            total += abs(rows[k, i])
    floor = _EPS * max(total, 1e-300)
    swaps = 0
    while swaps < max_swaps:
        peak_pack[:] = False
        for k in range(K):
            _top_three(loads[k], top[k])
            peaks[k] = loads[k, top[k, 0]]
            peak_pack[top[k, 0]] = True
        best, best_x, best_y = floor, -1, -1
        for x in range(n):
            for y in range(x + 1, n):
                a, b = pack_of[x], pack_of[y]
                if a == b or not (peak_pack[a] or peak_pack[b]):
                    continue
                gain = 0.0
                for k in range(K):
                    d = rows[k, x] - rows[k, y]
                    gain += peaks[k] - _peak_after_swap(loads[k], top[k], a, b, d)
                if gain > best:
                    best, best_x, best_y = gain, x, y
        if best_x < 0:
            break
        a, b = pack_of[best_x], pack_of[best_y]
        for k in range(K):
            d = rows[k, best_x] - rows[k, best_y]
            loads[k, a] -= d
            loads[k, b] += d
        pack_of[best_x], pack_of[best_y] = b, a
        swaps += 1
    return swaps


@kernel
def score_place(experts, counts, mu, cov, z, mean, var, row, fill, holds):
    """Place every replica of ``experts`` (hottest per replica first) on the rank whose score
    ``mean + z * std`` of load across episodes grows least (FlashLB's device score), in place.

    ``mu [E]`` and ``cov [E, E]``: mean and covariance of expert load across episodes;
    ``mean [D]`` / ``var [D]``: the ranks' current load statistics, kept up to date.
    """
    D = mean.shape[0]
    S = row.shape[0] // D
    per = mu / counts
    order = stable_order(-per[experts])
    for t in order:
        i = experts[t]
        share = 1.0 / counts[i]
        for _ in range(counts[i]):
            best = -1
            best_score = np.inf
            best_var = 0.0
            for r in range(D):
                if fill[r] >= S or holds[r, i]:
                    continue
                v = var[r] + share * share * cov[i, i]
                for s in range(fill[r]):
                    j = row[r * S + s]
                    v += 2.0 * share * cov[i, j] / counts[j]
                sc = mean[r] + per[i] + z * np.sqrt(max(v, 0.0))
                if sc < best_score:
                    best_score = sc
                    best = r
                    best_var = v
            if best >= 0:
                var[best] = best_var
                mean[best] += per[i]
                row[best * S + fill[best]] = i
                fill[best] += 1
                holds[best, i] = True
                continue
            # Every rank with room holds i already: the repairing placer, then fresh statistics.
            place_replica(i, per, mean, fill, holds, row)
            for r in range(D):
                m = 0.0
                v = 0.0
                for a in range(fill[r]):
                    x = row[r * S + a]
                    m += per[x]
                    for b in range(fill[r]):
                        y = row[r * S + b]
                        v += cov[x, y] / (counts[x] * counts[y])
                mean[r] = m
                var[r] = v
