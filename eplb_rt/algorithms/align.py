"""Align a new placement to the previous one so that experts that stay keep their slots.

Ranks are interchangeable for balance (every rank sees the same kind of load), so a new layer's
ranks may be relabelled freely. The relabelling that keeps the most (rank, expert) pairs of the
previous placement is an assignment problem on the ``[D, D]`` overlap matrix, solved exactly by
``scipy.optimize.linear_sum_assignment`` (Hungarian). Inside a rank, experts already there keep
their slot and the rest fill the freed slots in order. The result has the same rank loads as the
new placement and the fewest moved slots among all rank relabellings; among equally good
relabellings it keeps the ranks' own labels.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from eplb_rt.placement import Placement


def align_row(
    new_row: np.ndarray,
    prev_row: np.ndarray,
    num_ranks: int,
    num_experts: int,
    new_share: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Relabel the ranks of one layer ``new_row [P]`` to overlap ``prev_row [P]`` most.

    ``new_share [P]`` (optional) is permuted along. Returns ``(row [P] int64, share [P] | None)``.
    """
    P = new_row.shape[0]
    S = P // num_ranks
    new_grid = new_row.reshape(num_ranks, S)
    prev_grid = prev_row.reshape(num_ranks, S)
    prev_hot = np.zeros((num_ranks, num_experts), dtype=np.int32)
    prev_hot[np.repeat(np.arange(num_ranks), S), prev_row] = 1
    # [new rank, old rank]: the new rank's experts that the old one holds (a gather, not an
    # integer matrix product, which numpy does without BLAS); the identity breaks ties (it adds
    # less than one kept slot in all).
    common = prev_hot[:, new_row].reshape(num_ranks, num_ranks, S).sum(axis=2).T
    overlap = common * (num_ranks + 1) + np.eye(num_ranks, dtype=np.int32)
    new_idx, old_idx = linear_sum_assignment(overlap, maximize=True)
    # Old rank o takes the experts of new rank source[o]: those it holds already keep their
    # slot, the others fill its remaining slots in order.
    source = np.empty(num_ranks, dtype=np.int64)
    source[old_idx] = new_idx
    experts = new_grid[source]
    same = experts[:, :, None] == prev_grid[:, None, :]  # [rank, new slot i, old slot j]
    kept = same.any(axis=2)
    taken = same.any(axis=1)
    placed = np.empty((num_ranks, S), dtype=np.int64)  # old slot j <- new slot placed[j]
    rank_of, i_kept = np.nonzero(kept)
    placed[rank_of, same.argmax(axis=2)[rank_of, i_kept]] = i_kept
    # Stable sorts list the free slots, and the experts without one, in order; row by row
    # there are as many of each.
    free = np.argsort(taken, axis=1, kind="stable")
    rest = np.argsort(kept, axis=1, kind="stable")
    first = np.arange(S)[None, :] < (~taken).sum(axis=1, keepdims=True)
    rank_of = np.nonzero(first)[0]
    placed[rank_of, free[first]] = rest[first]
    out = np.take_along_axis(experts, placed, axis=1)
    out_share = None
    if new_share is not None:
        share_grid = new_share.reshape(num_ranks, S)[source]
        out_share = np.take_along_axis(share_grid, placed, axis=1)
    return out.reshape(P), None if out_share is None else out_share.reshape(P)


def align_placement(previous: Placement, new: Placement) -> Placement:
    """``new`` with every layer's ranks relabelled and slots permuted (:func:`align_row`) to keep
    the most of ``previous`` in place; same rank loads and shares as ``new``."""
    if (previous.num_layers, previous.num_slots, previous.num_ranks, previous.num_experts) != (
        new.num_layers,
        new.num_slots,
        new.num_ranks,
        new.num_experts,
    ):
        raise ValueError(f"cannot align {new.describe()} to {previous.describe()}")
    rows = np.empty((new.num_layers, new.num_slots), dtype=np.int64)
    shares = np.empty((new.num_layers, new.num_slots))
    for layer in range(new.num_layers):
        rows[layer], shares[layer] = align_row(
            new.phy2log[layer].astype(np.int64),
            previous.phy2log[layer].astype(np.int64),
            new.num_ranks,
            new.num_experts,
            new.slot_share[layer],
        )
    return Placement(rows, new.num_experts, new.num_ranks, None if new.is_uniform else shares)
