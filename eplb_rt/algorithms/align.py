"""Align a new placement to the previous one so that experts that stay keep their slots.

Ranks are interchangeable for balance (every rank sees the same kind of load), so a new layer's
ranks may be relabelled freely. The relabelling that keeps the most (rank, expert) pairs of the
previous placement is an assignment problem on the ``[D, D]`` overlap matrix, solved exactly by
shortest augmenting paths (:func:`max_assignment`). Inside a rank, experts already there keep
their slot and the rest fill the freed slots in order. The result has the same rank loads as the
new placement and the fewest moved slots among all rank relabellings; among equally good
relabellings it keeps the ranks' own labels.

Everything is one numba kernel (:func:`align_order`), no GIL: the policies align every layer
from the balancer's thread, where each return to Python costs the serving thread a hand-off.
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jit import kernel
from eplb_rt.placement import Placement, slot_tables
from eplb_rt.scalars import check_count, check_divisor


@kernel
def _overlap(new_row, prev_row, num_ranks, num_experts):
    """``[new rank, old rank] float64``: the new rank's slots whose expert the old rank holds,
    times ``D + 1``, plus the identity, which breaks ties (it adds less than one kept slot in
    all) towards the ranks' own labels."""
    D = num_ranks
    S = new_row.shape[0] // D
    holds = np.zeros((D, num_experts), dtype=np.bool_)
    for p in range(prev_row.shape[0]):
        holds[p // S, prev_row[p]] = True
    out = np.zeros((D, D))
    for n in range(D):
        for o in range(D):
            common = 0
            for i in range(S):
                common += holds[o, new_row[n * S + i]]
            out[n, o] = common * (D + 1) + (n == o)
    return out


@kernel
def _slot_order(new_row, prev_row, source, num_ranks):
    """``[P] int64``: the new slot each old slot takes once old rank ``o`` holds new rank
    ``source[o]``'s experts. An expert the old rank holds already keeps its slot (an expert
    there twice, each copy one of its slots); the others fill the remaining slots in order."""
    D = num_ranks
    S = new_row.shape[0] // D
    order = np.empty(new_row.shape[0], dtype=np.int64)
    placed = np.empty(S, dtype=np.int64)
    kept = np.empty(S, dtype=np.bool_)
    taken = np.empty(S, dtype=np.bool_)
    for o in range(D):
        n = source[o]
        kept[:] = False
        taken[:] = False
        for i in range(S):
            for j in range(S):
                if not taken[j] and prev_row[o * S + j] == new_row[n * S + i]:
                    kept[i] = taken[j] = True
                    placed[j] = i
                    break
        j = 0
        for i in range(S):
            if not kept[i]:
                while taken[j]:
                    j += 1
                placed[j] = i
                j += 1
        for j in range(S):
            order[o * S + j] = n * S + placed[j]
    return order


@kernel
def max_assignment(score):
    """``[n] int64``: the column of each row of the square ``score [n, n] float64`` that
    maximises the summed score, each column used once.

    Shortest augmenting paths with dual potentials (Jonker-Volgenant as described by Crouse,
    2016), O(n^3): each row in turn is matched through the cheapest alternating path in reduced
    costs. Columns are scanned from the last, swap-removed, and a tie goes to a free column:
    with these rules a constant matrix gives the identity, and the result equals
    ``scipy.optimize.linear_sum_assignment(score, maximize=True)``'s, ties included.
    """
    n = score.shape[0]
    u = np.zeros(n)  # row potentials
    v = np.zeros(n)  # column potentials
    col_of = np.full(n, -1, dtype=np.int64)
    row_of = np.full(n, -1, dtype=np.int64)
    came_from = np.full(n, -1, dtype=np.int64)  # the row each column was reached from
    dist = np.empty(n)
    left = np.empty(n, dtype=np.int64)
    row_seen = np.empty(n, dtype=np.bool_)
    col_seen = np.empty(n, dtype=np.bool_)
    for start in range(n):
        for t in range(n):
            left[t] = n - 1 - t
        num_left = n
        row_seen[:] = False
        col_seen[:] = False
        dist[:] = np.inf
        reach = 0.0
        i = start
        sink = -1
        while sink < 0:
            row_seen[i] = True
            best = -1
            lowest = np.inf
            for t in range(num_left):
                j = left[t]
                # Costs are the negated scores: the search minimises.
                d = reach - score[i, j] - u[i] - v[j]
                if d < dist[j]:
                    came_from[j] = i
                    dist[j] = d
                if dist[j] < lowest or (dist[j] == lowest and row_of[j] < 0):
                    lowest = dist[j]
                    best = t
            reach = lowest
            j = left[best]
            if row_of[j] < 0:
                sink = j
            else:
                i = row_of[j]
            col_seen[j] = True
            num_left -= 1
            left[best] = left[num_left]
        u[start] += reach
        for i in range(n):
            if row_seen[i] and i != start:
                u[i] += reach - dist[col_of[i]]
        for j in range(n):
            if col_seen[j]:
                v[j] -= reach - dist[j]
        j = sink
        while True:
            i = came_from[j]
            row_of[j] = i
            col_of[i], j = j, col_of[i]
            if i == start:
                break
    return col_of


@kernel
def keep_slots(new_row, prev_row, num_ranks):
    """``new_row [P]`` with no rank relabelled: on each rank, the experts ``prev_row`` had there
    in their old slots, the others in the freed slots in order."""
    return new_row[_slot_order(new_row, prev_row, np.arange(num_ranks), num_ranks)]


@kernel
def align_order(new_row, prev_row, num_ranks, num_experts):
    """``[P] int64``: the new slot each slot takes, so that ``new_row[order]`` is ``new_row``
    relabelled and permuted to keep the most of ``prev_row`` in place (both ``[P] int64``)."""
    old_of_new = max_assignment(_overlap(new_row, prev_row, num_ranks, num_experts))
    source = np.empty(num_ranks, dtype=np.int64)
    source[old_of_new] = np.arange(num_ranks)
    return _slot_order(new_row, prev_row, source, num_ranks)


def align_row(
    new_row: np.ndarray,
    prev_row: np.ndarray,
    num_ranks: int,
    num_experts: int,
    new_share: np.ndarray | None = None,
    *,
    num_nodes: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Relabel the ranks of one layer ``new_row [P] int64`` to overlap ``prev_row [P] int64``
    most; with ``num_nodes > 1`` each node's ranks only among themselves, so a placement that
    keeps expert groups on nodes still does.

    ``new_share [P]`` (optional) is permuted along. Returns ``(row [P] int64, share [P] | None)``.
    """
    prev_row, new_row = slot_tables(prev_row, new_row, num_ranks, ndim=1)
    # Nodes cutting across ranks would swap slots between ranks, not relabel ranks.
    check_divisor("num_nodes", num_nodes, num_ranks, f"num_ranks ({num_ranks})")
    check_count("num_experts", num_experts)
    for name, row in (("prev_row", prev_row), ("new_row", new_row)):
        bad = np.flatnonzero((row < 0) | (row >= num_experts))  # the kernel indexes by id
        if bad.size:
            raise ValueError(
                f"{name}[{bad[0]}] = {row[bad[0]]} must be an expert id in [0, {num_experts})"
            )
    width = new_row.shape[0] // num_nodes
    order = np.concatenate(
        [
            n * width
            + align_order(
                new_row[n * width : (n + 1) * width],
                prev_row[n * width : (n + 1) * width],
                num_ranks // num_nodes,
                num_experts,
            )
            for n in range(num_nodes)
        ]
    )
    return new_row[order], None if new_share is None else new_share[order]


def align_rows(
    rows: np.ndarray,
    previous: np.ndarray,
    num_ranks: int,
    num_experts: int,
    shares: np.ndarray | None = None,
    *,
    num_nodes: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`align_row` of each layer of ``rows [L, P]`` to ``previous [L, P]`` (``shares [L,
    P]``, optional, permuted along). Returns ``(rows [L, P] int64, shares [L, P] | None)``."""
    out = np.empty(rows.shape, dtype=np.int64)
    out_shares = None if shares is None else np.empty(rows.shape)
    for layer in range(rows.shape[0]):
        out[layer], share = align_row(
            rows[layer], previous[layer], num_ranks, num_experts,
            None if shares is None else shares[layer], num_nodes=num_nodes,
        )  # fmt: skip
        if out_shares is not None:
            out_shares[layer] = share
    return out, out_shares


def align_placement(previous: Placement, new: Placement, num_nodes: int = 1) -> Placement:
    """``new`` with every layer's ranks relabelled and slots permuted (:func:`align_row`, within
    each of ``num_nodes`` nodes) to keep the most of ``previous`` in place; same rank loads and
    shares as ``new``."""
    if (previous.num_layers, previous.num_slots, previous.num_ranks, previous.num_experts) != (
        new.num_layers,
        new.num_slots,
        new.num_ranks,
        new.num_experts,
    ):
        raise ValueError(f"cannot align {new.describe()} to {previous.describe()}")
    shares = None if new.is_uniform else new.slot_share
    rows, shares = align_rows(
        new.phy2log, previous.phy2log, new.num_ranks, new.num_experts, shares, num_nodes=num_nodes
    )
    return Placement(rows, new.num_experts, new.num_ranks, shares)
