"""The judge of a move walk's prefixes in plain Python, for the tests' reference walks: what a
prefix's moves cost, what the prefix costs, and when no later one can be taken."""

from __future__ import annotations

import math

import numpy as np


def price(row, prev, num_ranks: int, slot_cost: float, slowest_rank: bool) -> float:
    """What the moves from ``prev`` to ``row`` cost: ``slot_cost`` a moved slot, or with
    ``slowest_rank`` ``slot_cost * D`` an expert the slowest rank receives."""
    row, prev = np.asarray(row).tolist(), np.asarray(prev).tolist()
    if not slowest_rank:
        return slot_cost * sum(a != b for a, b in zip(row, prev, strict=True))
    S = len(prev) // num_ranks
    held = [set(prev[r * S : (r + 1) * S]) for r in range(num_ranks)]
    received = [sum(e not in held[r] for e in row[r * S : (r + 1) * S]) for r in range(num_ranks)]
    return slot_cost * num_ranks * max(received)


def cost(par: float, moves_price: float, in_force: float, lifetime: float) -> float:
    """``par + price / lifetime`` where the moves pay before the next plan, else inf."""
    return par + moves_price / lifetime if par + moves_price < in_force - 1e-12 else math.inf


def priced_out(slot_price: float, in_force: float, best: float, lifetime: float) -> bool:
    """No later prefix would pay or beat ``best``: PAR is at least 1, and the slots moved so far
    (``slot_price``, at the price per slot) price a prefix at least that much."""
    return 1.0 + slot_price >= in_force or 1.0 + slot_price / lifetime >= best
