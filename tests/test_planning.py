"""The planning pipeline: the cost model, the one gate, drift, the starting placement."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_rt import formats, planning
from eplb_rt.algorithms import hierarchy, plan
from eplb_rt.algorithms.align import align_placement
from eplb_rt.algorithms.metrics import par
from eplb_rt.models.workload import drifting_profile
from eplb_rt.placement import Placement, Topology


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("bandwidth", -1e9, "CostModel.bandwidth must be a finite number > 0, got -1000000000.0"),
        ("expert_bytes", 0, "CostModel.expert_bytes must be a finite number > 0, got 0"),
        ("token_seconds", float("nan"), "CostModel.token_seconds must be a finite number > 0"),
        ("token_seconds", float("inf"), "CostModel.token_seconds must be a finite number > 0"),
        ("hidden_seconds", -1.0, "CostModel.hidden_seconds must be a finite number >= 0"),
        ("bandwidth", "fast", "CostModel.bandwidth must be a finite number > 0, got 'fast'"),
        ("expert_bytes", True, "CostModel.expert_bytes must be a finite number > 0, got True"),
        ("expert_bytes", 10**400, "CostModel.expert_bytes must be a finite number > 0, got 1000"),
        ("hidden_seconds", -(10**400), "CostModel.hidden_seconds must be a finite number >= 0"),
    ],
)
def test_bad_costs_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        planning.CostModel(**{field: value})


def test_migration_seconds_count_what_the_slowest_rank_receives():
    cost = planning.CostModel(expert_bytes=3, bandwidth=2)
    old = np.array([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 0, 2]])
    new = np.array([[0, 2, 1, 3], [0, 1, 0, 1], [1, 0, 2, 0]])
    # Layer 0: rank 0 receives expert 2, rank 1 expert 1: one expert each, 3 bytes at 2 B/s.
    # Layer 1: rank 1 receives experts 0 and 1 (two slots), rank 0 nothing.
    # Layer 2: slots permuted inside a rank, or a copy of an expert the rank already holds.
    assert cost.migration_seconds(old, new, 2).tolist() == [1.5, 3.0, 0.0]
    hidden = planning.CostModel(expert_bytes=3, bandwidth=2, hidden_seconds=1.0)
    assert hidden.migration_seconds(old, new, 2).tolist() == [0.5, 2.0, 0.0]
    # Bytes given as an int past int64's range once multiplied by the counts: no wrap to 0.
    huge = planning.CostModel(expert_bytes=2**62, bandwidth=2.0**62)
    assert huge.migration_seconds(old, new, 2).tolist() == [1.0, 2.0, 0.0]


def test_move_cost_is_transfer_time_over_the_time_one_par_costs():
    load = np.full((3, 1, 4), 2.0)  # 8 tokens per step, mean rank load 4 on 2 ranks
    cost = planning.CostModel(expert_bytes=2, bandwidth=1, token_seconds=0.5)
    # A slot moved on each rank takes one transfer, 2 s (both ranks receive at once); one unit
    # of PAR costs 4 tokens x 0.5 s x 2 steps = 4 s.
    assert cost.move_cost(load, 2, 2) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "given", [{}, {"move_cost": 0.5, "slowest_rank": False, "lifetime": 7.0}], ids=["unset", "set"]
)
def test_decide_sets_the_pipeline_options_a_caller_leaves_out(monkeypatch, given):
    """What ``eplb-rt policies --options`` says the pipeline sets: :data:`PIPELINE_OPTIONS`,
    each from the cost model and the clock, unless the caller gives it."""
    seen = []
    real = planning.algorithms.plan
    monkeypatch.setattr(
        planning.algorithms, "plan", lambda *a, **k: seen.append(a[4]) or real(*a, **k)
    )
    load = np.tile([[[9.0, 1, 1, 1]]], (6, 1, 1))  # 6 rows, one layer, expert 0 hot
    topo, cost = Topology(2, 3), planning.CostModel(expert_bytes=1, bandwidth=1e9)
    previous = Placement(np.array([[0, 1, 2, 3, 1, 2]]), 4, 2)  # rank 0 holds 10 of 12
    planning.decide(load, previous, topo, "equilibrium", dict(given), cost=cost, horizon=2)
    derived = {"move_cost": cost.move_cost(load, 2, 2), "slowest_rank": True, "lifetime": 3.0}
    got = {name: getattr(seen[0], name) for name in planning.PIPELINE_OPTIONS}
    assert got == {**derived, **given}


def test_idle_layers_do_not_make_a_move_dearer():
    # One hot layer whose move pays (experts 0 and 1 both on rank 0), alone or beside layers
    # that get no tokens: an idle layer buys nothing, and the price of a move stays that of
    # the layers that carry load, so the same layer is committed.
    rng = np.random.default_rng(0)
    topo, hot = Topology(4, 2), np.array([260.0, 260.0] + [100.0] * 6)
    for idle in (0, 7):
        load = np.zeros((32, 1 + idle, 8))
        load[:, 0] = rng.poisson(hot, size=(32, 8))
        start = Placement.initial(1 + idle, 8, topo)
        cost = planning.CostModel()
        assert cost.move_cost(load, 4, 50) == cost.move_cost(load[:, :1], 4, 50)
        decision = planning.decide(load, start, topo, "equilibrium", None, cost=cost, horizon=50)
        assert decision.layers == (0,)
        assert decision.saved_s[0] > decision.migration_s[0]


@pytest.mark.parametrize("field", ["bandwidth", "token_seconds"])
def test_prices_past_any_gain_plan_nothing_instead_of_failing(field):
    # A price so high that a move's cost overflows: no move pays, and the plan says so.
    load, start, topo = _hot_layer()
    cost = planning.CostModel(**{field: 1e-320})
    assert cost.move_cost(load, 2, 10) == planning.NO_MOVE_PAYS
    decision = planning.decide(load, start, topo, "equilibrium", None, cost=cost, horizon=10)
    assert decision.layers == () and decision.placement == start


def _hot_layer() -> tuple[np.ndarray, Placement, Topology]:
    """Per step experts carry [6, 1, 1]; in force [0, 1 | 2, 1]: ranks 6.5 and 1.5 tokens. The
    best placement splits expert 0 over both ranks (4 and 4): a peak 2.5 tokens lower per step,
    bought by rank 1 receiving one expert."""
    load = np.tile(np.array([6.0, 1.0, 1.0]), (4, 1, 1))
    return load, Placement(np.array([[0, 1, 2, 1]]), 3, 2), Topology(2, 2)


@pytest.mark.parametrize(("seconds_per_move", "commits"), [(2.0, True), (3.0, False)])
def test_gate_commits_only_what_pays_hand_derived(seconds_per_move, commits):
    load, previous, topo = _hot_layer()
    cost = planning.CostModel(expert_bytes=seconds_per_move, bandwidth=1.0, token_seconds=1.0)
    decision = planning.decide(load, previous, topo, "deepseek", None, cost=cost, horizon=1)
    assert decision.layers == ((0,) if commits else ())
    assert (decision.placement == previous) is not commits
    assert decision.slots == (1 if commits else 0)
    if commits:
        assert decision.saved_s[0] == pytest.approx(2.5)  # 2.5 tokens x 1 s x 1 step
        assert decision.migration_s[0] == pytest.approx(seconds_per_move)
        assert decision.placement == decision.candidate
    else:
        # Even a perfect balance saves 2.5 s (peak 6.5 -> mean 4) < 3 s: not planned at all.
        assert decision.candidate == previous
        assert decision.saved_s[0] == 0.0 and decision.migration_s[0] == 0.0


def _decide_planning_every_layer(load, previous, topo, policy, *, cost, horizon):
    """The gate on a plan of every layer: what :func:`planning.decide` must match."""
    options = {"move_cost": cost.move_cost(load, topo.num_ranks, horizon), "slowest_rank": True}
    options["lifetime"] = max(1.0, len(load) / horizon)  # decide's default: the rows given
    options = options if policy == "equilibrium" else None
    candidate = align_placement(previous, plan(policy, load, topo, previous, options))
    peak_before, _ = planning.step_par(previous, load)
    peak_after, _ = planning.step_par(candidate, load)
    saved = (peak_before - peak_after) * cost.token_seconds * horizon
    spent = cost.migration_seconds(previous.phy2log, candidate.phy2log, topo.num_ranks)
    changed = candidate.changed_layers(previous)
    layers = tuple(int(x) for x in changed[saved[changed] > spent[changed]])
    return (previous.replace_layers(layers, candidate) if layers else previous), layers


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**16),
    policy=st.sampled_from(["equilibrium", "deepseek"]),
    bandwidth=st.floats(0.02, 2.0),
    hidden=st.sampled_from([0.0, 0.5]),
)
def test_layers_that_cannot_pay_are_not_planned_and_decisions_stay_the_same(
    seed, policy, bandwidth, hidden
):
    rng = np.random.default_rng(seed)
    topo = Topology(4, 3)
    # Layers from nearly balanced to skewed, so some can pay for a move and some cannot.
    skew = np.linspace(0.05, 3.0, 6)[:, None] * rng.standard_normal((6, 9))
    load = rng.poisson(40.0 * np.exp(skew), size=(5, 6, 9)).astype(np.float64)
    previous = planning.starting_placement(6, 9, topo)
    cost = planning.CostModel(
        expert_bytes=1.0, bandwidth=bandwidth, token_seconds=1e-2, hidden_seconds=hidden
    )
    d = planning.decide(load, previous, topo, policy, None, cost=cost, horizon=10)
    placement, layers = _decide_planning_every_layer(
        load, previous, topo, policy, cost=cost, horizon=10
    )
    assert d.layers == layers
    assert d.placement == placement
    planned = planning.could_pay(*planning.step_load(previous, load), cost, 10)
    assert set(d.candidate.changed_layers(previous).tolist()) <= set(np.flatnonzero(planned))
    assert set(layers) <= set(np.flatnonzero(planned))


@pytest.mark.parametrize("bandwidth", [1e-9, 1e9], ids=["nothing-pays", "moves-pay"])
def test_a_previous_placement_of_another_shape_is_refused_whether_or_not_a_layer_pays(
    bandwidth,
):
    load = np.random.default_rng(0).poisson(40.0, size=(2, 3, 8)).astype(np.float64)
    previous = planning.starting_placement(3, 8, Topology(4, 3))
    cost = planning.CostModel(expert_bytes=1.0, bandwidth=bandwidth, token_seconds=1e-2)
    for other in (Topology(4, 4), Topology(2, 6)):
        with pytest.raises(ValueError, match=r"previous placement .* does not match \d ranks x"):
            planning.decide(load, previous, other, "equilibrium", None, cost=cost, horizon=10)


def test_horizon_may_be_any_real_number_type():
    load = np.random.default_rng(0).poisson(40.0, size=(2, 3, 8)).astype(np.float64)
    previous = planning.starting_placement(3, 8, Topology(4, 3))
    args = (load, previous, Topology(4, 3), "deepseek", None)
    for horizon in (100, 100.0, np.int64(100), np.float32(100)):
        planning.decide(*args, cost=planning.CostModel(), horizon=horizon)
        # A policy with a move price takes it from the cost model: a float whatever the types.
        cost = planning.CostModel(token_seconds=np.float32(2.5e-7))
        assert type(cost.move_cost(load, 4, horizon)) is float
        planning.decide(
            load, previous, Topology(4, 3), "equilibrium", None, cost=cost, horizon=horizon
        )
    for bad in (0, -1.0, np.nan, True, "100"):
        with pytest.raises(ValueError, match="horizon"):
            planning.decide(*args, cost=planning.CostModel(), horizon=bad)


def test_plan_keeps_the_unplanned_layers_and_checks_the_mask():
    rng = np.random.default_rng(3)
    topo = Topology(4, 3)
    load = rng.gamma(0.5, 10.0, size=(5, 3, 9))
    previous = planning.starting_placement(3, 9, topo)
    full = plan("equilibrium", load, topo, previous)
    mask = np.array([True, False, True])
    part = plan("equilibrium", load, topo, previous, layers=mask)
    assert (part.phy2log[mask] == full.phy2log[mask]).all()
    assert (part.phy2log[1] == previous.phy2log[1]).all()
    with pytest.raises(ValueError, match=r"\[3\] bool mask .* got int64 \(3,\)"):
        plan("equilibrium", load, topo, previous, layers=np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="give previous"):
        plan("equilibrium", load, topo, layers=mask)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**16),
    bandwidth=st.floats(1e-3, 1e3),
    horizon=st.integers(1, 50),
)
def test_gate_never_commits_a_layer_that_costs_more_than_it_saves(seed, bandwidth, horizon):
    rng = np.random.default_rng(seed)
    topo = Topology(3, 3)
    load = rng.gamma(0.5, 10.0, size=(6, 4, 7))
    previous = planning.starting_placement(4, 7, topo)
    cost = planning.CostModel(expert_bytes=1.0, bandwidth=bandwidth, token_seconds=1e-2)
    d = planning.decide(load, previous, topo, "deepseek", None, cost=cost, horizon=horizon)
    peak_before, _ = planning.step_par(previous, load)
    peak_after, _ = planning.step_par(d.placement, load)
    moved = d.placement.moves(previous) > 0
    spent_all = cost.migration_seconds(previous.phy2log, d.placement.phy2log, 3)
    for layer in range(4):
        saved = (peak_before[layer] - peak_after[layer]) * cost.token_seconds * horizon
        spent = spent_all[layer]
        if layer in d.layers:
            assert moved[layer] and saved > spent
        else:
            assert not moved[layer] and not (d.saved_s[layer] > d.migration_s[layer])


def _sampled(probs: np.ndarray, rng, tokens: int = 400) -> np.ndarray:
    """Per-step expert counts ``[T, L, E]`` drawn from ``probs [T, E]`` (same for each layer)."""
    steps = np.stack([rng.multinomial(tokens, p) for p in probs]).astype(np.float64)
    return np.repeat(steps[:, None, :], 2, axis=1)


@pytest.mark.parametrize("seed", range(12))
def test_drift_fires_on_a_planted_shift_and_not_on_stationary_noise(seed):
    rng = np.random.default_rng(seed)
    topo = Topology(4, 2)
    placement = Placement(np.tile(np.arange(8), (2, 1)), 8, 4)
    base = np.array([3, 1, 1, 1, 3, 1, 1, 1], dtype=np.float64)
    probs = np.tile(base / base.sum(), (60, 1))
    cost = planning.CostModel(expert_bytes=1e6, bandwidth=50e9, token_seconds=1e-6)
    assert not planning.drifted(_sampled(probs, rng), placement, 10, cost)
    shifted = probs.copy()
    hot = np.array([6, 1, 1, 1, 1, 1, 1, 1], dtype=np.float64)
    shifted[-10:] = hot / hot.sum()  # the last episode's load piles onto rank 0
    assert planning.drifted(_sampled(shifted, rng), placement, 10, cost)
    del topo


def test_drift_needs_history_and_a_rise_worth_a_move():
    rng = np.random.default_rng(1)
    placement = Placement(np.tile(np.arange(8), (2, 1)), 8, 4)
    probs = np.tile(np.full(8, 1 / 8), (60, 1))
    probs[-10:] = np.array([6, 1, 1, 1, 1, 1, 1, 1]) / 13
    load = _sampled(probs, rng)
    cheap = planning.CostModel(expert_bytes=1e6, bandwidth=50e9, token_seconds=1e-6)
    assert planning.drifted(load, placement, 10, cheap)
    assert not planning.drifted(load[-25:], placement, 10, cheap)  # under 3 episodes of history
    dear = planning.CostModel(expert_bytes=1e12, bandwidth=1e6, token_seconds=1e-6)
    assert not planning.drifted(load, placement, 10, dear)


@pytest.mark.parametrize(("ranks", "slots", "experts"), [(4, 20, 64), (3, 4, 9), (8, 9, 64)])
def test_starting_placement_is_balanced_on_equal_loads_and_keeps_the_contiguous_layout(
    ranks, slots, experts
):
    topo = Topology(ranks, slots)
    start = planning.starting_placement(2, experts, topo)
    assert par(start, np.ones((2, experts))).tolist() == pytest.approx([1.0, 1.0])
    grid = start.by_rank()[0]
    for expert in range(experts):
        assert expert in grid[expert * ranks // experts]


@pytest.mark.parametrize(
    ("ranks", "slots", "nodes", "groups", "experts"),
    [(32, 9, 4, 8, 256), (64, 5, 8, 8, 256), (6, 4, 3, 6, 18), (12, 6, 4, 4, 48)],
)
def test_starting_placement_keeps_expert_groups_on_nodes(ranks, slots, nodes, groups, experts):
    """Where the topology asks for groups on nodes, each node is laid out on its own: every
    group on one node, balanced on equal loads, the contiguous layout kept."""
    topo = Topology(ranks, slots, nodes, groups)
    start = planning.starting_placement(3, experts, topo)
    assert not hierarchy.spread_layers(start.phy2log, experts, topo, _Hierarchical()).any()
    assert par(start, np.ones((3, experts))).tolist() == pytest.approx([1.0] * 3)
    grid = start.by_rank()[0]
    for expert in range(experts):
        assert expert in grid[expert * ranks // experts]


@pytest.mark.parametrize(
    ("ranks", "slots", "nodes", "groups", "experts"), [(6, 5, 2, 4, 12), (9, 5, 3, 6, 18)]
)
def test_a_node_whose_replicas_find_no_free_rank_keeps_its_groups(
    ranks, slots, nodes, groups, experts
):
    """Where the redundant replicas of a node find no free rank, the node takes
    ``Placement.initial``'s layout (it raised a TypeError): groups still on their nodes."""
    topo = Topology(ranks, slots, nodes, groups)
    start = planning.starting_placement(2, experts, topo)
    assert not hierarchy.spread_layers(start.phy2log, experts, topo, _Hierarchical()).any()


def test_groups_start_on_nodes_so_a_move_budget_still_rebalances():
    """Hierarchical with a move budget from the starting layout: the hot layers are planned
    and committed (the layout used to spread groups over nodes, which no plan within the
    budget could undo, so every layer kept its slots, plan after plan)."""
    topo = Topology(8, 5, 2, 4)
    rng = np.random.default_rng(3)
    load = rng.poisson(rng.gamma(0.5, 40.0, size=(3, 32)), size=(16, 3, 32)).astype(float)
    start = planning.starting_placement(3, 32, topo)
    options = {"hierarchical": True, "max_moved_fraction": 0.2}
    cost = planning.CostModel()
    decision = planning.decide(load, start, topo, "equilibrium", options, cost=cost, horizon=1e6)
    assert decision.layers == (0, 1, 2)
    assert (decision.par_after < decision.par_before).all()
    assert not hierarchy.spread_layers(decision.placement.phy2log, 32, topo, _Hierarchical()).any()


class _Hierarchical:
    hierarchical = True


@pytest.mark.parametrize("layers", [0, -1, True, 2.0])
def test_starting_placement_names_a_bad_layer_count(layers):
    with pytest.raises(ValueError, match=f"num_layers must be an integer >= 1, got {layers!r}"):
        planning.starting_placement(layers, 8, Topology(4, 3))


def test_starting_placement_is_no_worse_than_the_static_layout_on_the_demo_workload():
    profile = drifting_profile(100, 6)  # [T, L, 64]: the demo's expected expert shares per step
    start = planning.starting_placement(6, 64, Topology(4, 20))
    static = Placement(np.tile(np.arange(64), (6, 1)), 64, 4)
    assert np.nanmean(par(start, profile)) <= np.nanmean(par(static, profile))
    # The layout it replaces piled the 16 replicas onto ranks 0 and 3: 1.25 on equal loads.
    assert par(Placement.initial(1, 64, Topology(4, 20)), np.ones((1, 64)))[0] == 1.25


@pytest.mark.parametrize(
    ("flag", "value"), [("--bandwidth", "-1"), ("--expert-bytes", "0"), ("--token-us", "nan")]
)
def test_plan_rejects_bad_prices_naming_the_flag(flag, value, tmp_path, capsys):
    from eplb_rt.cli import main

    np.save(tmp_path / "load.npy", np.ones((2, 1, 4)))
    start = tmp_path / "start.json"
    formats.write_placement(planning.starting_placement(1, 4, Topology(2, 2)), start)
    argv = ["plan", "--load", str(tmp_path / "load.npy"), "--ranks", "2", "--slots-per-rank", "2"]
    argv += ["--previous", str(start), flag, value, "--out", str(tmp_path / "out.json")]
    assert main(argv) == 2
    assert f"{flag} must be a finite number > 0" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("policy", ["deepseek", "equilibrium"])
def test_a_flat_placement_in_force_is_grouped_onto_nodes_whatever_it_costs(policy):
    # Groups on nodes cost balance (PAR 1.005 -> 1.64 here) and buy what the gate does not
    # price (a dispatch crossing fewer nodes): asked for, they are placed, not gated away.
    from eplb_rt.algorithms.hierarchy import groups_in_force

    rng = np.random.default_rng(0)
    topo = Topology(4, 3, num_nodes=2, num_groups=4)
    weights = np.array([8, 8, 1, 1, 1, 1, 1, 1.0])
    load = rng.multinomial(100_000, weights / weights.sum(), size=(16, 2)).astype(float)
    flat = plan("equilibrium", load, topo, None, {"hierarchical": False})
    assert (groups_in_force(flat.phy2log, topo, 8) < 0).any(axis=1).all()
    options = {"hierarchical": True}
    decision = planning.decide(
        load, flat, topo, policy, options, cost=planning.CostModel(), horizon=10
    )
    assert decision.layers == (0, 1) and (decision.par_after > decision.par_before).all()
    assert (groups_in_force(decision.placement.phy2log, topo, 8) >= 0).all()
    # Grouped in force, the gate is back: a plan that costs more than it saves stays out.
    again = planning.decide(
        load, decision.placement, topo, policy, options, cost=planning.CostModel(), horizon=10
    )
    assert again.layers == ()


def test_drift_needs_a_whole_number_of_recent_steps():
    placement = planning.starting_placement(1, 4, Topology(2, 2))
    load = np.ones((30, 1, 4))
    for recent in (0, -3, 1.5, True, "10"):
        with pytest.raises(ValueError, match=r"^recent \(steps\) must be an integer >= 1, got "):
            planning.drifted(load, placement, recent, planning.CostModel())
    assert not planning.drifted(load, placement, np.int64(10), planning.CostModel())


_BAD_SPANS = [0, -1.0, float("nan"), True, "10"]
_INFINITE = [float("inf"), 10**400]


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("horizon", v, r"horizon \(steps until the next plan\) must be a finite number > 0")
        for v in _BAD_SPANS + _INFINITE
    ]
    + [
        ("lifetime", v, r"lifetime \(steps a placement is expected to serve\) must be a number "
         r"> 0 or inf")
        for v in _BAD_SPANS
    ],
)  # fmt: skip
def test_a_bad_horizon_or_lifetime_is_refused_by_name(name, value, match):
    topo = Topology(2, 2)
    previous = planning.starting_placement(1, 4, topo)
    spans = {"horizon": 10, "lifetime": None, name: value}
    with pytest.raises(ValueError, match=match):
        planning.decide(
            np.ones((1, 1, 4)), previous, topo, "equilibrium", None,
            cost=planning.CostModel(), **spans,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value"),
    [("previous", None), ("previous", [[0, 1, 2, 3]]), ("topology", (2, 2)), ("cost", None)],
)
def test_decide_names_an_argument_of_the_wrong_type(name, value):
    topo = Topology(2, 2)
    args = {
        "previous": planning.starting_placement(1, 4, topo),
        "topology": topo,
        "cost": planning.CostModel(),
    }
    args[name] = value
    with pytest.raises(TypeError, match=f"{name} must be a"):
        planning.decide(
            np.ones((1, 1, 4)), args["previous"], args["topology"], "equilibrium", None,
            cost=args["cost"], horizon=10,
        )  # fmt: skip


def test_prices_past_a_floats_range_decide_without_nan(recwarn):
    """``token_seconds x horizon`` past the float range: a layer that falls saves inf (it pays),
    one that does not saves 0, not NaN, and numpy warns of nothing."""
    load = np.zeros((2, 3, 8))
    load[:, :, 0] = 900.0  # a hot expert on one replica
    load[:, :, 1:] = 100.0
    topo = Topology(4, 3)
    previous = planning.starting_placement(3, 8, topo)
    cost = planning.CostModel(token_seconds=1e300)
    d = planning.decide(load, previous, topo, "equilibrium", None, cost=cost, horizon=1e300)
    assert not np.isnan(d.saved_s).any() and d.layers
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_step_load_reads_an_aggregate_as_one_step_of_every_layer():
    placement = Placement.initial(3, 4, Topology(2, 2))
    load = np.arange(1.0, 25.0).reshape(2, 3, 4)
    peak, mean = planning.step_load(placement, load[:1])
    np.testing.assert_array_equal(planning.step_load(placement, load[0]), (peak, mean))
    assert peak.shape == mean.shape == (3,)
    with pytest.raises(ValueError, match="load must be"):
        planning.step_par(placement, load[None])
    with pytest.raises(ValueError, match="load has 3 layers, expected 2"):
        planning.step_load(Placement.initial(2, 4, Topology(2, 2)), load)


@pytest.mark.parametrize(
    ("previous", "new", "ranks", "match"),
    [
        (np.zeros((1, 4), int), np.zeros((3, 4), int), 2, r"differ in shape: \(1, 4\) against"),
        (np.zeros((3, 4), int), np.zeros((3, 8), int), 2, "differ in shape"),
        (np.zeros(4, int), np.zeros(4, int), 2, r"previous must be a \[L, P\] slot table"),
        (np.zeros((1, 4)), np.zeros((1, 4), int), 2, "previous must hold integer expert ids"),
        (np.zeros((1, 4), int), np.zeros((1, 4), int), 3, "dividing 4 slots, got 3"),
        (np.zeros((1, 4), int), np.zeros((1, 4), int), 0, "dividing 4 slots, got 0"),
    ],
)
def test_migration_seconds_refuses_tables_that_do_not_match(previous, new, ranks, match):
    with pytest.raises((ValueError, TypeError), match=match):
        planning.CostModel().migration_seconds(previous, new, ranks)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.ones((1, 2, 4)), 2, -10), "horizon"),
        ((np.ones((1, 2, 4)), 2, float("nan")), "horizon"),
        ((np.full((1, 2, 4), np.nan), 2, 10), "NaN"),
        ((-np.ones((1, 2, 4)), 2, 10), "negative"),
        ((np.ones((1, 2, 4)), 0, 10), "num_ranks must be an integer >= 1, got 0"),
    ],
)
def test_move_cost_refuses_what_would_price_a_move_wrongly(args, match):
    with pytest.raises(ValueError, match=match):
        planning.CostModel().move_cost(*args)


def test_move_cost_reads_an_aggregate_as_one_step():
    load = np.arange(1.0, 9.0).reshape(2, 4)
    cost = planning.CostModel()
    assert cost.move_cost(load, 2, 10) == cost.move_cost(load[None], 2, 10)


@pytest.mark.parametrize("horizon", [-1e6, float("nan"), 0])
def test_could_pay_refuses_a_horizon_that_is_not_a_number_of_steps(horizon):
    with pytest.raises(ValueError, match="horizon"):
        planning.could_pay(np.ones(2) * 1e6, np.ones(2), planning.CostModel(), horizon)


def test_decide_refuses_an_options_object_saying_what_it_takes():
    from eplb_rt.algorithms import get_policy

    topo = Topology(2, 2)
    options = get_policy("deepseek").make_options({})
    with pytest.raises(TypeError, match=r"options must be a dict .* got DeepSeekOptions"):
        planning.decide(
            np.ones((1, 1, 4)), planning.starting_placement(1, 4, topo), topo, "deepseek",
            options, cost=planning.CostModel(), horizon=10,
        )  # fmt: skip


def test_a_layer_that_saves_only_what_it_costs_is_not_committed():
    """Every placement of this uniform load is as balanced: a changed layer saves nothing, and
    with its transfer hidden costs nothing. A tie moves nothing."""
    topo = Topology(2, 2)
    previous = Placement.initial(1, 4, topo)
    free = planning.CostModel(hidden_seconds=1e9)
    d = planning.decide(np.ones((4, 1, 4)), previous, topo, "deepseek", None, cost=free, horizon=10)
    assert d.candidate.changed_layers(previous).tolist() == [0]  # the premise
    assert d.layers == () and d.placement == previous


def test_a_transfer_hidden_behind_compute_costs_nothing_not_less():
    cost = planning.CostModel(expert_bytes=1.0, bandwidth=2.0, hidden_seconds=1.0)
    assert cost.migration_seconds(np.array([[0, 1, 2, 3]]), np.array([[2, 1, 0, 3]]), 2) == [0.0]


def test_layers_refused_over_the_placements_life_are_planned_again_over_one_interval(
    monkeypatch,
):
    """The policy judges its candidates over the placement's life, the gate per step: layers it
    refuses are planned once more with a life of one interval."""
    topo = Topology(2, 2)
    previous = Placement.initial(1, 4, topo)
    swapped = Placement(np.array([[2, 1, 0, 3]]), 4, 2)
    calls = []

    def aligned_plan(policy, load, topology, prev, options, layers, threads):  # noqa: PLR0917
        calls.append((options.lifetime, layers.tolist(), threads))
        return swapped if len(calls) == 1 else prev

    monkeypatch.setattr(planning, "_aligned_plan", aligned_plan)
    free = planning.CostModel(hidden_seconds=1e9)  # the swap saves nothing: refused
    d = planning.decide(
        np.ones((4, 1, 4)), previous, topo, "equilibrium", {"lifetime": 4.0}, cost=free,
        horizon=10, threads=3,
    )  # fmt: skip
    assert calls == [(4.0, [True], 3), (1.0, [True], 3)]
    assert d.layers == () and d.placement == previous


def _drift_load(rise: float, idle_first: bool = False) -> np.ndarray:
    """12 even steps of 10 tokens an expert, then 4 with ``rise`` more on expert 0 (rank 0)."""
    load = np.full((16, 1, 4), 10.0)
    load[-4:, 0, 0] += rise
    if idle_first:
        load[0] = 0.0
    return load


def test_drift_weighs_one_moved_slot_per_rank_and_skips_idle_steps():
    """The threshold is one moved slot's price over the ranks: 0.3 more tokens on one expert of
    four is a rise of 0.0074 PAR, above that (0.0062) and below one slot's price on each rank
    (0.0124). An idle step in the window has no PAR and is left out, not made NaN (which never
    drifts)."""
    placement = Placement.initial(1, 4, Topology(2, 2))
    cost = planning.CostModel(expert_bytes=1.0, bandwidth=1.0, token_seconds=1.0)
    assert planning.drifted(_drift_load(0.3), placement, 4, cost)
    assert planning.drifted(_drift_load(5.0, idle_first=True), placement, 4, cost)
