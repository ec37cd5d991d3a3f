"""What a re-plan's moves cost in PAR: the one price of every judge of a plan.

A policy that prices moves has a ``move_cost``: the PAR that one moved slot on every rank (one
expert's transfer time) must buy. It charges a plan ``move_cost * moved slots / D`` (ranks
receive in parallel: moves spread over the ranks), or with ``slowest_rank`` ``move_cost`` times
the most experts one rank receives (:func:`most_received`): the time the migration takes, as the
planning pipeline's gate counts it (:meth:`eplb_rt.planning.CostModel.migration_seconds`).
``equilibrium``'s candidates, its check out of sample, the cheaper of two plans
(:mod:`eplb_rt.algorithms.keeping`) and the gate all price moves here.
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jit import kernel


def slot_budget(fraction: float, num_slots: int) -> int:
    """The slots a layer may move under ``max_moved_fraction`` ``fraction``: that share of its
    ``num_slots``, rounded down, but not below a whole number the product misses by rounding
    (``0.29 * 100`` is ``28.999999999999996``: 29 slots, not 28)."""
    return int(np.floor(round(fraction * num_slots, 9)))


@kernel
def most_received(row, prev, num_ranks):
    """The most slots of one rank in ``row [P] int64`` whose expert that rank did not hold in
    ``prev [P]``: the experts the slowest rank receives, so the migration's time in transfers
    (ranks receive in parallel). A duplicate on one rank counts twice."""
    S = row.shape[0] // num_ranks
    most = 0
    for r in range(num_ranks):
        received = 0
        for a in range(r * S, (r + 1) * S):
            held = False
            for b in range(r * S, (r + 1) * S):
                held = held or prev[b] == row[a]
            received += not held
        most = max(most, received)
    return most


@kernel
def most_received_layers(rows, previous, num_ranks):
    """``[L] int64``: :func:`most_received` of each layer of ``rows [L, P]`` from ``previous [L,
    P]`` (both int64)."""
    out = np.empty(rows.shape[0], dtype=np.int64)
    for j in range(rows.shape[0]):
        out[j] = most_received(rows[j], previous[j], num_ranks)
    return out


@kernel(inline=True)
def move_price(row, prev, moves, num_ranks, move_cost, slowest_rank):  # noqa: PLR0917
    """What moving from ``prev [P]`` to ``row [P]`` (``moves`` slots changed) costs in PAR:
    ``move_cost * moves / D``, or with ``slowest_rank`` ``move_cost *``
    :func:`most_received`."""
    if slowest_rank:
        return move_cost * most_received(row, prev, num_ranks)
    return move_cost * moves / num_ranks


def move_prices(
    rows: np.ndarray, previous: np.ndarray, *, num_ranks: int, move_cost: float, slowest_rank: bool
) -> np.ndarray:
    """``[L]``: :func:`move_price` of each layer of ``rows [L, P]`` from ``previous [L, P]``."""
    if slowest_rank:
        rows, previous = (np.ascontiguousarray(a, dtype=np.int64) for a in (rows, previous))
        return move_cost * most_received_layers(rows, previous, num_ranks).astype(np.float64)
    return move_cost * (rows != previous).sum(axis=1) / num_ranks


@kernel(inline=True)
def judged_cost(par, price, par_in_force, lifetime):
    """What a re-plan's candidate of PAR ``par``, whose moves cost ``price`` (PAR), costs
    against the placement in force (PAR ``par_in_force``) over ``lifetime`` plans: ``par +
    price / lifetime`` where its moves pay before the next plan (``par + price`` below
    ``par_in_force``), else ``inf``. Of the candidates of a plan, of the prefixes of its move
    walks and of two plans of a layer, the one that costs least is taken."""
    if par + price >= par_in_force - 1e-12:
        return np.inf
    return par + price / lifetime
