"""With a placement in force, ``equilibrium`` judges its candidates on the scored rows too where
the episodes are distinct workloads (:func:`~eplb_rt.algorithms.replan_judge.settle`): a patch
that fits their sum but keeps replicas that one of them misses loses to a plan balanced on each."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.algorithms import plan, warm_up
from eplb_rt.algorithms.metrics import row_par
from eplb_rt.algorithms.replan_judge import settle
from eplb_rt.placement import Placement, Topology

# Experts a, b, c, d on 2 ranks x 3 slots. The two workloads sum to a load that the placement in
# force (b and d replicated) balances exactly, as does the plan replicating a and c; only the
# latter is balanced on each workload (PAR 1.125 against 1.375).
A, B, C, D = range(4)
WORKLOADS = np.array([[4.0, 2.0, 1.0, 1.0], [1.0, 1.0, 4.0, 2.0]]) / 8.0
NOW = WORKLOADS.mean(axis=0)
IN_FORCE = np.array([A, B, D, C, B, D], dtype=np.int64)
FRESH = np.array([A, C, B, A, C, D], dtype=np.int64)


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up(["equilibrium"])


def test_the_toy_is_what_it_says():
    now = NOW[None]
    assert row_par(IN_FORCE, now, 2) == pytest.approx(1.0)
    assert row_par(FRESH, now, 2) == pytest.approx(1.0)
    for w in WORKLOADS:
        assert row_par(IN_FORCE, w[None], 2) == pytest.approx(1.375)
        assert row_par(FRESH, w[None], 2) == pytest.approx(1.125)


def test_distinct_workloads_pay_for_the_moves_the_sum_does_not_see():
    got = settle(FRESH, IN_FORCE, NOW, WORKLOADS, True, 2, 6, 0.01, False, 1.0, -1.0, False)
    assert sorted(got[:3]) == sorted(FRESH[:3]) or sorted(got[:3]) == sorted(FRESH[3:])
    for w in WORKLOADS:
        assert row_par(got, w[None], 2) == pytest.approx(1.125)


def test_episodes_that_differ_by_noise_are_judged_on_their_sum():
    # The same rows, but not distinct workloads: on the sum the moves buy nothing.
    got = settle(FRESH, IN_FORCE, NOW, WORKLOADS, False, 2, 6, 0.01, False, 1.0, -1.0, False)
    assert np.array_equal(got, IN_FORCE)


def test_a_price_above_the_gain_keeps_the_placement_in_force():
    # Mean PAR over the rows and the sum: 1.25 in force, 1.083 replanned; two slots moved on
    # two ranks cost one move_cost.
    for price, keeps in ((0.2, True), (0.1, False)):
        got = settle(FRESH, IN_FORCE, NOW, WORKLOADS, True, 2, 6, price, False, 1.0, -1.0, False)
        assert np.array_equal(got, IN_FORCE) is keeps


def test_a_plan_from_two_distinct_workloads_moves_off_the_stale_replicas():
    topo = Topology(2, 3)
    previous = Placement(IN_FORCE[None], 4, 2)
    # Two steps, each one workload's whole load in token counts far past any sampling noise.
    load = (WORKLOADS * 8e6)[:, None, :]
    got = plan("equilibrium", load, topo, previous=previous, options={"move_cost": 0.01})
    for w in WORKLOADS:
        assert row_par(got.phy2log[0].astype(np.int64), w[None], 2) == pytest.approx(1.125)
