"""``equilibrium``'s judge of a re-plan's candidates: ``slowest_rank`` prices them by the time
their migration takes (the most experts one rank receives), as the planning pipeline's gate
does; with ``lifetime``, of those whose moves pay before the next plan it takes the one that buys
the most over the plans a placement is expected to serve (``inf``: the least PAR), and where
that one does not pay out of sample or by the pipeline's gate, the layer is planned again over
one plan's life."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eplb_rt import planning
from eplb_rt.algorithms import equilibrium, plan, warm_up
from eplb_rt.algorithms.align import align_order
from eplb_rt.algorithms.metrics import row_par
from eplb_rt.algorithms.prices import most_received
from eplb_rt.placement import Placement, Topology


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up(["equilibrium"])


@pytest.mark.parametrize("seed", range(6))
def test_the_policy_takes_the_candidate_cheapest_in_time(seed):
    """On one workload (judged on its load alone) each plan costs no more under its own price
    than the candidates every price shares: the slots kept, and the fresh plan with its ranks
    relabelled to the previous ones. (The walk and the repair to its PAR depend on the price.)"""
    rng = np.random.default_rng(seed)
    topo = Topology(8, 4)
    load = rng.lognormal(0.0, 1.2, size=(1, 4, 24)) * 1000
    previous = plan("equilibrium", rng.permuted(load, axis=2), topo)
    fresh = plan("equilibrium", load, topo).phy2log
    for move_cost in (0.002, 0.02, 0.2):
        for slowest in (False, True):
            options = {"move_cost": move_cost, "slowest_rank": slowest}
            got = plan("equilibrium", load, topo, previous, options).phy2log
            for j in range(4):
                before = previous.phy2log[j]
                relabelled = fresh[j][align_order(fresh[j], before, 8, 24)]
                cost = _cost(got[j], before, load[:, j], move_cost, slowest)
                for shared in (before, relabelled):
                    assert cost <= _cost(shared, before, load[:, j], move_cost, slowest) + 1e-9


def _cost(row, before, load, move_cost, slowest):
    """``PAR + move_cost x`` the migration's transfers (``slowest``) or moved slots / D."""
    D = 8
    moved = most_received(row, before, D) if slowest else (row != before).sum() / D
    return row_par(row, load, D) + move_cost * moved


def test_the_pipeline_tells_the_policy_its_prices_unless_told_otherwise(monkeypatch):
    """Moves priced by time, and ``lifetime`` the steps given over the horizon (the rows of load
    by default), at least one plan; an option given is kept."""
    seen = []
    real = planning.algorithms.plan

    def spy(policy, load, topology, previous, options, **kwargs):
        seen.append((options.slowest_rank, options.lifetime))
        return real(policy, load, topology, previous, options, **kwargs)

    monkeypatch.setattr(planning.algorithms, "plan", spy)
    topo = Topology(4, 3)
    load = np.tile(np.array([90.0, 5, 5, 5, 5, 5, 5, 5, 5]), (6, 1, 1))
    previous = Placement.initial(1, 9, topo)
    cost = planning.CostModel(expert_bytes=1.0, bandwidth=1e9, token_seconds=1.0)
    for options, horizon, lifetime, expect in (
        ({}, 2, None, (True, 3.0)),  # 6 rows over 2
        ({}, 2, 255, (True, 127.5)),
        ({}, 2, math.inf, (True, math.inf)),  # the runtime's and simulate's
        ({}, 2, 10**400, (True, math.inf)),  # an int past the float range
        ({}, 12, None, (True, 1.0)),  # never under one plan
        ({"slowest_rank": False, "lifetime": 4.0}, 2, 255, (False, 4.0)),
    ):
        planning.decide(
            load, previous, topo, "equilibrium", options, cost=cost, horizon=horizon,
            lifetime=lifetime,
        )  # fmt: skip
        assert seen.pop() == expect


def test_lifetime_defaults_to_one_plan_and_is_checked():
    topo = Topology(4, 3)
    load = np.arange(1.0, 13.0)[None, None]
    previous = plan("equilibrium", load[:, :, ::-1].copy(), topo)
    assert plan("equilibrium", load, topo, previous, {"lifetime": 1.0}) == plan(
        "equilibrium", load, topo, previous
    )
    for bad in (0.5, float("nan"), -math.inf, "1e400x"):
        with pytest.raises(ValueError, match="'lifetime' must be a finite number >= 1, or inf"):
            plan("equilibrium", load, topo, previous, {"lifetime": bad})
    for endless in (math.inf, "inf"):  # as the command line gives it
        plan("equilibrium", load, topo, previous, {"lifetime": endless})


def _decode_steps(seed, topo, layers, experts, steps=100):
    """``[steps, layers, experts]`` decode-size steps (16 tokens a rank, top-8) of log-normal
    shares (sigma 1), as float64 counts."""
    rng = np.random.default_rng(seed)
    share = rng.lognormal(0.0, 1.0, size=(layers, experts))
    share /= share.sum(axis=1, keepdims=True)
    count = 16 * topo.num_ranks * 8
    return np.stack([[rng.multinomial(count, p) for p in share] for _ in range(steps)]) * 1.0


@pytest.mark.parametrize("seed", range(3))
def test_from_the_starting_layout_a_long_life_takes_the_fresh_plan_that_pays(seed):
    """Decode-size steps at 32 ranks x 5 slots, through the pipeline from the starting layout:
    over one plan's life a patch pays most (PAR 1.18-1.35 a step, 20-58 slots: the slots in
    force repaired toward the fresh plan's balance where that pays; 1.23-1.35 before that
    candidate); over the runtime's 255 steps, or as long as the load holds, the fresh plan
    (1.15-1.17, 142-236 slots), whose every layer still pays before the next plan."""
    topo, layers, experts = Topology(32, 5), 2, 128
    load = _decode_steps(seed, topo, layers, experts)
    args = (load, planning.starting_placement(layers, experts, topo), topo)
    decided = {
        life: planning.decide(
            *args, "equilibrium", None, cost=planning.CostModel(), horizon=100, lifetime=life
        )
        for life in (100, 255, math.inf)
    }
    for d in decided.values():
        assert d.layers == (0, 1)
        assert (d.saved_s > d.migration_s).all()
    par = {life: planning.step_par(d.placement, load)[1].mean() for life, d in decided.items()}
    assert par[255] < par[100] - 0.015
    assert par[math.inf] <= par[255] + 1e-12
    assert decided[255].slots > 2 * decided[100].slots


def test_a_long_lived_plan_that_fails_out_of_sample_falls_back_to_one_plans_life(monkeypatch):
    """Seed 3 at 32x5 from the starting layout: layer 1's plan for as long as the load holds
    (the least PAR that pays) does not pay on half of the window when fitted to the other half;
    set back, the layer would keep the starting layout. It is planned again over one plan's
    life, checked alike, and takes that plan (25 moved slots)."""
    topo, layers, experts = Topology(32, 5), 2, 128
    load = _decode_steps(3, topo, layers, experts)
    start = planning.starting_placement(layers, experts, topo)
    options = {"move_cost": planning.CostModel().move_cost(load, 32, 100), "slowest_rank": True}
    lives = []
    real = equilibrium._plan_layers

    def spy(layers, topo, opts):
        lives.append((opts.lifetime, layers.load.shape[0]))
        return real(layers, topo, opts)

    monkeypatch.setattr(equilibrium, "_plan_layers", spy)
    endless = plan("equilibrium", load, topo, start, {**options, "lifetime": math.inf})
    assert (1.0, 1) in lives  # the one layer planned again over one plan
    monkeypatch.undo()
    one = plan("equilibrium", load, topo, start, {**options, "lifetime": 1.0})
    moves = endless.moves(start)
    assert moves[1] > 0
    np.testing.assert_array_equal(endless.phy2log[1], one.phy2log[1])


@pytest.mark.parametrize("seed", [0, 6, 24])
def test_a_layer_the_gate_refuses_is_planned_again_over_one_plans_life(monkeypatch, seed):
    """The policy judges on the summed load, the gate on per-step peaks, which noise lifts
    more where ranks are balanced: at 32x5 from the starting layout (seeds found by search),
    the plan for as long as the load holds saves less than its migration in one layer. That
    layer is planned again over one plan's life, and the gate commits the cheaper plan, as a
    decision over one plan's life would have."""
    topo, layers, experts = Topology(32, 5), 2, 128
    load = _decode_steps(seed, topo, layers, experts)
    start = planning.starting_placement(layers, experts, topo)
    calls = []
    real = planning.algorithms.plan

    def spy(policy, load, topology, previous, options, *, layers, threads):
        calls.append((options.lifetime, tuple(np.flatnonzero(layers))))
        return real(policy, load, topology, previous, options, layers=layers, threads=threads)

    monkeypatch.setattr(planning.algorithms, "plan", spy)
    kwargs = {"cost": planning.CostModel(), "horizon": 100}
    endless = planning.decide(load, start, topo, "equilibrium", None, **kwargs, lifetime=math.inf)
    assert len(calls) == 2 and calls[0] == (math.inf, (0, 1)) and calls[1][0] == 1.0
    refused = calls[1][1]
    one = planning.decide(load, start, topo, "equilibrium", None, **kwargs, lifetime=100)
    for layer in refused:
        assert (layer in endless.layers) == (layer in one.layers)
        np.testing.assert_array_equal(
            endless.placement.phy2log[layer], one.placement.phy2log[layer]
        )
    assert (endless.saved_s > endless.migration_s)[list(endless.layers)].all()


@pytest.mark.parametrize("seed", range(3))
def test_a_window_that_shows_the_load_holding_is_judged_over_an_endless_life(seed):
    """Per-step counts that differ by sampling noise only: the load held over the window, and
    past one plan the judge takes the least PAR that pays, whatever the life it is given. One
    row (nothing shows how long the load holds) keeps the life given: fewer moves over three
    plans than over an endless one."""
    topo, layers, experts = Topology(32, 5), 2, 128
    load = _decode_steps(seed, topo, layers, experts)
    start = planning.starting_placement(layers, experts, topo)
    cost = planning.CostModel()

    def decided(load, horizon, lifetime):
        return planning.decide(
            load, start, topo, "equilibrium", None, cost=cost, horizon=horizon, lifetime=lifetime
        )

    assert decided(load, 100, 255).placement == decided(load, 100, math.inf).placement
    one = load.sum(axis=0, keepdims=True)
    assert decided(one, 1, 3).slots < decided(one, 1, math.inf).slots
