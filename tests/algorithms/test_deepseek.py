"""The ``deepseek`` policy (DeepSeek EPLB): golden case, invariants, hierarchy, real traces."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import traces
from eplb_rt.algorithms import metrics, plan, policy_names, warm_up
from eplb_rt.algorithms.deepseek import DeepSeekOptions
from eplb_rt.algorithms.hierarchy import applies as uses_hierarchy
from eplb_rt.algorithms.packing import place_replica
from eplb_rt.algorithms.replicas import allot_replicas
from eplb_rt.placement import Placement, Topology

TOY = np.array([[600.0, 560, 120, 120, 20, 10, 10, 10]])


def check_invariants(p: Placement, load: np.ndarray, topo: Topology) -> None:
    """Every expert placed, S slots per rank, no duplicate on a rank, counts <= D, uniform."""
    p.validate()
    assert p.num_layers == load.shape[-2]
    assert p.num_experts == load.shape[-1]
    assert (p.num_ranks, p.num_slots_per_rank) == (topo.num_ranks, topo.num_slots_per_rank)
    assert p.logcnt.min() >= 1
    assert p.logcnt.max() <= topo.num_ranks
    assert (p.logcnt.sum(axis=1) == topo.num_slots).all()
    assert p.is_uniform


def test_registered_with_options_and_warm_up():
    assert "deepseek" in policy_names()
    warm_up(["deepseek"])
    assert DeepSeekOptions().hierarchical is True
    with pytest.raises(ValueError, match="true or false"):
        DeepSeekOptions(hierarchical=1)
    with pytest.raises(ValueError, match="has no option"):
        plan("deepseek", TOY, Topology(8, 2), options={"depth": 3})


def test_golden_toy_case_gives_232():
    p = plan("deepseek", TOY, Topology(8, 2))
    check_invariants(p, TOY, Topology(8, 2))
    assert metrics.max_rank_load(p, TOY)[0] == 232.0
    # 600 and 560 get five replicas each (120 and 112 per replica); the rest keep one, and
    # LPT must pair a 600-replica with a 560-replica on one rank: 120 + 112 = 232.
    np.testing.assert_array_equal(p.logcnt[0], [5, 5, 1, 1, 1, 1, 1, 1])


def test_load_is_summed_over_steps():
    steps = np.stack([TOY * 0.25, TOY * 0.75])
    assert plan("deepseek", steps, Topology(8, 2)) == plan("deepseek", TOY, Topology(8, 2))


def test_deterministic_and_previous_ignored():
    rng = np.random.default_rng(3)
    load = rng.integers(0, 50, size=(2, 5, 37)).astype(float)
    topo = Topology(7, 6)
    first = plan("deepseek", load, topo)
    assert first == plan("deepseek", load.copy(), topo)
    assert first == plan("deepseek", load, topo, previous=Placement.initial(5, 37, topo))


def test_allotment_is_min_max():
    """Each extra replica went to an expert at least as hot per replica as any uncapped one."""
    rng = np.random.default_rng(5)
    for _ in range(50):
        num_experts = int(rng.integers(1, 20))
        cap = int(rng.integers(1, 6))
        slots = int(rng.integers(num_experts, num_experts * cap + 1))
        load = rng.random(num_experts) * 100
        counts = allot_replicas(load, slots, cap)
        assert counts.sum() == slots
        assert counts.max() <= cap
        uncapped = counts < cap
        peak = (load / counts)[uncapped].max(initial=0.0)
        for e in np.flatnonzero(counts > 1):
            assert load[e] / (counts[e] - 1) >= peak


def test_packing_repairs_a_dead_end():
    """The only free slot is on a rank that already holds the expert: an expert moves over."""
    # 2 ranks x 3 slots. r0 = [1, 4, -] (load 1 + 3), r1 = [0, 2, 3] (5 + 2 + 1), full. A second
    # replica of 1 (load 1) fits nowhere. Moving x from r1 to r0 and putting 1 in its slot costs
    # max(4 + per[x], 8 - per[x] + 1): x = 0 -> 9, x = 2 -> 7, x = 3 -> 8; so 2 moves.
    per = np.array([5.0, 1, 2, 1, 3])
    row = np.array([1, 4, -1, 0, 2, 3])
    fill = np.array([2, 3])
    holds = np.zeros((2, 5), dtype=bool)
    holds[0, [1, 4]] = holds[1, [0, 2, 3]] = True
    loads = np.array([4.0, 8.0])
    place_replica(1, per, loads, fill, holds, row)
    np.testing.assert_array_equal(row, [1, 4, 2, 0, 1, 3])
    np.testing.assert_allclose(loads, [6.0, 7.0])
    assert holds[0].tolist() == [False, True, True, False, True]
    assert holds[1].tolist() == [True, True, False, True, False]


@pytest.mark.parametrize(
    ("num_layers", "num_experts", "num_ranks", "slots"),
    [
        (3, 1, 1, 1),  # one expert, one rank
        (2, 1, 5, 1),  # one expert replicated on every rank
        (2, 7, 1, 7),  # one rank holds everything
        (3, 13, 4, 4),  # E not divisible by D, prime E
        (2, 11, 11, 1),  # S = 1, no redundancy
        (2, 10, 3, 5),  # S = 1 less than half of E
        (1, 256, 32, 9),
    ],
)
@pytest.mark.parametrize("kind", ["random", "zero", "one_hot", "ties"])
def test_invariants_on_odd_shapes(num_layers, num_experts, num_ranks, slots, kind):
    topo = Topology(num_ranks, slots)
    rng = np.random.default_rng(num_experts * 100 + num_ranks)
    if kind == "random":
        load = rng.random((2, num_layers, num_experts)) * 1000
    elif kind == "zero":
        load = np.zeros((1, num_layers, num_experts))
    elif kind == "one_hot":
        load = np.zeros((1, num_layers, num_experts))
        load[0, :, num_experts // 2] = 1e6
    else:
        load = np.ones((1, num_layers, num_experts))
    p = plan("deepseek", load, topo)
    check_invariants(p, load, topo)
    if kind == "one_hot":
        # The hot expert spreads over every rank it can.
        assert (
            p.logcnt[:, num_experts // 2] == min(num_ranks, slots * num_ranks - num_experts + 1)
        ).all()


def test_zero_load_layers_are_placed_and_left_out_of_par():
    load = np.zeros((1, 3, 8))
    load[0, 1] = TOY[0]
    p = plan("deepseek", load, Topology(8, 2))
    check_invariants(p, load, Topology(8, 2))
    summary = metrics.score(p, load)
    assert summary["zero_load_layers"] == [0, 2]
    assert summary["loaded_layers"] == 1
    assert summary["par_mean"] == pytest.approx(232 / (1450 / 8))


def test_rejects_bad_load():
    with pytest.raises(ValueError, match="NaN"):
        plan("deepseek", np.full((2, 8), np.nan), Topology(4, 2))
    with pytest.raises(ValueError, match="negative"):
        plan("deepseek", -np.ones((2, 8)), Topology(4, 2))
    with pytest.raises(ValueError, match=r"\[L, E\] or \[T, L, E\]"):
        plan("deepseek", np.ones(8), Topology(4, 2))
    with pytest.raises(ValueError, match="do not fit"):
        plan("deepseek", np.ones((1, 9)), Topology(4, 2))


# ------------------------------------------------------------------------------- hierarchy
def node_of_slot(topo: Topology) -> np.ndarray:
    return np.arange(topo.num_slots) // (topo.ranks_per_node * topo.num_slots_per_rank)


def test_hierarchical_keeps_groups_on_one_node():
    rng = np.random.default_rng(11)
    topo = Topology(num_ranks=6, num_slots_per_rank=5, num_nodes=3, num_groups=6)
    load = rng.gamma(0.5, 100, size=(1, 4, 24))
    assert uses_hierarchy(24, topo, DeepSeekOptions())
    p = plan("deepseek", load, topo)
    check_invariants(p, load, topo)
    nodes = node_of_slot(topo)
    for layer in range(4):
        node_of_expert = np.full(24, -1)
        for slot, expert in enumerate(p.phy2log[layer]):
            assert node_of_expert[expert] in (-1, nodes[slot]), "expert spans two nodes"
            node_of_expert[expert] = nodes[slot]
        groups = node_of_expert.reshape(6, 4)
        assert (groups == groups[:, :1]).all(), "a group spans two nodes"
        assert sorted(np.bincount(groups[:, 0], minlength=3).tolist()) == [2, 2, 2]
    flat = plan("deepseek", load, topo, options={"hierarchical": False})
    assert flat != p
    assert flat == plan("deepseek", load, Topology(6, 5))


@pytest.mark.parametrize(
    "topo",
    [
        Topology(6, 5, num_nodes=3, num_groups=4),  # 4 groups do not split over 3 nodes
        Topology(6, 5, num_nodes=2, num_groups=5),  # 24 experts are not 5 groups
        Topology(4, 13, num_nodes=2, num_groups=2),  # 13 slots > 12 experts per node
        Topology(6, 5, num_nodes=1, num_groups=6),
    ],
)
def test_hierarchy_falls_back_to_flat(topo):
    load = np.random.default_rng(2).random((1, 2, 24))
    assert not uses_hierarchy(24, topo, DeepSeekOptions())
    p = plan("deepseek", load, topo)
    check_invariants(p, load, topo)
    assert p == plan("deepseek", load, Topology(topo.num_ranks, topo.num_slots_per_rank))


@settings(max_examples=80, deadline=None)
@given(
    num_ranks=st.integers(1, 8),
    slots=st.integers(1, 6),
    data=st.data(),
)
def test_property_valid_for_any_admissible_shape(num_ranks, slots, data):
    num_experts = data.draw(st.integers(slots, num_ranks * slots))
    nodes = data.draw(st.sampled_from([n for n in (1, 2, 4) if num_ranks % n == 0]))
    groups = data.draw(st.sampled_from([1, 2, 4, num_experts]))
    topo = Topology(num_ranks, slots, nodes, groups)
    values = data.draw(st.lists(st.integers(0, 1000), min_size=num_experts, max_size=num_experts))
    load = np.array(values, dtype=float)[None]
    p = plan("deepseek", load, topo)
    check_invariants(p, load, topo)
    if uses_hierarchy(num_experts, topo, DeepSeekOptions()):
        for expert in range(num_experts):
            slots_of = np.flatnonzero(p.phy2log[0] == expert)
            assert len(set(node_of_slot(topo)[slots_of])) == 1


# ------------------------------------------------------------------------------- real trace
@pytest.mark.parametrize(
    ("ranks", "slots", "low", "high"), [(32, 9, 1.004, 1.0075), (64, 5, 1.010, 1.025)]
)
def test_deepseek_v3_in_sample_par(ranks, slots, low, high):
    load = traces.deepseek_v3("prefill_in4096")
    topo = Topology(ranks, slots)
    p = plan("deepseek", load, topo)
    check_invariants(p, load, topo)
    summary = metrics.score(p, load)
    assert summary["zero_load_layers"] == [0, 1, 2]
    assert low <= summary["par_mean"] <= high
    assert summary["par_max"] < 1.05


def test_options_dataclass_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DeepSeekOptions().hierarchical = False  # type: ignore[misc]
