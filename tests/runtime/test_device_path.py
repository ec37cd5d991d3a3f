"""Host-device synchronisations on the serving thread: none in a step without a gather.

:class:`SyncCounter` patches every way Python code can make the host wait for the device or copy
pageable memory: reading values (``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``,
``int()`` / ``float()`` / ``bool()`` of a tensor), blocking copies (``.to()``, ``copy_``,
``torch.tensor`` / ``torch.as_tensor`` onto the device), and the waits of the device abstraction
and of the device module (``Event.synchronize``, ``synchronize()``). It counts them only on the
serving thread inside the runtime's calls (``route``, ``record``, ``step``), so the model's own
reads and the balancer thread's waits are not the runtime's. On the CPU every tensor is both host
and device, so every such call counts; on a GPU or an NPU only those that touch the device, plus
the waits the device's own sync debug mode reports (torch.cuda's, torch_npu's).

:func:`drive` runs the reference MoE model with an ``EplbRuntime`` (one rank, a policy that moves
every slot of every layer at every plan) over many steps with
rebalances and commits, checking outputs, weights and tables; ``scripts/device_check.py`` calls it
on a GPU or an NPU.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _dist import spawn
from _faults import open_gate
from _serving import let_plan_finish

from benchmarks.accel import device_module
from eplb_rt.config import EplbConfig
from eplb_rt.models import ExpertParallelMoE, MoEConfig, expert_weights
from eplb_rt.placement import Placement
from eplb_rt.runtime import EplbRuntime
from eplb_rt.runtime.device import Device, Event, HostStaging
from tests.devices import ACCELERATORS, ON_EVERY_DEVICE

MODEL = MoEConfig(num_layers=3, num_experts=8, top_k=2, hidden=8, ffn=12, seed=5, exact=True)
# A gather may read the heat ring back once (a blocking copy on the CPU, asynchronous elsewhere).
GATHER_SYNC_BOUND = 1
_READS = ("item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__")


class SyncCounter:
    """Records the synchronising calls made on this thread inside :meth:`counting`.

    Args:
        device: the runtime's device; on a CPU every read and blocking copy counts, elsewhere
            only those that touch a tensor on the device (and pageable uploads).
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.found: list[str] = []
        self._thread = threading.get_ident()
        self._depth = 0
        self._host: list[torch.Tensor] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> SyncCounter:
        for name in _READS:
            self._patch(torch.Tensor, name, lambda t, *a, **k: self._on_device(t))
        self._patch(torch.Tensor, "to", self._to)
        self._patch(
            torch.Tensor,
            "copy_",
            lambda t, src, non_blocking=False: self._copy(t, src, non_blocking),
        )
        for name in ("tensor", "as_tensor", "from_numpy"):
            self._patch(torch, name, self._factory, keep=self._keep_host)
        self._patch(Event, "synchronize", lambda event: True)
        module = getattr(torch, self.device.type, None)
        if module is not None and hasattr(module, "synchronize"):
            self._patch(module, "synchronize", lambda *a, **k: True)
            for cls in (getattr(module, "Event", None), getattr(module, "Stream", None)):
                if hasattr(cls, "synchronize"):
                    self._patch(cls, "synchronize", lambda *a, **k: True)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def reset(self) -> list[str]:
        """The calls found since the last reset."""
        found, self.found, self._host = self.found, [], []
        return found

    def _patch(self, owner, name: str, is_sync, keep=None) -> None:
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            mine = self._depth and threading.get_ident() == self._thread
            if mine and is_sync(*args, **kwargs):
                caller = traceback.extract_stack(limit=2)[0]
                where = f"{os.path.basename(caller.filename)}:{caller.lineno} ({caller.name})"
                self.found.append(f"{name} at {where}")
            result = original(*args, **kwargs)
            if mine and keep is not None:
                keep(result, *args, **kwargs)
            return result

        self._stack.enter_context(mock.patch.object(owner, name, counted))

    def _factory(self, data=None, *args, device=None, **kwargs) -> bool:
        return device is not None and self._is_device(torch.device(device))

    def _keep_host(self, tensor, data=None, *args, device=None, **kwargs) -> None:
        # Made from host data without a device: a host tensor (e.g. a control all-reduce's)
        # even where the runtime's device is the CPU; kept alive so its address stays its own.
        if device is None and not isinstance(data, torch.Tensor):
            self._host.append(tensor)

    def _is_device(self, device: torch.device) -> bool:
        return self.device.type in ("cpu", device.type)

    def _on_device(self, tensor: torch.Tensor) -> bool:
        if self.device.type != "cpu":
            return tensor.device.type == self.device.type
        ptr = tensor.untyped_storage().data_ptr()
        return all(ptr != h.untyped_storage().data_ptr() for h in self._host)

    def _copy(self, dst: torch.Tensor, src: torch.Tensor, non_blocking: bool) -> bool:
        if self.device.type == "cpu":
            return not non_blocking and self._on_device(dst)
        host = [t for t in (dst, src) if t.device.type == "cpu"]
        if len(host) != 1:  # host to host, or device to device: stream-ordered
            return False
        return not non_blocking or not host[0].is_pinned()

    def _to(self, tensor: torch.Tensor, *args, **kwargs) -> bool:
        target = kwargs.get("device")
        for arg in args:
            if isinstance(arg, (torch.device, str)):
                target = arg
            elif isinstance(arg, torch.Tensor):
                target = arg.device
        if target is None:  # a dtype change stays on the tensor's device
            return False
        non_blocking = kwargs.get("non_blocking", any(a is True for a in args))
        target = torch.device(target)
        if self.device.type == "cpu":
            return not non_blocking
        if target.type == tensor.device.type:
            return False
        return not non_blocking or (tensor.device.type == "cpu" and not tensor.is_pinned())

    @contextlib.contextmanager
    def counting(self):
        """Count inside the body (and, on a device, the waits its sync debug mode reports:
        torch.cuda's and torch_npu's report the synchronisations inside their own C++, which the
        patched Python calls cannot see)."""
        module = getattr(torch, self.device.type) if self.device.type != "cpu" else None
        debug = getattr(module, "set_sync_debug_mode", None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._depth += 1
            if debug is not None:
                debug("warn")
            try:
                yield
            finally:
                if debug is not None:
                    debug("default")
                self._depth -= 1
        # Its first report is a notice that the mode is a prototype, not a synchronisation.
        self.found += [
            f"sync debug mode: {w.message}"
            for w in caught
            if "synchroniz" in str(w.message) and "prototype feature" not in str(w.message)
        ]

    def wrap(self, fn):
        """``fn`` counted whenever it is called."""

        def counted(*args, **kwargs):
            with self.counting():
                return fn(*args, **kwargs)

        return counted


def drive(device: torch.device | str, steps: int = 80) -> dict:
    """Run the reference model with an ``EplbRuntime`` on ``device`` for ``steps`` steps, on this
    process's rank (all ranks of ``torch.distributed`` when initialised).

    Returns ``{"syncs": [per step], "gather": [per step], "where": [per step], "rebalances",
    "layers_committed", "moved_experts", "errors"}``; outputs, weights and tables are checked
    after every step (AssertionError on a difference).
    """
    device = torch.device(device)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    config = EplbConfig(
        policy="rt_test_shift",
        interval=10,
        history=8,
        episode=2,
        num_redundant=world if world > 1 else 0,  # E is a multiple of the ranks
        deadline=6,
        layers_per_step=2,
    )
    result = {"syncs": [], "gather": [], "where": []}
    close_gate = open_gate()  # rt_test_shift does not balance: commit its every change
    runtime = EplbRuntime(config, MODEL.num_layers, MODEL.num_experts, device=device)
    with runtime, SyncCounter(device) as counter:
        # The kernels loaded before the first step: a first plan that loads them (or compiles
        # them, after an edit) outlasts its deadline, and those gathered meanwhile are skipped.
        assert runtime.balancer.ready.wait(300)
        model = ExpertParallelMoE(MODEL, runtime=runtime, device=device)
        baseline = ExpertParallelMoE(MODEL, device=device)
        runtime.route = counter.wrap(runtime.route)
        runtime.record = counter.wrap(runtime.record)
        for step in range(steps):
            gen = torch.Generator().manual_seed(step * 131 + rank)
            x = torch.randn((7 + rank, MODEL.hidden), generator=gen).to(device)
            bias = torch.zeros((MODEL.num_layers, MODEL.num_experts))
            bias[:, (step // 10) % MODEL.num_experts] = 3.0  # a hot expert that drifts
            bias = bias.to(device)
            counter.reset()
            y = model(x, bias)
            epochs = runtime.stats()["epochs"]
            with counter.counting():
                runtime.step()
            found = counter.reset()
            assert torch.equal(y, baseline(x, bias)), f"outputs differ at step {step}"
            _check_weights_and_tables(runtime, model)
            result["syncs"].append(len(found))
            result["gather"].append(runtime.stats()["epochs"] > epochs)
            result["where"].append(found)
            let_plan_finish(runtime)  # two shared cores: the balancer may run behind
        while runtime.busy:  # finish the plan under way (the same decision on every rank)
            runtime.step()
            time.sleep(0.01)
        stats = runtime.stats()
    close_gate()
    result["rebalances"] = len(stats["rebalances"])
    result["layers_committed"] = sum(len(r["layers_committed"]) for r in stats["rebalances"])
    result["moved_experts"] = stats["moved_experts"]
    result["errors"] = stats["errors"]
    return result


def _check_weights_and_tables(runtime: EplbRuntime, model: ExpertParallelMoE) -> None:
    p, R = runtime.placement, runtime.max_replicas
    for layer in range(MODEL.num_layers):
        fresh = expert_weights(MODEL, layer, p.by_rank()[layer, runtime.rank])
        for name, tensor in fresh.items():
            assert torch.equal(model.weights[layer][name].cpu(), tensor), (layer, name)
        for got, want in (
            (runtime.log2phy(layer), p.log2phy(R)[layer]),
            (runtime.logcnt(layer), p.logcnt[layer]),
            (runtime.replica_share(layer), p.replica_share(R)[layer]),
            (runtime.expert_map(layer), p.expert_map(runtime.rank)[layer]),
        ):
            assert np.array_equal(got.cpu().numpy(), want), layer


def check_drive(result: dict, min_rebalances: int = 3) -> None:
    """The sync goals: none without a gather, at most the bound with one."""
    # A plan late on a loaded machine is skipped, which is the runtime's business, not ours.
    assert all("not ready by its deadline" in e for e in result["errors"]), result["errors"]
    assert result["rebalances"] >= min_rebalances, result
    for step, (syncs, gather, where) in enumerate(
        zip(result["syncs"], result["gather"], result["where"], strict=True)
    ):
        assert syncs <= (GATHER_SYNC_BOUND if gather else 0), (step, gather, where)


def _drive_rank(rank: int, world: int, device: str) -> None:
    result = drive(device if device == "cpu" else f"{device}:{rank}")
    check_drive(result)
    # Every plan moved slots of all three layers; they were committed in steps without a gather.
    assert result["layers_committed"] == 3 * result["rebalances"]
    assert result["moved_experts"] > 0


@pytest.mark.multiprocess
@pytest.mark.parametrize("device", ON_EVERY_DEVICE)
def test_no_host_sync_in_steps_without_a_gather(device):
    """Two ranks: plans move experts between them (over gloo, or NCCL / HCCL between two
    devices), outputs, weights and tables stay right, and no step without a gather syncs."""
    if device != "cpu" and device_module(device).device_count() < 2:
        pytest.skip(f"needs two {device} devices")
    spawn(_drive_rank, 2, device, device=device)


@pytest.mark.parametrize("device", ACCELERATORS)
def test_no_host_sync_on_an_accelerator(device):
    """One rank (one GPU or NPU): routes, steps and gathers. No plan changes a single rank's
    placement (alignment undoes a relabelling), so the commits are counted by the next test."""
    check_drive(drive(device), min_rebalances=0)


def commit_path_syncs(device: torch.device | str, steps: int = 12) -> dict:
    """Syncs of the runtime's work in migrating steps on one rank: each step one layer's
    transfer started before the forward and committed after it (``bench_overlap``'s
    serving loop, which commits rotated slots, since no plan moves anything on one rank)."""
    from benchmarks.bench_overlap import Serving, Shape

    serving = Serving(Shape("sync", tokens=64, moved=3, hidden=256, ffn=128), device)
    with serving.runtime, SyncCounter(device) as counter:
        serving.step(True)  # warm-up outside the count
        for _ in range(steps):
            migration = serving.aim()  # the plan's tables, made once per plan in serving
            with counter.counting():
                transfer = serving.start(migration)
            serving.model(serving.x)
            with counter.counting():
                serving.commit(transfer)
                serving.runtime.step()
            serving.steps += 1
        found = counter.reset()
    return {"steps": steps, "syncs": len(found), "where": sorted(set(found))[:20]}


@pytest.mark.parametrize("device", ON_EVERY_DEVICE)
def test_no_host_sync_in_migrating_steps(device):
    result = commit_path_syncs(device)
    assert result["syncs"] == 0, result


@pytest.mark.parametrize("device", ON_EVERY_DEVICE)
def test_migrated_weights_and_tables_follow_the_placement(device):
    """After migrating steps (``bench_overlap``'s serving loop) every slot holds its expert's
    weights and the tables match the placement."""
    from benchmarks.bench_overlap import Serving, Shape

    shape = Shape("check", tokens=32, moved=3, hidden=64, ffn=32)
    serving = Serving(shape, device)
    with serving.runtime:
        for step in range(5):
            serving.step(migrate=step != 2)
        rt = serving.runtime
        placement, R = rt.placement, rt.max_replicas
        assert placement != Placement.initial(shape.layers, shape.experts, rt.topology)
        for layer in range(shape.layers):
            fresh = expert_weights(serving.model.cfg, layer, placement.phy2log[layer])
            for name, tensor in fresh.items():
                got = serving.model.weights[layer][name].cpu()
                assert torch.equal(got, tensor), (layer, name)
            assert np.array_equal(rt.log2phy(layer).cpu().numpy(), placement.log2phy(R)[layer])


def test_the_counter_sees_every_kind_of_sync():
    t = torch.arange(4)
    with SyncCounter("cpu") as counter:
        # Built inside the patch: a bound method taken before it would bypass the counter.
        kinds = [
            t[0].item,
            t.tolist,
            t.cpu,
            t.numpy,
            lambda: int(t[0]),
            lambda: float(t[0]),
            lambda: bool(t[0]),
            lambda: t.to("cpu"),
            lambda: torch.empty(4).copy_(t),
            lambda: torch.tensor([1], device="cpu"),
            lambda: torch.as_tensor(np.zeros(2), device=torch.device("cpu")),
            Event().synchronize,
        ]
        free = [
            lambda: t.add_(0),
            lambda: t.to(torch.int32),
            lambda: t.to("cpu", non_blocking=True),
            lambda: torch.empty(4).copy_(t, non_blocking=True),
            lambda: int(torch.tensor([1, 2])[1]),  # a host tensor made from host data
        ]
        t.tolist()  # outside counting(): the model's business
        with counter.counting():
            for fn in kinds:
                fn()
        assert len(counter.reset()) == len(kinds)
        with counter.counting():
            for fn in free:
                fn()
            thread = threading.Thread(target=t.tolist)  # not the serving thread
            thread.start()
            thread.join()
        assert counter.reset() == []
    assert torch.Tensor.tolist is torch._C.TensorBase.tolist  # patches removed


def test_host_staging_packs_32_bit_arrays_and_reuses_a_finished_buffer():
    staging = HostStaging(Device("cpu"), [4, 3])  # 8 + 8 words: arrays start on 32 bytes
    ids = np.array([[3, -1], [0, 2]], dtype=np.int32)
    share = np.array([0.25, 1 / 3, np.float32(1e-30)], dtype=np.float32)
    with staging.upload([ids, share]) as (got_ids, got_share):
        assert got_ids.dtype == torch.int32 and got_share.dtype == torch.float32
        assert np.array_equal(got_ids.numpy(), ids)
        assert np.array_equal(got_share.numpy(), share)  # bit for bit
        assert got_share.data_ptr() - got_ids.data_ptr() == 32
        with staging.upload([ids]) as (inner,):  # the first upload is still being read
            assert inner.data_ptr() != got_ids.data_ptr()
    for _ in range(3):  # on the CPU every event is complete at once: no third buffer
        with staging.upload([share]) as (again,):
            assert again.data_ptr() in (got_ids.data_ptr(), inner.data_ptr())
    with pytest.raises(TypeError, match=r"int32 or float32 arrays, got dtypes \['int64'\]"):
        staging.upload([np.zeros(2, dtype=np.int64)]).__enter__()
    with pytest.raises(ValueError, match="an upload of 24 words exceeds the staging size 16"):
        staging.upload([np.zeros(17, dtype=np.int32)]).__enter__()
