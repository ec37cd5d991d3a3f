"""eplb_rt as SGLang's EPLB algorithm (each tested release): its signature, its own
expert-location code on our results (map from ``--init-expert-location`` files, the plugin
inside ``init_by_eplb``), and clear errors for bad input from the engine side."""

from __future__ import annotations

import inspect
import json
import logging
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eplb_rt.cli import main as cli
from eplb_rt.integrations import sglang as ours
from eplb_rt.placement import Placement
from tests.groups import group_nodes
from tests.integrations.conftest import (
    CASE_IDS,
    CASES,
    check_start_table,
    install_entry_points,
    rank_par,
)


def _passes_server_args(function) -> bool:
    """SGLang up to 0.5.18 passes its ``ServerArgs`` in; from 0.5.19 it reads a runtime context."""
    return "server_args" in inspect.signature(function).parameters


def _model(sglang, monkeypatch, load, topology, init_expert_location):
    """Point SGLang's settings (its server arguments or runtime-context stub) and model-config
    lookup at one model, and load ``init_expert_location`` with SGLang's own code."""
    L, E = load.shape[1:]
    location = sglang.expert_location
    where = location.ModelConfigForExpertLocation
    monkeypatch.setattr(where, "from_model_config", staticmethod(lambda _: where(L, E, None)))
    moe = SimpleNamespace(
        init_expert_location=str(init_expert_location),
        ep_num_redundant_experts=topology.num_slots - E,
        ep_dispatch_algorithm=None,
        eplb_algorithm="auto",
    )
    parallel = SimpleNamespace(ep_size=topology.num_ranks, elastic_ep_initial_size=None, nnodes=1)
    if _passes_server_args(location.compute_initial_expert_location_metadata):
        server_args = SimpleNamespace(device="cpu", **vars(moe), **vars(parallel))
        return location.compute_initial_expert_location_metadata(server_args, None, 0)
    sglang.runtime.device = SimpleNamespace(device="cpu")
    sglang.runtime.parallel = parallel
    sglang.runtime.exec = SimpleNamespace(moe=moe)
    return location.compute_initial_expert_location_metadata(None, None)


def _all_physical(sglang, phy2log, num_experts, num_ranks):
    """SGLang's own ``logical_to_all_physical_map`` of ``phy2log`` (no rank-local choice)."""
    compute = sglang.expert_location._compute_logical_to_all_physical_map
    args = (phy2log, num_experts, num_ranks, None)
    return compute(None, *args) if _passes_server_args(compute) else compute(*args)


def test_signature_is_sglangs(sglang):
    theirs = list(inspect.signature(sglang.eplb_algorithms.rebalance_experts).parameters)
    assert list(inspect.signature(ours.rebalance_experts).parameters)[: len(theirs)] == theirs


@pytest.mark.parametrize(("name", "load", "topology"), CASES, ids=CASE_IDS)
def test_triple_agrees_with_sglangs_own_maps(sglang, name, load, topology):
    args = (torch.tensor(load), topology.num_slots, topology.num_slots_per_rank, None, 1)
    theirs = sglang.eplb_algorithms.rebalance_experts(
        *args, sglang.eplb_algorithms.EplbAlgorithm.deepseek
    )
    phy2log, log2phy, logcnt = ours.rebalance_experts(*args)
    for mine, their in zip((phy2log, log2phy, logcnt), theirs, strict=True):
        assert mine.dtype == their.dtype and mine.shape[:2] == their.shape[:2]
    Placement(phy2log.numpy(), load.shape[-1], topology.num_ranks)
    reference = _all_physical(sglang, phy2log, load.shape[-1], topology.num_ranks)
    width = reference.shape[-1]
    assert torch.equal(F.pad(log2phy, (0, width - log2phy.shape[-1]), value=-1), reference)
    assert torch.equal(logcnt, (reference >= 0).sum(-1))


@pytest.mark.parametrize(("name", "load", "topology"), CASES, ids=CASE_IDS)
def test_sglangs_trivial_start_is_a_layout_no_load_chose(sglang, monkeypatch, name, load, topology):
    """SGLang's default ``--init-expert-location trivial`` is a layout whose layers the re-plan
    leaves untraded (:mod:`eplb_rt.algorithms.starting`)."""
    meta = _model(sglang, monkeypatch, load, topology, "trivial")
    table = meta.physical_to_logical_map.numpy()
    assert table.shape == (load.shape[1], topology.num_slots)
    check_start_table(table, load.shape[2], topology)


def test_init_expert_location_file_is_read_by_sglang(sglang, monkeypatch, tmp_path):
    """``eplb-rt plan`` -> ``eplb-rt convert --to sglang`` -> SGLang's own loader."""
    _, load, topology = CASES[3]
    np.save(tmp_path / "load.npy", load)
    shape = ["--ranks", str(topology.num_ranks)]
    argv = ["plan", "--load", str(tmp_path / "load.npy"), *shape, "--slots-per-rank"]
    assert cli([*argv, str(topology.num_slots_per_rank), "--out", str(tmp_path / "p.json")]) == 0
    convert = ["convert", "--from", "vllm-ascend", "--to", "sglang", *shape]
    assert cli([*convert, str(tmp_path / "p.json"), str(tmp_path / "init.json")]) == 0
    meta = _model(sglang, monkeypatch, load, topology, tmp_path / "init.json")
    p2l = json.loads((tmp_path / "p.json").read_text())["layer_list"]
    expected = [[e for dev in layer["device_list"] for e in dev["device_expert"]] for layer in p2l]
    assert meta.physical_to_logical_map.tolist() == expected


def test_plugin_plans_sglangs_logical_count_start(sglang, monkeypatch, tmp_path):
    _, load, topology = CASES[2]
    (tmp_path / "count.json").write_text(json.dumps({"logical_count": load.tolist()}))
    algorithms = sglang.eplb_algorithms
    monkeypatch.setattr(algorithms, "rebalance_experts", algorithms.rebalance_experts)
    monkeypatch.setenv("EPLB_RT_POLICY", "flashlb")
    ours.register()
    meta = _model(sglang, monkeypatch, load, topology, tmp_path / "count.json")
    expected, _, _ = ours.rebalance_experts(
        torch.tensor(load), topology.num_slots, topology.num_slots_per_rank, None, 1,
        policy="flashlb",
    )  # fmt: skip
    assert torch.equal(meta.physical_to_logical_map, expected)


@pytest.mark.parametrize(
    ("tokens", "physical", "local", "message"),
    [
        (torch.ones(16), 16, 4, "2 or 3 dimensions"),
        (torch.ones(2, 16), 18, 4, "multiple of num_local_physical_experts"),
        (
            torch.ones(2, 16).index_fill_(1, torch.tensor([5]), float("inf")),
            16,
            4,
            r"tokens_per_expert \[\(T,\) L, E\] contains NaN or infinite values "
            r"\(first at \(0, 5\): inf",
        ),
        (torch.ones(2, 16), 8, 4, "do not fit"),
        (torch.ones(2, 16, dtype=torch.bool), 16, 4, "must hold numbers"),
        (torch.ones(2, 16), 0, 4, "num_physical_experts must be an integer >= 1, got 0"),
        (torch.ones(2, 16), 16, 0, "num_local_physical_experts must be an integer >= 1, got 0"),
    ],
    ids=["1d", "not-multiple", "nan", "too-few-slots", "bool", "no-experts", "no-local"],
)
def test_bad_input_gets_a_clear_error(tokens, physical, local, message):
    with pytest.raises(ValueError, match=message):
        ours.rebalance_experts(tokens, physical, local, None, 1)


def test_zero_nodes_or_groups_are_refused_and_none_means_no_groups():
    tokens = torch.rand(2, 16) * 100
    for groups, nodes, name in ((0, 1, "num_groups"), (1, 0, "num_nodes")):
        said = f"^eplb_rt SGLang algorithm: {name} must be an integer >= 1, got 0$"
        with pytest.raises(ValueError, match=said):
            ours.rebalance_experts(tokens, 16, 4, groups, nodes)
    flat = ours.rebalance_experts(tokens, 16, 4, None, 1)[0]
    assert torch.equal(ours.rebalance_experts(tokens, 16, 4, 1, 1)[0], flat)


def test_sglangs_plugin_loader_runs_our_entry_point(sglang, monkeypatch, tmp_path):
    """SGLang's own ``load_plugins`` on a distribution declaring our entry point."""
    install_entry_points("sglang.srt.plugins", tmp_path, monkeypatch)
    monkeypatch.setattr(sglang.plugins, "_plugins_loaded", False)
    algorithms = sglang.eplb_algorithms
    monkeypatch.setattr(algorithms, "rebalance_experts", algorithms.rebalance_experts)
    monkeypatch.setenv("EPLB_RT_POLICY", "flashlb")
    sglang.plugins.load_plugins()
    _, load, topology = CASES[2]
    args = (torch.tensor(load), topology.num_slots, topology.num_slots_per_rank, None, 1)
    mine = algorithms.rebalance_experts(*args, algorithms.EplbAlgorithm.deepseek)
    assert torch.equal(mine[0], ours.rebalance_experts(*args, policy="flashlb")[0])


def test_plugin_takes_its_options_from_the_environment(sglang, monkeypatch):
    algorithms = sglang.eplb_algorithms
    monkeypatch.setattr(algorithms, "rebalance_experts", algorithms.rebalance_experts)
    monkeypatch.setenv("EPLB_RT_POLICY", "equilibrium")
    monkeypatch.setenv("EPLB_RT_POLICY_OPTIONS", "hierarchical=true")
    ours.register()
    load = np.random.default_rng(1).gamma(0.5, 100.0, size=(3, 2, 64))
    args = (torch.tensor(load), 72, 9, 8, 2)  # 8 ranks on 2 nodes, 8 groups of 8 experts
    phy2log = algorithms.rebalance_experts(*args, algorithms.EplbAlgorithm.deepseek)[0].numpy()
    flat = ours.rebalance_experts(*args, policy="equilibrium")[0].numpy()
    group_nodes(phy2log[1], 2, 8)
    assert not np.array_equal(phy2log, flat)


def test_plugin_plans_without_arguments_a_newer_sglang_adds(sglang, monkeypatch, caplog):
    """A keyword a later SGLang passes (e.g. a rank cost matrix) is logged once and left out,
    instead of failing SGLang's EPLB with a ``TypeError``."""
    algorithms = sglang.eplb_algorithms
    monkeypatch.setattr(algorithms, "rebalance_experts", algorithms.rebalance_experts)
    monkeypatch.setenv("EPLB_RT_POLICY", "flashlb")
    monkeypatch.setattr(ours, "_ignored", set())
    ours.register()
    _, load, topology = CASES[2]
    args = (torch.tensor(load), topology.num_slots, topology.num_slots_per_rank, None, 1)
    extra = {"rank_cost_matrix": torch.ones(8, 8)}
    with caplog.at_level(logging.WARNING, logger="eplb_rt.integrations"):
        for _ in range(2):
            got = algorithms.rebalance_experts(*args, algorithm=None, **extra)
    assert torch.equal(got[0], ours.rebalance_experts(*args, policy="flashlb")[0])
    assert caplog.text.count("ignoring SGLang's arguments rank_cost_matrix") == 1


def _elastic(monkeypatch, active):
    """SGLang's ``ElasticEPStateManager`` as its algorithms read it (``instance()`` holds
    ``active_ranks``); its module is not among those the tests unpack."""
    manager = SimpleNamespace(active_ranks=torch.tensor(active, dtype=torch.int32))
    module = types.ModuleType("sglang.srt.elastic_ep.elastic_ep")
    module.ElasticEPStateManager = SimpleNamespace(
        instance=lambda: manager, healthy_rank_state=lambda: None
    )
    monkeypatch.setitem(sys.modules, "sglang.srt.elastic_ep", types.ModuleType("elastic_ep"))
    monkeypatch.setitem(sys.modules, module.__name__, module)


def _check_triple(maps, dead, num_experts, S):
    """What SGLang's dispatch needs of a plan with failed ranks: their slots hold expert 0 and
    no expert's list names them; every expert keeps a live replica; the three maps agree."""
    phy2log, log2phy, logcnt = (m.numpy() for m in maps)
    dead_slots = np.concatenate([np.arange(r * S, (r + 1) * S) for r in dead])
    assert (phy2log[:, dead_slots] == 0).all()
    assert not np.isin(log2phy, dead_slots).any()
    assert (logcnt >= 1).all() and (logcnt == (log2phy >= 0).sum(-1)).all()
    for layer in range(phy2log.shape[0]):
        for e in range(num_experts):
            assert (phy2log[layer, log2phy[layer, e, : logcnt[layer, e]]] == e).all()


@pytest.mark.parametrize("dead", [[1], [0, 3]], ids=["rank-1", "ranks-0-3"])
def test_elastic_ep_plans_on_the_ranks_that_serve(sglang, monkeypatch, dead):
    """With elastic EP, SGLang asks for ``elasticity_aware`` and a failed rank must get no
    tokens: eplb_rt plans on the live ranks, laid out as SGLang's own algorithm lays them."""
    D, S, L, E = 4, 9, 3, 16  # two live ranks still hold every expert
    active = [0 if r in dead else 1 for r in range(D)]
    _elastic(monkeypatch, active)
    rng = np.random.default_rng(0)
    load = torch.from_numpy(rng.poisson(rng.pareto(1.2, (1, L, E)) * 50 + 1, (2, L, E)))
    algorithm = sglang.eplb_algorithms.EplbAlgorithm.elasticity_aware
    args = (load, D * S, S, None, 1, algorithm)
    theirs = sglang.eplb_algorithms.rebalance_experts(*args)
    _check_triple(theirs, dead, E, S)  # the convention, as SGLang's own algorithm keeps it
    mine = ours.rebalance_experts(*args)
    _check_triple(mine, dead, E, S)
    live = [r for r in range(D) if r not in dead]
    phy2log = mine[0].numpy().reshape(L, D, S)[:, live].reshape(L, -1)
    theirs_live = theirs[0].numpy().reshape(L, D, S)[:, live].reshape(L, -1)
    total = load.sum(0).numpy().astype(np.float64)
    assert (
        rank_par(phy2log, total, len(live)).mean() <= rank_par(theirs_live, total, len(live)).mean()
    )
    # every rank serving: the ordinary plan
    _elastic(monkeypatch, [1] * D)
    both = ours.rebalance_experts(*args), ours.rebalance_experts(*args[:5])
    assert all(torch.equal(a, b) for a, b in zip(*both, strict=True))


@pytest.mark.parametrize("active", [[1, 1, 1, 1], [0, 1, 1, 0]], ids=["all", "two-failed"])
def test_elastic_ep_with_groups_on_nodes(sglang, monkeypatch, active):
    """Groups and nodes hold while every rank serves; with failed ranks the live ones are
    planned flat, as SGLang's own algorithm plans them."""
    D, S, L, E = 4, 8, 2, 16
    rng = np.random.default_rng(0)
    load = torch.from_numpy(rng.poisson(rng.pareto(1.2, (1, L, E)) * 50 + 1, (2, L, E)))
    _elastic(monkeypatch, active)
    algorithm = sglang.eplb_algorithms.EplbAlgorithm.elasticity_aware
    grouped = ours.rebalance_experts(load, D * S, S, 4, 2, algorithm, policy="deepseek")
    if all(active):
        expected = ours.rebalance_experts(load, D * S, S, 4, 2, policy="deepseek")
    else:
        expected = ours.rebalance_experts(load, D * S, S, None, 1, algorithm, policy="deepseek")
    assert all(torch.equal(a, b) for a, b in zip(grouped, expected, strict=True))


def test_active_ranks_sized_for_a_scale_up_are_read_as_the_serving_ranks(sglang, monkeypatch):
    """``--max-ep-size 16`` with 8 ranks serving: SGLang's list has 16 entries, the last 8
    its reserve (never active). Refused for its shape, SGLang's EPLB failed instead."""
    D, S, L, E = 8, 5, 2, 32
    load = torch.from_numpy(np.random.default_rng(2).poisson(20.0, (1, L, E)))
    algorithm = sglang.eplb_algorithms.EplbAlgorithm.elasticity_aware
    args = (load, D * S, S, None, 1, algorithm)
    _elastic(monkeypatch, [1] * 7 + [0] + [0] * 8)
    _check_triple(ours.rebalance_experts(*args), [7], E, S)
    _elastic(monkeypatch, [1] * 8 + [1] + [0] * 7)  # a reserve rank active: not that case
    with pytest.raises(ValueError, match=r"active_ranks has shape \(16,\), expected \[8\]"):
        ours.rebalance_experts(*args)


def test_a_bad_policy_stops_sglang_at_start_up(sglang, monkeypatch):
    """SGLang's loader logs what a plugin raises and starts with its own algorithm: a typo in
    ``EPLB_RT_POLICY`` went unnoticed there. It now ends the loader, naming the variable."""
    monkeypatch.setattr(sglang.plugins, "_plugins_loaded", False)
    algorithms = sglang.eplb_algorithms
    monkeypatch.setattr(algorithms, "rebalance_experts", algorithms.rebalance_experts)
    monkeypatch.setenv("EPLB_RT_POLICY", "equilibirum")
    with pytest.raises(SystemExit, match="EPLB_RT_POLICY=equilibirum"):
        sglang.plugins.load_plugins()


def test_ranks_that_nodes_do_not_divide_are_planned_flat(sglang):
    """``--nnodes 3 --ep-size 8``: SGLang's own ``auto`` plans that flat; so does eplb_rt."""
    load = torch.from_numpy(np.random.default_rng(1).poisson(30.0, (1, 2, 64)))
    phy2log, _, logcnt = ours.rebalance_experts(load, 8 * 9, 9, 8, 3, None)
    assert phy2log.shape == (2, 72) and (logcnt >= 1).all()
