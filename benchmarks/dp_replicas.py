"""Per-step balance of replicas under data-parallel attention, with and without rank offsets.

Each of ``D`` ranks routes its own batch of ``n`` tokens (top-8 of DeepSeek-V3's routed
experts, drawn per token from a layer's load in SGLang's ``prefill_in1024`` dump) through one
placement planned on that load (``equilibrium``, 32 x 9 slots: hot experts replicated). A step's
PAR is the most tokens one rank's slots receive over the mean. ``same``: every rank's replica
rule counts its tokens from 0 (``EplbConfig.rank_local_tokens=False``); ``offset``: rank ``r``
shifts its codes by ``r * 2^16 / D`` (``rank_local_tokens=True``). Deterministic (seeded).

    PYTHONPATH=. python benchmarks/dp_replicas.py [--steps 200] [--layers 10 30 50]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks import traces
from eplb_rt import ops
from eplb_rt.algorithms import plan
from eplb_rt.placement import Topology

TOP_K = 8


def _draws(rng: np.random.Generator, p: np.ndarray, tokens: int) -> torch.Tensor:
    """``[tokens, 8]`` distinct experts per token, drawn by weight ``p`` (Gumbel top-k)."""
    keys = np.log(p)[None, :] - np.log(-np.log(rng.random((tokens, p.size))))
    return torch.from_numpy(np.argsort(-keys, axis=1)[:, :TOP_K].copy())


def step_par(placement, layer: int, batches: list[torch.Tensor], step: int, offsets) -> float:
    """PAR of the tokens each rank's slots receive when rank r routes ``batches[r]``."""
    D, S = placement.num_ranks, placement.num_slots_per_rank
    R = int(placement.logcnt.max())
    log2phy = torch.from_numpy(placement.log2phy(R)[layer].astype(np.int32))
    logcnt = torch.from_numpy(placement.logcnt[layer].astype(np.int32))
    heat = torch.zeros((1, D * S), dtype=torch.int32)
    step_t = torch.tensor([step])
    for batch, offset in zip(batches, offsets, strict=True):
        ops.route_and_count(batch, log2phy, logcnt, heat, step_t, code_offset=offset)
    per_rank = heat.reshape(D, S).sum(dim=1).double()
    return float(per_rank.max() / per_rank.mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--layers", type=int, nargs="+", default=[10, 30, 50])
    args = parser.parse_args(argv)
    load = traces.deepseek_v3("prefill_in1024", moe_only=True)[0]  # [58, 256]
    topo = Topology(32, 9)
    placement = plan("equilibrium", load[None], topo)
    D = topo.num_ranks
    print(f"DeepSeek-V3 prefill_in1024, {D} ranks x 9 slots, top-{TOP_K}, {args.steps} steps")
    print("tokens/rank | layer | PAR same | PAR offset | ratio")
    for tokens in (1, 4, 16, 128):
        for layer in args.layers:
            p = load[layer] / load[layer].sum()
            rng = np.random.default_rng(layer * 1000 + tokens)
            same, shifted = [], []
            for step in range(args.steps):
                batches = [_draws(rng, p, tokens) for _ in range(D)]
                same.append(step_par(placement, layer, batches, step, [0] * D))
                offsets = [(r << 16) // D for r in range(D)]
                shifted.append(step_par(placement, layer, batches, step, offsets))
            a, b = np.mean(same), np.mean(shifted)
            print(f"{tokens:11d} | {layer:5d} | {a:8.3f} | {b:10.3f} | {b / a:.3f}")


if __name__ == "__main__":
    main()
