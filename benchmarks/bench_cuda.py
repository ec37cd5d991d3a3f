"""route_and_count on a GPU: the CUDA kernel against the plain-torch reference.

For each size the table gives the time per call two ways, and the bandwidth the kernel reaches
against the device's measured copy bandwidth:

* ``eager``: back-to-back calls from Python, timed with CUDA events (includes dispatch);
* ``graph``: the same calls captured in a CUDA graph and replayed (device time per kernel,
  what a captured decode step pays);
* ``reference``: tests/reference.py run on the GPU tensors (plain torch ops, one ``.item()``);
* bandwidth = bytes that must move (topk_ids read, phy_ids written, the tables and the heat row)
  / graph time, against a device-to-device copy of a 1 GiB buffer (read + write).

Goals (issue 7): >= 70% of the measured copy bandwidth at prefill sizes, <= 10 us at decode
sizes, faster than the reference at both.

Run on a GPU machine with the CUDA backend built:
    PYTHONPATH=$PWD python benchmarks/bench_cuda.py      # prints a markdown table
    python -m pytest benchmarks/bench_cuda.py -q         # the same through pytest-benchmark
Without a GPU or without the CUDA backend both skip.
"""

import importlib
from dataclasses import dataclass

import pytest
import torch

import eplb_rt


def cuda_ready() -> bool:
    """A GPU and the CUDA backend of eplb_rt._C (the only reason to skip)."""
    return torch.cuda.is_available() and bool(eplb_rt.build_info()["backends"]["cuda"])


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not cuda_ready(), reason="needs eplb_rt's CUDA backend and a GPU"),
]


def elapsed_us(fn, iters: int, stream=None) -> float:
    """Mean microseconds per call of fn() on `stream`, by CUDA events around `iters` calls."""
    stream = stream or torch.cuda.current_stream()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    for _ in range(iters):
        fn()
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) * 1000.0 / iters


def graph_us(fn, launches: int = 50, replays: int = 20) -> float:
    """Microseconds per fn() when `launches` calls are captured in one CUDA graph and replayed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up outside the capture (lazy initialisation)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(launches):
            fn()
    graph.replay()
    return elapsed_us(graph.replay, replays) / launches


def copy_bandwidth_gbs(num_bytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second)."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * num_bytes / (elapsed_us(lambda: dst.copy_(src), 10) * 1e-6) / 1e9


@dataclass(frozen=True)
class Size:
    name: str
    num_tokens: int
    top_k: int = 8
    num_experts: int = 256
    num_slots: int = 288  # 32 redundant slots
    max_replicas: int = 2
    ring_size: int = 16
    num_layers: int = 4


SIZES = [
    Size("decode", 64),
    Size("decode_large_batch", 256),
    Size("prefill", 16384),
    Size("prefill_large", 262144),
]


def make_inputs(size: Size, dtype: torch.dtype, weighted: bool):
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
    step = torch.tensor([3], dtype=torch.int64)
    tensors = [ids, log2phy, logcnt, share, ring, step]
    ids, log2phy, logcnt, share, ring, step = (None if t is None else t.cuda() for t in tensors)
    heat = ring[:, 1, :]
    return (ids, log2phy, logcnt, share, heat, step, torch.full_like(ids, -1))


def moved_bytes(args) -> int:
    ids, log2phy, logcnt, share, heat, _, phy = args
    tables = log2phy.nbytes + logcnt.nbytes + (0 if share is None else share.nbytes)
    return ids.nbytes + phy.nbytes + tables + 2 * heat.shape[1] * heat.element_size()


def measure(size: Size, dtype: torch.dtype, weighted: bool, copy_gbs: float) -> dict:
    args = make_inputs(size, dtype, weighted)
    reference = importlib.import_module("tests.reference")
    ids, log2phy, logcnt, share, heat, step, _ = args

    def kernel():
        torch.ops.eplb_rt.route_and_count(*args)

    def plain():
        # The reference makes its index tensors on the default device: put them on the GPU.
        with torch.device("cuda"):
            reference.route_and_count(ids, log2phy, logcnt, heat, step, replica_share=share)

    iters = 200 if size.num_tokens <= 4096 else 20
    kernel_graph = graph_us(kernel)
    row = {
        "size": size.name,
        "N": size.num_tokens,
        "ids": str(dtype).removeprefix("torch."),
        "shares": "weighted" if weighted else "uniform",
        "kernel eager us": elapsed_us(kernel, iters),
        "kernel graph us": kernel_graph,
        "reference eager us": elapsed_us(plain, max(iters // 10, 3)),
        "GB/s": moved_bytes(args) / (kernel_graph * 1e-6) / 1e9,
    }
    row["% of copy"] = 100.0 * row["GB/s"] / copy_gbs
    row["speed-up"] = row["reference eager us"] / row["kernel eager us"]
    return row


CASES = [(s, d, w) for s in SIZES for d in (torch.int32, torch.int64) for w in (False, True)]


@pytest.mark.parametrize(
    ("size", "dtype", "weighted"),
    CASES,
    ids=[f"{s.name}-{str(d)[6:]}-{'w' if w else 'u'}" for s, d, w in CASES],
)
def test_route_and_count_speed(benchmark, size, dtype, weighted):
    args = make_inputs(size, dtype, weighted)

    def call_and_wait():
        torch.ops.eplb_rt.route_and_count(*args)
        torch.cuda.synchronize()

    benchmark.pedantic(call_and_wait, rounds=50, warmup_rounds=5)
    benchmark.extra_info.update(measure(size, dtype, weighted, copy_bandwidth_gbs()))


def main() -> None:
    if not cuda_ready():
        print("skipped: needs eplb_rt's CUDA backend and a GPU")
        return
    copy_gbs = copy_bandwidth_gbs()
    print(f"device: {torch.cuda.get_device_name()}, measured copy bandwidth {copy_gbs:.0f} GB/s\n")
    rows = [measure(*case, copy_gbs) for case in CASES]
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
