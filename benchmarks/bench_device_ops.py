"""The four ops on an accelerator (a GPU or an Ascend NPU) against the plain-torch references.

Before it times an op, every case checks the op's result against ``tests/reference.py`` on the
same device tensors (a fast wrong kernel is not a result). Per case, microseconds per call:

* ``eager``: back-to-back calls from Python, timed by device events (dispatch included);
* ``graph``: the same calls captured in one graph (CUDA graph, NPU graph) and replayed: the
  device time a captured step pays. ``None`` where the capture failed, with the reason in
  ``note`` (on an NPU, whether a kernel can be captured is itself a finding);
* ``reference``: the reference on the same tensors (plain torch ops, host synchronisations);
* bandwidth (``route_and_count``, ``update_expert_weights_``): bytes that must move / graph time
  (eager time where there is no graph), against a device-to-device copy of a 1 GiB buffer.

The ops: ``route_and_count`` at decode and prefill sizes (int32 / int64 ids, uniform / weighted
replicas); ``count_from_group_list`` (a rank's local slots, counts or prefix sums);
``update_expert_map_`` (one layer's tables from device memory, and from pinned host memory as
the runtime's commit sends them); ``update_expert_weights_`` (the experts moved into one layer:
bf16 experts of a 2048-hidden model, int8 DeepSeek-V3 experts with their scales).

Goals (issue 7, GPU): ``route_and_count`` >= 70 % of the copy bandwidth at prefill sizes, <= 10 us
at decode, faster than the reference at both. NPU: no goal yet; this is its first measurement.

    PYTHONPATH=$PWD python benchmarks/bench_device_ops.py               # the accelerator present
    PYTHONPATH=$PWD python benchmarks/bench_device_ops.py --device npu --json npu_ops.json
    python -m pytest benchmarks/bench_device_ops.py -q                  # through pytest-benchmark

``--device cpu`` runs the script's own code on the host clock with small sizes (``--quick``),
which is how the tests check it on a machine without an accelerator.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from benchmarks.accel import Accel, parse_with_device, present
from eplb_rt import ops
from tests import reference


@dataclass(frozen=True)
class Case:
    """One timed case: ``run`` calls the op, ``plain`` the reference, ``check`` compares the two
    on fresh copies of the outputs (raises ``AssertionError`` naming the case)."""

    op: str
    size: str
    run: Callable[[], object]
    plain: Callable[[], object]
    check: Callable[[], None]
    moved_bytes: int = 0  # bytes read and written per call (0: not a bandwidth case)
    graph: bool = True  # whether the call may be captured
    info: dict = dataclasses.field(default_factory=dict)  # more columns of the row


@dataclass(frozen=True)
class RouteSize:
    name: str
    num_tokens: int
    top_k: int = 8
    num_experts: int = 256
    num_slots: int = 288  # 32 redundant slots
    max_replicas: int = 2
    ring_size: int = 16
    num_layers: int = 4


ROUTE_SIZES = [
    RouteSize("decode", 64),
    RouteSize("decode_large_batch", 256),
    RouteSize("prefill", 16384),
    RouteSize("prefill_large", 262144),
]
ROUTE_SIZES_QUICK = [RouteSize("decode", 64), RouteSize("prefill", 4096)]


@dataclass(frozen=True)
class ExpertShape:
    """One layer's experts on a rank: ``w13 [S, 2F, H]`` and ``w2 [S, H, F]`` of ``dtype``, with
    per-channel float32 scales when ``dtype`` is int8; ``moved`` of the ``S`` slots are copied."""

    name: str
    hidden: int
    ffn: int
    dtype: torch.dtype
    slots: int = 9
    moved: int = 4


EXPERT_SHAPES = [
    ExpertShape("bf16_h2048_f768", 2048, 768, torch.bfloat16),
    ExpertShape("int8_h7168_f2048", 7168, 2048, torch.int8),
]
EXPERT_SHAPES_QUICK = [ExpertShape("bf16_h64_f32", 64, 32, torch.bfloat16, slots=5, moved=2)]


def _equal(case: str, got: torch.Tensor, want: torch.Tensor) -> None:
    if not torch.equal(got.cpu(), want.cpu()):
        raise AssertionError(f"{case}: the op's result differs from the reference's")


def route_case(size: RouteSize, dtype: torch.dtype, weighted: bool, device: str) -> Case:
    gen = torch.Generator().manual_seed(0)
    e, p, r = size.num_experts, size.num_slots, size.max_replicas
    # Experts 0 .. p-e-1 get a second replica, on slots e .. p-1.
    log2phy = torch.full((e, r), -1, dtype=torch.int32)
    log2phy[:, 0] = torch.arange(e, dtype=torch.int32)
    log2phy[: p - e, 1] = torch.arange(e, p, dtype=torch.int32)
    logcnt = (log2phy >= 0).sum(1).to(torch.int32)
    share = (log2phy >= 0).float() / logcnt[:, None].float() if weighted else None
    ids = torch.randint(e, (size.num_tokens, size.top_k), generator=gen).to(dtype)
    ring = torch.zeros(size.ring_size, size.num_layers, p, dtype=torch.int32)
    ids, log2phy, logcnt, ring = (t.to(device) for t in (ids, log2phy, logcnt, ring))
    share = None if share is None else share.to(device)
    step = torch.tensor([3], dtype=torch.int64, device=device)
    heat = ring[:, 1, :]
    phy = torch.full_like(ids, -1)

    def run():
        ops.route_and_count(ids, log2phy, logcnt, heat, step, replica_share=share, out=phy)

    def plain():
        # The reference makes its index tensors on the default device: put them on ours.
        with torch.device(device):
            return reference.route_and_count(ids, log2phy, logcnt, heat, step, replica_share=share)

    def check():
        mine, theirs = heat.clone(), heat.clone()
        out = ops.route_and_count(ids, log2phy, logcnt, mine, step, replica_share=share)
        with torch.device(device):
            want = reference.route_and_count(
                ids, log2phy, logcnt, theirs, step, replica_share=share
            )
        _equal(f"route_and_count {size.name}", out, want)
        _equal(f"route_and_count {size.name} (heat)", mine, theirs)

    tables = log2phy.nbytes + logcnt.nbytes + (0 if share is None else share.nbytes)
    moved = ids.nbytes + phy.nbytes + tables + 2 * heat.shape[1] * heat.element_size()
    ids_name, shares = str(dtype).removeprefix("torch."), "weighted" if weighted else "uniform"
    info = {"N": size.num_tokens, "ids": ids_name, "shares": shares}
    return Case(
        "route_and_count", f"{size.name} {ids_name} {shares}", run, plain, check, moved, info=info
    )


def count_case(local_slots: int, cumulative: bool, device: str) -> Case:
    gen = torch.Generator().manual_seed(1)
    counts = torch.randint(0, 512, (local_slots,), generator=gen, dtype=torch.int64)
    group_list = (counts.cumsum(0) if cumulative else counts).to(device)
    heat = torch.zeros(16, 4 * local_slots, dtype=torch.int32, device=device)
    step = torch.tensor([5], dtype=torch.int64, device=device)
    offset = 2 * local_slots
    size = f"S={local_slots} {'prefix sums' if cumulative else 'counts'}"

    def check():
        mine, theirs = heat.clone(), heat.clone()
        ops.count_from_group_list(group_list, mine, step, offset, cumulative)
        reference.count_from_group_list(group_list, theirs, step, offset, cumulative)
        _equal(f"count_from_group_list {size}", mine, theirs)

    return Case(
        "count_from_group_list",
        size,
        lambda: ops.count_from_group_list(group_list, heat, step, offset, cumulative),
        lambda: reference.count_from_group_list(group_list, heat, step, offset, cumulative),
        check,
    )


def map_case(source: str, device: str, num_experts: int = 256, num_slots: int = 288) -> Case:
    """One layer's routing tables overwritten from ``source`` (``device`` or pinned ``host``)."""
    e, p = num_experts, num_slots
    gen = torch.Generator().manual_seed(2)
    order = torch.randperm(p, generator=gen).to(torch.int32)
    new_log2phy = torch.full((e, 2), -1, dtype=torch.int32)
    new_log2phy[:, 0] = order[:e]
    new_log2phy[: p - e, 1] = order[e:]
    new_logcnt = (new_log2phy >= 0).sum(1).to(torch.int32)
    new_share = (new_log2phy >= 0).float() / new_logcnt[:, None].float()
    new_map = torch.where(order[:e] < p // 8, order[:e], -1).to(torch.int32)
    new = [new_log2phy, new_logcnt, new_share, new_map]
    if source == "device":
        new = [t.to(device) for t in new]
    elif device != "cpu":
        new = [t.pin_memory() for t in new]
    live = [torch.zeros_like(t, device=device) for t in new]

    def call(fn, tables):
        log2phy, logcnt, share, expert_map = tables
        fn(log2phy, logcnt, new[0], new[1], num_slots=p, replica_share=share,
           new_replica_share=new[2], expert_map=expert_map, new_expert_map=new[3])  # fmt: skip

    def check():
        mine, theirs = [t.clone() for t in live], [t.clone() for t in live]
        call(ops.update_expert_map_, mine)
        call(reference.update_expert_map_, theirs)
        for a, b in zip(mine, theirs, strict=True):
            _equal(f"update_expert_map_ from {source}", a, b)

    return Case(
        "update_expert_map_",
        f"E={e} P={p} from {source}",
        lambda: call(ops.update_expert_map_, live),
        lambda: call(reference.update_expert_map_, live),
        check,
        graph=source == "device",  # a host source is checked on the host first: not capturable
    )


def weights_case(shape: ExpertShape, device: str) -> Case:
    s, m, h, f = shape.slots, shape.moved, shape.hidden, shape.ffn
    gen = torch.Generator().manual_seed(3)
    shapes = [(2 * f, h), (h, f)]
    if shape.dtype == torch.int8:
        shapes += [(2 * f,), (h,)]  # the per-channel scales move with their expert

    def tensor(rows: int, trailing: tuple[int, ...], scale: bool) -> torch.Tensor:
        if scale or shape.dtype.is_floating_point:
            t = torch.rand((rows, *trailing), generator=gen)
            return t.to(torch.float32 if scale else shape.dtype)
        return torch.randint(-128, 128, (rows, *trailing), generator=gen, dtype=torch.int8)

    weights = [tensor(s, t, i >= 2).to(device) for i, t in enumerate(shapes)]
    staged = [tensor(m, t, i >= 2).to(device) for i, t in enumerate(shapes)]
    slots = torch.randperm(s, generator=gen)[:m].to(device)

    def check():
        mine, theirs = [w.clone() for w in weights], [w.clone() for w in weights]
        ops.update_expert_weights_(mine, staged, slots)
        reference.update_expert_weights_(theirs, staged, slots)
        for a, b in zip(mine, theirs, strict=True):
            _equal(f"update_expert_weights_ {shape.name}", a, b)

    moved = 2 * sum(t.nbytes for t in staged)  # read from staging, written into the slots
    return Case(
        "update_expert_weights_",
        f"{shape.name} {m} of {s} slots",
        lambda: ops.update_expert_weights_(weights, staged, slots),
        lambda: reference.update_expert_weights_(weights, staged, slots),
        check,
        moved,
    )


def specs(
    device: str, quick: bool = False, which: tuple[str, ...] = ()
) -> list[tuple[str, Callable[[], Case]]]:
    """``(name, build)`` of every case of the ops named in ``which`` (all when empty) on
    ``device``; a case's tensors exist only once it is built (the large ones one at a time)."""
    out = []
    for size in ROUTE_SIZES_QUICK if quick else ROUTE_SIZES:
        for dtype in (torch.int32, torch.int64):
            for weighted in (False, True):
                name = f"route_and_count {size.name} {str(dtype)[6:]} {'w' if weighted else 'u'}"
                out.append((name, functools.partial(route_case, size, dtype, weighted, device)))
    for n in (9, 72):
        for cum in (False, True):
            name = f"count_from_group_list S={n} {'cumulative' if cum else 'counts'}"
            out.append((name, functools.partial(count_case, n, cum, device)))
    for source in ("device", "host"):
        out.append((f"update_expert_map_ {source}", functools.partial(map_case, source, device)))
    for shape in EXPERT_SHAPES_QUICK if quick else EXPERT_SHAPES:
        name = f"update_expert_weights_ {shape.name}"
        out.append((name, functools.partial(weights_case, shape, device)))
    unknown = [w for w in which if not any(w in name for name, _ in out)]
    if unknown:
        ops = sorted({name.split()[0] for name, _ in out})
        raise ValueError(f"--ops {','.join(unknown)}: no such case; the ops are {', '.join(ops)}")
    return [(name, build) for name, build in out if not which or any(w in name for w in which)]


def measure(case: Case, acc: Accel, copy_gbs: float | None, iters: int | None = None) -> dict:
    """One table row of ``case``: the check, then the timings (microseconds per call)."""
    case.check()
    iters = iters or (200 if case.moved_bytes < (8 << 20) else 20)
    row = {"op": case.op, "size": case.size, **case.info}
    row["eager us"] = acc.elapsed_us(case.run, iters)
    row["graph us"], row["note"] = None, ""
    if case.graph and acc.has_graphs:
        try:
            row["graph us"] = acc.graph_us(case.run)
        except Exception as error:  # a failed capture is a finding, not a crash
            row["note"] = f"graph capture failed: {type(error).__name__}: {str(error)[:200]}"
    elif case.graph:
        row["note"] = "no graphs on this device"
    else:
        row["note"] = "not captured (host source)"
    row["reference us"] = acc.elapsed_us(case.plain, max(iters // 10, 3))
    row["speed-up"] = row["reference us"] / row["eager us"]
    if case.moved_bytes:
        timed = row["graph us"] or row["eager us"]
        row["GB/s"] = case.moved_bytes / (timed * 1e-6) / 1e9
        row["% of copy"] = 100.0 * row["GB/s"] / copy_gbs if copy_gbs else None
    return row


def table(rows: list[dict]) -> str:
    columns = ["op", "size", "eager us", "graph us", "reference us", "speed-up", "GB/s"]
    columns += ["% of copy", "note"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row.get(c) for c in columns]
        text = ["" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v) for v in cells]
        lines.append("| " + " | ".join(text) + " |")
    return "\n".join(lines)


def run(device: str, quick: bool = False, which: tuple[str, ...] = ()) -> dict:
    """The whole benchmark on ``device``: ``{"device", "copy_gbs", "rows"}``; a case that
    raised is a row with its ``error``."""
    acc = Accel(device)
    copy_gbs = acc.copy_bandwidth_gbs(1 << (24 if quick else 30))
    rows = []
    for name, build in specs(device, quick, which):
        # A case that fails is a row saying so: the other cases' figures are kept.
        try:
            rows.append(measure(build(), acc, copy_gbs))
        except Exception as err:  # a wrong kernel, a launch error, a capture that crashed
            error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            rows.append({"op": name.split()[0], "size": name, "error": error, "note": error})
    return {"device": acc.name(), "copy_gbs": copy_gbs, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default="", help="comma-separated op names (default: all four)")
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args, device = parse_with_device(parser, argv)
    if device is None:
        return 2
    which = tuple(w for w in args.ops.split(",") if w)
    try:
        specs(device, args.quick, which)  # names checked before any case is built
    except ValueError as err:
        print(f"bench_device_ops: {err}", file=sys.stderr)
        return 2
    result = run(device, args.quick, which)
    print(f"device: {result['device']}, copy bandwidth {result['copy_gbs']:.0f} GB/s\n")
    print(table(result["rows"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


DEVICE = present()
SPECS = specs(DEVICE) if DEVICE else []


@pytest.mark.skipif(DEVICE is None, reason="needs an accelerator with eplb_rt's backend")
@pytest.mark.parametrize("build", [b for _, b in SPECS], ids=[n for n, _ in SPECS])
def test_op_speed(benchmark, build):
    acc = Accel(DEVICE)
    case = build()

    def call_and_wait():
        case.run()
        acc.synchronize()

    benchmark.pedantic(call_and_wait, rounds=50, warmup_rounds=5)
    benchmark.extra_info.update(measure(case, acc, None))


if __name__ == "__main__":
    sys.exit(main())
