"""A vLLM-style fused MoE layer balanced by eplb_rt, on several CPU processes (gloo).

Every rank holds ``S`` expert slots per MoE layer (``w13 [S, 2I, H]``, ``w2 [S, H, I]``). The
router's logical top-k ids go through ``EplbRuntime.route`` (physical ids out, heat recorded in
the same op), or, with ``--heat-source group_list``, are mapped through the runtime's tables and
counted per local slot with ``EplbRuntime.record``. Each rank computes the (token, k) pairs whose
physical slot it holds and the partial outputs are summed with an all-reduce.
``runtime.step()`` closes every forward step. The router is skewed towards a few experts and the
skew drifts, so the runtime re-plans, migrates weights between the ranks and commits new routing
tables while the model runs.

Checks made on every step and at the end, on every rank:

* the output equals a plain MoE over the logical experts (no EPLB) within float tolerance, before
  and after every commit;
* the tensors the layers read (``log2phy``/``logcnt``/``replica_share`` and the registered
  weights) keep their storage: what a captured graph points at stays valid;
* after the run each slot holds the weights of the expert the current placement assigns it.

Run: ``PYTHONPATH=. python examples/fused_moe_eplb.py --ranks 2 --steps 120 [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.constants import default_pg_timeout

from eplb_rt.config import EplbConfig
from eplb_rt.runtime import EplbRuntime


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, default=2, help="processes (expert-parallel ranks)")
    p.add_argument("--steps", type=int, default=120, help="forward steps")
    p.add_argument("--layers", type=int, default=2, help="MoE layers")
    p.add_argument("--experts", type=int, default=6, help="logical experts per layer")
    p.add_argument("--redundant", type=int, default=2, help="redundant slots in all")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64, help="tokens per step")
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--intermediate", type=int, default=24)
    p.add_argument("--interval", type=int, default=12, help="steps between plans")
    p.add_argument(
        "--step-ms",
        type=float,
        default=10.0,
        help="pause per step standing in for the rest of the model (attention, "
        "sampling), so the background plan has time as in real serving",
    )
    p.add_argument(
        "--heat-source",
        choices=("topk", "group_list"),
        default="topk",
        help="count tokens where ids are mapped (route) or where they arrive (record)",
    )
    p.add_argument("--json", help="write the summary here")
    return p.parse_args(argv)


class FusedMoE(torch.nn.Module):
    """One MoE layer as a vLLM-style engine lays it out: this rank's ``S`` slots, fused weights.

    The layer never sees the placement itself: it asks the runtime for physical ids and reads the
    weight tensors it registered, which the runtime rewrites in place when experts move.
    """

    def __init__(
        self,
        layer: int,
        runtime: EplbRuntime,
        *,
        gate: torch.Tensor,
        w13_logical: torch.Tensor,
        w2_logical: torch.Tensor,
        top_k: int,
        rank: int,
    ) -> None:
        super().__init__()
        self.layer, self.runtime, self.top_k, self.rank = layer, runtime, top_k, rank
        self.gate = gate  # [E, H] router weights
        S = runtime.placement.num_slots_per_rank
        self.num_slots_per_rank = S
        # Load this rank's slots from the checkpoint's logical experts: slot s holds phy2log[p].
        mine = runtime.placement.phy2log[layer, rank * S : (rank + 1) * S]
        held = torch.from_numpy(mine.astype(np.int64))
        self.w13 = w13_logical[held].clone()  # [S, 2I, H]
        self.w2 = w2_logical[held].clone()  # [S, H, I]
        # The runtime may now overwrite these tensors' slots (same storage) when it migrates.
        runtime.register_weights(layer, {"w13": self.w13, "w2": self.w2})

    def route(self, x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router: ``x [N, H]`` -> top-k weights ``[N, K]`` float32 and logical ids ``[N, K]``."""
        logits = x @ self.gate.T + bias
        weights, ids = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
        return weights / weights.sum(dim=-1, keepdim=True), ids

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = self.route(x, bias)
        # The one EPLB call on the hot path: logical -> physical ids, heat counted as it maps
        # (with heat_source "group_list" it only maps: the dispatch's counts are the heat).
        phy_ids = self.runtime.route(self.layer, topk_ids)
        self.last_phy_ids = phy_ids  # kept for the example's per-rank balance report only
        S = self.num_slots_per_rank
        local = phy_ids - self.rank * S
        here = (local >= 0) & (local < S)
        slots = torch.where(here, local, torch.zeros_like(local))
        if self.runtime.config.heat_source == "group_list":
            # Receiver side: the tokens each local slot got, as a dispatch kernel reports them.
            self.runtime.record(self.layer, torch.bincount(local[here], minlength=S))
        # Static shapes only (gather by slot, mask), so the same code can be graph-captured.
        out = expert_mlp(x, self.w13[slots], self.w2[slots])  # [N, K, H]
        out = (out * (topk_weights * here)[..., None]).sum(dim=1)
        dist.all_reduce(out)  # combine: every (token, k) was computed on exactly one rank
        return out


def expert_mlp(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """SwiGLU experts per (token, k): ``x [N, H]``, ``w13 [N, K, 2I, H]``, ``w2 [N, K, H, I]``."""
    gate_up = torch.einsum("nh,nkih->nki", x, w13)
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.einsum("nki,nkhi->nkh", F.silu(gate) * up, w2)


def reference_moe(
    x: torch.Tensor,
    layer: FusedMoE,
    bias: torch.Tensor,
    w13_logical: torch.Tensor,
    w2_logical: torch.Tensor,
) -> torch.Tensor:
    """The same layer without EPLB: logical experts, no placement, no communication."""
    topk_weights, topk_ids = layer.route(x, bias)
    out = expert_mlp(x, w13_logical[topk_ids], w2_logical[topk_ids])
    return (out * topk_weights[..., None]).sum(dim=1)


def router_bias(step: int, num_experts: int, period: int) -> torch.Tensor:
    """A skew towards a few experts that drifts round the experts every ``period`` steps."""
    phase = 2 * math.pi * (torch.arange(num_experts) / num_experts - step / period)
    return 3.0 * torch.cos(phase)


def rank_par(phy_ids: torch.Tensor, num_ranks: int, num_slots_per_rank: int) -> float:
    """Max over mean (token, k) pairs per rank for one layer's physical ids."""
    per_rank = torch.bincount(phy_ids[phy_ids >= 0] // num_slots_per_rank, minlength=num_ranks)
    return float(per_rank.max() / per_rank.float().mean())


def worker(rank: int, args: argparse.Namespace, port: int, out_path: str) -> None:
    # The rendezvous the parent serves (see main), with init_process_group's own store timeout.
    wait = default_pg_timeout
    store = dist.TCPStore("127.0.0.1", port, args.ranks, is_master=False, timeout=wait)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=args.ranks)
    torch.manual_seed(0)  # the same checkpoint and inputs on every rank
    L, E, H, inter = args.layers, args.experts, args.hidden, args.intermediate
    gates = torch.randn(L, E, H) / math.sqrt(H)
    w13 = torch.randn(L, E, 2 * inter, H) / math.sqrt(H)
    w2 = torch.randn(L, E, H, inter) / math.sqrt(inter)

    config = EplbConfig.from_dict(
        {
            "policy": "deepseek",
            "interval": args.interval,
            "history": 2 * args.interval,
            "episode": max(1, args.interval // 2),
            "num_redundant": args.redundant,
            "layers_per_step": 1,
            "heat_source": args.heat_source,
        }
    )
    runtime = EplbRuntime(config, L, E, group=dist.group.WORLD, device=torch.device("cpu"))
    try:
        initial = runtime.placement
        layers = [
            FusedMoE(
                i,
                runtime,
                gate=gates[i],
                w13_logical=w13[i],
                w2_logical=w2[i],
                top_k=args.top_k,
                rank=rank,
            )
            for i in range(L)
        ]
        # What a captured graph would hold pointers to: they must never be reallocated.
        tables = [
            (runtime.log2phy(i), runtime.logcnt(i), runtime.replica_share(i)) for i in range(L)
        ]
        storage = [
            [t.data_ptr() for t in (*tab, m.w13, m.w2) if t is not None]
            for tab, m in zip(tables, layers, strict=True)
        ]
        max_err, par_steps = 0.0, []
        for step in range(args.steps):
            x = torch.randn(args.tokens, H)
            bias = router_bias(step, E, period=2 * args.steps)  # slow drift: a plan stays good
            pars = []
            for i, layer in enumerate(layers):
                expected = x + reference_moe(x, layer, bias, w13[i], w2[i])
                x = x + layer(x, bias)
                max_err = max(max_err, float((x - expected).abs().max()))
                x = expected  # keep the reference stream exact so errors cannot compound
                pars.append(rank_par(layer.last_phy_ids, args.ranks, layer.num_slots_per_rank))
            par_steps.append(float(np.mean(pars)))
            time.sleep(args.step_ms / 1e3)
            runtime.step()
        same_storage = storage == [
            [t.data_ptr() for t in (*tab, m.w13, m.w2) if t is not None]
            for tab, m in zip(tables, layers, strict=True)
        ]
        final = runtime.placement
        weights_ok = all(weights_match(final, m, w13[i], w2[i], rank) for i, m in enumerate(layers))
        stats = runtime.stats()
    finally:
        runtime.shutdown()
    quarter = max(1, args.steps // 4)
    summary = {
        "ranks": args.ranks,
        "heat_source": args.heat_source,
        "steps": args.steps,
        "max_abs_err": max_err,
        "outputs_match": max_err <= 1e-5,
        "same_storage": same_storage,
        "weights_match_placement": weights_ok,
        "placement_changed": bool((final.phy2log != initial.phy2log).any()),
        "par_first_quarter": float(np.mean(par_steps[:quarter])),
        "par_last_quarter": float(np.mean(par_steps[-quarter:])),
        "rebalances": len(stats.get("rebalances", [])),
        "stats": json.loads(json.dumps(stats, default=str)),
    }
    checks = torch.tensor([summary["outputs_match"], same_storage, weights_ok], dtype=torch.int32)
    dist.all_reduce(checks, op=dist.ReduceOp.MIN)  # every rank must pass
    summary["all_ranks_ok"] = bool(checks.all())
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(summary, f, indent=1)
    dist.destroy_process_group()


def weights_match(
    placement, layer: FusedMoE, w13: torch.Tensor, w2: torch.Tensor, rank: int
) -> bool:
    """Each of this rank's slots holds exactly the weights of the expert placed there."""
    S = layer.num_slots_per_rank
    held = torch.from_numpy(
        placement.phy2log[layer.layer, rank * S : (rank + 1) * S].astype(np.int64)
    )
    return bool(torch.equal(layer.w13, w13[held]) and torch.equal(layer.w2, w2[held]))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "summary.json")
        # Served here on a port the system picks, held while the ranks run: a port picked,
        # closed and handed on could be taken by another process before they start.
        store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False)
        mp.spawn(worker, args=(args, store.port, out_path), nprocs=args.ranks, join=True)
        with open(out_path) as f:
            summary = json.load(f)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "stats"}, indent=1))
    return summary


if __name__ == "__main__":
    main()
