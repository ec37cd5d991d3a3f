"""eplb_rt inside vllm-ascend (each tested release): its worker's own placement check, its
expert_map loader, its policy factory, and clear errors for bad input from the engine side."""

from __future__ import annotations

import inspect
import json
import logging
import multiprocessing
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from eplb_rt import formats
from eplb_rt.algorithms import metrics, plan
from eplb_rt.algorithms.load import heat_to_load
from eplb_rt.cli import main as cli
from eplb_rt.config import EplbConfig
from eplb_rt.integrations.vllm import EplbRtPolicy
from eplb_rt.integrations.vllm_ascend import EplbRtAscendPolicy, install
from eplb_rt.placement import Placement, Topology
from tests.groups import group_nodes
from tests.integrations.conftest import (
    CASE_IDS,
    CASES,
    START_SHAPES,
    check_start_table,
    slot_workload,
)
from tests.integrations.peers import STUB_LOGGER


def _initial_table(ascend, num_layers, num_experts, topology) -> np.ndarray:
    """vllm-ascend's own start layout (``generate_global_placement``), ``[L, D, S]``."""
    make = ascend.eplb_utils.generate_global_placement
    args = [num_experts, topology.num_ranks, topology.num_slots - num_experts]
    if "num_shared_experts" in inspect.signature(make).parameters:  # since 0.14
        args.append(0)
    with warnings.catch_warnings():  # up to 0.23 it makes a tensor from a list of arrays
        warnings.simplefilter("ignore", UserWarning)
        one = make(*args)
    return np.tile(one.numpy(), (num_layers, 1, 1))


def _passes_worker_check(ascend, old: np.ndarray, new: np.ndarray, caplog) -> bool:
    """vllm-ascend's ``EplbWorker.check_expert_placement`` (it reverts bad layers, logs)."""
    checked = torch.tensor(new)
    with caplog.at_level(logging.ERROR, logger=STUB_LOGGER.name):
        # the worker's table in force is int64 (global2local), ours int32 like FlashLB's
        old_t = torch.tensor(old, dtype=torch.long)
        ascend.eplb_worker.EplbWorker.check_expert_placement(None, old_t, checked)
    return torch.equal(checked, torch.tensor(new)) and not caplog.records


@pytest.mark.parametrize(("name", "load", "topology"), CASES, ids=CASE_IDS)
def test_plan_passes_the_worker_check_and_lowers_par(ascend, name, load, topology, caplog):
    L, E = load.shape[1:]
    old = _initial_table(ascend, L, E, topology)
    policy = EplbRtAscendPolicy()
    changed, priority, new = policy.rebalance_experts(torch.tensor(old), slot_workload(old, load))
    assert new.shape == old.shape and np.issubdtype(new.dtype, np.integer)
    assert _passes_worker_check(ascend, old, new, caplog)
    before = metrics.par(Placement(old.reshape(L, -1), E, topology.num_ranks), load.sum(0))
    after = metrics.par(Placement(new.reshape(L, -1), E, topology.num_ranks), load.sum(0))
    gain = np.nan_to_num(before - after)
    assert changed == bool(priority.size)
    assert sorted(priority.tolist()) == np.flatnonzero(gain > 0).tolist()
    assert (np.diff(gain[priority]) <= 0).all()  # largest gain first
    unchanged = np.setdiff1d(np.arange(L), priority)
    assert np.array_equal(new[unchanged], old[unchanged])
    assert changed  # the start layout of every shipped trace can be improved


@pytest.mark.parametrize(("E", "D", "S"), START_SHAPES)
def test_the_releases_start_table_is_a_layout_no_load_chose(ascend, E, D, S):
    """A re-plan keeps the walk's moves on a table no load chose, untraded (:mod:`eplb_rt.
    algorithms.starting`): vllm-ascend's own start table is one, whichever layout the release
    starts from."""
    topology = Topology(D, S)
    check_start_table(_initial_table(ascend, 3, E, topology).reshape(3, -1), E, topology)


def test_replan_from_a_planned_table_keeps_slots_and_passes(ascend, caplog):
    load = CASES[0][1]
    topology = CASES[0][2]
    old = _initial_table(ascend, *load.shape[1:], topology)
    policy = EplbRtAscendPolicy()
    _, _, first = policy.rebalance_experts(old, slot_workload(old, load))
    shifted = np.roll(load, 7, axis=-1)  # the hot experts change
    changed, _, second = policy.rebalance_experts(first, slot_workload(first, shifted)[0])
    assert changed and _passes_worker_check(ascend, first, second, caplog)


def test_multistage_workload_is_read_as_episodes(ascend):
    load = CASES[2][1][:6]  # ESFT: six requests as stages
    old = _initial_table(ascend, *load.shape[1:], CASES[2][2])
    work = slot_workload(old, load)
    flat = work.reshape(*load.shape[:2], -1)
    np.testing.assert_allclose(
        heat_to_load(flat, old.reshape(old.shape[0], -1), load.shape[2]), load
    )
    policy = EplbRtAscendPolicy()
    _, _, staged = policy.rebalance_experts(old, work)
    _, _, summed = policy.rebalance_experts(old, work.sum(0))
    assert staged.shape == summed.shape == old.shape


@pytest.mark.parametrize(
    ("table", "work", "message"),
    [
        (np.zeros((2, 4)), np.zeros((2, 4)), "current_expert_table .* 3 dimensions"),
        (np.arange(16).reshape(1, 4, 4), np.zeros((1, 4, 3)), "expert_workload has shape"),
        (np.arange(16).reshape(1, 4, 4) * 1.0, np.ones((1, 4, 4)), "must hold ints"),
        (
            np.arange(16).reshape(1, 4, 4) - 1,
            np.ones((1, 4, 4)),
            r"expert -1 at layer 0, rank 0, slot 0; expected ids in \[0, 16\)$",
        ),
        (  # the ids bound the experts: one past a layer's slots, not a 21 PiB load array
            np.where(np.arange(16) == 6, 10**15, np.arange(16)).reshape(1, 4, 4),
            np.ones((1, 4, 4)),
            r"expert 1000000000000000 at layer 0, rank 1, slot 2; expected ids in \[0, 16\), "
            r"no more experts than a layer's 16 slots",
        ),
        (  # expert 12 on ranks 1 and 3, none of expert 5
            np.where(np.arange(16) == 5, 12, np.arange(16)).reshape(1, 4, 4),
            np.ones((1, 4, 4)),
            "current_expert_table: layer 0: expert 5 has no slot",
        ),
        (  # the worker refuses any plan from it: an expert moved within a rank
            np.where(np.arange(16) == 5, 6, np.arange(16)).reshape(1, 4, 4),
            np.ones((1, 4, 4)),
            "current_expert_table holds expert 6 twice on rank 1 of layer 0; eplb_rt does not",
        ),
        (
            np.arange(16).reshape(1, 4, 4),
            np.where(np.arange(16).reshape(1, 4, 4) == 6, np.nan, 1.0),
            r"expert_workload \[\(T,\) L, D, S\] contains NaN or infinite values "
            r"\(first at \(0, 1, 2\)",
        ),
        (np.arange(16).reshape(1, 4, 4), -np.ones((1, 4, 4)), "negative"),
        (np.zeros((1, 4, 0), dtype=np.int64), np.zeros((1, 4, 0)), r"empty: shape \(1, 4, 0\)"),
        (np.arange(16).reshape(1, 4, 4), np.zeros((0, 1, 4, 4)), r"empty: shape \(0, 1, 4, 4\)"),
    ],
    ids=[
        "2d-table",
        "shape-mismatch",
        "float-table",
        "negative-id",
        "id-past-the-slots",
        "missing-expert",
        "expert-twice-on-a-rank",
        "nan-load",
        "negative-load",
        "empty-table",
        "no-stage",
    ],
)
def test_bad_input_gets_a_clear_error(table, work, message):
    derived = "missing" in message or "no more experts" in message  # E from the ids
    policy = EplbRtAscendPolicy(num_experts=None if derived else 16)
    with pytest.raises(ValueError, match=message):
        policy.rebalance_experts(table, work)


def test_keep_on_error_logs_and_keeps_the_table(caplog):
    table = np.arange(16).reshape(1, 4, 4)
    policy = EplbRtAscendPolicy(keep_on_error=True)
    with caplog.at_level(logging.ERROR, logger="eplb_rt.integrations"):
        changed, priority, new = policy.rebalance_experts(table, np.full((1, 4, 4), np.nan))
    assert not changed and priority.size == 0 and np.array_equal(new, table)
    assert "NaN" in caplog.text and "kept" in caplog.text
    # The table comes back as a plan's does, [L, D, S] int32 on the host, from a tensor too.
    assert new.dtype == np.int32
    _, _, new = policy.rebalance_experts(torch.from_numpy(table), torch.ones(4, 4))
    assert isinstance(new, np.ndarray) and new.dtype == np.int32 and np.array_equal(new, table)
    # An input that is no table at all comes back as it was given.
    assert policy.rebalance_experts("no table", np.ones((1, 4, 4)))[2] == "no table"


def test_install_refuses_options_that_are_not_the_policys_before_patching():
    with pytest.raises(ValueError, match="no_such_option"):
        install("flashlb", {"no_such_option": 1})


def test_an_export_folder_that_cannot_be_made_is_refused_at_the_start(tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("")
    with pytest.raises(ValueError, match=r"EPLB_RT_EXPORT_DIR.*cannot make the folder"):
        EplbRtAscendPolicy(export_dir=str(afile / "loads"))


def test_options_not_of_the_policy_are_refused_at_the_start():
    # In vllm-ascend's EPLB process the error would come at the first rebalance, and end it.
    with pytest.raises(ValueError, match=r"policy 'flashlb' has no option\(s\) \['nope'\]"):
        EplbRtAscendPolicy("flashlb", {"nope": 1})


def test_a_load_that_cannot_be_written_is_logged_and_the_plan_stands(tmp_path, caplog):
    """In vllm-ascend's EPLB process an exception ends the process: a write that fails (the
    folder gone, a full disk) must cost neither the plan nor that process."""
    folder = tmp_path / "loads"
    policy = EplbRtAscendPolicy("equilibrium", export_dir=str(folder))
    table = np.arange(16).reshape(1, 4, 4) % 12
    work = np.array([[[90, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [80, 1, 1, 1]]], dtype=float)
    want = EplbRtAscendPolicy("equilibrium").rebalance_experts(table, work)
    folder.rmdir()
    folder.write_text("")  # the folder is now a file: no load can be written there
    with caplog.at_level(logging.ERROR, logger="eplb_rt.integrations"):
        got = policy.rebalance_experts(table, work)
    assert "cannot write" in caplog.text and "the plan stands" in caplog.text
    assert got[0] == want[0] and np.array_equal(got[1], want[1])
    assert np.array_equal(got[2], want[2])
    assert want[0], "the case must change a layer"


@pytest.fixture
def factories(ascend, monkeypatch):
    """vllm-ascend's policy factories, as they were again after the test (``install`` rebinds
    them)."""
    v1 = ascend.policy_factory.PolicyFactory
    monkeypatch.setattr(v1, "generate_policy", v1.__dict__["generate_policy"])
    v2 = getattr(ascend, "factory", None)  # from 0.30
    if v2 is not None:
        monkeypatch.setattr(v2, "create_eplb_policy", v2.create_eplb_policy)
    return v1, v2


def test_factory_builds_ours_after_install(ascend, factories):
    factory = factories[0]
    # called as the release's worker calls it: up to 0.13 with a DynamicConfig as well
    takes_config = "config" in inspect.signature(factory.generate_policy).parameters
    config = (ascend.policy_factory.DynamicConfig(),) if takes_config else ()
    install("flashlb")
    for policy_type in (0, 1, 2, 3):
        made = factory.generate_policy(policy_type, *config)
        assert isinstance(made, EplbRtAscendPolicy) and made.policy == "flashlb"
        assert made.keep_on_error


def test_runner_v2_factory_builds_ours_for_every_name_after_install(ascend, factories, monkeypatch):
    """vllm-ascend 0.30's model runner v2 runs vLLM's EPLB with the policy its own
    ``create_eplb_policy`` builds ("stair" by default), not the one in vLLM's registry."""
    factory = factories[1]
    if factory is None:
        pytest.skip("this vllm-ascend has no model runner v2 EPLB (from 0.30)")
    assert not isinstance(factory.create_eplb_policy("default", None), EplbRtPolicy)
    runner = types.ModuleType("vllm_ascend.worker.v2.eplb")  # imported the function by name
    runner.create_eplb_policy = factory.create_eplb_policy
    monkeypatch.setitem(sys.modules, runner.__name__, runner)
    install("flashlb", {"num_episodes": 8})
    load = CASES[2][1]
    topology = CASES[2][2]
    L, E = load.shape[1:]
    old = torch.tensor(_initial_table(ascend, L, E, topology).reshape(L, -1))
    for make in (factory.create_eplb_policy, runner.create_eplb_policy):
        for name in ("stair", "default"):
            made = make(name, factory.StairConfig())
            assert isinstance(made, EplbRtPolicy) and isinstance(made, factory.AbstractEplbPolicy)
            assert (made.policy, made.options) == ("flashlb", {"num_episodes": 8})
        # newer vllm-ascend sources pass the EPLB config alone
        assert isinstance(make(factory.StairConfig()), EplbRtPolicy)
    # as vLLM's EplbState calls it, on the host: phy2log alone back (vLLM >= 0.19)
    args = (torch.tensor(load.sum(0)), topology.num_slots, 1, 1, topology.num_ranks, old)
    phy2log = made.rebalance_experts(*args)
    assert isinstance(phy2log, torch.Tensor) and phy2log.shape == old.shape
    expected = plan("flashlb", load, topology, options={"num_episodes": 8})
    new = Placement(phy2log.numpy(), E, topology.num_ranks)
    assert np.nanmean(metrics.par(new, load.sum(0))) <= np.nanmean(
        metrics.par(expected, load.sum(0))) + 0.05  # fmt: skip


def test_install_takes_whichever_factory_the_release_has(monkeypatch):
    """A release with only model runner v2's factory is patched there; with neither, the
    ``ImportError`` names both (the plugin logs it and leaves vllm-ascend as it is)."""
    v1 = "vllm_ascend.eplb.core.policy.policy_factory"
    v2 = types.ModuleType("vllm_ascend.distributed.eplb.policy.factory")

    class Abstract:
        @classmethod
        def rebalance_experts(cls, *args) -> torch.Tensor: ...

    v2.AbstractEplbPolicy, v2.create_eplb_policy = Abstract, None
    package = types.ModuleType("vllm_ascend.distributed.eplb.policy")
    package.factory = v2
    monkeypatch.setitem(sys.modules, v1, None)  # None in sys.modules: that import fails
    monkeypatch.setitem(sys.modules, package.__name__, package)
    monkeypatch.setitem(sys.modules, v2.__name__, v2)
    install("random")
    made = v2.create_eplb_policy("stair", None)
    assert isinstance(made, EplbRtPolicy) and made.policy == "random" and not made.returns_maps
    monkeypatch.setitem(sys.modules, package.__name__, None)
    with pytest.raises(ImportError, match=r"policy_factory.+; .+distributed\.eplb\.policy"):
        install("random")


def test_offline_path_exported_load_to_vllm_ascend_loader(ascend, tmp_path):
    """record (export_dir) -> ``eplb-rt plan`` -> vllm-ascend's ``expert_file_to_tensor``."""
    load = CASES[2][1]
    topology = CASES[2][2]
    old = _initial_table(ascend, *load.shape[1:], topology)
    EplbRtAscendPolicy(export_dir=str(tmp_path)).rebalance_experts(old, slot_workload(old, load))
    (recorded,) = sorted(tmp_path.glob("load-*.npy"))
    np.testing.assert_allclose(np.load(recorded), load)
    out = tmp_path / "expert_map.json"
    policy = EplbConfig().policy
    argv = ["plan", "--load", str(recorded), "--ranks", "8", "--slots-per-rank", "9"]
    assert cli([*argv, "--policy", policy, "--out", str(out)]) == 0
    L = load.shape[1]
    layers = []
    for layer in range(L):
        table, count = ascend.eplb_utils.expert_file_to_tensor(str(out), layer)
        assert count == topology.num_slots
        layers.append(table.numpy())
    expected = plan(policy, load, topology).phy2log
    np.testing.assert_array_equal(np.stack(layers).reshape(L, -1), expected)


def test_a_map_listed_out_of_id_order_reads_as_vllm_ascend_serves_it(ascend, tmp_path):
    """vllm-ascend's loader takes layers and devices in list order, whatever their ids say."""
    doc = formats.to_vllm_ascend(
        Placement(np.array([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]]), 6, 3)
    )
    doc["layer_list"].reverse()
    doc["layer_list"][0]["device_list"].reverse()
    path = tmp_path / "map.json"
    path.write_text(json.dumps(doc))
    ours = formats.read_placement(path).by_rank()
    for layer in range(2):
        served, _ = ascend.eplb_utils.expert_file_to_tensor(str(path), layer)
        np.testing.assert_array_equal(served.numpy(), ours[layer])


def test_the_policy_crosses_into_a_spawned_eplb_process(tmp_path):
    """vllm-ascend builds the policy in the serving process and hands its ``EplbProcess`` (which
    holds it) to a child it starts, pickled where the start method is spawn. The policy arrives
    whole, exports on, and plans there as it does here."""
    table = np.arange(16).reshape(1, 4, 4)
    work = np.random.default_rng(3).pareto(1.5, size=(2, 1, 4, 4)) * 100
    policy = EplbRtAscendPolicy("equilibrium", export_dir=str(tmp_path))
    here = policy.rebalance_experts(table, work)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        there = pool.apply(policy.rebalance_experts, (table, work))
    assert there[0] == here[0] and np.array_equal(there[1], here[1])
    assert np.array_equal(there[2], here[2])
    assert len(list(tmp_path.glob("load-*.npy"))) == 2  # one from each process


def test_groups_on_nodes_pass_the_worker_check(ascend, caplog):
    """DeepSeek-V3 (8 groups) at 32x9 on 4 nodes with ``hierarchical`` on: from vllm-ascend's
    start layout and again on shifted load, each plan passes the worker's check and keeps
    every group on one node."""
    from benchmarks import traces

    load = traces.deepseek_v3("prefill_in512", moe_only=True)[:, :8]
    topology = Topology(32, 9, num_nodes=4, num_groups=8)
    old = _initial_table(ascend, 8, 256, topology)
    policy = EplbRtAscendPolicy("equilibrium", {"hierarchical": True}, num_nodes=4, num_groups=8)
    for work in (load, np.roll(load, 32, axis=-1)):
        changed, _, new = policy.rebalance_experts(old, slot_workload(old, work))
        assert changed and _passes_worker_check(ascend, old, new, caplog)
        group_nodes(new.reshape(8, -1), 4, 32)
        old = new


def test_a_balanced_table_is_reported_unchanged_and_is_the_callers_to_write(tmp_path):
    """Every rank as loaded as the next: nothing changes, no layer has priority; the deployment
    returned is a fresh array the EPLB process may write; each call's load is its own file."""
    table, work = np.array([[[0, 1], [2, 3]]]), np.full((1, 2, 2), 10.0)
    policy = EplbRtAscendPolicy(export_dir=str(tmp_path))
    for calls in (1, 2):
        changed, priority, new = policy.rebalance_experts(table, work)
        assert changed is False and priority.size == 0
        assert new.flags.writeable and not np.shares_memory(new, table)
        assert len(list(tmp_path.glob("load-*.npy"))) == calls


def test_a_given_expert_count_is_checked_against_the_table():
    with pytest.raises(ValueError, match=r"num_experts \(5\)"):
        EplbRtAscendPolicy(num_experts=5).rebalance_experts(
            np.array([[[0, 1], [2, 3]]]), np.full((1, 2, 2), 10.0)
        )


def test_layers_put_back_onto_nodes_are_reported_changed():
    """A table that spreads groups over nodes is re-placed whatever it gains: ``changed`` and
    ``priority`` name every layer that differs from the table (here both, neither gaining
    PAR on this sparse load), not only those that gain."""
    L, E, D, S = 2, 16, 4, 5
    spread = np.concatenate([np.arange(E), np.arange(D * S - E) % E]).reshape(D, S)
    table = np.tile(spread, (L, 1, 1))
    work = np.array([
        [[0, 31, 79, 18, 0], [0, 0, 19, 0, 0], [0, 0, 0, 0, 8], [0, 50, 0, 0, 0]],
        [[31, 0, 0, 0, 0], [0, 0, 0, 27, 0], [0, 0, 0, 0, 0], [0, 0, 91, 0, 0]],
    ])  # fmt: skip
    policy = EplbRtAscendPolicy("equilibrium", {"hierarchical": True}, num_nodes=2, num_groups=4)
    changed, priority, new = policy.rebalance_experts(table, work)
    differ = [layer for layer in range(L) if not np.array_equal(new[layer], table[layer])]
    assert differ == [0, 1] and changed and sorted(priority.tolist()) == differ


@pytest.mark.parametrize(
    ("name", "value"), [("num_nodes", 0), ("num_groups", -1), ("num_nodes", 2.0)]
)
def test_bad_nodes_or_groups_are_refused_at_the_start(name, value):
    said = f"^eplb_rt vllm-ascend policy: {name} must be an integer >= 1, got {value!r}$"
    with pytest.raises(ValueError, match=said):
        EplbRtAscendPolicy("deepseek", **{name: value})


def test_ranks_the_nodes_do_not_divide_are_planned_flat(ascend, caplog):
    """6 ranks on 4 nodes: planned flat (as the vLLM and SGLang adapters plan them), not refused
    at every cycle."""
    table = np.tile(np.r_[np.arange(16), np.arange(8)], (2, 1)).reshape(2, 6, 4)
    work = np.zeros((2, 6, 4))
    work[:, 0, 0] = 500.0  # expert 0 hot, on one rank
    work[:, 1:, :] = 1.0
    policy = EplbRtAscendPolicy("deepseek", num_nodes=4, num_groups=4)
    changed, _, new = policy.rebalance_experts(table, work)
    assert changed and _passes_worker_check(ascend, table, new, caplog)
