"""A re-plan never dearer than what is in force: each layer's cost of a plan, and the cheaper of
two plans layer by layer.

A layer's cost is ``PAR + move_cost * slots moved / D`` on its summed load (``move_cost`` 0 for
a policy that does not price moves: the lower PAR, keeping on ties). Shares count: a placement
in force that splits its experts unevenly is compared as it serves, with its shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from eplb_rt.algorithms import metrics
from eplb_rt.placement import Placement, Topology, even_shares

if TYPE_CHECKING:  # the registry calls the policies that call this module
    from eplb_rt.algorithms.registry import Layers


def layer_costs(rows, shares, previous, load, *, num_ranks: int, move_cost: float) -> np.ndarray:
    """``[k]``: each layer's ``PAR + move_cost * slots moved from previous / D``, for ``rows,
    previous [k, P]``, ``shares [k, P]`` or ``None`` (uniform), ``load [k, E]`` (a layer
    without load: PAR 1)."""
    placement = Placement(rows, load.shape[1], num_ranks, shares)
    par = np.nan_to_num(metrics.par(placement, load), nan=1.0)
    return par + move_cost * (rows != previous).sum(axis=1) / num_ranks


def cheaper(batch: Layers, which, planned, other, *, topology: Topology, options: Any, price=True):
    """``planned = (rows [L, P], shares or None)`` with layers ``which`` taken from ``other =
    (rows [k, P], shares or None)`` where that costs no more (with ``price``: ``PAR + move_cost
    * moved slots / D`` on the layer's load, slots moved from ``batch.previous``; ``move_cost``
    0 where ``options`` has none) or where the plan moves more than the budget
    (``max_moved_fraction`` of the slots, all where ``options`` has none)."""
    E, D, P = batch.load.shape[1], topology.num_ranks, topology.num_slots
    rows, shares = planned
    other_rows, other_shares = other
    previous, load = batch.previous[which], batch.load[which]
    budget = int(getattr(options, "max_moved_fraction", 1.0) * P)
    keep = (rows[which] != previous).sum(axis=1) > budget
    if price:
        move_cost = getattr(options, "move_cost", 0.0)
        new_shares = None if shares is None else shares[which]
        costs = [
            layer_costs(r, share, previous, load, num_ranks=D, move_cost=move_cost)
            for r, share in ((other_rows, other_shares), (rows[which], new_shares))
        ]
        keep |= costs[0] <= costs[1]
    where = which[keep]
    rows = rows.copy()
    rows[where] = other_rows[keep]
    if shares is None and other_shares is None:
        return rows, None
    shares = even_shares(rows, E) if shares is None else shares.copy()
    shares[where] = even_shares(rows[where], E) if other_shares is None else other_shares[keep]
    return rows, shares
