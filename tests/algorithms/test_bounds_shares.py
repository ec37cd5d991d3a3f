"""Bounds, exact solvers, optimal shares, alignment and episode statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_rt.algorithms import bounds, metrics, plan
from eplb_rt.algorithms.align import align_row
from eplb_rt.algorithms.episodes import EpisodeStats, cut_episodes
from eplb_rt.algorithms.shares import optimal_slot_shares
from eplb_rt.placement import Placement, Topology

TOY = np.array([600.0, 560, 120, 120, 20, 10, 10, 10])


def test_toy_bounds_and_exact_optima():
    topo = Topology(8, 2)
    b = bounds.layer_bounds(TOY, topo)
    assert b["mean"] == pytest.approx(181.25)
    assert b["replica"] == pytest.approx(120.0)
    value, _ = bounds.exact_min_max(TOY, topo, uniform=False)
    assert value == pytest.approx(181.25, rel=1e-6)


@pytest.mark.slow
def test_toy_exact_uniform_optimum():
    value, row = bounds.exact_min_max(TOY, Topology(8, 2), uniform=True)
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
    for name in ("equilibrium", "flashlb", "default"):
        peak = metrics.max_rank_load(plan(name, w[None], topo), w[None])[0]
        assert peak >= exact - 1e-6


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


def test_align_keeps_overlap_and_loads():
    prev = np.array([0, 1, 2, 3, 4, 5])
    new = np.array([4, 5, 1, 0, 3, 2])  # the same ranks, relabelled and reordered
    row, _ = align_row(new, prev, 3, 6)
    assert (row == prev).all()


def test_episode_statistics():
    load = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    one = EpisodeStats.from_load(load.sum(axis=0), num_episodes=4)
    assert one.num_episodes == 1
    assert np.allclose(one.var(), 0.0)
    assert np.allclose(one.cov(), 0.0)
    ring = EpisodeStats(3, 4, history=4, episode_steps=2)
    for step in np.concatenate([load, load, load]):
        ring.push(step)
    assert ring.num_steps == 4
    eps = ring.episodes()
    assert eps.shape == (2, 3, 4)
    assert np.allclose(eps[1], load.sum(axis=0))
    assert np.allclose(ring.mean(), eps.mean(axis=0))
    cov = ring.cov()
    assert cov.shape == (3, 4, 4)
    assert np.allclose(np.diagonal(cov, axis1=1, axis2=2), ring.var())
    assert cut_episodes(np.ones((10, 1, 2)), 3).sum() == pytest.approx(20.0)
    with pytest.raises(ValueError, match="negative"):
        ring.push(-np.ones((3, 4)))
    with pytest.raises(ValueError, match="experts"):
        ring.push(np.ones((3, 5)))
