"""Moves that pay: ``greedy_moves`` on hand-derived cases, its invariants, the exact optimum with
a move budget, and ``equilibrium``'s budget per layer."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.algorithms import bounds, metrics, plan
from eplb_rt.algorithms.local_search import greedy_moves
from eplb_rt.placement import Placement, Topology


def _par(row: np.ndarray, w: np.ndarray, num_ranks: int) -> float:
    counts = np.bincount(row, minlength=w.size)
    loads = (w[row] / counts[row]).reshape(num_ranks, -1).sum(axis=1)
    return float(loads.max() / loads.mean())


def test_one_rewrite_splits_the_hot_expert():
    # r0 = {0, 1}, r1 = {2, 0}; loads [1, 10, 1]: r0 = 0.5 + 10, r1 = 1 + 0.5. Rewriting r1's
    # replica of expert 0 (it keeps one on r0) to expert 1 gives r0 = 1 + 5, r1 = 1 + 5: PAR 1.
    prev = np.array([0, 1, 2, 0])
    w = np.array([1.0, 10.0, 1.0])
    row, moved = greedy_moves(prev, w, 2, 4, 0.0, 1e-3, 0.5)
    assert (row.tolist(), moved) == ([0, 1, 2, 1], 1)
    assert _par(row, w, 2) == pytest.approx(1.0)


def test_a_swap_when_no_rewrite_is_possible():
    # P = E: no expert has a second replica, so only swaps move load. [8, 8 | 1, 1] -> 9 | 9.
    prev = np.array([0, 1, 2, 3])
    w = np.array([8.0, 8.0, 1.0, 1.0])
    row, moved = greedy_moves(prev, w, 2, 4, 0.0, 1e-3, 0.5)
    assert moved == 2
    assert _par(row, w, 2) == pytest.approx(1.0)
    assert greedy_moves(prev, w, 2, 1, 0.0, 1e-3, 0.5)[1] == 0  # a swap needs a budget of two


def test_moves_that_do_not_pay_are_not_taken():
    prev = np.array([0, 1, 2, 0])
    w = np.array([1.0, 10.0, 1.0])
    # The rewrite lowers PAR by 10.5 / 6 - 1 = 0.75: a cost above that keeps the slots.
    row, moved = greedy_moves(prev, w, 2, 4, 0.8, 1e-3, 0.5)
    assert (row.tolist(), moved) == (prev.tolist(), 0)
    assert greedy_moves(prev, w, 2, 4, 0.7, 1e-3, 0.5)[1] == 1
    assert greedy_moves(prev, np.zeros(3), 2, 4, 0.0, 1e-3, 0.5)[1] == 0


@pytest.mark.parametrize("seed", range(20))
def test_valid_within_budget_and_never_costlier(seed):
    rng = np.random.default_rng(seed)
    D, S = int(rng.integers(2, 6)), int(rng.integers(1, 5))
    E = int(rng.integers(max(S, 1), D * S + 1))
    topo = Topology(D, S)
    prev = plan("deepseek", rng.pareto(1.2, size=(1, E)) * 100, topo).phy2log[0].astype(np.int64)
    w = rng.pareto(1.2, size=E) * 100
    w /= w.sum()
    budget = int(rng.integers(0, D * S + 1))
    cost = float(rng.choice([0.0, 1e-4, 1e-2]))
    row, moved = greedy_moves(prev, w, D, budget, cost, 1e-3 / D, 0.5)
    Placement(row[None], E, D)  # valid: every expert placed, no duplicate on a rank
    assert moved == int((row != prev).sum()) <= budget
    assert _par(row, w, D) + cost * moved <= _par(prev, w, D) + 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_never_below_the_exact_optimum_with_the_same_budget(seed):
    rng = np.random.default_rng(100 + seed)
    topo = Topology(3, 2)
    w = rng.integers(1, 40, size=5).astype(float)
    prev = plan("deepseek", rng.integers(1, 40, size=(1, 5)).astype(float), topo)
    prev_row = prev.phy2log[0].astype(np.int64)
    for budget in (1, 2, 3):
        best, _ = bounds.exact_min_max(w, topo, previous=prev_row, max_moves=budget)
        row, moved = greedy_moves(prev_row, w, 3, budget, 0.0, 1e-3, 0.5)
        counts = np.bincount(row, minlength=5)
        peak = (w[row] / counts[row]).reshape(3, 2).sum(axis=1).max()
        assert peak >= best - 1e-6
        assert moved <= budget


def test_equilibrium_keeps_the_budget_of_every_layer():
    rng = np.random.default_rng(0)
    topo = Topology(4, 3)
    old, new = rng.pareto(1.1, size=(2, 3, 9)) * 100
    prev = plan("equilibrium", old, topo)
    options = {"move_cost": 0.0, "max_moved_fraction": 0.25}
    moved = plan("equilibrium", new, topo, previous=prev, options=options).moves(prev)
    assert (moved <= 3).all() and moved.sum() > 0


def test_default_wins_on_deepseek_v3_replans():
    """The issue's goal with default options: PAR <= 1.01 moving <= 20 % of the slots, re-planning
    each prefill workload from a placement fitted on the other three (32 ranks x 9 slots)."""
    from benchmarks import traces
    from eplb_rt.config import EplbConfig

    policy = EplbConfig().policy
    loads = [traces.deepseek_v3(w, moe_only=True) for w in traces.DEEPSEEK_V3_WORKLOADS]
    topo = Topology(32, 9)
    for i, new in enumerate(loads):
        prev = plan(policy, np.concatenate(loads[:i] + loads[i + 1 :]), topo)
        p = plan(policy, new, topo, previous=prev)
        assert np.nanmean(metrics.par(p, new[0])) <= 1.01
        assert p.moved_fraction(prev) <= 0.20


def _esft_task_switches(policy: str, options: dict | None = None):
    """``(previous, placement, new load)`` per ESFT task switch at 8 ranks x 9 slots: the
    previous placement fitted on one task, ``policy`` re-planned on the next with ``options``."""
    from benchmarks import traces

    tasks = [traces.esft(t) for t in traces.ESFT_TASKS]
    topo = Topology(8, 9)
    for i, old in enumerate(tasks):
        new = tasks[(i + 1) % len(tasks)]
        prev = plan(policy, old, topo)
        yield prev, plan(policy, new, topo, previous=prev, options=options), new


def test_esft_task_switch_within_a_fifth_of_the_slots():
    """ESFT task switches (previous fitted on one task, re-plan on the next) with every layer
    held to 20 % of its slots: slots moved early are moved again for free once the budget is
    spent (without that, the walk stopped at a mean PAR of 1.04)."""
    options = {"move_cost": 0.0, "max_moved_fraction": 0.2}
    pars = []
    for prev, p, new in _esft_task_switches("equilibrium", options):
        assert (p.moves(prev) <= int(0.2 * prev.num_slots)).all()
        pars.append(np.nanmean(metrics.par(p, new.sum(0))))
    assert np.mean(pars) <= 1.02


def test_default_wins_on_esft_task_switches():
    """The issue's goal with default options on ESFT task switches (previous fitted on one task,
    re-plan on the next, 8 ranks x 9 slots): mean PAR <= 1.01 moving <= 20 % of the slots. A
    price per slot that held DeepSeek-V3 at 32 ranks bought 26 % here; per rank it does not."""
    from eplb_rt.config import EplbConfig

    pars, moved = [], []
    for prev, p, new in _esft_task_switches(EplbConfig().policy):
        pars.append(np.nanmean(metrics.par(p, new.sum(0))))
        moved.append(p.moved_fraction(prev))
    assert np.mean(pars) <= 1.01
    assert np.mean(moved) <= 0.20
