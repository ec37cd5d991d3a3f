"""Exact solvers, optimal shares, alignment and episodes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_rt.algorithms import bounds, metrics, plan
from eplb_rt.algorithms.align import align_placement, align_row, max_assignment
from eplb_rt.algorithms.load import cut_episodes, episode_steps, normalise, whole_numbers
from eplb_rt.algorithms.shares import min_max_rank_load, open_bottleneck, optimal_slot_shares
from eplb_rt.placement import Placement, Topology

TOY = np.array([600.0, 560, 120, 120, 20, 10, 10, 10])


def test_toy_bounds_and_exact_optima():
    topo = Topology(8, 2)
    # Mean 1450 / 8 = 181.25; at M = 181.25 the counts 4 + 4 + 6 * 1 = 14 fit in 16 slots.
    assert bounds.lower_bound(TOY[None], topo)[0] == pytest.approx(181.25)
    value, _ = bounds.exact_min_max(TOY, topo, uniform=False)
    assert value == pytest.approx(181.25, rel=1e-6)


@pytest.mark.slow
def test_toy_exact_uniform_optimum():
    value, row = bounds.exact_min_max(TOY, Topology(8, 2), uniform=True, time_limit=600)
    assert value == pytest.approx(590 / 3, rel=1e-6)
    p = Placement(row[None], 8, 8)
    assert metrics.max_rank_load(p, TOY[None])[0] == pytest.approx(value)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), D=st.integers(2, 3), S=st.integers(1, 2))
def test_exact_solver_respects_bounds_and_policies_respect_exact(seed, D, S):
    rng = np.random.default_rng(seed)
    E = int(rng.integers(S, D * S + 1))
    w = rng.integers(1, 50, size=E).astype(float)
    topo = Topology(D, S)
    exact, _ = bounds.exact_min_max(w, topo, uniform=True)
    assert exact >= bounds.lower_bound(w[None], topo)[0] - 1e-6
    shares_exact, _ = bounds.exact_min_max(w, topo, uniform=False)
    assert shares_exact <= exact + 1e-6
    assert shares_exact >= w.sum() / D - 1e-6
    for name in ("equilibrium", "flashlb", "deepseek"):
        peak = metrics.max_rank_load(plan(name, w[None], topo), w[None])[0]
        assert peak >= exact - 1e-6


def test_exact_uniform_optimum_that_the_solvers_presolve_missed():
    """HiGHS' presolve (scipy 1.17.1) reported 30 as optimal here, with a gap of 0."""
    w = np.array([21.0, 24, 17, 2, 23])
    better = Placement(np.array([[0, 2, 3, 1, 2, 4, 1, 2, 4]]), 5, 3)
    best = metrics.max_rank_load(better, w[None])[0]
    value, row = bounds.exact_min_max(w, Topology(3, 3), uniform=True)
    assert value == pytest.approx(best) == pytest.approx(175 / 6)
    assert metrics.max_rank_load(Placement(row[None], 5, 3), w[None])[0] == pytest.approx(value)


def test_gap_is_zero_at_the_bound():
    p = Placement(np.array([[0, 1, 2, 3]]), 4, 4)
    assert bounds.gap(p, np.ones((1, 4)))[0] == pytest.approx(0.0)
    assert np.isnan(bounds.gap(p, np.zeros((1, 4)))[0])


def test_optimal_shares_reach_the_flow_optimum():
    # Rank 0 holds experts 0 and 1, rank 1 holds 1 and 2: expert 1 can absorb the imbalance.
    row = np.array([0, 1, 1, 2])
    share, best = optimal_slot_shares(row, np.array([10.0, 10.0, 2.0]), 2, 2)
    assert best == pytest.approx(11.0)
    loads = [10 * 1 + 10 * share[1], 10 * share[2] + 2]
    assert max(loads) == pytest.approx(11.0)
    assert share[1] + share[2] == pytest.approx(1.0)
    # A closed set: rank 0's experts have no replica elsewhere.
    share, best = optimal_slot_shares(np.array([0, 1, 2, 3]), np.array([5.0, 5.0, 1.0, 1.0]), 2, 2)
    assert best == pytest.approx(10.0)
    assert np.allclose(share, 1.0)


def test_shares_equalise_a_chain_by_hand():
    # Ranks r0 = {0, 1}, r1 = {1, 2}, r2 = {2, 3}, loads [6, 3, 3, 0]: total 12, mean 4. Expert 0
    # has its only replica on r0, so T* = 6, and expert 1 best leaves r0 entirely.
    row = np.array([0, 1, 1, 2, 2, 3])
    w = np.array([6.0, 3.0, 3.0, 0.0])
    share, best = optimal_slot_shares(row, w, 3, 2)
    assert best == pytest.approx(6.0)
    assert share[1] == pytest.approx(0.0, abs=1e-9)
    # One rewrite: only slots of experts with a second replica may change (1 or 2, not 3 on r2);
    # r2's slot of expert 2 takes expert 0. Then 0 sends 4 to r2 and 2 to r0, 1 sends 2 to r0
    # and 1 to r1, 2 (now only on r1) 3 to r1: every rank takes the mean, 4.
    rewritten = row.copy()
    t, done = open_bottleneck(rewritten, w, 3, 2, 1, 0.0, 4)
    assert (done, rewritten.tolist()) == (1, [0, 1, 1, 2, 0, 3])
    assert t == pytest.approx(4.0)
    assert min_max_rank_load(rewritten, w, 3, 2)[0] == pytest.approx(4.0)


def test_align_relabels_ranks_and_keeps_slots():
    prev = np.array([0, 1, 2, 3, 4, 5])
    new = np.array([4, 5, 1, 0, 3, 2])  # the same ranks, relabelled and reordered
    row, _ = align_row(new, prev, 3, 6)
    assert (row == prev).all()
    # Rank sets {0, 1}, {2, 3}, {4, 5} against new {2, 5}, {0, 1}, {4, 3}: new r1 -> old r0
    # (2 kept), new r0 -> old r1 (2 kept... only 2), new r2 -> old r2 (4 kept); shares follow.
    new = np.array([2, 5, 1, 0, 4, 3])
    share = np.arange(6.0)
    row, moved = align_row(new, prev, 3, 6, share)
    assert row.tolist() == [0, 1, 2, 5, 4, 3]
    assert moved.tolist() == [3.0, 2.0, 0.0, 1.0, 4.0, 5.0]


@pytest.mark.parametrize("seed", range(12))
def test_align_keeps_the_most_slots_of_any_rank_relabelling(seed):
    rng = np.random.default_rng(seed)
    D, S = int(rng.integers(2, 5)), int(rng.integers(1, 4))
    E = int(rng.integers(S, D * S + 1))

    def a_row():
        # Every expert once, the rest of the slots random replicas, no expert twice on a rank.
        while True:
            row = rng.permutation(np.concatenate([np.arange(E), rng.integers(0, E, D * S - E)]))
            if all(len(set(r)) == S for r in row.reshape(D, S).tolist()):
                return row.astype(np.int64)

    prev, new = a_row(), a_row()
    row, _ = align_row(new, prev, D, E)
    kept = int((row == prev).sum())
    grid = new.reshape(D, S)
    for perm in itertools.permutations(range(D)):
        # New rank i as old rank perm[i]: at best every common expert keeps its slot.
        best = sum(len(set(grid[i]) & set(prev.reshape(D, S)[perm[i]])) for i in range(D))
        assert kept >= best
    assert sorted(map(sorted, row.reshape(D, S).tolist())) == sorted(map(sorted, grid.tolist()))


def test_align_keeps_an_expert_held_twice_in_both_slots():
    """An expert twice on a rank (no shipped policy does it by default; shares may) keeps both
    slots where the old rank held it twice, and one where it held it once."""
    prev = np.array([0, 0, 1, 2, 3, 4])
    row, _ = align_row(np.array([4, 3, 2, 1, 0, 0]), prev, 2, 5)
    assert row.tolist() == [0, 0, 1, 2, 3, 4]
    row, _ = align_row(np.array([3, 0, 0, 1, 4, 2]), prev, 2, 5)
    assert row.tolist() == [0, 0, 3, 2, 1, 4]
    row, _ = align_row(np.array([0, 0, 5, 2, 3, 4]), np.array([0, 1, 5, 2, 3, 4]), 2, 6)
    assert row.tolist() == [0, 0, 5, 2, 3, 4]


@pytest.mark.parametrize("kind", ["ties", "overlap", "real"])
def test_max_assignment_is_scipys_ties_included(kind):
    """The assignment kernel picks scipy's columns, ties included (so placements aligned by it
    are those aligned by scipy), and its total is the best of every permutation on small n."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(len(kind))
    for _ in range(300):
        n = int(rng.integers(1, 24))
        if kind == "ties":
            score = rng.integers(0, 3, (n, n)).astype(float)
        elif kind == "overlap":  # align_row's matrix: kept slots times D + 1, plus the identity
            score = rng.integers(0, 6, (n, n)) * (n + 1) + np.eye(n)
        else:
            score = rng.random((n, n))
        cols = max_assignment(score)
        assert cols.tolist() == linear_sum_assignment(score, maximize=True)[1].tolist()
        if n <= 6:
            best = max(score[range(n), perm].sum() for perm in itertools.permutations(range(n)))
            assert score[range(n), cols].sum() == pytest.approx(best)


def test_align_placement_keeps_loads_and_never_adds_moves():
    rng = np.random.default_rng(3)
    topo = Topology(4, 3)
    load = rng.pareto(1.2, size=(3, 9)) * 100
    prev = plan("deepseek", load[::-1].copy(), topo)
    new = plan("equilibrium", load, topo, options={"shares": True})
    aligned = align_placement(prev, new)
    assert aligned.moves(prev).sum() <= new.moves(prev).sum()
    np.testing.assert_allclose(
        np.sort(metrics.rank_load(aligned, load), axis=1),
        np.sort(metrics.rank_load(new, load), axis=1),
    )
    assert aligned.is_uniform == new.is_uniform
    assert align_placement(prev, prev) == prev
    with pytest.raises(ValueError, match="cannot align"):
        align_placement(prev, plan("deepseek", load, Topology(3, 4)))


def test_episodes_sum_contiguous_runs_and_normalise():
    load = np.arange(10.0).reshape(10, 1, 1)
    eps = cut_episodes(load, 3)
    assert eps[0, :, 0].tolist() == [0 + 1 + 2, 3 + 4 + 5 + 6, 7 + 8 + 9]
    assert cut_episodes(load, 20).shape == (1, 10, 1)
    assert episode_steps(10, 3).tolist() == [3, 4, 3]  # the runs cut_episodes sums
    assert episode_steps(10, 20).tolist() == [1] * 10
    assert normalise(np.array([[1.0, 3.0], [0.0, 0.0]])).tolist() == [[0.25, 0.75], [0.0, 0.0]]


@pytest.mark.parametrize(("steps", "episodes"), [(37, 5), (16, 16), (3, 8), (100, 16)])
def test_episodes_are_layer_major_sums_of_their_runs_in_a_new_array(steps, episodes):
    load = np.random.default_rng(steps).random((steps, 3, 7)) ** 3 * 1e3
    got = cut_episodes(load, episodes)
    runs = episode_steps(steps, episodes)
    # The run sums as one np.add.reduceat gives them, bit for bit, each layer's block contiguous.
    expected = np.add.reduceat(load, np.cumsum(runs) - runs, axis=0).transpose(1, 0, 2)
    assert got.flags.c_contiguous and np.array_equal(got, expected)
    got[:] = -1.0  # the caller's load is not behind it, even for one layer or one step
    assert (load >= 0).all()
    one = load[:, :1]
    assert not np.shares_memory(cut_episodes(one, steps), one)


def test_whole_numbers_checks_every_block():
    load = np.arange(3 * 5 * 7000, dtype=np.float64).reshape(3, 5, 7000)
    assert whole_numbers(load)
    for where in [(0, 0, 0), (1, 2, 3000), (2, 4, 6999)]:  # first, a middle block, the last value
        half = load.copy()
        half[where] += 0.5
        assert not whole_numbers(half)
    assert not whole_numbers(np.array([[[1e-300]]]))
