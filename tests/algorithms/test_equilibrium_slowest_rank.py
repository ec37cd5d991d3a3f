"""``equilibrium``'s ``slowest_rank``: its candidates judged by the time their migration takes
(the most experts one rank receives), as the planning pipeline's gate prices it."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt import planning
from eplb_rt.algorithms import plan, warm_up
from eplb_rt.algorithms.equilibrium import _cheapest, _gains, most_received
from eplb_rt.algorithms.metrics import row_par
from eplb_rt.placement import Placement, Topology


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up(["equilibrium"])


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
    ],
)
def test_most_received_counts_the_slowest_ranks_new_experts(row, most):
    assert most_received(row, PREV, 4) == most


def test_most_received_is_what_the_gate_prices():
    rng = np.random.default_rng(3)
    cost = planning.CostModel(expert_bytes=1.0, bandwidth=1.0)
    for _ in range(200):
        D, S, E = rng.integers(2, 6), rng.integers(1, 5), 7
        prev = rng.integers(0, E, size=(1, D * S))
        new = np.where(rng.random((1, D * S)) < 0.4, rng.integers(0, E, size=(1, D * S)), prev)
        seconds = cost.migration_seconds(prev, new, int(D))[0]
        assert most_received(new[0], prev[0], int(D)) == seconds


def test_spread_moves_beat_a_patch_on_one_rank_when_priced_by_time():
    concentrated = _row([0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 3])  # 2 new on rank 3
    spread = _row([0, 1, 9], [3, 4, 0], [6, 7, 3], [9, 10, 6])  # 1 new on every rank
    candidates = np.stack([PREV, concentrated, spread])
    pars = np.array([1.30, 1.10, 1.12])
    # per slot: 1.10 + 0.05 * 2 / 4 = 1.125 against 1.12 + 0.05 * 4 / 4 = 1.17
    assert _cheapest(candidates, pars, PREV, 0.05, 4, 12, False) == 1
    # by time: 1.10 + 0.05 * 2 = 1.20 against 1.12 + 0.05 * 1 = 1.17
    assert _cheapest(candidates, pars, PREV, 0.05, 4, 12, True) == 2
    # the budget in moved slots still binds: the spread one moves four
    assert _cheapest(candidates, pars, PREV, 0.05, 4, 3, True) == 1


def test_the_check_out_of_sample_prices_moves_as_the_judge():
    concentrated = _row([0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 3])
    load = np.ones((1, 12))
    load[0, :3] = 4.0  # rank 0 carries the peak: 12 against a mean of 6.75
    fall = row_par(PREV, load, 4) - row_par(concentrated, load, 4)
    rows, previous = concentrated[None], PREV[None]
    assert _gains(rows, previous, load, 4, 0.05, False)[0] == pytest.approx(fall - 0.05 * 2 / 4)
    assert _gains(rows, previous, load, 4, 0.05, True)[0] == pytest.approx(fall - 0.05 * 2)


@pytest.mark.parametrize("seed", range(6))
def test_the_policy_takes_the_candidate_cheapest_in_time(seed):
    """On one workload (judged on its load alone) the plan priced by time costs no more in time
    than the plan priced per slot, and the other way round: both choose among the same
    candidates."""
    rng = np.random.default_rng(seed)
    topo = Topology(8, 4)
    load = rng.lognormal(0.0, 1.2, size=(1, 4, 24)) * 1000
    previous = plan("equilibrium", rng.permuted(load, axis=2), topo)
    for move_cost in (0.002, 0.02, 0.2):
        got = {}
        for slowest in (False, True):
            options = {"move_cost": move_cost, "slowest_rank": slowest}
            got[slowest] = plan("equilibrium", load, topo, previous, options).phy2log
        for j in range(4):
            before = previous.phy2log[j]
            for judge in (False, True):  # each plan is the cheapest under its own price
                costs = {s: _cost(got[s][j], before, load[:, j], move_cost, judge) for s in got}
                assert costs[judge] <= costs[not judge] + 1e-9


def _cost(row, before, load, move_cost, slowest):
    """``PAR + move_cost x`` the migration's transfers (``slowest``) or moved slots / D."""
    D = 8
    moved = most_received(row, before, D) if slowest else (row != before).sum() / D
    return row_par(row, load, D) + move_cost * moved


def test_the_pipeline_prices_moves_by_time_unless_told_otherwise(monkeypatch):
    seen = []
    real = planning.algorithms.plan

    def spy(policy, load, topology, previous, options, **kwargs):
        seen.append(options.slowest_rank)
        return real(policy, load, topology, previous, options, **kwargs)

    monkeypatch.setattr(planning.algorithms, "plan", spy)
    topo = Topology(4, 3)
    load = np.array([[[90.0, 5, 5, 5, 5, 5, 5, 5, 5]]])
    previous = Placement.initial(1, 9, topo)
    cost = planning.CostModel(expert_bytes=1.0, bandwidth=1e9, token_seconds=1.0)
    for given, expect in (({}, True), ({"slowest_rank": False}, False)):
        planning.decide(load, previous, topo, "equilibrium", given, cost=cost, horizon=1)
        assert seen.pop() is expect
