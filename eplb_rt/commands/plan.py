"""``eplb-rt plan``: compute a placement from load files and write it as vllm-ascend JSON.

    eplb-rt plan --load FILE [FILE ...] --ranks D --slots-per-rank S [--policy NAME]
                 [--nodes N] [--groups G] [--previous PLACEMENT.json]
                 [--option KEY=VALUE ...] --out PLACEMENT.json

Several ``--load`` files are stacked as episodes along ``T`` (same ``[L, E]`` each). Layers whose
total load is zero still get a valid placement and are reported.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from eplb_rt.algorithms import get_policy, metrics, plan, policy_names
from eplb_rt.commands._args import add_command, add_load_argument
from eplb_rt.placement import Placement, Topology
from eplb_rt.sim.traces import load_files


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "plan", "plan a placement of expert replicas from load files", __doc__
    )
    add_load_argument(parser)
    parser.add_argument("--ranks", type=int, required=True, metavar="D", help="ranks (devices)")
    parser.add_argument(
        "--slots-per-rank", type=int, required=True, metavar="S", help="expert slots per rank"
    )
    parser.add_argument(
        "--policy",
        default="deepseek",
        metavar="NAME",
        help=f"balancing policy (default: deepseek; registered: {', '.join(policy_names())})",
    )
    parser.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes (default 1)")
    parser.add_argument(
        "--groups", type=int, default=1, metavar="G", help="expert groups (default 1)"
    )
    parser.add_argument(
        "--previous", metavar="PLACEMENT.json", help="placement in force now (for few moves)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy option, repeatable; VALUE is converted to the option's type and checked",
    )
    parser.add_argument("--out", required=True, metavar="PLACEMENT.json", help="output file")
    parser.set_defaults(func=run)


def parse_options(items: list[str]) -> dict:
    """``["KEY=VALUE", ...]`` -> ``{key: "VALUE"}``; the policy's options convert and check."""
    options: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = text.strip()
    return options


def run(args: argparse.Namespace) -> int:
    options = get_policy(args.policy).make_options(parse_options(args.option))
    load = load_files(args.load)
    num_experts = load.shape[2]
    topology = Topology(args.ranks, args.slots_per_rank, args.nodes, args.groups)
    previous = None
    if args.previous:
        previous = Placement.load(args.previous, num_experts=num_experts, num_ranks=args.ranks)
    start = time.perf_counter()
    placement = plan(args.policy, load, topology, previous=previous, options=options)
    seconds = time.perf_counter() - start
    placement.save(args.out)
    summary = metrics.score(placement, load, previous)
    zero = summary["zero_load_layers"]
    print(
        f"wrote {args.out}: {placement.describe()}, policy {args.policy}, "
        f"{seconds * 1e3:.1f} ms; in-sample PAR mean {summary['par_mean']:.4f} "
        f"max {summary['par_max']:.4f}"
    )
    if zero:
        print(f"{len(zero)} layer(s) with zero load (placed, not in the PAR mean): {zero}")
    if previous is not None:
        print(f"moves {summary['moves']} slots ({summary['moved_fraction']:.1%})")
    if np.isnan(summary["par_mean"]):
        print("no layer has any load: every layer got a valid placement but no PAR")
    return 0
