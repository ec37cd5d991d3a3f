# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""Optimal replica shares: split each expert's tokens over its replicas so rank loads equalise.

Given which ranks hold which experts (a placement's ``phy2log`` row), choosing shares is a
transportation problem: expert ``e`` sends ``w_e`` tokens over the edges to the ranks holding it,
and the largest rank total should be as small as possible. Its optimum is

    T* = max over rank sets Y of  (load of the experts whose replicas all lie in Y) / |Y|,

reached by a flow. Dinkelbach's iteration on a max-flow network (source -> expert: ``w_e``,
expert -> rank: unbounded, rank -> sink: ``T``) finds it: when the flow falls short, the
residual cut names a set whose ratio is the next ``T``. Shares then move as little as possible
from uniform: a second flow pushes only the excess of ranks above ``T*`` to ranks below it.

Numba kernels, one layer per call; :func:`optimal_slot_shares` is the numpy entry point.
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.packing import counts_from_row, holds_from_row, stable_order

_INF = 1e300


@kernel
def _graph(num_nodes, num_edges):
    """An empty flow network: ``(head, nxt, to, cap)`` adjacency lists, edge ``i ^ 1`` the reverse
    of edge ``i``."""
    head = np.full(num_nodes, -1, dtype=np.int64)
    return (
        head,
        np.empty(num_edges, dtype=np.int64),
        np.empty(num_edges, dtype=np.int64),
        np.empty(num_edges),
    )


@kernel
def _add_edge(head, nxt, to, cap, count, u, v, c):
    to[count] = v
    cap[count] = c
    nxt[count] = head[u]
    head[u] = count
    to[count + 1] = u
    cap[count + 1] = 0.0
    nxt[count + 1] = head[v]
    head[v] = count + 1
    return count + 2


@kernel
def _bfs(head, nxt, to, cap, level, via, s, tol):
    """Breadth-first search of the residual graph from ``s``: ``level [n]`` (-1 = unreached)
    and ``via [n]``, the edge each node was reached by."""
    level[:] = -1
    level[s] = 0
    queue = np.empty(level.shape[0], dtype=np.int64)
    queue[0] = s
    qh, qt = 0, 1
    while qh < qt:
        u = queue[qh]
        qh += 1
        e = head[u]
        while e >= 0:
            v = to[e]
            if cap[e] > tol and level[v] < 0:
                level[v] = level[u] + 1
                via[v] = e
                queue[qt] = v
                qt += 1
            e = nxt[e]


@kernel
def _max_flow(head, nxt, to, cap, n, s, t, tol):
    """Push flow from ``s`` to ``t`` along shortest augmenting paths; returns the amount."""
    level = np.empty(n, dtype=np.int64)
    via = np.empty(n, dtype=np.int64)
    total = 0.0
    while True:
        _bfs(head, nxt, to, cap, level, via, s, tol)
        if level[t] < 0:
            return total
        f = _INF
        v = t
        while v != s:
            f = min(f, cap[via[v]])
            v = to[via[v] ^ 1]
        v = t
        while v != s:
            cap[via[v]] -= f
            cap[via[v] ^ 1] += f
            v = to[via[v] ^ 1]
        total += f


@kernel
def min_max_rank_load(row, w, num_ranks, num_slots_per_rank):
    """``T*``: the smallest possible max rank load of this placement over all shares.

    Returns ``(T*, bottleneck [D] bool)``: the rank set whose confined experts force ``T*``
    (all ranks when ``T*`` is the mean rank load).
    """
    E = w.shape[0]
    D = num_ranks
    S = num_slots_per_rank
    P = row.shape[0]
    W = w.sum()
    bottleneck = np.ones(D, dtype=np.bool_)
    if W <= 0.0:
        return 0.0, bottleneck
    # Nodes: 0 source, 1 sink, 2..2+E experts, 2+E..2+E+D ranks.
    n = 2 + E + D
    head, nxt, to, cap = _graph(n, 2 * (E + P + D))
    cnt = 0
    for e in range(E):
        cnt = _add_edge(head, nxt, to, cap, cnt, 0, 2 + e, w[e])
    for p in range(P):
        cnt = _add_edge(head, nxt, to, cap, cnt, 2 + row[p], 2 + E + p // S, _INF)
    sink_edge = cnt
    T = W / D
    for r in range(D):
        cnt = _add_edge(head, nxt, to, cap, cnt, 2 + E + r, 1, T)
    tol = 1e-12 * W
    flow = 0.0
    level = np.empty(n, dtype=np.int64)
    via = np.empty(n, dtype=np.int64)
    for _ in range(4 * D + 8):
        flow += _max_flow(head, nxt, to, cap, n, 0, 1, tol)
        if flow >= W * (1.0 - 1e-12):
            return T, bottleneck
        # Residual reachability from the source names the bottleneck set.
        _bfs(head, nxt, to, cap, level, via, 0, tol)
        wx = w[level[2 : 2 + E] >= 0].sum()
        ny = (level[2 + E :] >= 0).sum()
        if ny == 0:
            return T, bottleneck  # float rounding: flow is as good as it gets
        new_T = wx / ny
        if new_T <= T * (1.0 + 1e-15):
            return T, bottleneck
        bottleneck[:] = level[2 + E :] >= 0
        cap[sink_edge : sink_edge + 2 * D : 2] += new_T - T
        T = new_T
    return T, bottleneck


@kernel
def balanced_slot_shares(row, w, num_ranks, num_slots_per_rank, target):
    """``[P]`` slot shares reaching max rank load ``target`` (>= ``T*``), moving as little load as
    possible away from uniform shares: only the excess of ranks above ``target`` flows, through
    shared experts, to ranks below it."""
    E = w.shape[0]
    D = num_ranks
    S = num_slots_per_rank
    P = row.shape[0]
    counts = counts_from_row(row, E)
    x = np.empty(P)  # tokens each slot takes
    loads = np.zeros(D)
    for p in range(P):
        x[p] = w[row[p]] / counts[row[p]]
        loads[p // S] += x[p]
    # Nodes: 0 source, 1 sink, 2..2+D ranks, 2+D..2+D+E experts.
    n = 2 + D + E
    head, nxt, to, cap = _graph(n, 2 * (2 * P + 2 * D))
    cnt = 0
    out_edge = np.empty(P, dtype=np.int64)  # rank -> expert: tokens withdrawn from slot p
    in_edge = np.empty(P, dtype=np.int64)  # expert -> rank: tokens added to slot p
    need = 0.0
    for r in range(D):
        if loads[r] > target:
            cnt = _add_edge(head, nxt, to, cap, cnt, 0, 2 + r, loads[r] - target)
            need += loads[r] - target
        elif loads[r] < target:
            cnt = _add_edge(head, nxt, to, cap, cnt, 2 + r, 1, target - loads[r])
    for p in range(P):
        r = p // S
        e = row[p]
        out_edge[p] = cnt
        cnt = _add_edge(head, nxt, to, cap, cnt, 2 + r, 2 + D + e, x[p])
        in_edge[p] = cnt
        cnt = _add_edge(head, nxt, to, cap, cnt, 2 + D + e, 2 + r, _INF)
    if need > 0.0:
        _max_flow(head, nxt, to, cap, n, 0, 1, 1e-13 * w.sum())
    share = np.empty(P)
    sums = np.zeros(E)
    for p in range(P):
        # Flow on an edge = capacity of its reverse edge.
        v = x[p] - cap[out_edge[p] + 1] + cap[in_edge[p] + 1]
        v = max(v, 0.0)
        x[p] = v
        sums[row[p]] += v
    for p in range(P):
        e = row[p]
        share[p] = x[p] / sums[e] if sums[e] > 0.0 else 1.0 / counts[e]
    return share


def optimal_slot_shares(
    row: np.ndarray, w: np.ndarray, num_ranks: int, num_slots_per_rank: int
) -> tuple[np.ndarray, float]:
    """Shares minimising the max rank load of one layer: ``row [P]`` experts, ``w [E]`` loads.

    Returns ``(share [P] float64, T*)``: each expert's shares sum to 1; ``T*`` is the max rank
    load they reach (the mean rank load whenever the placement allows it).
    """
    row = np.ascontiguousarray(row, dtype=np.int64)
    w = np.ascontiguousarray(w, dtype=np.float64)
    target, _ = min_max_rank_load(row, w, num_ranks, num_slots_per_rank)
    share = balanced_slot_shares(row, w, num_ranks, num_slots_per_rank, target * (1 + 1e-12))
    return share, target


@kernel
def open_bottleneck(row, w, num_ranks, num_slots_per_rank, max_rewrites, min_gain, width):
    """Rewrite slots (in place) so that shares can lower the max rank load further.

    While ``T*`` is above the mean, the bottleneck rank set ``Y`` holds experts confined to it.
    Candidates give one of the ``width`` heaviest confined experts a replica outside ``Y``, in the
    slot of an expert that keeps another replica and whose per-replica load rises least (among
    ``width`` such slots). Every candidate is scored by its exact ``T*``; the best one is taken
    when it lowers ``T*`` by more than ``min_gain`` (absolute load). Returns ``(T*, rewrites)``.
    """
    E = w.shape[0]
    D = num_ranks
    S = num_slots_per_rank
    P = row.shape[0]
    mean = w.sum() / D
    T, Y = min_max_rank_load(row, w, D, S)
    counts = counts_from_row(row, E)
    holds = holds_from_row(row, D, E)
    done = 0
    confined = np.empty(E, dtype=np.bool_)
    key = np.empty(E)
    slot_key = np.empty(P)
    while done < max_rewrites and T > mean * (1.0 + 1e-9):
        confined[:] = True
        for p in range(P):
            if not Y[p // S]:
                confined[row[p]] = False
        for e in range(E):
            key[e] = -w[e] / counts[e] if confined[e] and counts[e] < D else np.inf
        heavy = stable_order(key)[:width]
        for p in range(P):
            x = row[p]
            slot_key[p] = w[x] / (counts[x] - 1) if counts[x] > 1 and not Y[p // S] else np.inf
        slots = stable_order(slot_key)
        best_T = T - min_gain
        best_p = -1
        best_y = -1
        for y in heavy:
            if key[y] == np.inf:
                continue
            tried = 0
            for p in slots:
                if slot_key[p] == np.inf or tried >= width:
                    break
                if holds[p // S, y]:
                    continue
                tried += 1
                x = row[p]
                row[p] = y
                t, _ = min_max_rank_load(row, w, D, S)
                row[p] = x
                if t < best_T:
                    best_T = t
                    best_p = p
                    best_y = y
        if best_p < 0:
            break
        x = row[best_p]
        r = best_p // S
        row[best_p] = best_y
        counts[x] -= 1
        counts[best_y] += 1
        holds[r, x] = False
        holds[r, best_y] = True
        T, Y = min_max_rank_load(row, w, D, S)
        done += 1
    return T, done
