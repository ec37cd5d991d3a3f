"""``eplb-rt demo``: the runtime balancing a multi-rank MoE model on the CPU.

Spawns ``--ranks`` processes (gloo), each running the reference expert-parallel MoE model with an
``EplbRuntime`` on the shipped ESFT workload (four tasks one after another, so the hot experts
drift). Compared on the same tokens and routing, per step, as PAR (tokens of the busiest rank /
mean tokens per rank, 1.0 is perfect): eplb_rt (the runtime with ``--redundant`` extra slots,
starting from its balanced starting placement and re-planning every ``--interval`` steps, or
earlier on drift) against the static layout (the model without EPLB: expert ``e`` on rank
``e * ranks // 64``, no redundant slots). Also reports each rebalance (plan time, layers and bytes
moved, steps it took), step times, and whether the outputs match the model without EPLB (run
every ``--check-every`` steps on the same inputs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from eplb_rt import formats
from eplb_rt.commands import _args
from eplb_rt.commands import _ranks as ranks
from eplb_rt.data import ESFT_EXPERTS, ESFT_LAYERS, ESFT_TOP_K
from eplb_rt.sim.report import counted

SUMMARY_KEYS = (
    "par_mean",
    "par_static",
    "rebalances",
    "moved_experts",
    "outputs_match",
    "step_time_ms",
)
CONFIG_KEYS = ("ranks", "steps", "layers", "tokens", "redundant", "interval", "policy", "seed")
OUTPUT_TOLERANCE = 1e-4
"""Largest accepted |difference| between outputs with and without EPLB (float32 GEMMs round
differently when an expert's batch changes; see ``MoEConfig.exact`` for the bitwise mode)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a multi-rank MoE model on the CPU and watch the runtime rebalance it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ranks", type=int, default=4, help="expert-parallel ranks (default 4)")
    parser.add_argument("--steps", type=int, default=400, help="forward steps (default 400)")
    parser.add_argument("--layers", type=int, default=6, help="MoE layers, 1..26 (default 6)")
    parser.add_argument(
        "--tokens", type=int, default=128, help="tokens per rank per step (default 128)"
    )
    parser.add_argument(
        "--redundant", type=int, default=16, help="redundant expert slots in all (default 16)"
    )
    parser.add_argument("--interval", type=int, default=25, help="steps between plans (default 25)")
    parser.add_argument(
        "--policy",
        default=None,
        help="placement policy (default: EplbConfig's, equilibrium)",
    )
    parser.add_argument(
        "--check-every",
        type=int,
        default=10,
        help="run the model without EPLB every N steps to compare outputs (default 10)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the workload, in [0, 2**32)")
    parser.add_argument(
        "--plot", metavar="FILE", help="write PAR and step time as a .png, .pdf or .svg"
    )
    parser.add_argument("--json", metavar="FILE", help="write the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch.multiprocessing as mp

    from eplb_rt.algorithms import get_policy, warm_up
    from eplb_rt.config import EplbConfig

    _check(args)
    policy = get_policy(EplbConfig.policy if args.policy is None else args.policy).name
    store = _rendezvous(_port())  # held while the ranks run; they join it
    # Compile the policy's numba kernels into their disk cache here, once, so that the ranks load
    # them in well under a second instead of each compiling for seconds and missing the first
    # plans' deadlines on a fresh install. A no-op cache load after the first run.
    warm_up([policy])
    opts = dict(vars(args), policy=policy, port=store.port)
    opts.pop("func", None)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        started = time.perf_counter()
        try:
            mp.spawn(_worker, args=(opts, out), nprocs=args.ranks, join=True)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
            # The rank's traceback, then one line and exit 2 (1 says the outputs differ).
            detail = str(err).strip()
            print(detail, file=sys.stderr)
            last = detail.splitlines()[-1] if detail else type(err).__name__
            raise ValueError(f"rank {err.error_index} failed: {last}") from None
        with open(out) as f:
            result = json.load(f)
    result["wall_s"] = time.perf_counter() - started
    _print_report(result)
    if args.json:
        from eplb_rt.sim.report import finite_json

        formats.write_json(args.json, finite_json(result), indent=1, allow_nan=False)
    if args.plot:
        _plot(result, args.plot)
    return 0 if result["outputs_match"] else 1


def _check(args: argparse.Namespace) -> None:
    """Every argument and output path, before any rank is spawned."""
    E = ESFT_EXPERTS
    if args.ranks < 1 or E % args.ranks:
        raise ValueError(f"--ranks must divide the workload's {E} experts, got {args.ranks}")
    if not 1 <= args.layers <= ESFT_LAYERS:
        raise ValueError(f"--layers must be in [1, {ESFT_LAYERS}] (the trace's), got {args.layers}")
    _args.check_at_least(
        ("--steps", args.steps, 1),
        ("--tokens", args.tokens, 1),
        ("--check-every", args.check_every, 1),
    )
    if args.redundant < 0 or (E + args.redundant) % args.ranks:
        raise ValueError(
            f"{E} experts + --redundant {args.redundant} (>= 0) must split over {args.ranks} ranks"
        )
    if not 0 <= args.seed < 2**32:  # the ranks derive their generators' seeds from it
        raise ValueError(f"--seed must be in [0, 2**32), got {args.seed}")
    if args.interval < 0 or args.interval in (1, 2):
        raise ValueError(
            "--interval must be 0 (never rebalance) or >= 3 (a drift probe and its deadline "
            f"before each interval), got {args.interval}"
        )
    if (E + args.redundant) // args.ranks > E:
        raise ValueError(
            f"{E + args.redundant} slots on {args.ranks} rank(s) would put two "
            "replicas of an expert on one rank; lower --redundant or add ranks"
        )
    _check_memory(args)
    _args.check_plot(args.plot)
    _args.check_output(args.json, "--json")
    _args.check_outputs_apart([], [("--json", args.json), ("--plot", args.plot)])


def _check_memory(args: argparse.Namespace) -> None:
    """Refuse ``--steps`` and ``--tokens`` whose arrays no rank could hold: a rank failed deep
    in its run (a traceback from each, exit 1, which says the outputs differ). A lower bound of
    what the ranks allocate, so that only sizes that cannot run are refused: per step and layer
    the workload's profile (float64) and router bias (float32) of every expert and the loads
    recorded; per token its input and its top-k dispatched copies (float32)."""
    from eplb_rt.models import MoEConfig

    hidden = MoEConfig.hidden
    per_step = args.layers * (ESFT_EXPERTS * 12 + 16 * args.ranks)
    per_token = hidden * 4 * (1 + ESFT_TOP_K)
    need = args.ranks * (args.steps * per_step + args.tokens * per_token)
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to compare
        return
    if need > memory:
        flag, value = (
            ("--steps", args.steps)
            if args.steps * per_step >= args.tokens * per_token
            else ("--tokens", args.tokens)
        )
        raise ValueError(
            f"{flag} {value}: the {args.ranks} ranks would hold at least {need / 2**30:.3g} GiB, "
            f"more than this machine's {memory / 2**30:.3g} GiB of memory"
        )


def _port() -> int:
    """``EPLB_RT_DEMO_PORT``: a TCP port in ``[0, 65535]``; 0 (or unset) for a free one."""
    from eplb_rt import envs

    expected = "expected an integer TCP port in [0, 65535] (0 or unset: a free port)"
    try:
        port = envs.get("EPLB_RT_DEMO_PORT")
    except ValueError as err:  # names the variable and its text
        raise ValueError(f"{err}; {expected}") from None
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"environment variable EPLB_RT_DEMO_PORT={port}: {expected}")
    return port or 0


def _rendezvous(port: int):
    """The ranks' rendezvous (:func:`eplb_rt.commands._ranks.serve`) on ``port``, or a
    ``ValueError`` naming ``EPLB_RT_DEMO_PORT`` where the port is taken."""
    try:
        return ranks.serve(port)
    except RuntimeError as err:  # torch's DistNetworkError: the port is taken
        # Refused here: the ranks would have met another process's server there, and waited
        # for each other until the store's timeout, saying nothing.
        where = f"environment variable EPLB_RT_DEMO_PORT={port}: " if port else ""
        raise ValueError(
            f"{where}the port cannot be used ({str(err).splitlines()[0]}); choose another, or "
            "unset it for a free one"
        ) from None


def _episode(interval: int, history: int) -> int:
    """Steps of a drift probe: a fifth of ``interval`` (at least 1), at most ``(history - 1) //
    3``, so the config stays valid (``episode <= history``) and drift can be checked (the latest
    episode against two before it, in the ``history - 1`` steps the ring holds) however long
    ``--interval`` is."""
    return min(max(1, interval // 5), max(1, (history - 1) // 3))


# ---------------------------------------------------------------------- one rank
def _worker(rank: int, opts: dict, out_path: str) -> None:
    import torch
    import torch.distributed as dist

    from eplb_rt.config import EplbConfig
    from eplb_rt.data import ESFT_EXPERTS, ESFT_TOP_K
    from eplb_rt.models import ExpertParallelMoE, MoEConfig
    from eplb_rt.models.workload import drifting_profile, routing_bias
    from eplb_rt.runtime import EplbRuntime

    torch.set_num_threads(1)
    D, steps = opts["ranks"], opts["steps"]
    ranks.join(opts["port"], rank, D)
    try:
        cfg = MoEConfig(
            num_layers=opts["layers"], num_experts=ESFT_EXPERTS, top_k=ESFT_TOP_K, seed=opts["seed"]
        )
        interval = opts["interval"]
        ecfg = EplbConfig(
            policy=opts["policy"],
            interval=interval,
            episode=_episode(interval, EplbConfig.history),
            num_redundant=opts["redundant"],
            rank_local_tokens=True,  # each rank routes its own tokens, dispatched by all-to-all
        )
        runtime = EplbRuntime(ecfg, cfg.num_layers, cfg.num_experts)
        model = ExpertParallelMoE(cfg, runtime=runtime)
        baseline = ExpertParallelMoE(cfg)
        bias = torch.from_numpy(routing_bias(drifting_profile(steps, cfg.num_layers)))
        L, E = cfg.num_layers, cfg.num_experts
        loads = np.zeros((steps, 2, L, D))  # [step, eplb/static, layer, rank]
        rebalanced = np.zeros(steps, dtype=np.int64)  # layers placed unlike the start, per step
        start = runtime.placement
        step_ms = np.zeros(steps)
        max_diff, checks = 0.0, 0
        progress = _progress(steps, rank == 0 and not opts["no_progress"])
        for step in range(steps):
            gen = torch.Generator().manual_seed(opts["seed"] * 1_000_003 + step * 64 + rank)
            x = torch.randn((opts["tokens"], cfg.hidden), generator=gen)
            # What this step routes with: a layer committed in runtime.step() serves from the
            # next step on, and a rebalance commits its layers over several steps.
            rebalanced[step] = len(runtime.placement.changed_layers(start))
            started = time.perf_counter()
            y = model(x, bias[step])
            runtime.step()
            step_ms[step] = (time.perf_counter() - started) * 1e3
            counts = torch.cat(
                [model.rank_tokens.reshape(-1).double(), model.expert_tokens.reshape(-1).double()]
            )
            dist.all_reduce(counts)
            loads[step, 0] = counts[: L * D].view(L, D).numpy()
            loads[step, 1] = counts[L * D :].view(L, D, E // D).sum(-1).numpy()
            if step % opts["check_every"] == 0 or step == steps - 1:
                diff = torch.tensor([(y - baseline(x, bias[step])).abs().max().item()])
                # A NaN would pass both the MAX reduction and max() below: count it as inf.
                diff = torch.nan_to_num(diff, nan=float("inf"), posinf=float("inf"))
                dist.all_reduce(diff, op=dist.ReduceOp.MAX)
                max_diff, checks = max(max_diff, float(diff)), checks + 1
            if progress is not None:
                progress.set_postfix_str(
                    f"PAR {_par(loads[step, 0]):.3f} (static {_par(loads[step, 1]):.3f})",
                    refresh=False,
                )
                progress.update()
        if progress is not None:
            progress.close()
        stats = runtime.stats()
        runtime.shutdown()
        if rank == 0:
            result = _summary(
                opts, loads, rebalanced, step_ms, stats, max_diff=max_diff, checks=checks
            )
            with open(out_path, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _progress(steps: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=steps, desc="eplb-rt demo", unit="step", file=sys.stderr)


def _par(rank_loads: np.ndarray) -> float:
    """Mean over layers of max rank load / mean rank load; ``rank_loads [..., L, D]``."""
    mean = rank_loads.mean(axis=-1)
    return float(np.mean(rank_loads.max(axis=-1) / np.maximum(mean, 1e-12), axis=-1).mean())


def _summary(opts, loads, rebalanced, step_ms, stats, *, max_diff, checks) -> dict:
    """The run as plain values. ``loads [T, 2, L, D]``: tokens per rank, with EPLB and static;
    ``rebalanced [T]``: layers each step routed with a placement unlike the starting one;
    ``step_ms [T]``; ``stats``: the runtime's. Before / after split at the runtime's
    ``first_commit_step``, the first step served with every layer of the first rebalance that
    committed any; its layers took effect one by one from ``first_rebalanced_step`` on."""
    steps = loads.shape[0]
    par_eplb = [_par(loads[s, 0]) for s in range(steps)]
    par_static = [_par(loads[s, 1]) for s in range(steps)]
    first = stats["first_commit_step"]
    first = steps if first is None else first
    changed = np.flatnonzero(rebalanced)
    return {
        "config": {k: opts[k] for k in CONFIG_KEYS},
        "par_mean": float(np.mean(par_eplb)),
        "par_static": float(np.mean(par_static)),
        "first_commit_step": first if first < steps else None,
        "first_rebalanced_step": int(changed[0]) if changed.size else None,
        "par_before": float(np.mean(par_eplb[:first])) if first else None,
        "par_after": float(np.mean(par_eplb[first:])) if first < steps else None,
        "par_static_before": float(np.mean(par_static[:first])) if first else None,
        "par_static_after": float(np.mean(par_static[first:])) if first < steps else None,
        "rebalances": stats["rebalances"],
        "num_rebalances": stats["num_rebalances"],
        "skipped_plans": stats["skipped"],
        "errors": stats["errors"],
        "moved_experts": stats["moved_experts"],
        "bytes_moved": stats["bytes_moved"],
        "outputs_match": bool(max_diff <= OUTPUT_TOLERANCE),
        "output_max_abs_diff": max_diff,
        "output_checks": checks,
        "output_tolerance": OUTPUT_TOLERANCE,
        "step_time_ms": float(np.median(step_ms)),
        "per_step": {
            "par": par_eplb,
            "par_static": par_static,
            "layers_rebalanced": rebalanced.tolist(),
            "step_ms": step_ms.tolist(),
        },
    }


# ---------------------------------------------------------------------- report
def _print_report(result: dict) -> None:
    cfg = result["config"]
    print(
        f"eplb-rt demo: {cfg['ranks']} ranks, {cfg['layers']} layers x {ESFT_EXPERTS} experts "
        f"(top-{ESFT_TOP_K}) + "
        f"{cfg['redundant']} redundant slots, {cfg['steps']} steps of {cfg['tokens']} tokens "
        f"per rank, policy {cfg['policy']}, "
        + (f"plan every {cfg['interval']} steps" if cfg["interval"] else "never re-plans")
    )
    kept = len(result["rebalances"])
    if kept < result["num_rebalances"]:
        print(f"  (the last {kept} of {result['num_rebalances']} rebalances)")
    # Plans are numbered as the runtime counts them (every gather): those that moved nothing
    # are listed as skipped, not as rebalances.
    for r in result["rebalances"]:
        layers = counted(len(r["layers_committed"]), "layer")
        print(
            f"  plan {r['epoch']} rebalanced: gathered at step {r['gather_step']}, planned in "
            f"{r['plan_time_s'] * 1e3:.1f} ms, {layers} committed"
            f"{', ' + str(len(r['layers_failed'])) + ' failed' if r['layers_failed'] else ''}, "
            f"{r['moved_experts']} experts / {r['bytes_moved'] / 2**20:.1f} MiB moved, done "
            f"after {r['steps']} steps"
        )
    for s in result["skipped_plans"]:
        print(f"  plan {s['epoch']} skipped at step {s['step']}: {s['reason']}")
    print(
        f"PAR per step (tokens of the busiest rank / mean per rank; 1.0 is perfect), mean over "
        f"{cfg['steps']} steps: eplb_rt {result['par_mean']:.3f}, static layout "
        f"{result['par_static']:.3f} (the same model without EPLB: expert e on rank "
        f"e // {ESFT_EXPERTS // cfg['ranks']}, no redundant slots)"
    )
    print(_before_after(result))
    print(
        f"experts moved: {result['moved_experts']} ({result['bytes_moved'] / 2**20:.1f} MiB); "
        f"median step time {result['step_time_ms']:.2f} ms; wall {result['wall_s']:.1f} s"
    )
    verdict = "match" if result["outputs_match"] else "DO NOT match"
    print(
        f"outputs {verdict} the model without EPLB: max |diff| "
        f"{result['output_max_abs_diff']:.2e} over {result['output_checks']} checked steps "
        f"(tolerance {result['output_tolerance']:.0e})"
    )
    for err in result["errors"]:
        print(f"  error: {err}")


def _before_after(result: dict) -> str:
    """The line on PAR before and after the first rebalance, saying which placement served the
    steps before: the runtime finishes a rebalance (``first_commit_step``) on the step its last
    layer commits, and the layers before it serve from the steps after their own commits."""
    first, new = result["first_commit_step"], result["first_rebalanced_step"]
    if result["config"]["interval"] == 0:
        return "no rebalancing (--interval 0): eplb_rt kept its starting placement throughout"
    if new is None:
        return (
            "no plan was committed before the last step: eplb_rt served every step with its "
            "starting placement"
        )
    if first is None:
        return (
            f"the first rebalance was still under way at the last step: eplb_rt served steps "
            f"0-{new - 1} with its starting placement, then moved layers one by one"
        )
    served = "its starting placement"
    if new < first:
        served += f" through step {new - 1}, then its layers switching over one by one"
    return (
        f"eplb_rt until its first rebalance was complete (steps 0-{first - 1}: {served}) "
        f"{result['par_before']:.3f} against static {result['par_static_before']:.3f}; after "
        f"(steps {first}-{result['config']['steps'] - 1}) {result['par_after']:.3f} against "
        f"static {result['par_static_after']:.3f} (the same steps)"
    )


def _plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result["per_step"]
    steps = np.arange(len(per["par"]))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for key, mean, color, label in (
        ("par_static", "par_static", "tab:gray", "static layout, no EPLB"),
        ("par", "par_mean", "tab:blue", "eplb_rt"),
    ):
        top.plot(steps, per[key], color=color, lw=0.8, label=f"{label} (mean {result[mean]:.3f})")
    for r in result["rebalances"]:
        if r["layers_committed"]:
            top.axvline(r["done_step"], color="tab:green", lw=0.6, ls="--")
    top.set_ylabel("PAR (max / mean rank tokens)")
    top.legend(loc="best", fontsize=8)
    top.set_title(
        f"eplb-rt demo: {result['config']['ranks']} ranks, policy "
        f"{result['config']['policy']} (dashed: rebalance committed)"
    )
    bottom.plot(steps, per["step_ms"], color="tab:orange", lw=0.8)
    # The first steps pay one-off warm-up costs; fit the axis to the steady state.
    low, high = np.percentile(per["step_ms"], [1, 99])
    bottom.set_ylim(max(0.0, low - 0.1 * (high - low)), high + 0.1 * (high - low) + 1e-3)
    bottom.set_ylabel("step time (ms)")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
