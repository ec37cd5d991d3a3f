"""``eplb-rt score``: balance (PAR) of a placement on load files, and moves against another.

    eplb-rt score --placement PLACEMENT.json --load FILE [FILE ...]
                  [--previous PLACEMENT.json] [--ranks D] [--json]

The loads are summed over all files and steps. PAR of a layer = max rank load / mean rank load
(1.0 is perfect). Layers whose total load is zero are listed and left out of the PAR mean.
``--json`` prints one JSON object (``par_mean``, ``par_max``, ``layers``, per-layer values and,
with ``--previous``, ``moves`` and ``moved_fraction``; ``gap_per_layer``, ``gap_mean`` and
``gap_max``: how far each layer's max rank load is above the lower bound of
``eplb_rt.algorithms.bounds``, one bound for uniform and uneven shares alike, 0 = provably
optimal).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from eplb_rt import formats
from eplb_rt.algorithms import bounds, metrics
from eplb_rt.commands._args import (
    add_command,
    add_load_argument,
    check_at_least,
    dense_hint,
    read_load,
    read_previous,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "score", "score a placement on load files (PAR per layer, moves)", __doc__
    )
    parser.add_argument(
        "--placement", required=True, metavar="PLACEMENT.json", help="placement to score"
    )
    add_load_argument(parser)
    parser.add_argument(
        "--previous", metavar="PLACEMENT.json", help="count the slots that differ from this one"
    )
    parser.add_argument(
        "--ranks",
        type=int,
        metavar="D",
        help="ranks of the placements: needed for .npy files and SGLang maps, checked against "
        "vllm-ascend ones",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_at_least(("--ranks", args.ranks, 1))
    placement = formats.read_placement(args.placement, num_ranks=args.ranks)
    load = read_load(args.load)
    if load.shape[1:] != (placement.num_layers, placement.num_experts):
        raise ValueError(
            f"--load {' '.join(args.load)} has [L, E] = {list(load.shape[1:])} but --placement "
            f"{args.placement} is for {placement.describe()}"
            + dense_hint(load.shape[1], placement.num_layers)
        )
    previous = None
    if args.previous:
        # The scored placement's rank count: an array or an SGLang map records none, and a
        # vllm-ascend file's own must match it for moves to mean anything.
        ranks = placement.num_ranks if args.ranks is None else args.ranks
        previous = read_previous(args.previous, ranks, placement.num_experts, "--placement")
        if previous.phy2log.shape != placement.phy2log.shape:
            raise ValueError(
                f"--previous {args.previous}: {previous.describe()}, but --placement "
                f"{args.placement}: {placement.describe()}"
            )
    summary = metrics.score(placement, load, previous)
    # read_load refused an all-zero load, so some layer is loaded and every mean is finite.
    gaps = bounds.gap(placement, load)
    summary.update(
        gap_per_layer=[None if np.isnan(g) else float(g) for g in gaps],
        gap_mean=float(np.nanmean(gaps)),
        gap_max=float(np.nanmax(gaps)),
        num_experts=placement.num_experts,
        num_ranks=placement.num_ranks,
        num_slots_per_rank=placement.num_slots_per_rank,
    )
    print(json.dumps(summary, allow_nan=False) if args.json else format_table(summary))
    return 0


def format_table(summary: dict) -> str:
    """A readable per-layer table of :func:`metrics.score`'s summary and the gaps."""
    has_moves = "moves_per_layer" in summary
    lines = [
        f"{summary['layers']} layers x {summary['num_experts']} experts on "
        f"{summary['num_ranks']} ranks x {summary['num_slots_per_rank']} slots",
        f"{'layer':>5}  {'PAR':>8}  {'max rank load':>14}{'  moves' if has_moves else ''}"
        "  gap to bound",
    ]
    for layer, value in enumerate(summary["par_per_layer"]):
        par = "zero" if value is None else f"{value:.4f}"
        row = f"{layer:>5}  {par:>8}  {summary['max_rank_load_per_layer'][layer]:>14.6g}"
        if has_moves:
            row += f"  {summary['moves_per_layer'][layer]:>5}"
        gap = summary["gap_per_layer"][layer]
        lines.append(f"{row}  {'-' if gap is None else f'{gap:.2%}':>12}")
    lines.append(
        f"PAR mean {summary['par_mean']:.4f}, max {summary['par_max']:.4f} over "
        f"{summary['loaded_layers']} loaded layers"
    )
    lines.append(
        f"gap to the lower bound: mean {summary['gap_mean']:.2%}, max {summary['gap_max']:.2%}"
    )
    if summary["zero_load_layers"]:
        lines.append(f"zero-load layers (not in the mean): {summary['zero_load_layers']}")
    if has_moves:
        lines.append(f"moves {summary['moves']} slots ({summary['moved_fraction']:.1%})")
    return "\n".join(lines)
