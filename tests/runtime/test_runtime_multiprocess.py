"""The runtime on several gloo ranks: migration, output equality, fault injection.

Every scenario runs the reference MoE model with EPLB next to the same model without EPLB on
the same inputs, and checks after every step that the outputs are bitwise equal (``exact``
mode: each token's expert MLP is reduced on its own, so the result cannot depend on which
other tokens share an expert's batch) and that every rank's slot weights equal those of a model
freshly built for the committed placement.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _dist import spawn
from _faults import fail_commits, fail_transfers, open_gate, skew_epoch, slow_planning
from _serving import let_plan_finish, small_config

from eplb_rt.algorithms import warm_up
from eplb_rt.config import EplbConfig
from eplb_rt.models import ExpertParallelMoE, MoEConfig, expert_weights
from eplb_rt.runtime import EplbRuntime
from eplb_rt.runtime import balancer as balancer_module
from eplb_rt.runtime import runtime as runtime_module
from tests.groups import group_nodes

pytestmark = pytest.mark.multiprocess

MODEL = MoEConfig(num_layers=3, num_experts=9, top_k=2, hidden=8, ffn=12, seed=3, exact=True)


def _skewed_bias(step: int, layers: int, experts: int) -> torch.Tensor:
    """Router bias with a hot expert that drifts every 10 steps (a skewed, drifting workload)."""
    bias = torch.zeros((layers, experts))
    for layer in range(layers):
        hot = (step // 10 + 2 * layer) % experts
        bias[layer, hot] = 3.0
        bias[layer, (hot + 4) % experts] = 1.5
    return bias


def _check_weights(runtime: EplbRuntime, model: ExpertParallelMoE) -> None:
    """Each slot holds exactly the weights of the expert the committed placement puts there."""
    grid = runtime.placement.by_rank()
    for layer in range(model.cfg.num_layers):
        fresh = expert_weights(model.cfg, layer, grid[layer, runtime.rank])
        for name, tensor in fresh.items():
            assert torch.equal(model.weights[layer][name], tensor), (layer, name)


def _check_tables(runtime: EplbRuntime) -> None:
    p, R = runtime.placement, runtime.max_replicas
    for layer in range(runtime.num_layers):
        assert np.array_equal(runtime.log2phy(layer).numpy(), p.log2phy(R)[layer])
        assert np.array_equal(runtime.replica_share(layer).numpy(), p.replica_share(R)[layer])
        assert np.array_equal(runtime.logcnt(layer).numpy(), p.logcnt[layer])
        assert np.array_equal(runtime.expert_map(layer).numpy(), p.expert_map(runtime.rank)[layer])


def _drive(runtime, model, baseline, steps, rank, *, start=0, on_step=None, wait=True):
    """Run ``steps`` steps, checking outputs, weights and tables after each one; with ``wait``
    each plan is finished before its deadline step (:func:`let_plan_finish`)."""
    for step in range(start, start + steps):
        cfg = model.cfg
        gen = torch.Generator().manual_seed(step * 131 + rank)
        x = torch.randn((7 + rank, cfg.hidden), generator=gen)  # ranks differ in batch size
        bias = _skewed_bias(step, cfg.num_layers, cfg.num_experts)
        y = model(x, bias)
        assert torch.equal(y, baseline(x, bias)), f"outputs differ at step {step}"
        runtime.step()
        if wait:
            let_plan_finish(runtime)
        _check_weights(runtime, model)
        _check_tables(runtime)
        if on_step is not None:
            on_step(step)


def _serve(runtime, model, baseline, rank, steps=60) -> list:
    """:func:`_drive` for ``steps`` steps, then on until the plan under way has finished (so
    that every rank shuts down after the same decisions); returns the committed placements,
    the starting one first."""
    history = [runtime.placement]

    def on_step(step):
        if runtime.placement != history[-1]:
            history.append(runtime.placement)

    _drive(runtime, model, baseline, steps, rank, on_step=on_step)
    step = steps
    while runtime.busy and step < steps + 40:
        _drive(runtime, model, baseline, 1, rank, start=step, on_step=on_step)
        step += 1
    return history


def _build(config: EplbConfig, model: MoEConfig = MODEL):
    runtime = EplbRuntime(config, model.num_layers, model.num_experts)
    return runtime, ExpertParallelMoE(model, runtime=runtime), ExpertParallelMoE(model)


# ---------------------------------------------------------------------- migration + equality
def _rebalancing(rank: int, world: int, heat_source: str, policy: str, subprocess: bool) -> None:
    warm_up([policy])  # compile numba kernels now, not against the 2-step deadline
    if policy == "rt_test_shift":
        open_gate()  # rt_test_shift does not balance: commit its every change
        # Keep two records of each kind: the totals must still count every plan and move.
        runtime_module.RECORDS_KEPT = 2
    # A plan made in a child process also pays the pickling round trip: give it 5 steps. Rank
    # 0 plans the layers on two threads; the ranks may differ there (only rank 0 plans).
    config = small_config(
        heat_source=heat_source,
        policy=policy,
        plan_in_subprocess=subprocess,
        plan_threads=2 - rank % 2,
        deadline=5 if subprocess else 2,
        warm_up=subprocess,  # the child compiles its own kernels before ready is set
    )
    runtime, model, baseline = _build(config)
    assert runtime.balancer.ready.wait(120)  # the planning child has started and warmed up
    tables = [runtime.log2phy(layer).data_ptr() for layer in range(MODEL.num_layers)]
    weights = [model.weights[layer]["w1"].data_ptr() for layer in range(MODEL.num_layers)]
    history = _serve(runtime, model, baseline, rank)
    stats = runtime.stats()
    runtime.shutdown()
    assert stats["errors"] == [] and stats["num_errors"] == 0, stats["errors"]
    assert stats["rebalances"], stats
    assert stats["first_commit_step"] is not None
    if policy == "rt_test_shift":
        assert len(stats["rebalances"]) == 2 and stats["num_rebalances"] >= 5, stats
        assert [r["epoch"] for r in stats["rebalances"]] == sorted(
            r["epoch"] for r in stats["rebalances"]
        )
        assert stats["rebalances"][-1]["done_step"] >= stats["first_commit_step"]
        assert {p.is_uniform for p in history} == {True, False}  # weighted shares were served
        assert all(r["layers_committed"] for r in stats["rebalances"])
    else:
        assert len(stats["rebalances"]) == stats["num_rebalances"]
    # Moves reported = slots whose expert changed between consecutive committed placements.
    changed = sum(int(b.moves(a).sum()) for a, b in itertools.pairwise(history))
    assert stats["moved_experts"] == changed, (stats["moved_experts"], changed, stats["rebalances"])
    # What crossed the network is exactly the planned remote moves: every byte sent was
    # received, and their sum is the bytes of the committed moves.
    sent = torch.tensor(
        [
            stats["transfers"]["bytes_sent"],
            stats["transfers"]["slots_sent"],
            stats["transfers"]["slots_received"],
        ]
    )
    torch.distributed.all_reduce(sent)
    slot_bytes = runtime.executor.slot_bytes(0)
    assert int(sent[0]) == stats["bytes_moved"] == int(sent[2]) * slot_bytes
    assert int(sent[1]) == int(sent[2])
    # The tables and weights keep their storage (captured graphs stay valid).
    assert tables == [runtime.log2phy(layer).data_ptr() for layer in range(MODEL.num_layers)]
    assert weights == [model.weights[layer]["w1"].data_ptr() for layer in range(MODEL.num_layers)]
    # Every rank ends with the same placement.
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, runtime.placement.phy2log.tolist())
    assert all(g == gathered[0] for g in gathered)


def _inference_mode_and_parameters(rank: int, world: int) -> None:
    """Engines serve under ``torch.inference_mode``, and may make the runtime and the weights
    there, or hold the weights as parameters that require grad; the serving loop here runs
    outside it. Every commit must still rewrite the weights and the tables together (a write
    refused after the weights moved left the old tables serving). The ranks list each layer's
    tensors in their own order: the runtime pairs them by name (by position, rank 1's w1 went
    into rank 0's w2)."""
    open_gate()  # rt_test_shift does not balance: commit its every change
    with torch.inference_mode():
        runtime = EplbRuntime(small_config(), MODEL.num_layers, MODEL.num_experts)
    assert not runtime.heat.is_inference() and not runtime.log2phy(0).is_inference()
    model, baseline = ExpertParallelMoE(MODEL, runtime=runtime), ExpertParallelMoE(MODEL)
    order = sorted(model.weights[0], reverse=rank % 2 == 1)
    # Layer 0's weights made in inference mode, layer 1's parameters that require grad (what
    # nn.Module holds by default).
    with torch.inference_mode():
        model.weights[0] = {k: model.weights[0][k].clone() for k in order}
    model.weights[1] = {k: torch.nn.Parameter(model.weights[1][k].clone()) for k in order}
    for layer in (0, 1):
        runtime.register_weights(layer, model.weights[layer])
    assert model.weights[0]["w1"].is_inference() and model.weights[1]["w1"].requires_grad
    history = _serve(runtime, model, baseline, rank, steps=30)
    stats = runtime.stats()
    runtime.shutdown()
    assert stats["errors"] == [] and len(history) > 1, stats
    assert stats["first_commit_step"] is not None and stats["moved_experts"] > 0


def _quantised_extras(experts: np.ndarray) -> dict[str, torch.Tensor]:
    """What a quantised MoE layer holds beside its weights, slot ``i`` for expert
    ``experts[i]``: MXFP scales (``float8_e8m0fnu``, which NCCL and HCCL refuse to send), bf16
    biases, and block scales kept column-major with rows padded for TMA (a view of the padded
    buffer, not contiguous)."""
    e = torch.as_tensor(np.asarray(experts), dtype=torch.int64)
    scales = (e[:, None] * 7 + torch.arange(6)).to(torch.uint8).view(torch.float8_e8m0fnu)
    bias = (e[:, None] * 10 + torch.arange(5)).to(torch.bfloat16)
    padded = torch.full((len(e), 3, 8), -1.0)  # [slot, m, n padded to 8]
    padded[:, :, :6] = e[:, None, None] * 100.0 + torch.arange(18.0).view(3, 6)
    return {"scale": scales, "bias": bias, "block_scale": padded[:, :, :6].transpose(1, 2)}


def _quantised_layouts(rank: int, world: int) -> None:
    """Every slot moves as its bytes: a backend that sends only bytes (as NCCL sends no
    float8_e8m0fnu) still migrates every tensor, bit for bit, whatever its dtype or layout."""
    open_gate()
    real = dist.batch_isend_irecv

    def bytes_only(ops):
        for op in ops:
            if op.tensor.dtype != torch.uint8:
                raise TypeError(f"{op.tensor.dtype} is not supported by this backend")
        return real(ops)

    dist.batch_isend_irecv = bytes_only
    runtime = EplbRuntime(small_config(), MODEL.num_layers, MODEL.num_experts)
    model, baseline = ExpertParallelMoE(MODEL, runtime=runtime), ExpertParallelMoE(MODEL)
    held = runtime.placement.by_rank()[:, rank]
    extras = [_quantised_extras(held[layer]) for layer in range(MODEL.num_layers)]
    for layer, tensors in enumerate(extras):
        runtime.register_weights(layer, {**model.weights[layer], **tensors})
    history = _serve(runtime, model, baseline, rank, steps=30)
    stats = runtime.stats()
    runtime.shutdown()
    assert stats["errors"] == [] and len(history) > 1, stats
    held = runtime.placement.by_rank()[:, rank]
    for layer, tensors in enumerate(extras):
        for name, want in _quantised_extras(held[layer]).items():
            got = tensors[name]
            bits = [t.contiguous().view(torch.uint8) for t in (got, want)]
            assert got.dtype == want.dtype and torch.equal(*bits), (layer, name)
        assert (tensors["block_scale"]._base[:, :, 6:] == -1.0).all()  # the padding moved too


def test_weights_move_as_bytes_whatever_their_dtype_and_layout():
    spawn(_quantised_layouts, 3)


def _no_weights(rank: int, world: int) -> None:
    """Without weights a commit rewrites only the tables: every moved slot then serves another
    expert's weights. Rarely what an engine means, so the first plan that moves says so."""
    open_gate()
    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("eplb_rt.runtime").addHandler(handler)
    runtime = EplbRuntime(small_config(), MODEL.num_layers, MODEL.num_experts)
    for step in range(30):
        for layer in range(MODEL.num_layers):
            runtime.route(layer, torch.tensor([[step % 9, (step + layer) % 9]]))
        runtime.step()
        let_plan_finish(runtime)
    moved = runtime.stats()["moved_experts"]
    runtime.shutdown()
    assert moved > 0
    assert sum("no layer has registered weights" in m for m in said) == 1, said


def _routes_follow_committed_shares(rank: int, world: int) -> None:
    """Eager routes split an expert's tokens by the committed shares: ``rt_test_shift``
    commits uniform and weighted shares in turn, and on every step served under weighted ones
    the tokens of an expert with replicas land on them in their shares."""
    open_gate()
    runtime = EplbRuntime(small_config(), 1, 5)
    checked = 0
    try:
        for step in range(40):
            runtime.route(0, torch.tensor([[step % 5, (step + 1) % 5]]))
            placement = runtime.placement  # the same on every rank at the same step
            if not placement.is_uniform:
                row, share = placement.phy2log[0], placement.slot_share[0]
                for expert in np.unique(row[np.unique(row, return_counts=True)[1][row] > 1]):
                    slots = np.flatnonzero(row == expert)
                    routed = runtime.route(0, torch.full((3000, 1), int(expert))).flatten()
                    got = [(routed == slot).float().mean().item() for slot in slots]
                    np.testing.assert_allclose(got, share[slots], atol=0.02)
                    checked += 1
            runtime.step()
            let_plan_finish(runtime)
    finally:
        runtime.shutdown()
    assert checked, "no step served weighted shares"


def test_eager_routes_follow_the_committed_replica_shares():
    spawn(_routes_follow_committed_shares, 2)


def test_plans_without_any_registered_weights_are_warned_about_once():
    spawn(_no_weights, 2)


def test_weights_made_in_inference_mode_or_requiring_grad_migrate():
    spawn(_inference_mode_and_parameters, 3)


def test_rebalancing_moves_exactly_the_plan_and_outputs_stay_bitwise_equal():
    spawn(_rebalancing, 3, "topk", "rt_test_shift", False)


def test_receiver_side_heat_with_the_default_policy_planned_in_a_child_process():
    spawn(_rebalancing, 3, "group_list", "deepseek", True)


# ------------------------------------------------------------------------ groups on nodes
GROUPED = MoEConfig(num_layers=2, num_experts=12, top_k=2, hidden=8, ffn=12, seed=5, exact=True)


def _on_nodes(rank: int, world: int) -> None:
    """4 ranks on 2 nodes, 4 groups of 3 experts, the default policy with ``hierarchical``:
    every committed placement keeps each group on one node while outputs stay exact."""
    warm_up(["equilibrium"])
    config = small_config(
        policy="equilibrium", policy_options={"hierarchical": True}, num_nodes=2, num_groups=4,
        num_redundant=4,
    )  # fmt: skip
    runtime, model, baseline = _build(config, GROUPED)
    history = _serve(runtime, model, baseline, rank)
    stats = runtime.stats()
    runtime.shutdown()
    assert stats["errors"] == [] and stats["num_rebalances"] >= 1, stats
    for placement in history[1:]:
        group_nodes(placement.phy2log, 2, 3)


def test_hierarchical_placement_keeps_groups_on_nodes_while_serving():
    spawn(_on_nodes, 4)


# ---------------------------------------------------------------------- faults
def _faults(rank: int, world: int) -> None:
    open_gate()
    # 1. The policy raises: no migration, the error is reported, serving goes on.
    runtime, model, baseline = _build(small_config(policy="rt_test_raise"))
    initial = runtime.placement
    _drive(runtime, model, baseline, 20, rank)
    stats = runtime.stats()
    runtime.shutdown()
    assert runtime.placement == initial and stats["rebalances"] == []
    assert any("rt_test_raise always fails" in e or "planning rank" in e for e in stats["errors"])

    # 2. The plan misses its deadline (rank 0's policy is slow): skipped, then a later one lands.
    runtime, model, baseline = _build(small_config(interval=8, deadline=2))
    undo = slow_planning(runtime, 1.5) if rank == 0 else None

    def release(step):
        if undo is not None:
            undo()

    _drive(runtime, model, baseline, 12, rank, wait=False)
    assert runtime.placement == initial
    # The first plan pays its one-off costs (no warm-up): skipped, logged, not an error.
    skipped = [s["reason"] for s in runtime.stats()["skipped"]]
    assert any("not ready by its deadline" in r for r in skipped), skipped
    assert not any("not ready by its deadline" in e for e in runtime.stats()["errors"])
    _drive(runtime, model, baseline, 60, rank, start=12, on_step=release)
    stats = runtime.stats()
    runtime.shutdown()
    assert stats["rebalances"], "a plan after the slow one should have landed"

    # 3. One rank's transfer of layer 1 fails: layer 1 keeps its placement on every rank.
    runtime, model, baseline = _build(small_config(interval=6, layers_per_step=1))
    if rank == 1:
        fail_transfers(runtime, {1})
    _drive(runtime, model, baseline, 14, rank)
    stats = runtime.stats()
    runtime.shutdown()
    first = stats["rebalances"][0]
    assert first["layers_failed"] == [1] and first["layers_committed"] == [0, 2]
    assert np.array_equal(runtime.placement.phy2log[1], initial.phy2log[1])
    assert not np.array_equal(runtime.placement.phy2log[0], initial.phy2log[0])
    assert any("layer 1" in e for e in stats["errors"])

    # 4. The ranks disagree on the plan epoch: the plan is skipped everywhere.
    runtime, model, baseline = _build(small_config())
    if rank == world - 1:
        skew_epoch(runtime, 1)
    _drive(runtime, model, baseline, 20, rank)
    stats = runtime.stats()
    runtime.shutdown()
    assert runtime.placement == initial and stats["rebalances"] == []
    assert any("disagree" in e for e in stats["errors"])


def test_faults_leave_the_old_placement_serving():
    spawn(_faults, 3)


def _one_lane_of_two_fails(rank: int, world: int) -> None:
    open_gate()
    runtime, model, baseline = _build(small_config(interval=6, layers_per_step=2))
    initial, first_group = runtime.placement, runtime._groups.migration
    undo = fail_transfers(runtime, {1}) if rank == 1 else None
    seen = {}

    def on_step(step):
        if runtime._groups.migration is not first_group:
            seen.setdefault("renewed", runtime.stats()["steps"])
        if runtime.stats()["rebalances"] and "placement" not in seen:
            seen["placement"] = runtime.placement
            if undo is not None:
                undo()  # the next plan's transfers all succeed

    # Plan 1 gathered at step 6 starts layers 0 and 1 at its deadline step 8, commits them at 9
    # and layer 2 at 10; plan 2 (gathered at 12) commits every layer by step 16.
    _drive(runtime, model, baseline, 16, rank, on_step=on_step)
    stats = runtime.stats()
    group, retired = runtime._groups.migration, list(runtime._groups.retired)
    executor_group = runtime.executor.group
    runtime.shutdown()
    first, second = stats["rebalances"]
    assert first["layers_failed"] == [1] and first["layers_committed"] == [0, 2], first
    after = seen["placement"].phy2log
    assert np.array_equal(after[1], initial.phy2log[1])
    assert not np.array_equal(after[0], initial.phy2log[0])
    assert not np.array_equal(after[2], initial.phy2log[2])
    assert second["layers_committed"] == [0, 1, 2] and second["layers_failed"] == [], second
    # Renewed once, at the boundary that agreed on the failure, on every rank alike.
    assert seen.get("renewed") == 9 and retired == [first_group], seen
    assert executor_group is group and group is not first_group
    every = [None] * world
    dist.all_gather_object(every, (seen["placement"].phy2log.tolist(), len(stats["errors"])))
    assert all(e == every[0] for e in every), every


def test_a_lane_that_fails_beside_one_that_commits_renews_the_migration_group():
    """Two layers in flight at one boundary, rank 1's transfer of the second failing: that layer
    keeps its old placement on every rank, the first commits on every rank, and the migration
    group is renewed (it may hold the failed transfer's messages): a renewal read from the first
    lane's flag alone, or only where every lane failed, would miss this case."""
    spawn(_one_lane_of_two_fails, 3)


def _data_parallel_tokens(rank: int, world: int) -> None:
    # Every expert on two ranks (8 slots for 4 experts): each rank routes one token to each.
    config = EplbConfig(policy="deepseek", interval=0, num_redundant=4, warm_up=False)
    replicated = EplbRuntime(config, 1, 4)  # the ranks route the same tokens: the same replicas
    phy = replicated.route(0, torch.arange(4).reshape(4, 1))
    replicated.shutdown()
    gathered = [torch.empty_like(phy) for _ in range(world)]
    dist.all_gather(gathered, phy)
    assert all(torch.equal(g, gathered[0]) for g in gathered)
    runtime = EplbRuntime(dataclasses.replace(config, rank_local_tokens=True), 1, 4)
    assert runtime.recorder.code_offset == rank * 65536 // world
    assert (runtime.logcnt(0) == 2).all()
    picked = []
    for _ in range(5):
        phy = runtime.route(0, torch.arange(4).reshape(4, 1))
        runtime.step()
        gathered = [torch.empty_like(phy) for _ in range(world)]
        dist.all_gather(gathered, phy)
        picked.append(torch.stack(gathered))
    runtime.shutdown()
    # The two ranks' token of each expert go to its two replicas, step after step.
    for both in picked:
        assert (both[0] != both[1]).all(), both


def test_data_parallel_ranks_send_their_first_tokens_to_different_replicas():
    """Each rank's batch counts its tokens from 0: with one code offset for all, every rank's
    first token picked the same replica of its expert (a straggler in every decode step). With
    ``rank_local_tokens`` they spread; without it the ranks pick alike (a replicated batch)."""
    spawn(_data_parallel_tokens, 2)


def _heat_of_same_or_own_tokens(
    rank: int, world: int, same: bool, local: bool, unrecorded: bool
) -> None:
    """Routes 6 steps of 16 tokens a layer (the same on every rank, or each rank's own; with
    ``unrecorded`` rank 1 does not record step 3); checks the load the planning rank's policy
    reads (the last 5, ``history - 1``) against the tokens counted by hand."""
    said, loads = [], []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("eplb_rt.runtime").addHandler(handler)
    decide = balancer_module.planning.decide
    balancer_module.planning.decide = lambda load, *a, **k: (
        loads.append(load) or decide(load, *a, **k)
    )
    E = 6
    # Episode 2: no first-fit probe before the interval's gather at step 6.
    config = EplbConfig(
        policy="deepseek", interval=6, history=6, episode=2, deadline=2, num_redundant=2,
        warm_up=False, rank_local_tokens=local,
    )  # fmt: skip
    runtime = EplbRuntime(config, 2, E)
    expected = np.zeros((6, 2, E))
    for step in range(6):
        for source in range(world):  # every rank's tokens, to count what the ranks routed
            gen = torch.Generator().manual_seed(10 * step + (0 if same else source))
            ids = torch.randint(0, E, (2, 16, 2), generator=gen)
            if source == rank:
                for layer in range(2):
                    runtime.route(layer, ids[layer])
            if source == rank or not same:
                for layer in range(2):
                    expected[step, layer] += np.bincount(ids[layer].reshape(-1), minlength=E)
        runtime.step(record=not (unrecorded and rank == 1 and step == 3))
    let_plan_finish(runtime)
    runtime.shutdown()
    balancer_module.planning.decide = decide
    logging.getLogger("eplb_rt.runtime").removeHandler(handler)
    told = [m for m in said if "the ranks routed different tokens" in m]
    if rank == 0:
        assert len(loads) == 1 and np.array_equal(loads[0], expected[1:]), (loads, expected)
    assert len(told) == int(rank == 0 and not same and not local), said


@pytest.mark.parametrize(
    ("same", "local", "unrecorded"),
    [(True, False, False), (True, False, True), (False, True, False), (False, False, False)],
    ids=["same-tokens", "same-tokens-one-step-unrecorded", "own-tokens", "own-without-the-flag"],
)
def test_the_plan_reads_each_routed_token_once(same, local, unrecorded):
    """Ranks that route the same tokens (tensor-parallel attention, ``rank_local_tokens``
    False) each counted every pair, and the plan read their sum: every token ``num_ranks``
    times, so its sampling noise looked that much smaller. One rank's count now; the sum where
    each rank routes its own tokens, with a warning where the flag says otherwise; a step one
    rank does not record is judged on its own (it took the window for routed apart)."""
    spawn(_heat_of_same_or_own_tokens, 2, same, local, unrecorded)


def _phases_apart(rank: int, world: int, apart: bool) -> None:
    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("eplb_rt.runtime").addHandler(handler)
    config = small_config(heat_source="group_list", count_steps="prefill", interval=4, history=8)
    runtime = EplbRuntime(config, MODEL.num_layers, MODEL.num_experts)
    S = runtime.topology.num_slots_per_rank
    # Rank 0 serves prefills; rank 1 decodes (apart) or prefills too.
    prefill = rank == 0 or not apart
    for _ in range(10):
        for layer in range(MODEL.num_layers):
            runtime.record(layer, torch.ones(S, dtype=torch.int32))
        runtime.step(is_prefill=prefill)
        let_plan_finish(runtime)
    runtime.shutdown()
    logging.getLogger("eplb_rt.runtime").removeHandler(handler)
    told = [m for m in said if "counted by some ranks only" in m]
    assert len(told) == int(apart and rank == 0), said


@pytest.mark.parametrize("apart", [True, False], ids=["phases-apart", "same-phase"])
def test_receiver_side_heat_says_when_phases_apart_leave_it_nothing(apart):
    """With group-list heat a step counts only where every rank counts it: ranks in different
    phases (data-parallel attention with count_steps) left the plans no heat, silently."""
    spawn(_phases_apart, 2, apart)


def _migration_groups(rank: int, world: int) -> None:
    groups = []
    all_reduce = dist.all_reduce

    def recording(tensor, *args, group=None, **kwargs):
        groups.append(group)
        return all_reduce(tensor, *args, group=group, **kwargs)

    dist.all_reduce = recording
    try:
        runtime, _, _ = _build(small_config())
        assert any(g is runtime._groups.migration for g in groups)
        runtime._renew_migration_group()  # as every rank does after an agreed failed transfer
        assert any(g is runtime._groups.migration for g in groups)
        runtime.shutdown()
    finally:
        dist.all_reduce = all_reduce


def test_every_rank_sets_up_each_migration_group_at_once():
    """NCCL and HCCL set a group's communicator up at its first call, with every rank: a first
    transfer whose moves leave a rank out (4 ranks, only 0 and 1 swap) waited for the engine's
    timeout. Each new migration group runs one collective on every rank first."""
    spawn(_migration_groups, 3)


def _commit_fails(rank: int, world: int) -> None:
    open_gate()
    last = MODEL.num_layers - 1  # the last layer to move: no transfer is started after it
    runtime, model, _ = _build(small_config(layers_per_step=1))
    if rank == 1:
        fail_commits(runtime, {last})
    x = torch.ones((3, MODEL.hidden))
    for step in range(40):
        model(x, _skewed_bias(step, MODEL.num_layers, MODEL.num_experts))
        try:
            runtime.step()
        except RuntimeError as err:
            assert rank == 1 and f"layer {last}: injected commit failure" in str(err), err
            break
        let_plan_finish(runtime)
        if rank != 1 and runtime.stats()["rebalances"]:
            break
    else:
        raise AssertionError("no plan committed in 40 steps")
    if rank != 1:  # the others committed the layer: their tables moved on
        assert runtime.stats()["rebalances"][0]["layers_committed"] == list(range(MODEL.num_layers))
    else:  # this rank did not: it refuses to route or count, naming why, until rebuilt
        stopped = f"stopped serving: step {runtime.stats()['steps']} failed on rank 1 "
        stopped += f"\\(RuntimeError: layer {last}: injected commit failure\\)"
        for call in (
            runtime.step,
            lambda: runtime.route(0, torch.zeros((2, MODEL.top_k), dtype=torch.int64)),
            lambda: runtime.register_weights(0, {"w": torch.zeros(1)}),
        ):
            with pytest.raises(RuntimeError, match=stopped):
                call()
        assert runtime.stats()["failure"].startswith("step ")
    runtime.shutdown()


def test_a_commit_that_fails_on_one_rank_stops_that_rank_serving():
    """A commit raising after the ranks agreed on it (an allocation failing on a device, say)
    leaves that rank's tables behind the others': its tokens would reach slots holding other
    experts. Once a step fails part-way, the runtime refuses to route."""
    spawn(_commit_fails, 3)


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def _groups_released(rank: int, world: int) -> None:
    """Runtimes built and shut down one after another, a migration group renewed in each (as
    after a failed transfer), and one refused for its settings."""
    before = None
    for i in range(6):
        runtime, model, baseline = _build(small_config())
        runtime._renew_migration_group()
        _serve(runtime, model, baseline, rank, steps=8)
        runtime.shutdown()
        if i == 0:
            before = _open_files()
    bad = small_config(num_redundant=rank)  # differs between the ranks: refused on every one
    with pytest.raises(ValueError, match="different num_redundant"):
        _build(bad)
    assert _open_files() <= before + 2, (before, _open_files())


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_runtimes_built_one_after_another_release_their_groups():
    """Each runtime made three gloo groups (and more after failed collectives) that lived to
    the end of the process (15 sockets and 9 threads a runtime at 2 ranks), so an engine that
    rebuilds its runtime after a failure (as the docs say) ran out of files. Where the
    runtime's ranks are the whole world, shutdown() destroys them."""
    spawn(_groups_released, 3)


def _two_expert_parallel_groups(rank: int, world: int) -> None:
    """Ranks 0-1 and 2-3 each run a runtime of their own (expert parallelism within a node,
    say), at the same time: groups over part of the world, kept to the end."""
    ep = [dist.new_group(ranks, use_local_synchronization=True) for ranks in ([0, 1], [2, 3])]
    group = ep[rank // 2]
    open_gate()
    cfg = dataclasses.replace(MODEL, num_experts=8)
    config = small_config(num_redundant=2)
    runtime = EplbRuntime(config, cfg.num_layers, cfg.num_experts, group=group)
    model = ExpertParallelMoE(cfg, runtime=runtime, group=group)
    baseline = ExpertParallelMoE(cfg, group=group)
    assert runtime._groups.local and runtime.num_ranks == 2 and runtime.rank == rank % 2
    history = _serve(runtime, model, baseline, rank)
    stats = runtime.stats()
    runtime.shutdown()
    assert stats["errors"] == [] and stats["num_rebalances"] >= 1, stats
    assert len(history) >= 2
    gathered = [None] * 2
    dist.all_gather_object(gathered, runtime.placement.phy2log.tolist(), group=group)
    assert gathered[0] == gathered[1]


def test_two_expert_parallel_groups_in_one_world_rebalance_apart():
    spawn(_two_expert_parallel_groups, 4)
