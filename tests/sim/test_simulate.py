"""The replay loop of eplb_rt.sim.simulate, with spy policies whose behaviour is known."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from eplb_rt import planning
from eplb_rt.algorithms import metrics, registry
from eplb_rt.algorithms.bounds import par_lower_bound
from eplb_rt.config import EplbConfig
from eplb_rt.placement import Placement, Topology
from eplb_rt.sim import simulate as sim


@dataclasses.dataclass(frozen=True)
class _NoOptions:
    pass


@pytest.fixture
def spy(monkeypatch):
    """Register policy "spy": the deepseek policy's plan; records (history, previous) of the
    plans the simulator asks for."""
    calls = []
    deepseek = registry.get_policy("deepseek")

    def balance(layer, topo, _opts):
        return deepseek.fn(layer, topo, deepseek.make_options())

    def plan(name, load, topo, previous=None, options=None, *, layers=None, threads=1):
        if name == "spy":
            calls.append((load.copy(), previous))
        return registry.plan(name, load, topo, previous, options, layers=layers, threads=threads)

    spec = registry.PolicySpec("spy", balance, _NoOptions, "test spy")
    monkeypatch.setitem(registry._REGISTRY, "spy", spec)
    monkeypatch.setattr(sim.algorithms, "plan", plan)
    return calls


def _steps(num_steps: int, num_layers: int = 2, num_experts: int = 5) -> np.ndarray:
    """Load whose step t is recognisable: expert e of step t carries (t + 1) * (e + 1) tokens."""
    t = np.arange(1, num_steps + 1, dtype=np.float64)[:, None, None]
    e = np.arange(1, num_experts + 1, dtype=np.float64)[None, None, :]
    return np.broadcast_to(t * e, (num_steps, num_layers, num_experts)).copy()


def test_windows_history_and_previous_placement(spy):
    load = _steps(10)
    topo = Topology(3, 2)  # P = 6 slots for 5 experts
    cheap = planning.CostModel(token_seconds=1.0)  # so that the layers are planned
    spec = sim.SimulationSpec(topo, ("spy",), interval=3, episodes=2, cost=cheap)
    result = sim.simulate(sim.Workload.concat([("w", load)]), spec)
    cycles = result.cycles["spy"]
    assert [(c.start, c.stop) for c in cycles] == [(3, 6), (6, 9), (9, 10)]
    # The plan sees at most episodes * interval steps before the scored window, never after.
    assert [h[:, 0, 0].tolist() for h, _ in spy] == [
        [1, 2, 3],
        [1, 2, 3, 4, 5, 6],
        [4, 5, 6, 7, 8, 9],
    ]
    # Each plan starts from the placement the previous cycle produced (the starting one first).
    assert spy[0][1] == planning.starting_placement(2, 5, topo)
    for (_, previous), cycle in zip(spy[1:], cycles[:-1], strict=True):
        assert previous == cycle.placement


def test_by_default_a_plan_sees_what_the_runtimes_ring_holds(spy):
    """A runtime's plan reads the ring's closed rows: ``history - 1`` steps, at any interval."""
    history = EplbConfig().history
    topo = Topology(3, 2)
    for interval in (1, 3, 100, history + 5):
        spec = sim.SimulationSpec(topo, ("spy",), interval=interval)
        assert spec.episodes is None and spec.window == history - 1
    assert sim.SimulationSpec(topo, ("spy",), interval=3, episodes=2).window == 6
    # Fewer steps than the ring holds: every step before the scored window.
    spec = sim.SimulationSpec(
        topo, ("spy",), interval=3, cost=planning.CostModel(token_seconds=1.0)
    )
    sim.simulate(sim.Workload.concat([("w", _steps(10))]), spec)
    assert [h[:, 0, 0].tolist() for h, _ in spy] == [
        [1, 2, 3],
        list(range(1, 7)),
        list(range(1, 10)),
    ]


def test_scores_are_out_of_sample_and_exact(spy):
    load = _steps(7)
    topo = Topology(3, 2)
    cheap = planning.CostModel(token_seconds=1.0)  # every balancing move pays
    spec = sim.SimulationSpec(topo, ("spy",), interval=2, cost=cheap)
    result = sim.simulate(sim.Workload.concat([("w", load)]), spec)
    for cycle in result.cycles["spy"]:
        window = load[cycle.start : cycle.stop].sum(axis=0)
        np.testing.assert_array_equal(cycle.par, metrics.par(cycle.placement, window))
        np.testing.assert_array_equal(cycle.par_bound, par_lower_bound(window, topo))
        seen = load[max(0, cycle.start - 2) : cycle.start].sum(axis=0)
        np.testing.assert_array_equal(cycle.par_in_sample, metrics.par(cycle.placement, seen))
    first = result.cycles["spy"][0]
    start = planning.starting_placement(2, 5, topo)
    assert first.moves == int((first.placement.phy2log != start.phy2log).sum()) > 0


def _hot(steps: int) -> np.ndarray:
    """Every step experts carry [6, 1, 1] tokens (one layer)."""
    return np.tile(np.array([6.0, 1.0, 1.0]), (steps, 1, 1))


def test_migration_seconds_and_throughput_hand_derived():
    # Starting placement on 2 ranks x 2 slots: [0, 1 | 2, 1] (expert 1, the middle one, gets
    # the spare slot): rank loads 6.5 and 1.5 per step. The default policy splits expert 0:
    # [0, 1 | 0, 2], 4 and 4, rank 1 receiving one expert (1 byte at 1 B/s: 1 s).
    topo = Topology(2, 2)
    assert planning.starting_placement(1, 3, topo).phy2log.tolist() == [[0, 1, 2, 1]]
    cost = planning.CostModel(expert_bytes=1, bandwidth=1, token_seconds=1)
    spec = sim.SimulationSpec(topo, (sim.NO_REBALANCE, "deepseek"), interval=2, cost=cost)
    result = sim.simulate(sim.Workload.concat([("w", _hot(6))]), spec)
    first, second = result.cycles["deepseek"]
    assert first.placement.by_rank()[0, 1].tolist() in ([0, 2], [2, 0])
    assert (first.migration_s, first.moe_s, first.none_s) == (1.0, 8.0, 13.0)
    assert (second.migration_s, second.moe_s, second.none_s, second.moves) == (0.0, 8.0, 13.0, 0)
    summary = sim.summarize(result.cycles["deepseek"], 1)
    assert summary["throughput_vs_none"] == pytest.approx(26 / 17)
    assert summary["migration_s_per_cycle"] == pytest.approx(0.5)
    assert sim.summarize(result.cycles["none"], 1)["throughput_vs_none"] == pytest.approx(1.0)
    # The same plan at a bandwidth where the move costs more than the 2.5 tokens x 2 steps it
    # saves: the gate keeps the starting placement.
    dear = dataclasses.replace(spec, cost=dataclasses.replace(cost, bandwidth=0.1))
    kept = sim.simulate(sim.Workload.concat([("w", _hot(6))]), dear).cycles["deepseek"]
    assert all(c.moves == 0 and c.migration_s == 0.0 for c in kept)


def test_a_window_without_load_costs_no_throughput():
    """The plan after the first two steps moves one expert (1 s) into two idle steps: nothing
    is served there, and nothing waits for the transfer. Counted, the cycle read a throughput
    of 0 and the run's fell from 13 / 8 to 13 / 9."""
    cost = planning.CostModel(expert_bytes=1, bandwidth=1, token_seconds=1)
    spec = sim.SimulationSpec(Topology(2, 2), ("deepseek",), interval=2, cost=cost)
    load = np.concatenate([_hot(2), np.zeros((2, 1, 3)), _hot(2)])
    idle, busy = sim.simulate(sim.Workload.concat([("w", load)]), spec).cycles["deepseek"]
    assert (idle.migration_s, idle.moe_s, idle.none_s) == (1.0, 0.0, 0.0)
    assert sim.cycle_record(idle, 1)["throughput_vs_none"] is None
    assert sim.cycle_record(busy, 1)["throughput_vs_none"] == pytest.approx(13 / 8)
    assert sim.summarize([idle, busy], 1)["throughput_vs_none"] == pytest.approx(13 / 8)


def test_none_keeps_the_starting_placement():
    load = _steps(5)
    topo = Topology(2, 3)
    result = sim.simulate(
        sim.Workload.concat([("w", load)]),
        sim.SimulationSpec(topo, (sim.NO_REBALANCE,), interval=1),
    )
    start = planning.starting_placement(2, 5, topo)
    assert all(c.placement == start and c.moves == 0 for c in result.cycles["none"])
    summary = sim.summarize(result.cycles["none"], 10)
    assert summary["moves_total"] == 0 and summary["bytes_total"] == 0
    assert summary["cycles"] == 4


def test_policy_failure_names_the_policy(monkeypatch):
    def broken(*_args):
        raise ArithmeticError("boom")

    monkeypatch.setitem(
        registry._REGISTRY, "broken", registry.PolicySpec("broken", broken, _NoOptions, "raises")
    )
    cheap = planning.CostModel(token_seconds=1.0)  # so that the layers are planned
    spec = sim.SimulationSpec(Topology(2, 3), ("broken",), interval=2, cost=cheap)
    with pytest.raises(RuntimeError, match=r"policy 'broken' failed planning from steps \[0, 2\)"):
        sim.simulate(sim.Workload.concat([("w", _steps(4))]), spec)


def test_workloads_in_sequence_are_labelled():
    w = sim.Workload.concat(
        [("a", np.ones((2, 1, 3))), ("b", np.ones((1, 3))), ("c", np.ones((3, 1, 3)))]
    )
    assert w.labels == ("a", "a", "b", "c", "c", "c")
    assert w.window_label(1, 4) == "a+b+c"
    assert w.window_label(3, 6) == "c"


def test_workloads_of_different_models_are_refused():
    with pytest.raises(ValueError, match="b has 2 layers x 3 experts but a has 1 x 3"):
        sim.Workload.concat([("a", np.ones((1, 3))), ("b", np.ones((2, 3)))])


def test_too_few_steps_for_an_out_of_sample_score():
    spec = sim.SimulationSpec(Topology(2, 2), (sim.NO_REBALANCE,), interval=4)
    with pytest.raises(ValueError, match="need at least interval \\+ 1 steps"):
        sim.simulate(sim.Workload.concat([("w", np.ones((4, 1, 3)))]), spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policies": ()}, "at least one policy"),
        ({"policies": ("none", "none")}, "listed twice"),
        # Names what is twice, not the run's list with the baseline the user did not type.
        ({"policies": ("none", "deepseek", "deepseek")}, "policy listed twice: deepseek$"),
        ({"policies": ("no-such-policy",)}, "unknown policy 'no-such-policy'"),
        ({"interval": 0}, "^interval must be an integer >= 1, got 0$"),
        ({"episodes": 0}, "^episodes must be an integer >= 1 or None, got 0$"),
        ({"interval": 1.5}, "^interval must be an integer >= 1, got 1.5$"),
        ({"episodes": True}, "^episodes must be an integer >= 1 or None, got True$"),
        ({"threads": 0}, "^threads must be an integer >= 1, got 0$"),
        ({"options": {"other": {}}}, "options given for policies not compared"),
    ],
)
def test_bad_specs(kwargs, message):
    args = {"topology": Topology(2, 2), "policies": (sim.NO_REBALANCE,), **kwargs}
    with pytest.raises(ValueError, match=message):
        sim.SimulationSpec(**args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policies": "flashlb"}, "policies must be a sequence of names, got one: 'flashlb'"),
        ({"topology": (2, 2)}, "topology must be a Topology, got tuple"),
    ],
)
def test_specs_of_the_wrong_type_are_named(kwargs, message):
    args = {"topology": Topology(2, 2), "policies": (sim.NO_REBALANCE,), **kwargs}
    with pytest.raises(TypeError, match=message):
        sim.SimulationSpec(**args)


def test_a_workload_is_checked_and_replayed_in_float64():
    """float16 counts summed over a window in float16 would overflow (65504 at most)."""
    counts = np.random.default_rng(0).integers(20000, 30000, (12, 2, 8))
    spec = sim.SimulationSpec(Topology(4, 3), (sim.NO_REBALANCE,), interval=4, episodes=1)
    half = sim.simulate(sim.Workload(counts.astype(np.float16), ("a",) * 12), spec)
    full = sim.simulate(
        sim.Workload(counts.astype(np.float16).astype(np.float64), ("a",) * 12), spec
    )
    pars = [[c.par for c in r.cycles[sim.NO_REBALANCE]] for r in (half, full)]
    np.testing.assert_array_equal(*pars)
    assert sim.Workload(counts[0].tolist(), ["a"]).load.shape == (1, 2, 8)
    with pytest.raises(ValueError, match="load contains NaN"):
        sim.Workload(np.full((2, 2, 8), np.nan), ("a", "a"))
    with pytest.raises(TypeError, match="labels must be a sequence of strings, got one: 'ab'"):
        sim.Workload(np.ones((2, 2, 8)), "ab")
    with pytest.raises(ValueError, match="2 labels for 3 steps"):
        sim.Workload(np.ones((3, 1, 4)), ("a", "b"))


def test_a_cycle_pays_for_the_migrations_it_commits_only():
    """The gate prices every layer it plans; a layer it refuses moves nothing and costs no
    transfer time in the cycle."""
    load = np.random.default_rng(0).pareto(1.0, (4, 2, 8)) * 100
    topo = Topology(4, 3)
    cost = planning.CostModel(expert_bytes=10**8)  # transfers too dear for this load
    start = planning.starting_placement(2, 8, topo)
    spans = {"horizon": 4, "lifetime": 4}
    decision = planning.decide(load, start, topo, "deepseek", None, cost=cost, **spans)
    assert decision.layers == () and decision.migration_s.sum() > 0  # priced, and refused
    spec = sim.SimulationSpec(topo, ("deepseek",), interval=4, episodes=1, cost=cost)
    workload = sim.Workload(np.concatenate([load, load]), ("w",) * 8)
    (cycle,) = sim.simulate(workload, spec).cycles["deepseek"]
    assert cycle.moves == 0 and cycle.migration_s == 0.0


def test_summary_statistics_golden():
    placement = Placement.initial(2, 2, Topology(2, 1))
    cycles = [
        sim.Cycle(
            1,
            2,
            "w",
            np.array([1.0, 3.0]),
            np.array([1.0, 1.5]),
            np.array([1.0, 1.0]),
            4,
            0.001,
            placement,
        ),
        sim.Cycle(
            2,
            3,
            "w",
            np.array([2.0, np.nan]),
            np.array([1.0, np.nan]),
            np.array([1.5, np.nan]),
            0,
            0.003,
            placement,
        ),
    ]
    s = sim.summarize(cycles, expert_bytes=100)
    assert s["par_mean"] == pytest.approx(2.0)
    assert s["par_p50"] == pytest.approx(2.0)
    assert s["par_max"] == 3.0
    assert (s["worst_layer"], s["worst_layer_par"]) == (1, 3.0)
    assert s["bound_gap"] == pytest.approx((0.0 + 1.0 + 1.0) / 3)
    assert s["par_in_sample_mean"] == pytest.approx(3.5 / 3)
    assert (s["moves_per_cycle"], s["moves_max"], s["moves_total"]) == (2.0, 4, 4)
    assert (s["bytes_per_cycle"], s["bytes_total"]) == (200.0, 400)
    assert s["plan_ms_mean"] == pytest.approx(2.0)
    assert s["plan_ms_max"] == pytest.approx(3.0)


@pytest.mark.parametrize("shape", [(32, 9), (64, 5)], ids=["32x9", "64x5"])
def test_default_leads_on_the_deepseek_v3_workloads_played_in_turn(shape):
    """``eplb-rt simulate`` on the four prefill workloads as shipped (each plan sees every
    workload before, as the runtime's ring would; scored on the next): the default policy's mean
    PAR is below the peers' re-implementations (BENCHMARKS §5)."""
    from benchmarks import traces

    parts = [(w, traces.deepseek_v3(w)) for w in traces.DEEPSEEK_V3_WORKLOADS]
    ours = EplbConfig().policy
    spec = sim.SimulationSpec(Topology(*shape), (ours, "deepseek", "flashlb"))
    result = sim.simulate(sim.Workload.concat(parts), spec)
    mean = {n: np.nanmean([np.nanmean(c.par) for c in cs]) for n, cs in result.cycles.items()}
    assert mean[ours] < min(mean["deepseek"], mean["flashlb"]), mean


def test_a_load_too_short_to_score_says_what_helps():
    spec = sim.SimulationSpec(topology=Topology(2, 2), policies=(sim.NO_REBALANCE,), interval=1)
    with pytest.raises(ValueError, match=r"one after another\)$"):  # no lower interval to take
        spec.cycle_starts(1)
    spec = dataclasses.replace(spec, interval=4)
    with pytest.raises(ValueError, match=r"one after another, or lower --interval\)$"):
        spec.cycle_starts(4)


def test_orders_give_the_given_one_first_then_distinct_seeded_ones():
    first = list(sim.orders(range(6), 10))
    assert first[0] == tuple(range(6))
    assert len(set(first)) == 10
    assert all(sorted(order) == list(range(6)) for order in first)
    assert list(sim.orders(range(6), 10)) == first  # seeded
    assert list(sim.orders(range(6), 10, seed=1))[1:] != first[1:]


@pytest.mark.parametrize(("count", "wanted"), [(0, 5), (3, 0)])
def test_no_workload_or_no_order_is_refused(count, wanted):
    with pytest.raises(ValueError, match="at least one workload and one order"):
        next(sim.orders(range(count), wanted))


@pytest.mark.parametrize(("count", "wanted"), [(3, 6), (3, 40), (4, 24), (1, 5)])
def test_every_order_is_played_where_there_are_no_more_than_asked(count, wanted):
    played = list(sim.orders(range(count), wanted))
    assert played[0] == tuple(range(count))
    assert len(played) == len(set(played)) == math.factorial(count)


def test_orders_that_only_swap_equal_workloads_are_one():
    # a, a, b: three distinct orders, each equal workload taken in the order of its positions
    assert list(sim.orders(["a", "a", "b"], 10)) == [(0, 1, 2), (0, 2, 1), (2, 0, 1)]
    assert list(sim.orders(["a", "a"], 5)) == [(0, 1)]
    drawn = list(sim.orders(["x"] * 11 + ["y"], 5))  # 12 arrangements: drawn, not listed
    assert len(set(drawn)) == 5 and all(sorted(o) == list(range(12)) for o in drawn)
    assert len(list(sim.orders(["x"] * 11 + ["y"], 40))) == 12
