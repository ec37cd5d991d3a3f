"""Plans on several threads (``plan(threads=N)``, ``decide(threads=N)``): the same placement, bit
for bit, as on one; the work really split; errors from any part; bad counts refused."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from eplb_rt import planning
from eplb_rt.algorithms import plan, registry, warm_up
from eplb_rt.placement import Placement, Topology

SHIPPED = ("equilibrium", "flashlb", "deepseek", "swift", "random")
"""Named, not read from the registry: the suite registers test policies there too."""


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up(list(SHIPPED))


def _load(seed: int, steps: int = 6, layers: int = 7, experts: int = 13) -> np.ndarray:
    """``[T, L, E]`` token counts, each layer skewed its own way (odd sizes)."""
    rng = np.random.default_rng(seed)
    skew = rng.pareto(1.3, size=(1, layers, experts)) * 40 + 1
    return rng.poisson(skew, size=(steps, layers, experts)).astype(np.float64)


def _same(a: Placement, b: Placement) -> None:
    np.testing.assert_array_equal(a.phy2log, b.phy2log)
    np.testing.assert_array_equal(a.slot_share, b.slot_share)
    assert a.is_uniform == b.is_uniform


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("threads", [2, 3, 7, 50])
def test_any_number_of_threads_plans_what_one_does(name, threads):
    topo = Topology(5, 3)
    load = _load(0)
    alone = plan(name, load, topo)
    _same(plan(name, load, topo, threads=threads), alone)
    # re-planned from it on other load, some layers only
    later = _load(1)
    layers = np.array([True, False, True, True, False, True, True])
    again = plan(name, later, topo, alone, layers=layers)
    _same(plan(name, later, topo, alone, layers=layers, threads=threads), again)


@pytest.mark.parametrize("threads", [2, 4])
def test_threads_plan_shares_and_hierarchies_alike(threads):
    load = _load(2, layers=5, experts=16)
    flat, grouped = Topology(4, 5), Topology(4, 5, num_nodes=2, num_groups=4)
    for name, topo, options in (
        ("equilibrium", flat, {"shares": True}),
        ("deepseek", grouped, {"hierarchical": True}),
        ("equilibrium", grouped, {"hierarchical": True}),
    ):
        alone = plan(name, load, topo, options=options)
        _same(plan(name, load, topo, options=options, threads=threads), alone)
        moved = plan(name, load[::-1], topo, alone, options=options)
        _same(plan(name, load[::-1], topo, alone, options=options, threads=threads), moved)


@dataclasses.dataclass(frozen=True)
class _Options(registry.Options):
    policy = "test threads"


def _register(monkeypatch, fn) -> str:
    spec = registry.PolicySpec("test threads", fn, _Options, "a test's")
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    return spec.name


def test_the_layers_are_planned_on_as_many_threads(monkeypatch):
    """Every ``threads``-th layer on one thread, the first part on the caller's, which waits
    for the others: each part's first layer waits until every part has started one."""
    started = threading.Barrier(3, timeout=30)
    seen = {}

    def fn(layer, topo, _opts):
        seen[layer.index] = threading.get_ident()
        if layer.index < 3:
            started.wait()
        return np.arange(topo.num_slots) % layer.load.size

    name = _register(monkeypatch, fn)
    plan(name, _load(3, layers=8, experts=6), Topology(2, 3), threads=3)
    parts = [{seen[j] for j in range(k, 8, 3)} for k in range(3)]
    assert all(len(p) == 1 for p in parts)
    assert len(set.union(*parts)) == 3 and threading.get_ident() in parts[0]


def test_the_helpers_cpu_is_counted_for_the_thread_they_helped(monkeypatch):
    """Layer 1 (a helper's part) spends 0.2 s of its thread's CPU, layer 0 (the caller's)
    none: the caller's plans are told the helper's CPU and how far it ran past its own share;
    another thread's plans are not."""

    def fn(layer, topo, _opts):
        if layer.index == 1:
            start = time.thread_time()
            while time.thread_time() - start < 0.2:
                pass
        return np.arange(topo.num_slots) % layer.load.size

    name = _register(monkeypatch, fn)
    before = registry.helpers_cpu()
    plan(name, _load(8, layers=2, experts=6), Topology(2, 3), threads=2)
    cpu, beyond = (now - then for now, then in zip(registry.helpers_cpu(), before, strict=True))
    assert 0.2 <= cpu < 1.0 and 0.15 < beyond <= cpu
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(registry.helpers_cpu()))
    thread.start()
    thread.join()
    assert elsewhere == [(0.0, 0.0)]


@pytest.mark.parametrize("failing", [0, 4])  # in the caller's part, in another's
def test_a_part_that_raises_raises_from_plan(monkeypatch, failing):
    def fn(layer, topo, _opts):
        if layer.index == failing:
            raise ValueError(f"layer {layer.index} refused")
        return np.arange(topo.num_slots) % layer.load.size

    name = _register(monkeypatch, fn)
    with pytest.raises(ValueError, match=f"layer {failing} refused"):
        plan(name, _load(4, layers=6, experts=6), Topology(2, 3), threads=3)


def test_parts_with_and_without_shares_split_the_others_evenly(monkeypatch):
    """A per-layer policy that gives shares for some layers: a part that has none comes back
    without them, and its layers split evenly, as on one thread."""

    def fn(layer, topo, _opts):
        row = np.arange(topo.num_slots) % layer.load.size
        if layer.index == 1:
            share = np.where(row == 0, 0.25, 1.0)
            share[row == 0] = [0.25, 0.75]
            return row, share
        return row

    name = _register(monkeypatch, fn)
    load = _load(5, layers=4, experts=5)
    alone = plan(name, load, Topology(2, 3))
    assert not alone.is_uniform
    _same(plan(name, load, Topology(2, 3), threads=2), alone)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_a_count_of_threads_must_be_a_whole_number_from_one(bad):
    with pytest.raises(ValueError, match=rf"threads must be an integer >= 1, got {bad!r}"):
        plan("deepseek", _load(6), Topology(5, 3), threads=bad)
    start = planning.starting_placement(7, 13, Topology(5, 3))
    with pytest.raises(ValueError, match=rf"threads must be an integer >= 1, got {bad!r}"):
        planning.decide(
            _load(6), start, Topology(5, 3), "deepseek", None, cost=planning.CostModel(),
            horizon=10, threads=bad,
        )  # fmt: skip


def test_decisions_are_the_same_on_any_number_of_threads():
    topo = Topology(5, 3)
    start = planning.starting_placement(7, 13, topo)
    cost = planning.CostModel(expert_bytes=1e3, bandwidth=1e9, token_seconds=1e-4)
    load = _load(7, steps=40) * 50
    one = planning.decide(load, start, topo, "equilibrium", None, cost=cost, horizon=40)
    assert one.layers  # the case moves something
    three = planning.decide(
        load, start, topo, "equilibrium", None, cost=cost, horizon=40, threads=3
    )
    _same(three.placement, one.placement)
    assert three.layers == one.layers and three.slots == one.slots
    np.testing.assert_array_equal(three.saved_s, one.saved_s)


@pytest.mark.parametrize(
    ("cores", "threads"), [(1, 1), (2, 1), (3, 2), (5, 4), (64, 4)]
)  # fmt: skip
def test_by_default_a_plan_leaves_a_core_to_the_serving_thread(monkeypatch, cores, threads):
    monkeypatch.delenv("EPLB_RT_PLAN_THREADS", raising=False)
    monkeypatch.setattr(planning.os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert planning.default_threads() == threads


def test_the_environment_sets_the_default(monkeypatch):
    monkeypatch.setenv("EPLB_RT_PLAN_THREADS", "6")
    assert planning.default_threads() == 6
    for bad in ("0", "two", "1.5"):
        monkeypatch.setenv("EPLB_RT_PLAN_THREADS", bad)
        with pytest.raises(ValueError, match=f"EPLB_RT_PLAN_THREADS={bad!r}: expected a whole"):
            planning.default_threads()


def test_without_an_affinity_the_default_counts_the_machines_cores(monkeypatch):
    monkeypatch.delenv("EPLB_RT_PLAN_THREADS", raising=False)
    monkeypatch.delattr(planning.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(planning.os, "cpu_count", lambda: 3)
    assert planning.default_threads() == 2
    monkeypatch.setattr(planning.os, "cpu_count", lambda: None)  # unknown
    assert planning.default_threads() == 1
