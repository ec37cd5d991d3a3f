"""EplbRuntime on one process: heat ring and step counter, tables, bad input at every entry."""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
import types
import warnings

import numpy as np
import pytest
import torch
from _serving import let_plan_finish, small_config

from eplb_rt import formats, planning
from eplb_rt.algorithms.load import heat_to_load
from eplb_rt.config import EplbConfig
from eplb_rt.placement import Placement, Topology
from eplb_rt.runtime import EplbRuntime
from eplb_rt.runtime.executor import Transfer
from eplb_rt.runtime.migration import LayerMigration
from eplb_rt.runtime.runtime import Rebalance

# Errors the ops raise for bad tensors (torch's TORCH_CHECK gives RuntimeError or ValueError).
OP_ERRORS = (ValueError, TypeError, RuntimeError, IndexError)


@pytest.fixture
def runtime():
    config = EplbConfig(policy="rt_test_shift", interval=0, history=4, episode=2, warm_up=False)
    rt = EplbRuntime(config, 2, 5)
    yield rt
    rt.shutdown()


@pytest.fixture
def receiver():
    """A runtime counting receiver-side group lists (``record``) instead of ``route``."""
    config = EplbConfig(
        policy="rt_test_shift",
        interval=0,
        history=4,
        episode=2,
        heat_source="group_list",
        warm_up=False,
    )
    rt = EplbRuntime(config, 2, 5)
    yield rt
    rt.shutdown()


def _state(rt: EplbRuntime) -> list[torch.Tensor]:
    return [
        t.clone()
        for t in (
            rt.heat,
            rt.step_counter,
            rt._log2phy,
            rt._logcnt,
            rt._replica_share,
            rt._expert_map,
        )
    ]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_route_counts_into_the_current_row_and_step_advances_on_device(runtime):
    ids = torch.tensor([[0, 4], [4, -1], [-1, -1]], dtype=torch.int64)
    phy = runtime.route(0, ids)
    assert phy.dtype == ids.dtype and phy.shape == ids.shape
    p2l = torch.from_numpy(runtime.placement.phy2log[0].astype(np.int64))
    assert torch.equal(torch.where(ids >= 0, p2l[phy.clamp(min=0)], -1), ids)
    assert runtime.heat[0, 0].tolist() == [1, 0, 0, 0, 2] and runtime.heat.sum() == 3
    runtime.route(1, torch.tensor([[2]], dtype=torch.int32))  # K = 1, int32
    runtime.route(1, torch.empty((0, 3), dtype=torch.int64))  # empty batch
    for expected in range(1, 6):
        runtime.step()
        assert int(runtime.step_counter) == expected
        assert int(runtime.heat[expected % 4].abs().sum()) == 0  # the next row starts empty
    runtime.route(0, torch.tensor([[3]]))
    assert int(runtime.heat[5 % 4, 0, 3]) == 1 and int(runtime.heat.sum()) == 1


def test_a_cpu_device_given_with_an_index_serves():
    """Engines name a rank's device ``f"{type}:{local_rank}"``; a CPU tensor reads ``cpu``."""
    config = EplbConfig(policy="rt_test_shift", interval=0, history=4, episode=2, warm_up=False)
    rt = EplbRuntime(config, 2, 5, device="cpu:0")
    try:
        assert rt.route(0, torch.tensor([[0, 4]])).shape == (1, 2)
        assert int(rt.heat.sum()) == 2
        rt.register_weights(0, {"w": torch.zeros(rt.placement.num_slots_per_rank, 3)})
        rt.step()
    finally:
        rt.shutdown()


def test_record_adds_receiver_side_counts(receiver):
    receiver.record(1, torch.tensor([1, 0, 2, 0, 3], dtype=torch.int32))
    receiver.record(1, torch.tensor([1, 1, 3, 3, 4]), cumulative=True)
    assert receiver.heat[0, 1].tolist() == [2, 0, 4, 0, 4]


def test_record_where_route_counts_is_refused(runtime):
    # heat_source="topk": route() counts every token; a record too would count it twice.
    runtime.route(1, torch.tensor([[0, 2]]))
    with pytest.raises(
        ValueError, match=r"record\(\) counts for EplbConfig.heat_source='group_list'"
    ):
        runtime.record(1, torch.tensor([1, 0, 1, 0, 0]))
    assert runtime.heat[0, 1].tolist() == [1, 0, 1, 0, 0]


def test_route_does_not_count_when_heat_comes_from_group_lists(receiver):
    phy = receiver.route(0, torch.tensor([[0, 3], [2, -1]]))
    assert phy.tolist() == [[0, 3], [2, -1]]
    assert int(receiver.heat.sum()) == 0
    receiver.record(0, torch.tensor([1, 0, 1, 1, 0]))
    assert receiver.heat[0, 0].tolist() == [1, 0, 1, 1, 0]


def test_snapshot_keeps_closed_rows_oldest_first_and_converts_to_load():
    config = EplbConfig(
        policy="rt_test_shift",
        interval=0,
        history=4,
        episode=1,
        count_steps="decode",
        warm_up=False,
    )
    with EplbRuntime(config, 1, 3) as rt:
        for step, prefill in enumerate([True, False, False, True, False]):
            rt.route(0, torch.full((step + 1, 1), step % 3))
            rt.step(is_prefill=prefill)
        host, event, row_p2l, rows, counts = rt.recorder.snapshot()
        event.synchronize()
        # Rows of steps 2..4 are closed (H = 4, the row of step 5 is open); step 3 was a
        # prefill, so its row is zeroed (dropped after the ranks' reduce), decode rows count.
        assert rows.tolist() == [2, 3, 0]
        load = heat_to_load(host.numpy()[rows], row_p2l, 3)
        assert load[:, 0].tolist() == [[0, 0, 3], [0, 0, 0], [0, 5, 0]]
        assert counts.tolist() == [True, False, True]
        rt.route(0, torch.full((6, 1), 2))
        rt.step(record=False)  # a warm-up forward: not counted, whatever its phase
        host, event, _, rows, counts = rt.recorder.snapshot()
        event.synchronize()
        assert rows.tolist() == [3, 0, 1] and not host.numpy()[1].any()
        assert counts.tolist() == [False, True, False]
        with pytest.raises(ValueError, match="needs step\\(is_prefill"):
            rt.step()
        with pytest.raises(TypeError, match=r"is_prefill=...\) must be a bool or None, got 'no'"):
            rt.step(is_prefill="no")
        with pytest.raises(TypeError, match=r"record=...\) must be a bool, got 0"):
            rt.step(is_prefill=False, record=0)
        assert rt.recorder.host_step == 6


def test_each_ring_row_keeps_the_placement_its_step_was_routed_under():
    """A row is not copied again while it holds the placement in force (a placement's array is
    read-only and replaced at a commit); an array the caller may still write is copied."""
    from eplb_rt.runtime.device import Device
    from eplb_rt.runtime.recorder import HeatRecorder

    recorder = HeatRecorder(3, 1, 2, Device("cpu"), route_counts=True)
    first = Placement(np.array([[0, 1]]), 2, 1).phy2log
    second = Placement(np.array([[1, 0]]), 2, 1).phy2log
    writable = np.array([[1, 1]], dtype=np.int32)
    seen = []
    for phy2log in (first, first, first, first, second, *[writable] * 4):
        if phy2log is writable:
            writable[0, 0] = len(seen)  # rewritten between two steps
        recorder.advance(phy2log, True)
        seen.append(phy2log.copy())
    _, _, row_p2l, rows, _ = recorder.snapshot()
    assert [r.tolist() for r in row_p2l] == [s.tolist() for s in seen[-len(rows) :]]


def test_tables_hold_the_starting_placement(runtime):
    # One rank, 5 slots, 5 experts: the contiguous layout, expert e in slot e, one replica each.
    assert runtime.placement.phy2log.tolist() == [[0, 1, 2, 3, 4]] * 2
    assert runtime.log2phy(1).tolist() == [[0], [1], [2], [3], [4]]
    assert runtime.logcnt(0).tolist() == [1] * 5
    assert runtime.expert_map(0).tolist() == [0, 1, 2, 3, 4]
    assert runtime.replica_share(0).tolist() == [[1.0]] * 5


def test_groups_and_nodes_reach_the_policy():
    config = EplbConfig(policy="deepseek", interval=0, num_groups=4, warm_up=False)
    with EplbRuntime(config, 1, 8) as rt:
        assert rt.topology == Topology(1, 8, 1, 4) == rt.balancer.topology


@pytest.mark.parametrize(
    ("policy", "topology", "said"),
    [
        ("deepseek", Topology(1, 8, 1, 3), "not possible (8 experts do not split into 3 equal"),
        ("deepseek", Topology(1, 8, 1, 4), "not possible (all ranks are on one node"),
        ("equilibrium", Topology(2, 4, 2, 4), "policy 'equilibrium' plans flat (its option"),
        ("deepseek", Topology(2, 4, 2, 4), None),  # groups on nodes: nothing to say
    ],
)
def test_groups_that_plan_flat_are_said_so(policy, topology, said, caplog):
    # As the CLI warns for --groups. (Two nodes need two ranks: the check on its own.)
    runtime = types.SimpleNamespace(
        topology=topology, config=EplbConfig(policy=policy, num_groups=topology.num_groups)
    )
    with caplog.at_level("WARNING", logger="eplb_rt.runtime"):
        EplbRuntime._warn_if_flat(runtime, 8)
    assert (said in caplog.text) if said else not caplog.text


def _bad_calls(rt: EplbRuntime):
    E = rt.num_experts
    yield lambda: rt.route(2, torch.zeros((1, 1), dtype=torch.int64)), "layer must be in"
    yield lambda: rt.route(-1, torch.zeros((1, 1), dtype=torch.int64)), "layer must be in"
    yield lambda: rt.route(True, torch.zeros((1, 1), dtype=torch.int64)), "layer must be an int"
    yield lambda: rt.route(0, [[0]]), "topk_ids must be a tensor"
    yield lambda: rt.route(0, torch.zeros((1, 1), dtype=torch.int64, device="meta")), "expected cpu"
    yield lambda: rt.route(0, torch.tensor([[E]])), None
    yield lambda: rt.route(0, torch.tensor([[0, -2]])), None
    yield lambda: rt.route(0, torch.tensor([[0.0]])), None
    yield lambda: rt.route(0, torch.tensor([0, 1])), None
    # An out in memory the runtime owns (the op sees layer 0's tables and heat rows only).
    pair = torch.tensor([[0, 1]], dtype=torch.int32)
    owned = "shares memory with this runtime's routing tables, heat ring or step counter"
    for table in (rt._log2phy[1], rt._logcnt[1], rt._expert_map[1], rt.heat[2, 1]):
        yield lambda t=table: rt.route(0, pair, out=t.flatten()[:2].view(1, 2)), owned
    yield lambda: rt.route(0, pair.long()[:, :1], out=rt.step_counter.view(1, 1)), owned
    yield lambda: rt.route(0, pair, out=[[0, 0]]), "route\\(out=...\\) must be a tensor, got list"
    if rt.config.heat_source == "group_list":
        yield lambda: rt.record(0, torch.ones(3, dtype=torch.int32)), "group_list must be \\[5\\]"
        yield lambda: rt.record(0, torch.tensor([1, -1, 0, 0, 0])), None
        yield lambda: rt.record(0, [1, 0, 0, 0, 0]), "group_list must be a tensor"
        yield lambda: rt.record(0, torch.ones(5), cumulative="no"), "must be a bool, got 'no'"
    else:
        yield lambda: rt.record(0, torch.ones(5, dtype=torch.int32)), "heat_source='group_list'"
    yield lambda: rt.step(record=1), "step\\(record=...\\) must be a bool, got 1"
    yield lambda: rt.step(is_prefill="yes"), "must be a bool or None, got 'yes'"
    yield lambda: rt.log2phy(7), "layer must be in"
    yield lambda: rt.expert_map("0"), "layer must be an int"
    yield lambda: rt.register_weights(0, {}), "non-empty dict"
    yield lambda: rt.register_weights(0, {"w": torch.zeros(4, 2)}), "expected \\[5, ...\\]"
    yield lambda: rt.register_weights(0, {"w": torch.zeros(2, 5).t()}), "one block of memory"
    yield lambda: rt.register_weights(0, {"w": [0] * 5}), "must be a tensor"
    yield lambda: rt.register_weights(0, {"w": torch.zeros(5, device="meta")}), "expected cpu"
    yield lambda: rt.register_weights(0, {0: torch.zeros(5, 2)}), "names must be non-empty str"
    yield lambda: rt.register_weights(0, {"": torch.zeros(5, 2)}), "names must be non-empty str"
    shared = torch.zeros(5, 4)
    yield (
        lambda: rt.register_weights(0, {"w": shared, "w_alias": shared}),
        r"layer 0's weights share memory \('w' and 'w_alias'\)",
    )


@pytest.mark.parametrize("fixture", ["runtime", "receiver"])
def test_bad_input_at_every_entry_raises_and_changes_nothing(fixture, request):
    runtime = request.getfixturevalue(fixture)
    runtime.route(0, torch.tensor([[1, 2]]))
    if fixture == "receiver":
        runtime.record(0, torch.tensor([0, 3, 0, 0, 1]))
    before = _state(runtime)
    for call, message in _bad_calls(runtime):
        if message is None:
            with pytest.raises(OP_ERRORS):
                call()
        else:
            with pytest.raises((ValueError, TypeError), match=message):
                call()
        assert _same(before, _state(runtime))
    assert runtime.executor.weights == {}
    # Refused arguments stop nothing: the runtime still serves.
    assert runtime.stats()["failure"] is None
    runtime.step()
    runtime.route(0, torch.tensor([[1, 2]]))


def test_memory_counts_what_the_runtime_holds_on_its_device(runtime, receiver):
    """What an engine subtracts before it sizes its KV cache: the ring, the tables, the uploads
    and, once weights are registered, the staging lanes."""
    for rt, rings in ((runtime, 1), (receiver, 2)):
        H, L, E, R = rt.config.history, rt.num_layers, rt.num_experts, rt.max_replicas
        P, S = rt.topology.num_slots, rt.topology.num_slots_per_rank
        padded = sum(-(-n // 8) * 8 for n in (S, E * R, E, E * R, E))
        want = {
            "heat": H * L * P * 4 + (rings - 1) * H * P * 4 + 8,
            "tables": L * (2 * E * R + 2 * E) * 4,
            "uploads": padded * 4,
            "staging": 0,
        }
        assert rt.memory() == {**want, "total": sum(want.values())}
    runtime.register_weights(
        0, {"w13": torch.zeros(S, 6), "w2": torch.zeros(S, 3, 2, dtype=torch.int8)}
    )
    lanes = min(runtime.config.layers_per_step, L)
    assert runtime.memory()["staging"] == lanes * S * (6 * 4 + 6)
    assert runtime.memory()["total"] == sum(v for k, v in runtime.memory().items() if k != "total")


def test_a_step_zeroes_the_next_ring_row_by_the_hosts_count(receiver, monkeypatch):
    """Indexed by the device counter (index_fill_), torch_npu reads the index back to the host
    on CANN builds without its aclnn kernel: a synchronisation in every step."""

    def no_index_fill(self, *args):
        raise AssertionError("index_fill_ in a step")

    monkeypatch.setattr(torch.Tensor, "index_fill_", no_index_fill)
    H = receiver.config.history
    for step in range(2 * H + 1):
        receiver.heat.fill_(7)
        receiver.recorder._scratch.fill_(7)
        receiver.step()
        row = (step + 1) % H  # the row the next step counts into, as the kernels find it
        assert int(receiver.step_counter) % H == row
        assert not receiver.heat[row].any() and not receiver.recorder._scratch[row].any()
        assert receiver.heat.sum() == 7 * receiver.heat[0].numel() * (H - 1)


def test_weights_sharing_memory_with_another_layer_are_refused(runtime):
    """A commit rewriting one layer's slots would rewrite the other's behind its tables."""
    whole = torch.zeros(2, 5, 4)
    runtime.register_weights(0, {"w": whole[0]})
    with pytest.raises(ValueError, match=r"layer 1's weights share memory \('w' of layer 0 and"):
        runtime.register_weights(1, {"w": whole.view(10, 4)[3:8]})
    assert set(runtime.executor.weights) == {0}
    runtime.register_weights(1, {"w": whole[1]})  # its own rows: fine
    runtime.register_weights(0, {"w": whole[0].clone()})  # a layer replaces its own weights
    assert set(runtime.executor.weights) == {0, 1}


@pytest.mark.parametrize("kind", ["quantized", "sparse_coo", "sparse_csr", "nested"])
def test_weights_without_a_block_of_bytes_a_slot_are_refused(runtime, kind):
    """A slot moves as its bytes: a sparse tensor has none a slot, a quantized one keeps its
    scales elsewhere (taking its bytes crashed the process in torch's empty_like)."""
    dense = torch.zeros(5, 3)
    with warnings.catch_warnings():  # torch's: quantized tensors deprecated, CSR in beta
        warnings.simplefilter("ignore", UserWarning)
        weight = {
            "quantized": lambda: torch.quantize_per_tensor(dense, 0.1, 0, torch.qint8),
            "sparse_coo": dense.to_sparse,
            "sparse_csr": dense.to_sparse_csr,
            "nested": lambda: torch.nested.nested_tensor([dense[0], dense[1, :2]]),
        }[kind]()
    runtime.register_weights(0, {"w": dense})
    with pytest.raises(ValueError, match=r"'w' is a .* tensor, expected a dense \(torch.strided"):
        runtime.register_weights(0, {"w": weight})
    assert runtime.executor.weights[0]["w"] is dense


def test_a_layers_weights_are_kept_in_the_order_of_their_names(runtime):
    runtime.register_weights(0, {"w2": torch.zeros(5, 3), "w13": torch.zeros(5, 6)})
    assert list(runtime.executor.weights[0]) == ["w13", "w2"]


def test_staging_is_one_layers_bytes_a_lane_and_follows_registration(runtime):
    """Layers whose slots have the same bytes share their staging, whatever the dtypes; a layer
    registered again (weights quantised after load) frees buffers no layer needs any more."""
    lanes = runtime.config.layers_per_step
    runtime.register_weights(0, {"w": torch.zeros(5, 8, dtype=torch.bfloat16)})
    runtime.register_weights(1, {"w": torch.zeros(5, 16, dtype=torch.uint8)})
    assert runtime.executor.staging_bytes == lanes * 5 * 16
    runtime.register_weights(0, {"w": torch.zeros(5, 8, dtype=torch.uint8)})
    runtime.register_weights(1, {"w": torch.zeros(5, 8, dtype=torch.float8_e4m3fn)})
    assert runtime.executor.staging_bytes == lanes * 5 * 8


def test_local_copies_of_weights_that_require_grad_are_posted(runtime):
    """The executor copies a slot whose expert the rank holds already into staging; from a
    parameter that requires grad, outside no_grad, torch refused the in-place copy."""
    weight = torch.nn.Parameter(torch.arange(5.0)[:, None].repeat(1, 4))
    runtime.register_weights(0, {"w": weight})
    transfer = runtime.executor.start(_swap(), 0)
    assert transfer.error is None and runtime.executor.finish(transfer) is None
    staged = transfer.staged[0].view(torch.float32)  # slots move as bytes
    assert [row[0].item() for row in staged] == [1.0, 0.0]


def test_weights_in_an_npu_internal_format_are_refused(runtime, monkeypatch):
    """vllm-ascend casts MoE weights to FRACTAL_NZ, whose storage is tiled and padded: a slot is
    not its contiguous bytes there, so moving it would scramble the expert."""
    from eplb_rt import ops

    formats = {"w13": 2, "w2": 29}
    tensors = {name: torch.zeros(5, 4) for name in formats}
    by_tensor = {id(t): formats[name] for name, t in tensors.items()}
    monkeypatch.setattr(ops, "npu_format", lambda t: by_tensor.get(id(t)))
    with pytest.raises(ValueError, match=r"'w2' is stored in NPU format 29, expected a base"):
        runtime.register_weights(0, tensors)
    assert runtime.executor.weights == {}
    by_tensor[id(tensors["w2"])] = 0  # NCHW: a base format
    runtime.register_weights(0, tensors)
    assert set(runtime.executor.weights[0]) == {"w13", "w2"}
    monkeypatch.undo()
    assert ops.npu_format(torch.zeros(1)) is None


def test_bad_constructor_arguments():
    config = EplbConfig(policy="rt_test_shift", interval=0, warm_up=False)
    with pytest.raises(TypeError, match="must be an EplbConfig"):
        EplbRuntime({"interval": 0}, 2, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_layers must be an integer >= 1"):
        EplbRuntime(config, 0, 4)
    with pytest.raises(ValueError, match="num_experts must be an integer >= 1"):
        EplbRuntime(config, 1, 2.0)  # type: ignore[arg-type]
    with EplbRuntime(config, np.int64(2), np.int32(4)) as rt:  # sizes computed from arrays
        assert (type(rt.num_layers), type(rt.num_experts)) == (int, int)
        assert (rt.num_layers, rt.num_experts) == (2, 4)
    with pytest.raises(ValueError, match=r"torch\.distributed is not initialised"):
        EplbRuntime(config, 1, 4, group=object())
    with pytest.raises(ValueError, match=r"slots_per_rank=5 on 1 rank\(s\): .*exceeds num_exp"):
        EplbRuntime(EplbConfig(policy="rt_test_shift", slots_per_rank=5, warm_up=False), 1, 4)
    with pytest.raises(ValueError, match=r"EplbConfig.num_redundant=100 on 1 rank\(s\): num_sl"):
        EplbRuntime(EplbConfig(policy="rt_test_shift", num_redundant=100, warm_up=False), 1, 8)
    with pytest.raises(ValueError, match=r"EplbConfig.num_nodes=3 on 1 rank\(s\): Topology"):
        EplbRuntime(EplbConfig(policy="rt_test_shift", num_nodes=3, warm_up=False), 1, 8)
    with pytest.raises(ValueError, match="stream API"):
        EplbRuntime(config, 1, 4, device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda': torch.cuda.is_available\(\) is Fa"):
            EplbRuntime(config, 1, 4, device="cuda")
    huge = EplbConfig(policy="rt_test_shift", interval=0, history=2**62, warm_up=False)
    with pytest.raises(ValueError, match=r"^the heat ring of EplbConfig.history=4611686018427387"):
        EplbRuntime(huge, 2, 4)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory"),
        RuntimeError("can't allocate memory: 8 GiB"),
        MemoryError("Unable to allocate 8 GiB"),
    ],
    ids=["device", "torch-host", "numpy-host"],
)
def test_a_heat_ring_that_cannot_be_allocated_names_its_setting(monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("eplb_rt.runtime.runtime.HeatRecorder", fail)
    config = EplbConfig(policy="rt_test_shift", interval=0, history=300, warm_up=False)
    with pytest.raises(type(error), match=r"^the heat ring of EplbConfig.history=300 steps x 2 la"):
        EplbRuntime(config, 2, 4)
    monkeypatch.setattr("eplb_rt.runtime.runtime.HeatRecorder", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # not a memory error: as it was
        EplbRuntime(config, 2, 4)


def test_route_writes_a_callers_out_buffer(runtime):
    out = torch.full((2, 2), -7, dtype=torch.int64)
    assert runtime.route(0, torch.tensor([[0, 4], [4, -1]]), out=out) is out
    assert out[1, 1] == -1 and (out[out >= 0] < runtime.topology.num_slots).all()


def test_initial_placement_from_json_and_export(tmp_path):
    topo = Topology(1, 4)
    placement = Placement(np.array([[3, 2, 1, 0], [0, 1, 2, 3]]), 4, 1)
    path = tmp_path / "start.json"
    formats.write_placement(placement, path)
    config = EplbConfig(
        policy="rt_test_shift",
        interval=0,
        initial_placement=str(path),
        export_dir=str(tmp_path / "out"),
        warm_up=False,
    )
    with EplbRuntime(config, 2, 4) as rt:
        assert rt.placement == placement
        assert rt.expert_map(0).tolist() == [3, 2, 1, 0]
    exported = json.loads((tmp_path / "out" / "placement_00000.json").read_text())
    assert formats.from_vllm_ascend(exported) == placement
    with pytest.raises(ValueError, match="expected 3 layers"):
        EplbRuntime(config, 3, 4)
    invalid = tmp_path / "invalid.json"
    doc = formats.to_vllm_ascend(placement)
    doc["layer_list"][0]["device_list"][0]["device_expert"] = [3, 3, 1, 0]  # expert 2 lost
    invalid.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"two replicas of expert 3|expert 2 has no slot"):
        EplbRuntime(dataclass_replace(config, initial_placement=str(invalid)), 2, 4)
    # SGLang's map and an array record no rank count: the runtime's own is theirs.
    for name, fmt in (("start_sglang.json", "sglang"), ("start.npy", "npy")):
        formats.write_placement(placement, tmp_path / name, fmt)
        again = dataclass_replace(config, initial_placement=str(tmp_path / name))
        with EplbRuntime(again, 2, 4) as rt:
            assert rt.placement == placement
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        EplbRuntime(dataclass_replace(config, initial_placement=str(bad)), 2, 4)
    # A folder that cannot be made (below a file) is an error naming the field.
    below_a_file = str(bad / "out")
    with pytest.raises(ValueError, match=r"EplbConfig.export_dir '.*bad.json/out': cannot make"):
        EplbRuntime(dataclass_replace(config, export_dir=below_a_file), 2, 4)
    del topo


def test_an_export_the_disk_cannot_take_is_counted_not_raised(tmp_path, monkeypatch):
    """Only rank 0 writes: raised there, its collectives fell out of step with the others'."""
    config = EplbConfig(interval=0, export_dir=str(tmp_path / "out"), warm_up=False)

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    with EplbRuntime(config, 2, 4) as rt:
        monkeypatch.setattr(formats.os, "replace", full_disk)
        rt._export(rt.placement, 7)  # a commit's export
        assert len(rt.errors) == 1
        assert rt.errors[0].startswith("plan 7: exporting the placement failed: OSError(28, ")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["placement_00000.json"]


def test_step_route_and_record_after_shutdown_are_errors(runtime, receiver):
    """After shutdown the ranks no longer agree: a commit elsewhere would not reach these
    tables, so nothing is routed or counted by them any more."""
    runtime.shutdown()
    runtime.shutdown()  # idempotent
    with pytest.raises(RuntimeError, match=r"EplbRuntime.step\(\) after shutdown"):
        runtime.step()
    with pytest.raises(RuntimeError, match=r"EplbRuntime.route\(\) after shutdown"):
        runtime.route(0, torch.tensor([[1, 2]]))
    receiver.shutdown()
    with pytest.raises(RuntimeError, match=r"EplbRuntime.record\(\) after shutdown"):
        receiver.record(0, torch.zeros(5, dtype=torch.int32))


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


@pytest.mark.parametrize(
    ("interval", "episode", "deadline", "named"),
    [
        (12, 6, 11, "EplbConfig.deadline (11) leaves"),
        (12, 6, 4, None),
        # The deadline adapts (not given): the episode is what to change.
        (10, 16, None, "EplbConfig.episode (16) with a deadline of 2 leaves"),
        (12, 10, None, "EplbConfig.episode (10) with a deadline of 2 leaves"),
    ],
)
def test_a_deadline_that_leaves_no_room_for_probes_is_warned_about(
    caplog, interval, episode, deadline, named
):
    """A probe starts at an episode step only where its plan's deadline falls before the next
    interval: at 12 / 6 / 11 (the integration guide's example before) none ever started. The
    warning names the setting given (a deadline left to adapt is not)."""
    config = EplbConfig(
        policy="rt_test_shift", interval=interval, history=48, episode=episode,
        deadline=deadline, warm_up=False,
    )  # fmt: skip
    with caplog.at_level("WARNING", logger="eplb_rt.runtime"), EplbRuntime(config, 2, 4):
        pass
    said = [r.getMessage() for r in caplog.records if "no drift probe" in r.getMessage()]
    assert len(said) == (named is not None)
    assert named is None or said[0].startswith(named), said


def test_a_history_too_short_for_drift_is_warned_about(caplog):
    """Drift compares the latest episode with two or more before it, in the ``history - 1``
    closed steps a plan reads: with less, only the interval starts plans."""
    short = EplbConfig(policy="rt_test_shift", interval=8, history=16, episode=8, warm_up=False)
    with caplog.at_level("WARNING", logger="eplb_rt.runtime"), EplbRuntime(short, 2, 4):
        pass
    assert "drift is never checked" in caplog.text and "(25)" in caplog.text
    caplog.clear()
    enough = EplbConfig(policy="rt_test_shift", interval=40, history=25, episode=8, warm_up=False)
    with caplog.at_level("WARNING", logger="eplb_rt.runtime"), EplbRuntime(enough, 2, 4):
        pass
    assert "drift" not in caplog.text


def _record_gathers(rt: EplbRuntime) -> list:
    """``(step, trigger)`` of every gather ``rt`` starts from now on (those a backlog then
    holds back too)."""
    gathers, gather = [], rt._gather
    rt._gather = lambda step, trigger="interval": (
        gathers.append((step, trigger)) or gather(step, trigger)
    )
    return gathers


def test_a_history_too_short_for_drift_makes_no_drift_probes():
    # Each drift probe copies the ring: where drift can never show, a fitted placement is
    # re-planned on the interval only.
    config = EplbConfig(policy="rt_test_shift", interval=20, history=6, episode=2, warm_up=False)
    with EplbRuntime(config, 2, 4) as rt:
        rt._fitted = True  # as after a first plan
        gathers = _record_gathers(rt)
        for _ in range(21):
            rt.route(0, torch.tensor([[0, 1], [0, 2]]))
            rt.step()
    assert [trigger for _, trigger in gathers] == ["interval"]


def test_migration_lanes_are_at_most_the_layers():
    # A lane migrates one layer at a time: lanes past the layers would only hold staging memory.
    config = EplbConfig(policy="rt_test_shift", interval=0, layers_per_step=1000, warm_up=False)
    with EplbRuntime(config, 2, 4) as rt:
        assert rt.executor.lanes == 2
        rt.register_weights(0, {"w": torch.zeros(4, 16)})
        assert len(next(iter(rt.executor._staging.values()))) == 2


def test_a_runtime_made_in_inference_mode_serves_outside_it():
    # Its tables and heat are ordinary tensors, which its writes may update in either mode.
    config = EplbConfig(policy="rt_test_shift", interval=0, history=3, warm_up=False, episode=1)
    with torch.inference_mode():
        rt = EplbRuntime(config, 2, 6)
    with rt:
        rt.route(0, torch.tensor([[0, 1]]))
        rt.step()
        rt.route(0, torch.tensor([[2, 2]]))
        assert int(rt.step_counter) == 1
        assert rt.heat[0, 0].sum() == 2 and rt.heat[1, 0].sum() == 2
        with torch.inference_mode():
            rt.step()
        assert int(rt.step_counter) == 2 and int(rt.heat[2].sum()) == 0


def test_a_runtime_dropped_without_shutdown_stops_its_balancer():
    """The balancer's thread held the runtime (through its step counter): never collected, its
    thread, ring and tables lived until the process ended."""
    import gc
    import weakref

    config = EplbConfig(policy="rt_test_shift", interval=4, history=4, episode=1, warm_up=False)
    runtime = EplbRuntime(config, 1, 5)
    thread, alive = runtime.balancer._thread, weakref.ref(runtime)
    del runtime
    gc.collect()
    assert alive() is None
    thread.join(10.0)
    assert not thread.is_alive()


class _Clock:
    """The executor's clock, advanced only by the works waited on: the test's timing does not
    depend on how fast this machine runs it."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _SlowWork:
    """A gloo work that completes ``seconds`` after it is waited on (within the timeout)."""

    def __init__(self, seconds: float, waits: list, clock: _Clock) -> None:
        self.seconds, self.waits, self.clock = seconds, waits, clock

    def wait(self, timeout: datetime.timedelta) -> bool:
        self.waits.append(timeout.total_seconds())
        self.clock.now += min(self.seconds, timeout.total_seconds())
        return self.seconds <= timeout.total_seconds()


def test_a_transfer_of_many_messages_has_one_timeout_in_all(monkeypatch):
    """transfer_timeout_s bounds the layer's transfer from when it was posted, not each of its
    messages: four that each take 0.4 s of a 1 s budget time out at the third."""
    from eplb_rt.runtime import executor

    config = EplbConfig(policy="rt_test_shift", interval=0, history=4, episode=2, warm_up=False)
    rt = EplbRuntime(dataclasses.replace(config, transfer_timeout_s=1.0), 2, 5)
    clock = _Clock()
    monkeypatch.setattr(executor, "time", clock)
    try:
        waits = []
        works = [_SlowWork(0.4, waits, clock) for _ in range(4)]
        migration = types.SimpleNamespace(layer=1)
        transfer = Transfer(migration, np.zeros(0, np.int32), [], works, None, clock.now)
        error = rt.executor.finish(transfer)
    finally:
        monkeypatch.undo()
        rt.shutdown()
    assert error == "layer 1: transfer timed out (1 s since posted)"
    assert waits == pytest.approx([1.0, 0.6, 0.2])


@pytest.mark.parametrize("off", ["interval 0", "EPLB_RT_DISABLE_REBALANCE"])
def test_a_static_placement_warms_up_nothing_and_starts_no_planning_child(monkeypatch, off):
    """Nothing will be planned: the warm-up's compile (up to a minute of a core, and as long a
    shutdown) and a planning child's few hundred MB would be for nothing."""
    from eplb_rt.runtime.balancer import Balancer

    calls = []  # (the balancer's thread calls them: an assertion there would not fail the test)
    monkeypatch.setattr(Balancer, "_warm_up", lambda self: calls.append("warm-up"))
    monkeypatch.setattr(Balancer, "_start_child", lambda self: calls.append("child"))
    interval = 0 if off == "interval 0" else 10
    if off != "interval 0":
        monkeypatch.setenv("EPLB_RT_DISABLE_REBALANCE", "1")
    config = EplbConfig(interval=interval, history=4, episode=2, plan_in_subprocess=True)
    rt = EplbRuntime(config, 2, 5)
    try:
        assert rt.balancer.ready.wait(10)
        rt.step()
    finally:
        rt.shutdown()
    assert calls == []


class _FailedWork:
    def wait(self, timeout: datetime.timedelta) -> bool:
        raise RuntimeError("Connection closed by peer")


def test_the_transfer_counters_count_what_arrived():
    """``stats()["transfers"]``: a transfer that failed on this rank received nothing."""
    config = EplbConfig(policy="rt_test_shift", interval=0, history=4, episode=2, warm_up=False)
    rt = EplbRuntime(config, 2, 5)
    try:
        moves = {"slots_received": 3, "slots_copied": 1, "slots_sent": 2, "bytes_sent": 64}
        layer = types.SimpleNamespace(layer=0)
        failed = [_FailedWork()]
        done = [_SlowWork(0.0, [], _Clock())]  # completes at once
        for works, expected in ((failed, 0), (done, 1), (failed, 1)):
            transfer = Transfer(layer, np.zeros(0, np.int32), [], works, None, time.perf_counter())
            transfer.counts.update(moves)
            rt.executor.finish(transfer)
            assert rt.stats()["transfers"] == {key: expected * n for key, n in moves.items()}
    finally:
        rt.shutdown()


def _swap(layer: int = 0):
    """Slots 0 and 1 of rank 0 exchange their experts: two local copies, nothing sent."""
    return LayerMigration(layer, np.array([0, 1]), np.array([1, 0]), np.array([1, 0]), 5)


def test_local_copies_are_counted_as_copied_each_time(runtime):
    runtime.register_weights(0, {"w": torch.arange(10.0).view(5, 2)})
    for _ in range(2):
        assert runtime.executor.finish(runtime.executor.start(_swap(), 0)) is None
    expected = {"slots_sent": 0, "slots_received": 0, "slots_copied": 4, "bytes_sent": 0}
    assert runtime.stats()["transfers"] == expected


def test_a_layer_without_weights_moves_nothing_and_counts_nothing(runtime):
    """Tables only (no registered weights): the transfer counters say what crossed or was
    copied, here nothing."""
    assert runtime.executor.finish(runtime.executor.start(_swap(), 0)) is None
    assert set(runtime.stats()["transfers"].values()) == {0}


def test_a_transfer_that_failed_to_post_finishes_with_its_error(runtime, monkeypatch):
    """It is neither waited on nor counted, so the boundary cancels the layer."""
    runtime.register_weights(0, {"w": torch.arange(10.0).view(5, 2)})

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(torch, "_foreach_copy_", broken)
    transfer = runtime.executor.start(_swap(), 0)
    monkeypatch.undo()
    assert transfer.error and "device lost" in transfer.error
    assert runtime.executor.finish(transfer) == transfer.error
    assert runtime.stats()["transfers"]["slots_copied"] == 0


def test_weights_overlapping_by_one_byte_are_refused(runtime):
    base = torch.zeros(20, dtype=torch.uint8)
    with pytest.raises(ValueError, match="share memory"):
        runtime.register_weights(0, {"a": base[0:10].view(5, 2), "b": base[9:19].view(5, 2)})
    runtime.register_weights(0, {"a": base[0:10].view(5, 2), "b": base[10:20].view(5, 2)})
    assert set(runtime.executor.weights) == {0}


def test_a_layer_registered_again_with_the_same_tensors_is_accepted(runtime):
    """Its own rows are not another layer's: an engine that registers after each load."""
    weight = torch.zeros(5, 4)
    runtime.register_weights(0, {"w": weight})
    runtime.register_weights(0, {"w": weight})
    assert runtime.executor.weights[0]["w"] is weight


def test_a_layer_in_flight_cannot_be_registered_again(runtime):
    """Only queued layers were checked: one whose transfer was posted took new weights."""
    runtime.register_weights(1, {"w": torch.zeros(5, 2)})
    runtime._current = Rebalance(1, 0, 0.0, 1)
    empty = np.zeros(0, np.int64)
    runtime._in_flight.append(runtime.executor.start(LayerMigration(1, empty, empty, empty, 5), 0))
    with pytest.raises(ValueError, match="is being migrated"):
        runtime.register_weights(1, {"w": torch.ones(5, 2)})


def test_route_out_in_the_receivers_scratch_rows_is_refused(receiver):
    scratch = receiver.recorder._scratch[1, :2].view(1, 2)
    before = scratch.clone()
    with pytest.raises(ValueError, match="shares memory"):
        receiver.route(0, torch.tensor([[0, 1]], dtype=torch.int32), out=scratch)
    assert torch.equal(scratch, before)


def test_a_layers_time_counts_from_when_it_was_posted_not_from_finish(monkeypatch):
    """Posted 0.5 s before the boundary with a 1 s budget: 0.5 s is left to wait, not 1 s."""
    from eplb_rt.runtime import executor

    config = EplbConfig(policy="rt_test_shift", interval=0, history=4, episode=2, warm_up=False)
    rt = EplbRuntime(dataclasses.replace(config, transfer_timeout_s=1.0), 2, 5)
    clock = _Clock()
    clock.now = 10.0
    monkeypatch.setattr(executor, "time", clock)
    try:
        waits = []
        works = [_SlowWork(0.4, waits, clock) for _ in range(2)]
        migration = types.SimpleNamespace(layer=1)
        transfer = Transfer(migration, np.zeros(0, np.int32), [], works, None, 9.5)
        error = rt.executor.finish(transfer)
    finally:
        monkeypatch.undo()
        rt.shutdown()
    assert error == "layer 1: transfer timed out (1 s since posted)"
    assert waits == pytest.approx([0.5, 0.1])


def test_a_drift_probe_is_decided_before_the_next_interval_gathers():
    """A probe whose deadline fell on the interval step would hold that interval's gather back
    (its plan is still pending there): probes stop ``deadline`` steps short of it."""
    config = small_config(interval=12, episode=2, deadline=2, history=8, num_redundant=0)
    with EplbRuntime(config, 2, 5) as rt:
        rt._fitted = True  # as after a first plan
        gathers = _record_gathers(rt)
        for _ in range(12):
            rt.route(0, torch.tensor([[0, 1], [2, 3]]))
            rt.step()
            let_plan_finish(rt)
    drift = [step for step, trigger in gathers if trigger == "drift"]
    assert drift and max(drift) + rt.deadline < config.interval, gathers


def test_a_committed_swap_counts_its_moved_experts_and_no_bytes_moved(runtime):
    """Moves count the slots whose expert changed; bytes, only what crossed to another rank."""
    weight = torch.arange(10.0).view(5, 2)
    runtime.register_weights(0, {"w": weight})
    runtime._current = Rebalance(1, 0, 0.0, 0)  # a plan that committed nothing
    runtime._finish_rebalance(1)
    assert runtime.stats()["first_commit_step"] is None
    runtime._set_target(Placement(np.array([[1, 0, 2, 3, 4], [0, 1, 2, 3, 4]]), 5, 1))
    runtime._current = Rebalance(2, 1, 0.0, 1)
    runtime._in_flight.append(runtime.executor.start(_swap(), 0))
    runtime._commit_in_flight(2)
    assert runtime._current.layers_committed == [0]
    assert (runtime._current.moved_experts, runtime._current.bytes_moved) == (2, 0)
    assert weight[:2].tolist() == [[2.0, 3.0], [0.0, 1.0]]  # the slots swapped in place
    np.testing.assert_array_equal(runtime.placement.phy2log[0], [1, 0, 2, 3, 4])
    assert runtime.stats()["moved_experts"] == 2  # the plan under way counts
    runtime._finish_rebalance(2)
    stats = runtime.stats()
    assert (stats["moved_experts"], stats["first_commit_step"]) == (2, 2)


def _plan_swapping_layer_one(monkeypatch, saved=(0.0, 0.0), spent=(0.0, 0.0)) -> None:
    """Every plan swaps the experts of layer 1's first two slots, the one layer it commits (of
    2), priced ``saved`` and ``spent`` seconds per layer."""

    def decide(load, previous, *args, **kwargs):
        rows = previous.phy2log.copy()
        rows[1, [0, 1]] = rows[1, [1, 0]]
        placement = Placement(rows, previous.num_experts, previous.num_ranks)
        par = np.ones(previous.num_layers)
        saved_s, migration_s = np.array(saved), np.array(spent)
        return planning.Decision(placement, placement, (1,), saved_s, migration_s, par, par, 2)

    monkeypatch.setattr(planning, "decide", decide)


def _serve_gathers(rt: EplbRuntime, steps: int) -> list:
    """``steps`` steps of tokens on every layer, each plan finished before its deadline; the
    ``(step, trigger)`` of every gather."""
    gathers = _record_gathers(rt)
    for _ in range(steps):
        for layer in range(rt.num_layers):
            rt.route(layer, torch.tensor([[0, 1], [0, 2]]))
        rt.step()
        let_plan_finish(rt)
    return gathers


def test_a_rebalance_is_worth_what_the_layers_its_decision_commits_save(monkeypatch):
    """The record's saved and migration seconds sum the layers the decision commits, not every
    layer it priced (layer 0 here, which the plan leaves as it is)."""
    _plan_swapping_layer_one(monkeypatch, saved=(0.5, 2.0), spent=(0.25, 1.0))
    with EplbRuntime(small_config(num_redundant=0), 2, 5) as rt:
        for layer in range(2):
            rt.register_weights(layer, {"w": torch.zeros(5, 4)})
        _serve_gathers(rt, 9)  # gathered at step 6, layer 1 committed at step 9
        (rebalance,) = rt.stats()["rebalances"]
    assert rebalance["layers_committed"] == [1], rebalance
    assert (rebalance["saved_s"], rebalance["migration_s"]) == (2.0, 1.0), rebalance


def test_a_plan_whose_every_moving_layer_has_no_weights_is_skipped_not_a_rebalance(monkeypatch):
    """Layer 0 has registered weights, layer 1 (the only one the plan moves) none: nothing is
    left to migrate, so the plan is one skipped error, not an empty rebalance."""
    _plan_swapping_layer_one(monkeypatch)
    with EplbRuntime(small_config(num_redundant=0), 2, 5) as rt:
        start = rt.placement
        rt.register_weights(0, {"w": torch.zeros(5, 4)})
        _serve_gathers(rt, 9)
        stats = rt.stats()
        assert rt.placement == start
    assert stats["rebalances"] == [] and stats["num_rebalances"] == 0, stats["rebalances"]
    reason = "layers [1] move experts but have no registered weights while other layers do"
    assert [s["step"] for s in stats["skipped"] if reason in s["reason"]] == [8], stats["skipped"]
    assert len(stats["errors"]) == 1 and reason in stats["errors"][0], stats["errors"]


def test_probes_check_for_drift_once_a_plan_has_committed(monkeypatch):
    """Until a plan fits the placement, episode probes plan without a drift check ("first");
    a committed plan fits it, and the probes after it check for drift."""
    _plan_swapping_layer_one(monkeypatch)
    with EplbRuntime(small_config(interval=24, history=8, num_redundant=0), 2, 5) as rt:
        gathers = _serve_gathers(rt, 10)  # the first probe's plan committed at step 9
        assert rt.stats()["rebalances"][0]["layers_committed"] == [1]
    assert gathers == [(6, "first"), (10, "drift")], gathers


@pytest.mark.parametrize("given", [False, True], ids=["starting", "initial-placement"])
def test_an_initial_placement_is_taken_as_fitted(tmp_path, given):
    """A placement given to start from was fitted by someone: the first probe checks it for
    drift after one episode; the package's own starting placement is planned for once three
    episodes of heat are in."""
    path = None
    if given:
        path = str(tmp_path / "start.json")
        formats.write_placement(Placement(np.tile(np.arange(5), (2, 1)), 5, 1), path)
    config = small_config(interval=24, history=8, num_redundant=0, initial_placement=path)
    with EplbRuntime(config, 2, 5) as rt:
        gathers = _serve_gathers(rt, 6)
    assert gathers[0] == ((2, "drift") if given else (6, "first")), gathers
