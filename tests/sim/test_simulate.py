"""The replay loop of eplb_rt.sim.simulate, with spy policies whose behaviour is known."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from eplb_rt.algorithms import metrics, registry
from eplb_rt.algorithms.bounds import par_lower_bound
from eplb_rt.placement import Placement, Topology
from eplb_rt.sim import simulate as sim


@dataclasses.dataclass(frozen=True)
class _NoOptions:
    pass


@pytest.fixture
def spy(monkeypatch):
    """Register policy "spy": shifts every slot one rank on; records (history, previous) of the
    plans the simulator asks for."""
    calls = []

    def shift(layer, topo, _opts):
        base = layer.previous
        if base is None:
            base = Placement.initial(1, layer.load.shape[0], topo).phy2log[0]
        return np.roll(base, topo.num_slots_per_rank)

    def plan(name, load, topo, previous=None, options=None):
        if name == "spy":
            calls.append((load.copy(), previous))
        return registry.plan(name, load, topo, previous, options)

    spec = registry.PolicySpec("spy", shift, _NoOptions, "test spy")
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
    spec = sim.SimulationSpec(topo, ("spy",), interval=3, episodes=2)
    result = sim.simulate(sim.Workload.concat([("w", load)]), spec)
    cycles = result.cycles["spy"]
    assert [(c.start, c.stop) for c in cycles] == [(3, 6), (6, 9), (9, 10)]
    # The plan sees at most episodes * interval steps before the scored window, never after.
    assert [h[:, 0, 0].tolist() for h, _ in spy] == [
        [1, 2, 3],
        [1, 2, 3, 4, 5, 6],
        [4, 5, 6, 7, 8, 9],
    ]
    # Each plan starts from the placement the previous cycle produced (initial for the first).
    assert spy[0][1] == Placement.initial(2, 5, topo)
    for (_, previous), cycle in zip(spy[1:], cycles[:-1], strict=True):
        assert previous == cycle.placement


def test_scores_are_out_of_sample_and_exact(spy):
    load = _steps(7)
    topo = Topology(3, 2)
    result = sim.simulate(
        sim.Workload.concat([("w", load)]), sim.SimulationSpec(topo, ("spy",), interval=2)
    )
    for cycle in result.cycles["spy"]:
        window = load[cycle.start : cycle.stop].sum(axis=0)
        np.testing.assert_array_equal(cycle.par, metrics.par(cycle.placement, window))
        np.testing.assert_array_equal(cycle.par_bound, par_lower_bound(window, topo))
        seen = load[max(0, cycle.start - 2) : cycle.start].sum(axis=0)
        np.testing.assert_array_equal(cycle.par_in_sample, metrics.par(cycle.placement, seen))
    # Shifting every slot by one rank moves each slot whose neighbour holds another expert.
    first = result.cycles["spy"][0]
    initial = Placement.initial(2, 5, topo)
    assert first.moves == int((first.placement.phy2log != initial.phy2log).sum())
    assert first.moves == 2 * 6  # expert ids p mod 5 on 6 slots: all six differ after the shift


def test_none_keeps_the_initial_placement():
    load = _steps(5)
    topo = Topology(2, 3)
    result = sim.simulate(
        sim.Workload.concat([("w", load)]),
        sim.SimulationSpec(topo, (sim.NO_REBALANCE,), interval=1),
    )
    initial = Placement.initial(2, 5, topo)
    assert all(c.placement == initial and c.moves == 0 for c in result.cycles["none"])
    summary = sim.summarize(result.cycles["none"], 10)
    assert summary["moves_total"] == 0 and summary["bytes_total"] == 0
    assert summary["cycles"] == 4


def test_policy_failure_names_the_policy(monkeypatch):
    def broken(*_args):
        raise ArithmeticError("boom")

    monkeypatch.setitem(
        registry._REGISTRY, "broken", registry.PolicySpec("broken", broken, _NoOptions, "raises")
    )
    spec = sim.SimulationSpec(Topology(2, 3), ("broken",), interval=2)
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
        ({"policies": ("no-such-policy",)}, "unknown policy 'no-such-policy'"),
        ({"interval": 0}, "interval must be >= 1"),
        ({"episodes": 0}, "episodes must be >= 1"),
        ({"expert_bytes": -1}, "expert_bytes must be >= 0"),
        ({"options": {"other": {}}}, "options given for policies not compared"),
    ],
)
def test_bad_specs(kwargs, message):
    args = {"topology": Topology(2, 2), "policies": (sim.NO_REBALANCE,), **kwargs}
    with pytest.raises(ValueError, match=message):
        sim.SimulationSpec(**args)


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
