"""The replan rule every adapter shares, on cases derived by hand, and the adapters' imports."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from eplb_rt.algorithms import hierarchy, metrics
from eplb_rt.integrations._common import as_numpy, policy_name, replan
from eplb_rt.placement import Placement, Topology
from tests.groups import group_nodes


def test_a_layer_changes_only_when_it_gains_and_kept_experts_keep_their_slot():
    # layer 0: [1, 1, 1, 1] on ranks {0, 1} {2, 3} is perfect (PAR 1): it must be kept.
    # layer 1: [4, 1, 1, 0] on the same table gives ranks 5 and 1, PAR 5/3: must improve.
    load = np.array([[[1.0, 1, 1, 1], [4, 1, 1, 0]]])
    previous = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
    placement, gain = replan("test", load, Topology(2, 2), previous, policy=policy_name())
    assert np.array_equal(placement.phy2log[0], previous[0]) and gain[0] == 0
    new_par = metrics.par(placement, load[0])[1]
    assert new_par < 5 / 3 and gain[1] == pytest.approx(5 / 3 - new_par)
    for rank in range(2):
        old, new = (
            previous[1, 2 * rank : 2 * rank + 2],
            placement.phy2log[1, 2 * rank : 2 * rank + 2],
        )
        stay = np.isin(new, old)
        assert np.array_equal(new[stay], old[stay])


def _kept_experts_keep_their_slot(old_row, new_row, ranks):
    for old, new in zip(np.split(old_row, ranks), np.split(new_row, ranks), strict=True):
        stay = np.isin(new, old)
        assert np.array_equal(new[stay], old[stay]), (old, new)


def test_a_layer_holding_an_expert_twice_on_a_rank_leaves_the_others_aligned():
    """vLLM's default policy may put two replicas of an expert on one rank. Such a layer is
    planned afresh; every other layer is still planned from its slots in force."""
    doubled = [0, 0, 1, 2, 3, 4, 5, 6, 7, 1]  # rank 0 holds expert 0 twice
    valid = [0, 1, 2, 3, 4, 5, 6, 7, 0, 2]
    previous = np.array([doubled, valid, valid])
    load = np.array([[[8.0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 9, 1, 1, 1, 1], [1.0] * 8]])
    placement, gain = replan("test", load, Topology(5, 2), previous, policy=policy_name())
    Placement(placement.phy2log, 8, 5)  # valid: no expert twice on a rank
    assert gain[0] > 0 and gain[1] > 0 and gain[2] == 0
    _kept_experts_keep_their_slot(previous[1], placement.phy2log[1], 5)
    assert np.array_equal(placement.phy2log[2], previous[2])


def test_a_flat_table_in_force_takes_groups_on_nodes_whatever_its_par():
    """Hierarchical, with a flat table in force that balances better than any grouped plan: the
    adapters kept it (its PAR was lower), so groups never reached their nodes, while the
    runtime, `plan` and `simulate` take the grouped plan (eplb_rt.planning.decide)."""
    rng = np.random.default_rng(1)
    load = rng.gamma(0.5, 100.0, size=(1, 4, 32))
    flat, _ = replan("test", load, Topology(8, 5, 1, 8), None, policy="deepseek")
    topology = Topology(8, 5, 2, 8)
    assert (hierarchy.groups_in_force(flat.phy2log, topology, 32) < 0).all()  # each layer spread
    grouped, _ = replan("test", load, topology, flat.phy2log, policy="deepseek")
    group_nodes(grouped.phy2log, 2, 4)


def test_the_engines_plans_split_their_layers_over_the_processs_cores(monkeypatch):
    """On the threads :func:`eplb_rt.planning.default_threads` gives, with the same plan as on
    one, doubled layers planned afresh included."""
    from eplb_rt import planning
    from eplb_rt.algorithms import registry

    rng = np.random.default_rng(2)
    load = rng.poisson(rng.pareto(1.2, (1, 5, 8)) * 30 + 1, (3, 5, 8)).astype(float)
    previous = np.tile([0, 1, 2, 3, 4, 5, 6, 7, 0, 2], (5, 1))
    previous[1] = [0, 0, 1, 2, 3, 4, 5, 6, 7, 1]  # rank 0 holds expert 0 twice
    asked = []
    real = registry.plan

    def spy(*args, **kwargs):
        asked.append(kwargs["threads"])
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "plan", spy)
    monkeypatch.setattr("eplb_rt.algorithms.plan", spy)
    placements = []
    for threads in (1, 3):
        monkeypatch.setattr(planning, "default_threads", lambda threads=threads: threads)
        placements.append(replan("test", load, Topology(5, 2), previous, policy=policy_name()))
    assert asked == [1, 1, 3, 3]  # the doubled layer afresh, then the others from the table
    assert placements[0][0] == placements[1][0]
    np.testing.assert_array_equal(placements[0][1], placements[1][1])


def test_no_table_in_force_plans_every_layer():
    load = np.array([[[4.0, 1, 1, 0]]])
    placement, gain = replan("test", load, Topology(2, 2), None, policy=policy_name())
    assert not gain.any()
    Placement(placement.phy2log, 4, 2)


def test_the_adapters_import_neither_torch_nor_the_extension():
    """Engines load the plugins in every process; a torch ABI mismatch must not break them."""
    code = (
        "import sys, eplb_rt.integrations.vllm, eplb_rt.integrations.vllm_ascend, "
        "eplb_rt.integrations.sglang; "
        "print(sorted(m for m in sys.modules if m in ('torch', 'eplb_rt._C')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plugins_without_a_policy_import_no_policy():
    """Without EPLB_RT_POLICY the plugins do nothing, in every engine process: they imported
    every policy, numba and scipy all the same (0.2 s a process)."""
    code = (
        "import sys, eplb_rt.integrations.vllm as v, eplb_rt.integrations.sglang as s; "
        "v.register(); s.register(); "
        "print(sorted(m for m in sys.modules if m in ('numba', 'scipy', 'eplb_rt.algorithms')))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPLB_RT_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "int32", "int64"])
def test_loads_of_every_dtype_an_engine_records_are_read_exactly(dtype):
    """bfloat16 has no numpy dtype; vLLM's own policy takes it (``weight.float()``)."""
    import torch

    counts = torch.tensor([[3.0, 0.0, 250.0, 7.0]]).to(getattr(torch, dtype))
    arr = as_numpy(counts, "weight", (2,), "test")
    np.testing.assert_array_equal(arr, [[3.0, 0.0, 250.0, 7.0]])


def test_the_policy_is_named_by_the_environment(monkeypatch):
    monkeypatch.setenv("EPLB_RT_POLICY", "deepseek")
    assert policy_name() == "deepseek"
    assert policy_name("flashlb") == "flashlb"  # an engine's own setting comes first


def test_a_layer_that_gains_nothing_keeps_the_table():
    """Layer 0: ``random`` plans worse than the table (PAR 1.82 against 1.36); layer 1 has no
    load. Both keep their slots in force, and their gain reads 0."""
    load = np.array([[[5.0, 1, 1, 5, 2, 2, 3, 3], [0.0] * 8]])
    previous = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 0, 3]] * 2)
    placement, gain = replan("t", load, Topology(5, 2), previous, policy="random")
    np.testing.assert_array_equal(placement.phy2log, previous)
    np.testing.assert_array_equal(gain, 0.0)
    # Every placement of 8 experts on 8 slots is as balanced under a uniform load: a tie keeps.
    uniform = np.ones((1, 1, 8))
    placement, gain = replan("t", uniform, Topology(4, 2), np.arange(8)[None], policy="random")
    np.testing.assert_array_equal(placement.phy2log, np.arange(8)[None])
    assert gain[0] == 0


def test_an_engine_gets_a_plan_without_shares():
    """The engines route by replica counts: shares a policy fits are dropped."""
    load = np.random.default_rng(0).pareto(1.0, (4, 3, 16)) * 100
    previous = np.tile(np.arange(20) % 16, (3, 1))
    placement, _ = replan(
        "t", load, Topology(4, 5), previous, policy="equilibrium", options={"shares": True}
    )
    assert placement.is_uniform


def test_a_doubled_layer_takes_its_fresh_plan_as_it_is():
    """A layer holding an expert twice on a rank is planned as without a table, once: not
    planned again from that plan as if it were in force."""
    from eplb_rt.algorithms import plan

    doubled, valid = [0, 0, 1, 2, 3, 4, 5, 6, 7, 1], [0, 1, 2, 3, 4, 5, 6, 7, 0, 2]
    topology = Topology(5, 2)
    load = np.random.default_rng(1).pareto(1.0, (3, 3, 8)) * 100
    placement, gain = replan("t", load, topology, np.array([doubled, valid, valid]), policy="swift")
    assert gain[0] > 0
    fresh = plan("swift", load[:, [0]], topology, None, None).phy2log[0]
    np.testing.assert_array_equal(placement.phy2log[0], fresh)


def test_a_bad_plan_threads_variable_stops_the_plugins_at_start_up(monkeypatch):
    """Not at the engine's first rebalance; an adapter's plan names itself too."""
    from eplb_rt.integrations._common import plugin_policy

    monkeypatch.setenv("EPLB_RT_POLICY", "equilibrium")
    monkeypatch.setenv("EPLB_RT_PLAN_THREADS", "none")
    with pytest.raises(ValueError, match="EPLB_RT_PLAN_THREADS='none': expected a whole number"):
        plugin_policy()
    load = np.array([[[4.0, 1, 1, 0]]])
    with pytest.raises(ValueError, match=r"^test: environment variable EPLB_RT_PLAN_THREADS"):
        replan("test", load, Topology(2, 2), None, policy="equilibrium")


def test_options_without_a_policy_are_not_silently_dropped(monkeypatch, caplog):
    """The plugins run only where EPLB_RT_POLICY names a policy; options alone say so."""
    from eplb_rt.integrations._common import plugin_policy

    monkeypatch.delenv("EPLB_RT_POLICY", raising=False)
    monkeypatch.setenv("EPLB_RT_POLICY_OPTIONS", "move_cost=0.1")
    with caplog.at_level(logging.WARNING, logger="eplb_rt.integrations"):
        assert plugin_policy() is None
    assert "EPLB_RT_POLICY_OPTIONS is set but EPLB_RT_POLICY is not" in caplog.text
    monkeypatch.delenv("EPLB_RT_POLICY_OPTIONS")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="eplb_rt.integrations"):
        assert plugin_policy() is None
    assert not caplog.text
