"""eplb_rt as vLLM's EPLB policy (each tested release): its signature and return convention,
its own slot-preserving post-pass, the plugin entry point, and clear errors for bad input from
the engine side."""

from __future__ import annotations

import inspect
import logging
import sys
import types
import typing
from importlib.metadata import EntryPoint

import numpy as np
import pytest
import torch

from eplb_rt.algorithms import metrics
from eplb_rt.integrations import vllm as ours
from eplb_rt.integrations import vllm_ascend
from eplb_rt.placement import Placement, Topology
from tests.groups import group_nodes
from tests.integrations.conftest import (
    CASE_IDS,
    CASES,
    START_SHAPES,
    check_start_table,
    declared_entry_points,
    install_entry_points,
    rank_par,
)
from tests.integrations.peers import source_function


@pytest.mark.parametrize(("E", "D", "S"), START_SHAPES)
def test_vllms_start_map_is_a_layout_no_load_chose(vllm, E, D, S):
    """A re-plan leaves untraded a layer no load chose (:mod:`eplb_rt.algorithms.starting`):
    vLLM's own start map is one (``EplbState``'s, from the release's source)."""
    name = "build_initial_global_physical_to_logical_map"
    build = source_function(vllm.root / "vllm/distributed/eplb/eplb_state.py", name)
    if build is None:
        pytest.skip(f"vLLM {vllm.version} has no EplbState.{name}")
    table = np.tile(np.asarray(build(E, D * S - E)), (3, 1))
    assert table.shape == (3, D * S)
    check_start_table(table, E, Topology(D, S))


def _args(load, topology):
    return (torch.tensor(load.sum(0)), topology.num_slots, 1, 1, topology.num_ranks)


def _ours(vllm):
    """Our policy class as the plugin registers it for this vLLM release."""
    return ours.policy_class(returns_maps=ours.returns_maps(vllm.policy.AbstractEplbPolicy))


def _phy2log(result) -> np.ndarray:
    """``phy2log`` of a policy's answer: the map itself (vLLM 0.19+) or the first of three."""
    return (result[0] if isinstance(result, tuple) else result).numpy()


def _keep_slots(default, new: np.ndarray, num_ranks: int, old: np.ndarray) -> np.ndarray:
    """vLLM's own post-pass that puts experts staying on a rank back in their old slot."""
    if "phy_replicas_idx" not in inspect.signature(default.preserve_intragpu_slots).parameters:
        return default.preserve_intragpu_slots(new, num_ranks, old)
    return default.preserve_intragpu_slots(new, np.zeros_like(new), num_ranks, old)[0]


def test_signature_is_vllms(vllm):
    theirs = inspect.signature(vllm.policy.AbstractEplbPolicy.rebalance_experts)
    mine = inspect.signature(ours.EplbRtPolicy.rebalance_experts)
    # vLLM 0.13 passes no table in force: ours takes it as an optional last argument
    assert list(mine.parameters)[: len(theirs.parameters)] == list(theirs.parameters)
    assert mine.parameters["old_global_expert_indices"].default is None


def test_answers_in_the_releases_convention(vllm):
    """Three maps up to vLLM 0.18, ``phy2log`` alone from 0.19 (what vLLM unpacks)."""
    assert ours.returns_maps(vllm.policy.AbstractEplbPolicy) == (vllm.version < (0, 19))


@pytest.mark.parametrize(("name", "load", "topology"), CASES, ids=CASE_IDS)
def test_plan_is_a_valid_vllm_map_that_keeps_slots(vllm, name, load, topology):
    default = vllm.policy.EPLB_POLICIES["default"]
    theirs = default.rebalance_experts(*_args(load, topology))
    mine = _ours(vllm).rebalance_experts(*_args(load, topology))
    assert type(mine) is type(theirs)
    for a, b in zip(*((r,) if torch.is_tensor(r) else r for r in (mine, theirs)), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
    E, D = load.shape[-1], topology.num_ranks
    first = Placement(_phy2log(mine), E, D)  # every expert present, no two replicas on a rank
    if isinstance(mine, tuple):  # the maps vLLM 0.13-0.18 also take describe that placement
        np.testing.assert_array_equal(mine[1].numpy(), first.log2phy(mine[1].shape[-1]))
        np.testing.assert_array_equal(mine[2].numpy(), first.logcnt)
    if "old_global_expert_indices" not in inspect.signature(default.rebalance_experts).parameters:
        return  # vLLM 0.13 passes no table in force: nothing to keep
    # Re-plan on shifted load: experts that stay on a rank keep their slot, so vLLM's own
    # post-pass (preserve_intragpu_slots) has nothing left to do.
    shifted = np.roll(load, 5, axis=-1)
    old = torch.from_numpy(first.phy2log.astype(np.int64))
    second = _phy2log(_ours(vllm).rebalance_experts(*_args(shifted, topology), old))
    np.testing.assert_array_equal(_keep_slots(default, second, D, first.phy2log), second)
    old_par = metrics.par(first, shifted.sum(0))
    new_par = metrics.par(Placement(second, E, D), shifted.sum(0))
    assert (np.nan_to_num(new_par - old_par) <= 1e-12).all()  # a layer changes only to gain
    assert (second != first.phy2log).any()


def test_vllms_own_map_in_force_is_accepted():
    """vLLM's default policy may put two replicas of an expert on one rank; such a map in
    force is accepted and the next plan is a valid eplb_rt placement."""
    old = np.tile(np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 1]), (2, 1))  # rank 0: expert 0 twice
    hot = torch.tensor([[8.0, 1, 1, 1, 1, 1, 1, 1]] * 2)  # rank 0 carries all of expert 0
    policy = ours.policy_class(returns_maps=False)
    new = policy.rebalance_experts(hot, 10, 1, 1, 5, torch.tensor(old))
    Placement(new.numpy(), 8, 5)


def test_an_old_map_of_another_width_is_planned_anew(vllm):
    load, topology = CASES[2][1], CASES[2][2]
    policy = ours.policy_class(returns_maps=False)
    fresh = policy.rebalance_experts(*_args(load, topology))
    wider = torch.zeros(load.shape[1], topology.num_slots + 8, dtype=torch.int64)
    padded = torch.full((load.shape[1], topology.num_slots), -1, dtype=torch.int64)
    partly = fresh.clone()
    partly[:, -topology.num_slots_per_rank :] = -1  # the last rank's slots free
    for old in (wider, padded, partly):  # elastic EP changing the rank count
        assert torch.equal(policy.rebalance_experts(*_args(load, topology), old), fresh)


def test_postponed_annotations_say_whether_maps_are_wanted():
    """vLLM's policy module may postpone its annotations (as this one does): they are then
    strings, ``"typing.Tuple[...]"`` too."""

    class Tuple:
        @classmethod
        def rebalance_experts(cls, weight) -> typing.Tuple[int, int, int]: ...  # noqa: UP006

    class Tensor:
        @classmethod
        def rebalance_experts(cls, weight) -> torch.Tensor: ...

    assert ours.returns_maps(Tuple) and not ours.returns_maps(Tensor)


def test_without_vllm_a_policy_returns_phy2log_alone(monkeypatch):
    def missing():
        raise ImportError("no vLLM here")

    monkeypatch.setattr(ours, "policy_registry", missing)
    policy = ours.policy_class("equilibrium")
    assert policy.returns_maps is False and policy.__bases__ == (ours.EplbRtPolicy,)


@pytest.mark.parametrize(
    ("weight", "replicas", "ranks", "old", "message"),
    [
        (torch.ones(16), 16, 4, None, "3 dimensions|2 dimensions"),
        (torch.ones(2, 16), 18, 4, None, "multiple of num_ranks"),
        (
            torch.ones(2, 16).index_fill_(1, torch.tensor([5]), float("nan")),
            16,
            4,
            None,
            r"weight \[layers, experts\] contains NaN or infinite values \(first at \(0, 5\): nan",
        ),
        (
            torch.ones(2, 16),
            16,
            4,
            torch.zeros(2, 16, dtype=torch.int64),
            "old_global_expert_indices: layer 0: expert 1 has no slot",
        ),
        (torch.ones(2, 16), 8, 4, None, "do not fit"),
        (torch.ones(2, 16), 16, 4, torch.zeros(2, 16), "must hold integer expert ids"),
        (
            torch.ones(2, 16),
            16,
            4,
            torch.arange(16).repeat(3, 1),
            "old_global_expert_indices has 3 layers, weight 2",
        ),
        (
            torch.ones(2, 16),
            16,
            4,
            torch.arange(16).repeat(2, 1).index_fill_(1, torch.tensor([3]), -2),
            r"old_global_expert_indices\[0, 3\] = -2, expected an expert id in \[0, 16\) or -1",
        ),
        (
            torch.ones(2, 16),
            16,
            4,
            torch.full((2, 20), -1).index_fill_(1, torch.tensor([7]), 16),
            r"old_global_expert_indices\[0, 7\] = 16, expected an expert id",
        ),
        (torch.ones(2, 16), 0, 4, None, "num_replicas must be an integer >= 1, got 0"),
        (torch.ones(2, 16), 16, 4.0, None, "num_ranks must be an integer >= 1, got 4.0"),
    ],
    ids=[
        "1d-weight",
        "replicas-not-multiple",
        "nan-load",
        "missing-expert",
        "too-few-slots",
        "float-table",
        "table-of-other-layers",
        "id-below-minus-one",
        "elastic-table-with-an-id-past-the-experts",
        "no-replicas",
        "float-ranks",
    ],
)
def test_bad_input_gets_a_clear_error(weight, replicas, ranks, old, message):
    with pytest.raises(ValueError, match=message):
        ours.policy_class(returns_maps=False).rebalance_experts(weight, replicas, 1, 1, ranks, old)


@pytest.mark.parametrize(
    ("weight", "groups", "nodes", "old", "message"),
    [
        (torch.ones(2, 16), 0, 1, None, r"num_groups must be an integer >= 1, got 0$"),
        (torch.ones(2, 16), 1, 0, None, r"num_nodes must be an integer >= 1, got 0$"),
        (
            torch.ones(0, 16),
            1,
            1,
            torch.zeros(0, 16, dtype=torch.int64),
            r"weight \[layers, experts\] is empty: shape \(0, 16\)",
        ),
    ],
    ids=["zero-groups", "zero-nodes", "no-layers-with-a-table"],
)
def test_what_vllm_could_not_plan_either_is_refused(weight, groups, nodes, old, message):
    """vLLM's own policy divides by these (``num_groups % num_nodes``) and reduces over the
    layers: the adapter says which argument, where it used to plan flat or fail in numpy."""
    with pytest.raises(ValueError, match=message):
        ours.policy_class(returns_maps=False).rebalance_experts(weight, 16, groups, nodes, 4, old)


def test_the_class_made_by_default_serves_the_vllm_that_imports(vllm):
    """``policy_class(name, options)``, as the docs write it, returns what this vLLM release
    unpacks (the three maps up to 0.18) and is one of its policies."""
    abstract = vllm.policy.AbstractEplbPolicy
    cls = ours.policy_class("flashlb")
    assert issubclass(cls, abstract)
    assert cls.returns_maps == ours.returns_maps(abstract)
    load, topology = CASES[2][1], CASES[2][2]
    got = cls.rebalance_experts(*_args(load, topology))
    want = ours.policy_class("flashlb", returns_maps=False).rebalance_experts(
        *_args(load, topology)
    )
    assert torch.equal(got[0] if cls.returns_maps else got, want)


def test_unknown_policy_is_refused_when_the_class_is_made():
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        ours.policy_class("nope")
    # Options too: inside vLLM's EPLB step, the error would come at the first rebalance.
    with pytest.raises(ValueError, match=r"policy 'deepseek' has no option\(s\) \['nope'\]"):
        ours.policy_class("deepseek", {"nope": 1})


def test_entry_point_selects_eplb_rt_only_when_asked(vllm, monkeypatch):
    (value,) = declared_entry_points("vllm.general_plugins").values()
    register = EntryPoint("eplb_rt", value, "vllm.general_plugins").load()
    assert register is ours.register
    table = vllm.policy.EPLB_POLICIES
    monkeypatch.setitem(table, "default", table["default"])
    monkeypatch.setattr(ours.importlib.util, "find_spec", lambda name: None)  # no vllm-ascend
    monkeypatch.delenv("EPLB_RT_POLICY", raising=False)
    register()
    assert table["default"].__name__ == "DefaultEplbPolicy"
    monkeypatch.setenv("EPLB_RT_POLICY", "flashlb")
    register()
    assert issubclass(table["default"], ours.EplbRtPolicy) and table["default"].policy == "flashlb"
    # vLLM's own base class too (an abstract class with nothing left abstract): an engine that
    # checks what its policy is, or makes an instance of it, takes ours.
    assert issubclass(table["default"], vllm.policy.AbstractEplbPolicy)
    assert isinstance(table["default"](), vllm.policy.AbstractEplbPolicy)


def test_a_broken_vllm_ascend_does_not_stop_vllm(vllm, monkeypatch, caplog):
    def broken(name, options=None):
        raise ImportError("No module named 'torch_npu'")

    table = vllm.policy.EPLB_POLICIES
    monkeypatch.setitem(table, "default", table["default"])
    monkeypatch.setattr(ours.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(vllm_ascend, "install", broken)
    monkeypatch.setenv("EPLB_RT_POLICY", "flashlb")
    with caplog.at_level(logging.WARNING, logger="eplb_rt.integrations"):
        ours.register()
    assert issubclass(table["default"], ours.EplbRtPolicy)
    assert "torch_npu" in caplog.text and "keeps its own" in caplog.text


def test_vllms_plugin_loader_runs_our_entry_point(vllm, monkeypatch, tmp_path):
    """vLLM's own ``load_general_plugins`` on a distribution declaring our entry point."""
    install_entry_points("vllm.general_plugins", tmp_path, monkeypatch)
    monkeypatch.setattr(vllm.plugins, "plugins_loaded", False)
    table = vllm.policy.EPLB_POLICIES
    monkeypatch.setitem(table, "default", table["default"])
    monkeypatch.setattr(ours.importlib.util, "find_spec", lambda name: None)  # no vllm-ascend
    monkeypatch.setenv("EPLB_RT_POLICY", "flashlb")
    vllm.plugins.load_general_plugins()
    assert issubclass(table["default"], ours.EplbRtPolicy) and table["default"].policy == "flashlb"


def test_a_registry_behind_a_lazy_alias_is_the_one_written(vllm, monkeypatch):
    """vLLM's main branch moves ``vllm.distributed.eplb.policy`` to ``vllm.backends...`` and
    leaves at the old path a module that forwards attribute reads (module ``__getattr__``):
    the plugin must change the real table in place, not bind a name on the alias."""
    real = vllm.policy
    alias = types.ModuleType("vllm.distributed.eplb.policy")
    alias.__getattr__ = lambda name: getattr(real, name)
    monkeypatch.setattr(sys.modules["vllm.distributed.eplb"], "policy", alias)
    monkeypatch.setitem(sys.modules, "vllm.distributed.eplb.policy", alias)
    table = real.EPLB_POLICIES
    monkeypatch.setitem(table, "default", table["default"])
    monkeypatch.setattr(ours.importlib.util, "find_spec", lambda name: None)  # no vllm-ascend
    monkeypatch.setenv("EPLB_RT_POLICY", "flashlb")
    ours.register()
    assert "EPLB_POLICIES" not in vars(alias)
    assert issubclass(table["default"], ours.EplbRtPolicy) and table["default"].policy == "flashlb"


def test_a_registry_only_at_its_new_path_is_found(vllm, monkeypatch):
    """Once vLLM drops the forwarding module, the registry lives at ``vllm.backends...`` only."""
    _without_policy_registry(monkeypatch)
    path = ours.REGISTRY_MODULES[0]
    parts = path.split(".")
    for i in range(2, len(parts)):
        module = ".".join(parts[:i])
        monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
    monkeypatch.setitem(sys.modules, path, vllm.policy)
    table = vllm.policy.EPLB_POLICIES
    monkeypatch.setitem(table, "default", table["default"])
    monkeypatch.setattr(ours.importlib.util, "find_spec", lambda name: None)  # no vllm-ascend
    monkeypatch.setenv("EPLB_RT_POLICY", "flashlb")
    ours.register()
    assert issubclass(table["default"], ours.EplbRtPolicy) and table["default"].policy == "flashlb"


def _without_policy_registry(monkeypatch) -> None:
    """Make ``from vllm.distributed.eplb import policy`` fail, as on vLLM <= 0.12."""
    monkeypatch.delattr(sys.modules["vllm.distributed.eplb"], "policy")
    monkeypatch.setitem(sys.modules, "vllm.distributed.eplb.policy", None)


def test_a_vllm_without_policy_registry_is_refused_clearly(vllm, monkeypatch):
    """vLLM <= 0.12 has no ``vllm.distributed.eplb.policy``: asking for eplb_rt there fails at
    start with the fix named, unless vllm-ascend's EPLB can take it."""
    _without_policy_registry(monkeypatch)
    monkeypatch.setattr(ours.importlib.util, "find_spec", lambda name: None)  # no vllm-ascend
    monkeypatch.setenv("EPLB_RT_POLICY", "flashlb")
    with pytest.raises(RuntimeError, match=r"EPLB_RT_POLICY=flashlb needs .*vLLM >= 0\.13"):
        ours.register()


def test_without_policy_registry_vllm_ascend_still_gets_ours(vllm, monkeypatch, caplog):
    installed = []
    _without_policy_registry(monkeypatch)
    monkeypatch.setattr(ours.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(vllm_ascend, "install", lambda *args: installed.append(args))
    monkeypatch.setenv("EPLB_RT_POLICY", "flashlb")
    with caplog.at_level(logging.WARNING, logger="eplb_rt.integrations"):
        ours.register()
    assert installed == [("flashlb", None)] and "only vllm-ascend's is replaced" in caplog.text


def test_plugin_options_come_from_the_environment_and_are_checked_at_start(vllm, monkeypatch):
    table = vllm.policy.EPLB_POLICIES
    monkeypatch.setitem(table, "default", table["default"])
    installed = []
    monkeypatch.setattr(ours.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(vllm_ascend, "install", lambda *args: installed.append(args))
    monkeypatch.setenv("EPLB_RT_POLICY", "equilibrium")
    monkeypatch.setenv("EPLB_RT_POLICY_OPTIONS", "hierarchical=true, move-cost=0.02")
    ours.register()
    options = {"hierarchical": "true", "move_cost": "0.02"}
    assert table["default"].options == options
    assert installed == [("equilibrium", options)]
    monkeypatch.setattr(table["default"], "returns_maps", False)
    weight = torch.from_numpy(np.random.default_rng(0).gamma(0.5, 100.0, size=(2, 64)))
    phy2log = table["default"].rebalance_experts(weight, 72, 8, 2, 8).numpy()
    group_nodes(phy2log, 2, 8)  # hierarchical: each group of 8 experts on one node
    monkeypatch.setenv("EPLB_RT_POLICY_OPTIONS", "hierarchical=maybe")
    with pytest.raises(ValueError, match=r"EPLB_RT_POLICY_OPTIONS: .*'hierarchical' must be true"):
        ours.register()
    monkeypatch.setenv("EPLB_RT_POLICY_OPTIONS", "hierarchical")
    with pytest.raises(ValueError, match=r"EPLB_RT_POLICY_OPTIONS.*KEY=VALUE"):
        ours.register()
    # One key twice: the last one won, silently.
    monkeypatch.setenv("EPLB_RT_POLICY_OPTIONS", "hierarchical=true,hierarchical=false")
    with pytest.raises(ValueError, match=r"hierarchical given twice \('true' and 'false'\)"):
        ours.register()


def test_the_convention_is_read_from_postponed_annotations_too():
    code = (
        "from __future__ import annotations\n"
        "class Old:\n"
        "    def rebalance_experts(cls, weight) -> tuple[Tensor, Tensor, Tensor]: ...\n"
        "class New:\n"
        "    def rebalance_experts(cls, weight) -> torch.Tensor: ...\n"
    )
    spaces: dict = {}
    exec(code, spaces)
    assert ours.returns_maps(spaces["Old"]) and not ours.returns_maps(spaces["New"])


@pytest.mark.parametrize("nodes", [2, 4])
def test_groups_on_nodes_as_vllms_own_policy(vllm, monkeypatch, nodes):
    """DeepSeek-V3 (8 groups) at 32x9 on several nodes: ``deepseek`` through the adapter places
    whole groups on nodes as vLLM's own policy does, to the same PAR; ``equilibrium`` does so
    with ``hierarchical`` on and keeps them there on a re-plan."""
    from benchmarks import traces

    load = traces.deepseek_v3("prefill_in1024", moe_only=True)[0][:12]
    weight = torch.from_numpy(load)
    args = (weight, 288, 8, nodes, 32)
    theirs = _phy2log(vllm.policy.EPLB_POLICIES["default"].rebalance_experts(*args))
    maps = {"theirs": theirs}
    for policy, options in (("deepseek", None), ("equilibrium", {"hierarchical": True})):
        cls = ours.policy_class(policy, options, returns_maps=False)
        maps[policy] = cls.rebalance_experts(*args).numpy()
    for phy2log in maps.values():
        group_nodes(phy2log, nodes, 32)
    np.testing.assert_allclose(
        rank_par(maps["deepseek"], load, 32), rank_par(theirs, load, 32), rtol=1e-3
    )
    cls = ours.policy_class("equilibrium", {"hierarchical": True}, returns_maps=False)
    shifted = torch.from_numpy(np.roll(load, 40, axis=-1))
    old = torch.from_numpy(maps["equilibrium"])
    group_nodes(cls.rebalance_experts(shifted, 288, 8, nodes, 32, old).numpy(), nodes, 32)


def test_ranks_the_nodes_do_not_divide_are_planned_flat():
    """vLLM's own policy plans 6 ranks on 4 nodes flat; the adapter did not plan at all."""
    weight = torch.from_numpy(np.random.default_rng(0).gamma(0.6, 100.0, (2, 12)))
    cls = ours.policy_class("deepseek", returns_maps=False)
    flat = cls.rebalance_experts(weight, 18, 3, 1, 6)
    assert torch.equal(cls.rebalance_experts(weight, 18, 3, 4, 6), flat)
    Placement(flat.numpy(), 12, 6)
