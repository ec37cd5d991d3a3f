"""Migration overlap on a GPU or an Ascend NPU, measured through ``EplbRuntime`` and its
``MigrationExecutor``.

The reference model (``eplb_rt.models.ExpertParallelMoE``, bf16, routing through the runtime)
serves step after step on one device. In a migrating step the runtime's executor starts one layer's
transfer (the moved experts copied into a staging lane on the dedicated stream, after an event
of the serving stream) before the forward, and at the step boundary the runtime commits it
(``_commit_layer``: the serving stream waits on the transfer's event, then
``update_expert_weights_`` and ``update_expert_map_`` from one pinned upload). One device is one
rank, where a policy never moves an expert (slot order within a rank does not change its load),
so each migrating step commits the layer's placement with ``moved`` of its slots rotated, and
the next one rotates them further: the same copies a policy's moves would cost on this rank.
The plans are made in the warm-up (the runtime plans once per rebalance, not per step), so a
migrating step pays only the runtime's own host work: the executor's start and the commit.

Two questions, answered apart because the reference model cannot answer the first: its forward
synchronises with the host in every layer (``.cpu()``, ``.tolist()`` of the group list), so its
device timeline is mostly idle and any copy fits in the gaps.

* **Device overlap** (goal: ``hidden %`` >= 80): the forward's expert work without any host
  synchronisation (``bmm`` of ``tokens * top_k / experts`` rows per slot through the registered
  ``w1``/``w2`` of every layer, the whole step queued behind a hold of the stream: CUDA's sleep
  kernel, on an NPU a chain of matrix products, ``Accel.hold``), alone and with one layer's
  transfer started at the same instant on the executor's stream. ``hidden %`` =
  ``1 - (both - forward) / transfer``, all device times (device events, medians of 5). On one
  device the copy is local, at HBM speed, so against memory-bound decode GEMMs it competes for
  the same bandwidth; between ranks it would run at link speed and take a far smaller share of
  HBM.
* **Host cost**: microseconds of the serving thread in the executor's ``start`` and in the
  commit (the runtime's work in a migrating step), and the reference model's wall-clock step
  without (``step none us``) and with a migration (``step migrate us``), the device drained at
  both ends. ``commit us`` is the commit's device time on the serving stream (it must be ordered
  with the layer's readers, so it is never hidden).

Run where eplb_rt has the device's backend (``--device cpu`` runs the code on the host clock,
without streams, to check it; its figures mean nothing):
    PYTHONPATH=$PWD python benchmarks/bench_overlap.py [--device npu]   # prints a markdown table
    python -m pytest benchmarks/bench_overlap.py -q
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from benchmarks.accel import Accel, parse_with_device, present
from eplb_rt.config import EplbConfig
from eplb_rt.models import ExpertParallelMoE, MoEConfig
from eplb_rt.placement import Placement
from eplb_rt.runtime import EplbRuntime
from eplb_rt.runtime.migration import plan_migration

DEVICE = present()


@dataclass(frozen=True)
class Shape:
    name: str
    tokens: int  # tokens per forward step
    moved: int = 4  # experts copied into one layer per migrating step
    layers: int = 2
    experts: int = 16
    top_k: int = 8
    hidden: int = 4096
    ffn: int = 1536  # intermediate size of one expert


SHAPES = [Shape("decode_moved4", 64), Shape("prefill_moved4", 4096), Shape("decode_moved8", 64, 8)]


class Serving:
    """The reference model with an ``EplbRuntime`` on ``device`` (its current index)."""

    def __init__(self, shape: Shape, device: str) -> None:
        self.shape = shape
        self.acc = Accel(device)
        cfg = MoEConfig(
            num_layers=shape.layers,
            num_experts=shape.experts,
            top_k=shape.top_k,
            hidden=shape.hidden,
            ffn=shape.ffn,
            dtype=torch.bfloat16,
        )
        config = EplbConfig(policy="deepseek", interval=0, history=4, episode=1, warm_up=False)
        self.runtime = EplbRuntime(config, shape.layers, shape.experts, device=device)
        self.model = ExpertParallelMoE(cfg, runtime=self.runtime, device=device)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn((shape.tokens, shape.hidden), generator=gen).to(device, cfg.dtype)
        self.steps = 0
        self._plans = {}  # a layer's slots cycle: plan each (layer, row) once, not per step

    def _plan(self, layer: int):
        """A placement whose row ``layer`` is the current one with its first ``moved`` slots
        rotated by one (a commit reads only that row), and the layer's migration to it."""
        key = (layer, self.runtime.placement.phy2log[layer].tobytes())
        if key not in self._plans:
            phy2log = self.runtime.placement.phy2log.copy()
            phy2log[layer, : self.shape.moved] = np.roll(phy2log[layer, : self.shape.moved], 1)
            target = Placement(phy2log, self.shape.experts, 1)
            (migration,) = plan_migration(self.runtime.placement, target)
            self._plans[key] = target, migration
        return self._plans[key]

    def aim(self):
        """Make the next layer's placement the runtime's target (done once per plan in serving,
        so it is not part of a migrating step's cost); returns its migration."""
        target, migration = self._plan(self.steps % self.shape.layers)
        self.runtime._set_target(target)
        return migration

    def start(self, migration=None):
        """Start the transfer of ``migration`` (default: the next layer's) on the dedicated
        stream."""
        migration = self.aim() if migration is None else migration
        return self.runtime.executor.start(migration, 0)

    def commit(self, transfer) -> None:
        error = self.runtime.executor.finish(transfer)
        if error is not None:
            raise RuntimeError(error)
        self.runtime._commit_layer(transfer)

    def step(self, migrate: bool) -> None:
        transfer = self.start() if migrate else None
        self.model(self.x)
        if transfer is not None:
            self.commit(transfer)
        self.runtime.step()
        self.steps += 1

    def slot_bytes(self) -> int:
        return self.runtime.executor.slot_bytes(0)


def _wall_us(acc: Accel, fn, iters: int) -> float:
    """Microseconds per call of ``fn`` by the wall clock, the device drained before and after."""
    acc.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    acc.synchronize()
    return (time.perf_counter() - start) * 1e6 / iters


def _device_us(acc: Accel, fn, stream) -> float:
    """Device microseconds of the work ``fn`` puts on ``stream``, started on an idle device; a
    hold keeps the stream busy until ``fn`` has queued everything, so host gaps between its
    launches are not counted."""
    acc.synchronize()
    start, end = acc.event(), acc.event()
    with acc.on_stream(stream):
        acc.hold()
    start.record(stream)
    fn()
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) * 1000.0


def stand_in_forward(serving: Serving):
    """The forward's expert work with no host synchronisation: per layer, one ``bmm`` pair of
    ``tokens * top_k / experts`` rows per slot through the registered weights (balanced
    routing), so the whole step can be queued on the device ahead of its execution."""
    shape, model = serving.shape, serving.model
    rows = -(-shape.tokens * shape.top_k // model.slots)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((model.slots, rows, shape.hidden), generator=gen)
    x = x.to(model.device, model.cfg.dtype)

    def forward() -> None:
        for w in model.weights:
            torch.bmm(torch.nn.functional.silu(torch.bmm(x, w["w1"])), w["w2"])

    return forward


def _overlapped_us(serving: Serving, forward) -> tuple[float, float]:
    """Device microseconds until the forward ends and until both it and a transfer started at
    the same instant end (the transfer waits on an event behind the hold)."""
    acc = serving.acc
    acc.synchronize()
    start, forward_end, end = (acc.event() for _ in range(3))
    acc.hold()
    start.record()
    transfer = serving.start()
    forward()
    forward_end.record()
    serving.runtime.dev.wait_event(transfer.event)
    end.record()
    end.synchronize()
    serving.commit(transfer)
    return start.elapsed_time(forward_end) * 1000.0, start.elapsed_time(end) * 1000.0


def _host_us(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return (time.perf_counter() - started) * 1e6, result


def measure(shape: Shape, device: str, steps: int = 20, serving: Serving | None = None) -> dict:
    """One row of the table on ``device`` (see the module docstring)."""
    own = serving is None
    serving = serving or Serving(shape, device)
    try:
        return _measure(shape, steps, serving)
    finally:
        if own:
            serving.runtime.shutdown()


def _measure(shape: Shape, steps: int, serving: Serving) -> dict:
    # Warm-up: allocator, staging lane, kernels, and the plans of every layer's cycle.
    for _ in range(shape.moved * shape.layers):
        serving.step(migrate=True)
    serving.step(migrate=False)
    acc = serving.acc
    serving_stream = acc.current_stream()
    forward = stand_in_forward(serving)
    forward()
    transfer_stream = serving.runtime.executor.stream
    transfer_us = float(
        np.median([_device_us(acc, serving.start, transfer_stream) for _ in range(5)])
    )
    forward_us = float(np.median([_device_us(acc, forward, serving_stream) for _ in range(5)]))
    overlapped = np.median([_overlapped_us(serving, forward) for _ in range(5)], axis=0)
    commits, host_start, host_commit = [], [], []
    for _ in range(5):
        pending = serving.start()
        commits.append(_device_us(acc, functools.partial(serving.commit, pending), serving_stream))
        acc.synchronize()
        start_us, pending = _host_us(functools.partial(serving.start, serving.aim()))
        host_start.append(start_us)
        host_commit.append(_host_us(functools.partial(serving.commit, pending))[0])
    none = _wall_us(acc, lambda: serving.step(False), steps)
    migrate = _wall_us(acc, lambda: serving.step(True), steps)
    return {
        "shape": shape.name,
        "tokens": shape.tokens,
        "moved": shape.moved,
        "copy MiB": shape.moved * serving.slot_bytes() / 2**20,
        "transfer us": transfer_us,
        "forward us": forward_us,
        "forward with transfer us": float(overlapped[0]),
        "both us": float(overlapped[1]),
        "hidden %": 100.0 * (1.0 - (float(overlapped[1]) - forward_us) / transfer_us),
        "commit us": float(np.median(commits)),
        "host start us": float(np.median(host_start)),
        "host commit us": float(np.median(host_commit)),
        "step none us": none,
        "step migrate us": migrate,
    }


@pytest.mark.skipif(DEVICE is None, reason="needs an accelerator with eplb_rt's backend")
@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_migration_overlap(benchmark, shape):
    serving = Serving(shape, DEVICE)
    benchmark.pedantic(lambda: serving.step(True), rounds=10, warmup_rounds=2)
    benchmark.extra_info.update(measure(shape, DEVICE, serving=serving))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _, device = parse_with_device(parser, argv)
    if device is None:
        return 2
    print(f"device: {Accel(device).name()}\n")
    rows = [measure(shape, device) for shape in SHAPES]
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
