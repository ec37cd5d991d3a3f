"""The one lower bound (eplb_rt.algorithms.bounds): golden values by hand, never above a real
placement with any shares, the gap ``score`` reports, and the exact solver with a move budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks import traces
from eplb_rt import algorithms
from eplb_rt.algorithms import metrics
from eplb_rt.algorithms.bounds import exact_min_max, gap, lower_bound, par_lower_bound
from eplb_rt.placement import Placement, Topology


@pytest.mark.parametrize(
    ("load", "ranks", "slots", "expected"),
    [
        ([1.0, 1.0, 1.0, 1.0], 2, 2, 1.0),  # even load: the mean bounds
        ([10.0, 1.0, 1.0, 0.0], 4, 1, 10 / 3),  # no redundant slot: the hot expert stays whole
        ([10.0, 1.0, 1.0, 0.0], 2, 3, 1.0),  # two replicas of 5 fit under the mean of 6
        ([9.0, 0.0, 0.0], 4, 1, 2.0),  # P - E + 1 = 2 replicas at most: 4.5 over a mean of 2.25
        ([30.0, 30.0, 30.0, 1.0, 1.0, 0.0], 4, 2, 30 / 23),  # 2 spare slots for 3 hot experts
        ([7.0], 1, 1, 1.0),  # one expert, one slot
        ([0.0, 0.0, 0.0], 3, 1, np.nan),  # no load, no PAR
    ],
)
def test_golden(load, ranks, slots, expected):
    got = par_lower_bound(np.array([load]), Topology(ranks, slots))
    np.testing.assert_allclose(got, [expected], rtol=1e-12)


def test_layers_are_independent():
    topo = Topology(4, 2)
    rows = np.array([[30.0, 30, 30, 1, 1, 0], [1.0, 1, 1, 1, 1, 1], [0.0, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(lower_bound(rows, topo), [30.0, 1.5, 0.0])


def _all_placements(num_experts: int, topo: Topology):
    """Every valid placement of one layer (small sizes only)."""
    S = topo.num_slots_per_rank
    for row in itertools.product(range(num_experts), repeat=topo.num_slots):
        ranks = [row[r * S : (r + 1) * S] for r in range(topo.num_ranks)]
        if len(set(row)) == num_experts and all(len(set(r)) == S for r in ranks):
            yield Placement(np.array([row]), num_experts, topo.num_ranks)


@pytest.mark.parametrize(("experts", "ranks", "slots"), [(3, 2, 2), (4, 3, 2), (5, 2, 3)])
def test_never_above_any_placement_uniform_or_weighted(experts, ranks, slots):
    rng = np.random.default_rng(experts)
    topo = Topology(ranks, slots)
    placements = list(_all_placements(experts, topo))
    assert placements
    for _ in range(5):
        load = rng.pareto(1.0, size=(1, experts)) * 100
        bound = lower_bound(load, topo)[0]
        best = min(metrics.max_rank_load(p, load)[0] for p in placements)
        assert bound <= best * (1 + 1e-12)
        for p in placements[:: max(1, len(placements) // 20)]:
            # Any split of each expert's tokens over its replicas.
            share = rng.random(p.num_slots)[None, :]
            sums = np.zeros(experts)
            np.add.at(sums, p.phy2log[0], share[0])
            weighted = p.with_shares(share / sums[p.phy2log])
            assert bound <= metrics.max_rank_load(weighted, load)[0] * (1 + 1e-12)


def test_tight_when_slots_do_not_matter():
    # Two hot experts, one spare slot, three ranks of two: one stays whole at 10, reachable.
    topo = Topology(3, 2)
    load = np.array([[10.0, 10, 1, 1, 0]])
    assert lower_bound(load, topo)[0] == 10.0
    best = min(metrics.max_rank_load(p, load)[0] for p in _all_placements(5, topo))
    assert best == 10.0


def test_below_the_default_policy_on_esft():
    load = traces.esft("intent")
    topo = Topology(8, 10)
    placement = algorithms.plan("deepseek", load, topo)
    agg = load.sum(axis=0)
    assert (metrics.par(placement, agg) >= par_lower_bound(agg, topo) * (1 - 1e-12)).all()


def test_unequal_shares_cannot_split_a_single_replica():
    """The case where ``score`` and ``simulate`` disagreed: shares do not lower this bound.

    4 experts [10, 1, 1, 1] on 2 ranks x 2 slots: P = E, so every expert has one replica and
    expert 0's replica carries all 10 tokens whatever the shares. The bound is 10; the mean
    (6.5) and max / D (5), the old bound for non-uniform shares, are too low. The best placement
    pairs 0 with a light expert: 11, a gap of 0.1, with or without shares.
    """
    topo = Topology(2, 2)
    load = np.array([[10.0, 1, 1, 1]])
    assert lower_bound(load, topo)[0] == 10.0
    assert par_lower_bound(load, topo)[0] == pytest.approx(10 / 6.5)
    p = Placement(np.array([[0, 1, 2, 3]]), 4, 2)
    assert gap(p, load)[0] == pytest.approx(0.1)
    weighted = Placement(np.array([[0, 1, 2, 3]]), 4, 2, slot_share=np.ones((1, 4)))
    assert gap(weighted, load)[0] == pytest.approx(0.1)
    assert exact_min_max(load[0], topo, uniform=False)[0] == pytest.approx(11.0)


def test_exact_with_a_move_budget():
    """Hand-derived: previous r0 = {0, 1}, r1 = {2, 3} on [8, 8, 1, 1] (peak 16, mean 9)."""
    topo = Topology(2, 2)
    w = np.array([8.0, 8, 1, 1])
    prev = np.array([0, 1, 2, 3])
    # No move: 16. Swapping 1 and 2 (two slots) gives 9 | 9, the optimum; one slot alone can
    # only rewrite an expert that has another replica -- none has, so one move cannot help.
    for moves, best in ((0, 16.0), (1, 16.0), (2, 9.0), (4, 9.0)):
        value, row = exact_min_max(w, topo, previous=prev, max_moves=moves)
        assert value == pytest.approx(best, rel=1e-6)
        kept = sum(
            len(set(row[r * 2 : r * 2 + 2]) & set(prev[r * 2 : r * 2 + 2])) for r in range(2)
        )
        assert 4 - kept <= moves
