"""The cheaper of two plans, layer by layer, judged as ``equilibrium`` judges its candidates:
moves priced as the options say (per slot, or by the slowest rank's transfers), only moves that
pay before the next plan, and of those ``PAR + price / lifetime``."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from eplb_rt.algorithms import get_policy, metrics
from eplb_rt.algorithms.keeping import cheaper, layer_costs, no_dearer
from eplb_rt.algorithms.prices import most_received
from eplb_rt.algorithms.registry import Layers
from eplb_rt.placement import Placement, Topology

TOPO = Topology(4, 3)
PREV = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 0], [1, 2, 3]]).reshape(1, -1)
LOAD = np.array([[9.0, 1, 1, 1, 1, 1, 6, 6]])
# Three slots moved each. CONCENTRATED: rank 2 receives two experts, PAR 1.513; SPREAD: no rank
# more than one, PAR 1.615 (the placement in force: 2.538).
CONCENTRATED = np.array([[0, 1, 2], [3, 4, 5], [6, 1, 5], [1, 2, 7]]).reshape(1, -1)
SPREAD = np.array([[0, 1, 6], [5, 4, 7], [6, 7, 0], [1, 2, 3]]).reshape(1, -1)


def _batch() -> Layers:
    return Layers(LOAD, PREV, None, np.array([0]), LOAD[None], np.array([1]), True)


def _options(**changes):
    return dataclasses.replace(get_policy("equilibrium").options(), **changes)


def _par(row) -> float:
    return float(metrics.par(Placement(row, 8, 4), LOAD)[0])


def test_the_golden_case_is_what_it_says():
    assert [most_received(r[0], PREV[0], 4) for r in (CONCENTRATED, SPREAD)] == [2, 1]
    assert [(r != PREV).sum() for r in (CONCENTRATED, SPREAD)] == [3, 3]
    assert _par(CONCENTRATED) < _par(SPREAD) < _par(PREV)


@pytest.mark.parametrize(
    ("changes", "taken"),
    [
        ({"move_cost": 0.4}, "concentrated"),  # 1.513 + 0.3 against 1.615 + 0.3
        ({"move_cost": 0.4, "slowest_rank": True}, "spread"),  # 1.513 + 0.8 against 1.615 + 0.4
        # Both pay before the next plan; over ten plans the lower PAR buys more.
        ({"move_cost": 0.4, "slowest_rank": True, "lifetime": 10.0}, "concentrated"),
        ({"move_cost": 0.4, "slowest_rank": True, "lifetime": math.inf}, "concentrated"),
        # The concentrated one does not pay by the next plan (1.513 + 1.1 > 2.538): however
        # long its life, it is not taken.
        ({"move_cost": 0.55, "slowest_rank": True, "lifetime": math.inf}, "spread"),
    ],
)
def test_the_cheaper_plan_is_priced_as_the_options_say(changes, taken):
    planned = (CONCENTRATED, None)
    got, shares = cheaper(
        _batch(), np.array([0]), planned, (SPREAD, None), topology=TOPO, options=_options(**changes)
    )
    assert shares is None
    np.testing.assert_array_equal(got, CONCENTRATED if taken == "concentrated" else SPREAD)


def test_a_plan_whose_moves_do_not_pay_costs_more_than_keeping():
    options = _options(move_cost=0.55, slowest_rank=True, lifetime=math.inf)
    costs = [
        layer_costs(row, None, _batch(), np.array([0]), num_ranks=4, options=options)[0][0]
        for row in (PREV, CONCENTRATED, SPREAD)
    ]
    assert costs[0] == pytest.approx(_par(PREV))
    assert costs[1] == math.inf  # 1.513 + 1.1 > 2.538
    assert costs[2] == pytest.approx(_par(SPREAD))  # 1.615 + 0.55 pays; 1.615 + 0.55 / inf
    got, _ = cheaper(
        _batch(), np.array([0]), (CONCENTRATED, None), (PREV, None), topology=TOPO, options=options
    )
    np.testing.assert_array_equal(got, PREV)


def test_without_a_price_of_moves_the_lower_par_wins():
    flash = get_policy("flashlb").options()
    costs = [
        layer_costs(row, None, _batch(), np.array([0]), num_ranks=4, options=flash)[0][0]
        for row in (PREV, CONCENTRATED, SPREAD)
    ]
    np.testing.assert_allclose(costs, [_par(r) for r in (PREV, CONCENTRATED, SPREAD)])


def test_of_two_plans_that_do_not_pay_the_one_nearer_paying_is_no_dearer():
    options = _options(move_cost=0.55, slowest_rank=True)
    which = np.array([0])
    far, near = (
        layer_costs(row, None, _batch(), which, num_ranks=4, options=options)
        for row in (CONCENTRATED, SPREAD)
    )
    # CONCENTRATED does not pay (1.513 + 1.1), SPREAD does (1.615 + 0.55 < 2.538)
    assert far[0][0] == math.inf and near[0][0] < math.inf
    assert no_dearer(near, far)[0] and not no_dearer(far, near)[0]
    dearer = _options(move_cost=1.5, slowest_rank=True)  # neither pays: 1.513 + 3.0, 1.615 + 1.5
    far, near = (
        layer_costs(row, None, _batch(), which, num_ranks=4, options=dearer)
        for row in (CONCENTRATED, SPREAD)
    )
    assert far[0][0] == near[0][0] == math.inf
    assert no_dearer(near, far)[0] and not no_dearer(far, near)[0]
    assert no_dearer(near, near)[0]
