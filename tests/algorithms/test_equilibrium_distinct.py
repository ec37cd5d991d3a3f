"""With a placement in force, ``equilibrium`` judges its candidates on the scored rows too where
the episodes are distinct workloads: a patch that fits their sum but keeps replicas that one of
them misses loses to a plan balanced on each (the toy and the judge's own tests:
``test_replan_judge.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.algorithms import plan, warm_up
from eplb_rt.algorithms.metrics import row_par
from eplb_rt.placement import Placement, Topology
from tests.algorithms.test_replan_judge import IN_FORCE, WORKLOADS


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up(["equilibrium"])


def test_a_plan_from_two_distinct_workloads_moves_off_the_stale_replicas():
    topo = Topology(2, 3)
    previous = Placement(IN_FORCE[None], 4, 2)
    # Two steps, each one workload's whole load in token counts far past any sampling noise.
    load = (WORKLOADS * 8e6)[:, None, :]
    got = plan("equilibrium", load, topo, previous=previous, options={"move_cost": 0.01})
    for w in WORKLOADS:
        assert row_par(got.phy2log[0].astype(np.int64), w[None], 2) == pytest.approx(1.125)
