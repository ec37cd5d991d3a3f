"""A long serving run: does the runtime's memory stay flat over thousands of plans?

    PYTHONPATH=. python benchmarks/soak_runtime.py [--steps 8000] [--ranks 2] [--policy NAME]
        [--records-kept N]

``--ranks`` gloo processes run the reference MoE model (3 layers, 16 experts, 4 redundant slots)
with an ``EplbRuntime`` that gathers every 6 steps, on a workload whose hot experts move every
37 steps, so nearly every plan migrates. The migration is priced so that every layer pays for
itself. Rank 0 prints one JSON line: the resident memory and the count of objects the garbage
collector tracks, at a fifth of the run and at its end, and the runtime's records kept against
its totals (``RECORDS_KEPT`` bounds the records; ``--records-kept`` lowers it, so that the run
is past the bound at both marks).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eplb_rt.commands import _ranks as ranks


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _mark() -> dict:
    gc.collect()
    return {"rss_mib": round(_rss_mib(), 1), "gc_objects": len(gc.get_objects())}


def _worker(rank: int, args: argparse.Namespace, port: int) -> None:
    from eplb_rt.algorithms import warm_up
    from eplb_rt.config import EplbConfig
    from eplb_rt.models import ExpertParallelMoE, MoEConfig
    from eplb_rt.runtime import EplbRuntime
    from eplb_rt.runtime import runtime as runtime_module

    if args.records_kept is not None:
        runtime_module.RECORDS_KEPT = args.records_kept

    torch.set_num_threads(1)
    ranks.join(port, rank, args.ranks)  # the rendezvous main serves
    try:
        warm_up([args.policy])
        model_cfg = MoEConfig(num_layers=3, num_experts=16, top_k=2, hidden=8, ffn=12, seed=3)
        L, E = model_cfg.num_layers, model_cfg.num_experts
        config = EplbConfig(
            policy=args.policy,
            interval=6,
            history=12,
            episode=2,
            num_redundant=4,
            deadline=3,
            layers_per_step=2,
            warm_up=False,
            token_seconds=1.0,  # compute is dear: every layer's migration pays
        )
        runtime = EplbRuntime(config, L, E)
        model = ExpertParallelMoE(model_cfg, runtime=runtime)
        marks, started = {}, time.perf_counter()
        for step in range(args.steps):
            x = torch.randn((32, model_cfg.hidden), generator=torch.Generator().manual_seed(step))
            bias = torch.zeros((L, E))
            hot = (step // 37) % E
            bias[:, hot], bias[:, (5 * hot + 3) % E] = 3.0, 2.0
            model(x, bias)
            runtime.step()
            if step in (args.steps // 5, args.steps - 1):
                marks[step + 1] = _mark()
        stats = runtime.stats()
        runtime.shutdown()
        if rank == 0:
            kept = {k: len(stats[k]) for k in ("rebalances", "skipped", "errors")}
            totals = {k: stats["num_" + k] for k in kept}
            print(
                json.dumps(
                    {
                        "policy": args.policy,
                        "records_kept_bound": runtime_module.RECORDS_KEPT,
                        "ranks": args.ranks,
                        "steps": args.steps,
                        "wall_s": round(time.perf_counter() - started, 1),
                        "after_steps": marks,
                        "records_kept": kept,
                        "totals": totals,
                        "moved_experts": stats["moved_experts"],
                    }
                )
            )
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--policy", default="equilibrium")
    parser.add_argument("--records-kept", type=int, default=None)
    args = parser.parse_args()
    store = ranks.serve()  # held while the ranks run
    mp.spawn(_worker, args=(args, store.port), nprocs=args.ranks)


if __name__ == "__main__":
    main()
