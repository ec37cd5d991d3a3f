"""``eplb-rt plan``: compute a placement from load files and write it as vllm-ascend JSON (an
``--out`` ending in ``.npy``: the ``phy2log [L, P]`` array, which keeps no replica shares).

    eplb-rt plan --load FILE [FILE ...] --ranks D --slots-per-rank S [--policy NAME]
                 [--nodes N] [--groups G] [--previous PLACEMENT.json [--horizon ROWS]
                 [--lifetime ROWS] [--expert-bytes B] [--bandwidth GB/S] [--token-us US]]
                 [--option KEY=VALUE ...] --out PLACEMENT.json

Several ``--load`` files are stacked as episodes along ``T`` (same ``[L, E]`` each). Layers whose
total load is zero still get a valid placement and are reported. With ``--previous`` the plan
goes through the runtime's pipeline (:mod:`eplb_rt.planning`): aligned to the placement in force,
and a layer changes only when the compute it saves exceeds its migration time.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from eplb_rt import envs, formats, planning
from eplb_rt.algorithms import get_policy, hierarchy, metrics, plan, policy_names, warm_up
from eplb_rt.commands import _args
from eplb_rt.commands._args import add_command, add_load_argument, add_topology_arguments
from eplb_rt.config import EplbConfig

GB = 1e9


def _ms(seconds: float) -> str:
    """Milliseconds to one decimal, or in four significant digits where that runs long (a
    horizon of 1e308 rows saves a number hundreds of digits long)."""
    ms = seconds * 1e3
    return f"{ms:.1f} ms" if abs(ms) < 1e9 else f"{ms:.4g} ms"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "plan", "plan a placement of expert replicas from load files", __doc__
    )
    add_load_argument(parser)
    add_topology_arguments(parser)
    parser.add_argument(
        "--policy",
        default=EplbConfig.policy,
        metavar="NAME",
        help=f"balancing policy (default: EplbConfig's, {EplbConfig.policy}; registered: "
        f"{', '.join(policy_names())})",
    )
    parser.add_argument(
        "--previous", metavar="PLACEMENT.json", help="placement in force now (for few moves)"
    )
    parser.add_argument(
        "--horizon",
        type=float,
        metavar="ROWS",
        help="with --previous: rows of load like the given ones served before the next plan "
        "(default: as many as given)",
    )
    parser.add_argument(
        "--lifetime",
        type=float,
        metavar="ROWS",
        help="with --previous: rows a placement chosen now is expected to serve; of the moves "
        "that pay before the next plan, those that buy the most over it are taken (default: as "
        "many as given, the runtime's is its heat ring; inf: as long as the load holds)",
    )
    add_cost_arguments(parser, "with --previous: ")
    _args.add_threads_argument(parser)
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy option, repeatable; VALUE is converted to the option's type and checked",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="PLACEMENT.json",
        help="output file: vllm-ascend JSON, or .npy for the phy2log [L, P] array (no shares)",
    )
    parser.set_defaults(func=run)


COST_FLAGS = ("--expert-bytes", "--bandwidth", "--token-us")
COST_DEFAULTS = (
    planning.DEEPSEEK_V3_EXPERT_BYTES,
    planning.LINK_BANDWIDTH / GB,
    planning.TOKEN_SECONDS * 1e6,
)


def add_cost_arguments(parser: argparse.ArgumentParser, when: str = "") -> None:
    """``--expert-bytes``, ``--bandwidth`` and ``--token-us``: the gate's prices (``when``: what
    their help starts with, e.g. ``"with --previous: "``)."""
    for flag, default, metavar, text in zip(
        COST_FLAGS,
        COST_DEFAULTS,
        ("BYTES", "GB/S", "US"),
        (
            "bytes of one expert",
            "GB/s a rank receives experts at",
            "us one token takes in one expert",
        ),
        strict=True,
    ):
        parser.add_argument(
            flag,
            type=float,
            default=default,
            metavar=metavar,
            help=when + text + " (default %(default)s: DeepSeek-V3 on an H100/Ascend-class device)",
        )


def cost_from_args(args: argparse.Namespace) -> planning.CostModel:
    """The cost model of the flags; a bad value raises naming its flag. The values are checked
    in the model's units too: ``--bandwidth 1e300`` GB/s overflows to infinite bytes/s, and
    ``--token-us 1e-320`` us underflows to 0 s."""
    for flag in COST_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if not 0 < value < float("inf"):
            raise ValueError(f"{flag} must be a finite number > 0, got {value}")
    # A whole number of bytes, exact in a float (argparse reads the flag as one): byte counts
    # stay integers in the reports.
    if not (float(args.expert_bytes).is_integer() and args.expert_bytes < 2**53):
        raise ValueError(
            f"--expert-bytes must be a whole number of bytes below 2**53, got {args.expert_bytes}"
        )
    bandwidth, token_seconds = args.bandwidth * GB, args.token_us * 1e-6
    for flag, value, given, converted, unit in (
        ("--bandwidth", args.bandwidth, "GB/s", bandwidth, "bytes/s"),
        ("--token-us", args.token_us, "us", token_seconds, "s"),
    ):
        if not 0 < converted < float("inf"):
            raise ValueError(
                f"{flag} {value:g} {given} is {converted:g} {unit}: expected a finite number > 0 "
                f"in {unit} too"
            )
    return planning.CostModel(int(args.expert_bytes), bandwidth, token_seconds)


def run(args: argparse.Namespace) -> int:
    _args.check_output(args.out, "--out")
    inputs = [("--load", path) for path in args.load] + [("--previous", args.previous)]
    _args.check_outputs_apart(inputs, [("--out", args.out)])
    if args.horizon is not None and not (math.isfinite(args.horizon) and args.horizon > 0):
        raise ValueError(f"--horizon must be a number of rows > 0, got {args.horizon:g}")
    if args.lifetime is not None and not args.lifetime > 0:  # NaN fails too
        raise ValueError(f"--lifetime must be a number of rows > 0 or inf, got {args.lifetime:g}")
    given = [flag for flag in ("--horizon", "--lifetime") if getattr(args, flag[2:]) is not None]
    # The prices have defaults: one set to another value is one the user gave.
    given += [
        flag
        for flag, default in zip(COST_FLAGS, COST_DEFAULTS, strict=True)
        if getattr(args, flag[2:].replace("-", "_")) != default
    ]
    cost = cost_from_args(args)  # a bad value is named first, as it is with --previous
    threads = _args.threads(args)  # checked before any file is read
    if given and not args.previous:
        raise ValueError(
            f"{' and '.join(given)} price moves from a placement in force: give --previous too"
        )
    options = envs.parse_options(args.option, "--option")
    checked = get_policy(args.policy).make_options(options)  # bad options fail before any work
    if formats.is_npy(args.out) and getattr(checked, "shares", False):
        raise ValueError(
            f"--out {args.out}: a phy2log .npy keeps no replica shares, which shares=true plans; "
            "write a .json (vllm-ascend) placement"
        )
    load = _args.read_load(args.load)
    num_experts = load.shape[2]
    topology = _args.topology(args, num_experts, [checked])
    previous = None
    if args.previous:
        previous = _args.read_previous(args.previous, args.ranks, num_experts, "--load")
        if previous.num_layers != load.shape[1]:
            raise ValueError(
                f"--previous {args.previous}: {previous.num_layers} layers, but --load has "
                f"{load.shape[1]}" + _args.dense_hint(load.shape[1], previous.num_layers)
            )
        if previous.num_slots_per_rank != args.slots_per_rank:
            raise ValueError(
                f"--previous {args.previous}: {previous.num_slots_per_rank} slots per rank, but "
                f"--slots-per-rank {args.slots_per_rank}"
            )
        if formats.is_npy(args.out) and not previous.is_uniform:
            raise ValueError(
                f"--out {args.out}: a phy2log .npy keeps no replica shares, and --previous "
                f"{args.previous} has uneven ones, which any layer the plan leaves unchanged "
                "keeps; write a .json (vllm-ascend) placement"
            )
    horizon = load.shape[0] if args.horizon is None else args.horizon
    # The kernels load (or compile) once per process: the time printed is the plan's own, as
    # `simulate` and the runtime report it.
    warm_up([args.policy])
    start = time.perf_counter()
    if previous is None:
        placement = plan(args.policy, load, topology, options=options, threads=threads)
    else:
        spans = {"horizon": horizon, "lifetime": args.lifetime}
        decision = planning.decide(
            load, previous, topology, args.policy, options, cost=cost, threads=threads, **spans
        )
        placement = decision.placement
    seconds = time.perf_counter() - start
    formats.write_placement(placement, args.out)
    summary = metrics.score(placement, load, previous)
    zero = summary["zero_load_layers"]
    print(
        f"wrote {args.out}: {placement.describe()}, policy {args.policy}, "
        f"{seconds * 1e3:.1f} ms; in-sample PAR mean {summary['par_mean']:.4f} "
        f"max {summary['par_max']:.4f}"
    )
    if zero:
        print(f"{len(zero)} layer(s) with zero load (placed, not in the PAR mean): {zero}")
    if not placement.is_uniform:
        even = metrics.score(placement.with_shares(None), load)
        print(
            "replica shares: eplb_rt's runtime splits each expert's tokens by them; the engines "
            "(vLLM, vllm-ascend, SGLang) split them evenly, where this placement's in-sample PAR "
            f"is mean {even['par_mean']:.4f} max {even['par_max']:.4f}"
        )
    if previous is not None:
        layers = list(decision.layers)
        before = decision.par_before
        after = np.where(np.isin(np.arange(before.size), layers), decision.par_after, before)
        # The others are committed whatever they cost: their groups go onto nodes.
        paying = [x for x in layers if decision.saved_s[x] > decision.migration_s[x]]
        grouped = len(layers) - len(paying)
        print(
            f"moves {decision.slots} slots ({summary['moved_fraction']:.1%}), "
            f"{decision.slots * cost.expert_bytes / 2**30:.2f} GiB, "
            f"{_ms(decision.migration_s[layers].sum())} at {cost.bandwidth / GB:g} GB/s; "
            f"PAR {np.nanmean(before):.4f} -> {np.nanmean(after):.4f} per row ({len(paying)} of "
            f"{before.size} layers pay: save {_ms(decision.saved_s[paying].sum())} over "
            f"{horizon:g} rows at {cost.token_seconds * 1e6:g} us per token-slot"
            + (f"; {grouped} more put their expert groups on nodes" if grouped else "")
            + ")"
        )
        spread = hierarchy.spread_layers(placement.phy2log, num_experts, topology, checked)
        if spread.any():
            print(
                f"{int(spread.sum())} layer(s) keep their expert groups spread over nodes (no "
                f"load, or more moves than the policy's max_moved_fraction): "
                f"{np.flatnonzero(spread).tolist()}"
            )
    return 0
