"""What a re-plan's moves cost: per moved slot, or by the experts the slowest rank receives (the
migration's time, as the planning pipeline's gate counts it)."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt import planning
from eplb_rt.algorithms.prices import (
    most_received,
    most_received_layers,
    move_prices,
    slot_budget,
)
from tests import walk_judge


def _row(*ranks):
    return np.array([e for rank in ranks for e in rank], dtype=np.int64)


PREV = _row([0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11])


@pytest.mark.parametrize(
    ("row", "most"),
    [
        (PREV, 0),
        (_row([2, 0, 1], [3, 4, 5], [6, 7, 8], [9, 10, 11]), 0),  # slots swapped on a rank
        (_row([0, 1, 3], [3, 4, 5], [6, 7, 8], [9, 10, 11]), 1),  # a replica of 3 on rank 0
        (_row([0, 4, 3], [3, 4, 5], [6, 7, 8], [9, 10, 11]), 2),  # two slots on one rank
        (_row([0, 1, 3], [3, 4, 6], [6, 7, 9], [9, 10, 0]), 1),  # one slot on every rank
        (_row([5, 5, 5], [3, 4, 5], [6, 7, 8], [9, 10, 11]), 3),  # a duplicate counts twice
        (_row([0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 1, 11]), 2),  # the last rank alone
    ],
)
def test_most_received_counts_the_slowest_ranks_new_experts(row, most):
    assert most_received(row, PREV, 4) == most


def _changed(rng, num_layers, num_ranks, num_slots, num_experts=7):
    prev = rng.integers(0, num_experts, size=(num_layers, num_ranks * num_slots))
    fresh = rng.integers(0, num_experts, size=prev.shape)
    return prev, np.where(rng.random(prev.shape) < 0.4, fresh, prev)


def test_the_gate_counts_the_transfers_the_policies_price():
    """``CostModel.migration_seconds`` and the kernels count the slowest rank's transfers as
    the plain reference does (sets of the experts each rank held), on odd shapes: at one byte a
    second, the gate's seconds are the most received slots."""
    rng = np.random.default_rng(3)
    cost = planning.CostModel(expert_bytes=1.0, bandwidth=1.0)
    for _ in range(100):
        D, S, L = (int(x) for x in rng.integers(1, 6, size=3))
        prev, new = _changed(rng, L, D, S)
        # The reference prices D units a received expert: one unit a slot is 1 / D.
        pairs = list(zip(new, prev, strict=True))
        expected = [int(walk_judge.price(n, p, D, 1.0, True)) // D for n, p in pairs]
        assert [most_received(n, p, D) for n, p in pairs] == expected
        assert most_received_layers(new, prev, D).tolist() == expected
        assert cost.migration_seconds(prev, new, D).tolist() == expected


def test_move_prices_per_slot_and_by_the_slowest_rank():
    rng = np.random.default_rng(5)
    prev, new = _changed(rng, 5, 3, 4)
    per_slot = move_prices(new, prev, num_ranks=3, move_cost=0.3, slowest_rank=False)
    np.testing.assert_allclose(per_slot, 0.3 * (new != prev).sum(axis=1) / 3)
    slowest = move_prices(new, prev, num_ranks=3, move_cost=0.3, slowest_rank=True)
    np.testing.assert_allclose(slowest, 0.3 * most_received_layers(new, prev, 3))
    # int32 tables (an engine's) are priced alike
    again = move_prices(new.astype(np.int32), prev, num_ranks=3, move_cost=0.3, slowest_rank=True)
    np.testing.assert_array_equal(again, slowest)


@pytest.mark.parametrize(
    ("fraction", "slots", "budget"),
    [(0.29, 100, 29), (0.57, 100, 57), (0.2, 288, 57), (0.1, 320, 32), (1.0, 7, 7), (0.0, 9, 0)],
)
def test_the_move_budget_is_the_share_of_slots_a_user_asked_for(fraction, slots, budget):
    """``int(0.29 * 100)`` is 28: the float product falls just short of the whole number."""
    assert slot_budget(fraction, slots) == budget


def test_a_budget_of_29_slots_lets_29_move():
    """Re-planned on its load permuted, the layer would move 50 slots: 0.29 of 100 lets up to 29,
    which buy a lower PAR than the 28 of 0.28 (``int(0.29 * 100)`` would give the same plan; the
    plan taken within 29 then trades two of them for none, at its peak)."""
    from eplb_rt.algorithms import plan
    from eplb_rt.algorithms.metrics import row_par
    from eplb_rt.placement import Topology

    topo = Topology(10, 10)
    rng = np.random.default_rng(36)  # a layer whose re-plan moves more than either budget
    load = rng.pareto(1.0, 60) * 100
    previous = plan("equilibrium", load[None, None, :], topo)
    shifted = rng.permutation(load)[None, None, :]
    got = {}
    for fraction in (0.28, 0.29, 1.0):
        options = {"move_cost": 0.0, "max_moved_fraction": fraction}
        placement = plan("equilibrium", shifted, topo, previous=previous, options=options)
        got[fraction] = (
            int(placement.moves(previous)[0]),
            row_par(placement.phy2log[0], shifted[0], 10),
        )
    assert got[1.0][0] == 50
    # 29 taken within the budget of 0.29, two of them then traded away at the same peak.
    assert got[0.29][0] == 27 and got[0.28][0] <= 28
    assert got[0.29][1] < got[0.28][1]
