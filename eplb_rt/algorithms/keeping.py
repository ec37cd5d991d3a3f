"""A re-plan never dearer than what is in force: each layer's cost of a plan, and the cheaper of
two plans layer by layer, judged as ``equilibrium`` judges its own candidates.

For a policy that prices moves (``move_cost``), a plan's moves cost what
:func:`~eplb_rt.algorithms.prices.move_prices` charges (per moved slot, or with
``slowest_rank`` by the experts the slowest rank receives, as the planning pipeline's gate
does). A plan whose moves do not pay before the next plan (``PAR + price`` not below the PAR of
the placement in force) costs more than keeping; of those that do, a plan costs ``PAR + price /
lifetime`` (the option's plans a placement serves, 1 where it has none). For a policy that does
not price moves, a plan costs its PAR (the lower PAR, keeping on ties). PAR is that of a layer's
summed load. Shares count: a placement in force that splits its experts unevenly is compared as
it serves, with its shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from eplb_rt.algorithms import metrics
from eplb_rt.algorithms.prices import judged_cost, move_prices, slot_budget
from eplb_rt.placement import Placement, Topology, even_shares

if TYPE_CHECKING:  # the registry calls the policies that call this module
    from eplb_rt.algorithms.registry import Layers


def _pars(rows, shares, load, num_ranks: int) -> np.ndarray:
    """``[k]``: PAR of ``rows [k, P]`` (``shares [k, P]`` or ``None``: uniform) on ``load [k,
    E]``, 1 for a layer without load."""
    placement = Placement(rows, load.shape[1], num_ranks, shares)
    return np.nan_to_num(metrics.par(placement, load), nan=1.0)


def layer_costs(rows, shares, batch: Layers, which, *, num_ranks: int, options: Any):
    """``(judged [k], priced [k])``: what plans ``rows [k, P]`` (``shares [k, P]`` or ``None``)
    of layers ``which`` of ``batch`` cost, as the module's docstring says (``judged``: ``inf``
    for moves that do not pay), and ``PAR + price / lifetime`` whether they pay or not: what
    orders plans none of which pays (:func:`no_dearer`)."""
    load = batch.load[which]
    par = _pars(rows, shares, load, num_ranks)
    if not hasattr(options, "move_cost"):
        return par, par
    previous = batch.previous[which]
    kept = None if batch.previous_share is None else batch.previous_share[which]
    price = move_prices(
        rows,
        previous,
        num_ranks=num_ranks,
        move_cost=options.move_cost,
        slowest_rank=getattr(options, "slowest_rank", False),
    )
    in_force = _pars(previous, kept, load, num_ranks)
    moved = (rows != previous).any(axis=1)
    life = getattr(options, "lifetime", 1.0)
    judged = [
        judged_cost(p, c, f, life) if m else p
        for p, c, f, m in zip(par, price, in_force, moved, strict=True)
    ]
    return np.array(judged), par + price / life


def no_dearer(a, b) -> np.ndarray:
    """``[k] bool``: plans of costs ``a`` (:func:`layer_costs`) cost no more than those of ``b``:
    the judged costs, and where both are ``inf`` (neither pays) the priced ones, so that of two
    plans that do not pay the one nearer paying is kept (a node set back from the first may
    then pay)."""
    tie = (a[0] == b[0]) & (a[1] <= b[1])
    return (a[0] < b[0]) | tie


def cheaper(batch: Layers, which, planned, other, *, topology: Topology, options: Any, price=True):
    """``planned = (rows [L, P], shares or None)`` with layers ``which`` taken from ``other =
    (rows [k, P], shares or None)`` where that costs no more (with ``price``, as
    :func:`layer_costs` prices them) or where the plan moves more than the budget
    (``max_moved_fraction`` of the slots, all where ``options`` has none)."""
    E, D, P = batch.load.shape[1], topology.num_ranks, topology.num_slots
    rows, shares = planned
    other_rows, other_shares = other
    budget = slot_budget(getattr(options, "max_moved_fraction", 1.0), P)
    keep = (rows[which] != batch.previous[which]).sum(axis=1) > budget
    if price:
        new_shares = None if shares is None else shares[which]
        costs = [
            layer_costs(r, share, batch, which, num_ranks=D, options=options)
            for r, share in ((other_rows, other_shares), (rows[which], new_shares))
        ]
        keep |= no_dearer(*costs)
    where = which[keep]
    rows = rows.copy()
    rows[where] = other_rows[keep]
    if shares is None and other_shares is None:
        return rows, None
    shares = even_shares(rows, E) if shares is None else shares.copy()
    shares[where] = even_shares(rows[where], E) if other_shares is None else other_shares[keep]
    return rows, shares
