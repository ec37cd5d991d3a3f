"""route_and_count on the CPU against the plain-torch reference (tests/reference.py).

    python -m pytest benchmarks/bench_ops.py --benchmark-group-by=param:size

Sizes: decode (N=64) and prefill (N=16384) tokens, top-8 of 256 experts, on 288 slots (32 ranks x
9) where the 32 redundant slots give some experts 2-3 replicas; uniform split and replica shares.
"""

from __future__ import annotations

import pytest
import torch

from eplb_rt import ops
from tests import reference
from tests.ops.helpers import realistic_tables

SIZES = {"decode": 64, "prefill": 16384}
TOP_K = 8
NUM_EXPERTS = 256
NUM_SLOTS = 288
HEAT_ROWS = 16
NUM_LAYERS = 4


def _inputs(num_tokens: int):
    tables = realistic_tables(NUM_EXPERTS, NUM_SLOTS, seed=0)
    gen = torch.Generator().manual_seed(1)
    # Skewed expert popularity, as routers produce; top-k without repeats per token.
    weights = torch.rand(NUM_EXPERTS, generator=gen) ** 3 + 0.01
    ids = torch.multinomial(weights.expand(num_tokens, -1), TOP_K, generator=gen)
    ring = torch.zeros((HEAT_ROWS, NUM_LAYERS, NUM_SLOTS), dtype=torch.int32)
    heat = ring[:, 2, :]
    step = torch.tensor([21], dtype=torch.int64)
    return tables, ids, heat, step


@pytest.mark.parametrize("shares", [False, True], ids=["uniform", "shares"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_route_and_count(benchmark, impl, size, shares):
    tables, ids, heat, step = _inputs(SIZES[size])
    share = tables.replica_share if shares else None
    benchmark.group = f"route_and_count {size} {'shares' if shares else 'uniform'}"
    if impl == "kernel":
        out = torch.empty_like(ids)
        benchmark(
            ops.route_and_count,
            ids,
            tables.log2phy,
            tables.logcnt,
            heat,
            step,
            replica_share=share,
            out=out,
        )
    else:
        benchmark(
            reference.route_and_count,
            ids,
            tables.log2phy,
            tables.logcnt,
            heat,
            step,
            replica_share=share,
        )
