"""``eplb-rt convert``: translate placements and loads between engine formats.

Placements: ``vllm-ascend`` (expert_map JSON), ``sglang`` (physical_to_logical_map JSON), ``npy``
(``[L, P]`` phy2log). Loads: ``sglang-count`` (logical_count JSON), ``load`` (``.npy``; any
trace file when reading). A placement cannot become a load or the reverse (use ``plan``).
"""

from __future__ import annotations

import argparse

from eplb_rt import formats
from eplb_rt.commands._args import add_command, check_at_least, check_output, check_outputs_apart


def register(subparsers: argparse._SubParsersAction) -> None:
    summary = "convert placements or loads between vllm-ascend, SGLang and .npy formats"
    p = add_command(subparsers, "convert", summary, __doc__)
    kinds = {"choices": formats.FORMATS, "required": True}
    p.add_argument("--from", dest="src_format", **kinds, help="format of IN")
    p.add_argument("--to", dest="dst_format", **kinds, help="format of OUT")
    p.add_argument("input", metavar="IN", help="file to read")
    p.add_argument("output", metavar="OUT", help="file to write (replaced if present)")
    ranks = "expert-parallel ranks; needed to read sglang / npy placements, checked for vllm-ascend"
    p.add_argument("--ranks", type=int, metavar="D", help=ranks)
    experts = (
        "logical experts per layer (default: largest id + 1, or the count an eplb_rt "
        "vllm-ascend map records, which it must match; for loads, checked)"
    )
    p.add_argument("--experts", type=int, metavar="E", help=experts)
    dense = (
        "the model's first N layers are dense: SGLang counts them, eplb-rt does not; "
        "added when writing sglang / sglang-count, dropped when reading them"
    )
    p.add_argument("--dense-layers", type=int, default=0, metavar="N", help=dense)
    p.set_defaults(func=run)


SGLANG_FORMATS = ("sglang", "sglang-count")


def run(args: argparse.Namespace) -> int:
    check_output(args.output, "OUT")
    check_outputs_apart([("IN", args.input)], [("OUT", args.output)])
    check_at_least(
        ("--ranks", args.ranks, 1),
        ("--experts", args.experts, 1),
        ("--dense-layers", args.dense_layers, 0),
    )
    src = formats.format_kind(args.src_format)
    dst = formats.format_kind(args.dst_format)
    if src != dst:
        raise ValueError(
            f"cannot convert a {src} ({args.src_format}) into a {dst} ({args.dst_format}); "
            "use `eplb-rt plan` to turn a load into a placement"
        )
    # The readers tell formats by suffix: an output named otherwise would not read back.
    suffix = formats.output_suffix(args.dst_format)
    if not args.output.lower().endswith(suffix):
        raise ValueError(f"OUT {args.output}: --to {args.dst_format} writes a {suffix} file")
    drop = args.dense_layers if args.src_format in SGLANG_FORMATS else 0
    add = args.dense_layers if args.dst_format in SGLANG_FORMATS else 0
    if args.dense_layers and drop == add:
        raise ValueError(
            "--dense-layers applies when exactly one side is an SGLang format "
            f"({', '.join(SGLANG_FORMATS)}); got {args.src_format} -> {args.dst_format}"
        )
    if src == "placement":
        placement = formats.read_placement(args.input, args.src_format, args.ranks, args.experts)
        placement = _dense_layers(placement, drop, add, args.input)
        formats.write_placement(placement, args.output, args.dst_format)
        print(f"wrote {args.output}: {placement.describe()} ({args.dst_format})")
        return 0
    load = formats.read_load(args.input, args.src_format)
    if args.experts is not None and load.shape[2] != args.experts:
        raise ValueError(
            f"{args.input}: load has {load.shape[2]} experts, --experts says {args.experts}"
        )
    load = _dense_layers(load, drop, add, args.input)
    formats.write_load(load, args.output, args.dst_format)
    T, L, E = load.shape
    print(f"wrote {args.output}: load of {T} steps x {L} layers x {E} experts ({args.dst_format})")
    return 0


def _dense_layers(item, drop: int, add: int, path: str):
    """``item`` (a placement or load read from ``path``) less ``drop`` dense layers, then with
    ``add``; an error names ``path``, as every reading error does."""
    try:
        return formats.add_dense_layers(formats.drop_dense_layers(item, drop), add)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
