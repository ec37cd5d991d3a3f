"""Arguments shared by several subcommands, read and checked the same way before any work starts.

Every check raises ``ValueError`` with one line naming the flag, what was expected and what was
got; ``eplb-rt`` prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np

from eplb_rt import algorithms, formats, planning
from eplb_rt.algorithms import hierarchy
from eplb_rt.placement import Topology

LOAD_HELP = (
    "load file(s): .npy [L, E] or [T, L, E], .npz (key counts or load), SGLang .json or the "
    ".pt its recorder dumps"
)


def add_command(subparsers: argparse._SubParsersAction, name: str, summary: str, doc: str):
    """A subcommand parser whose ``--help`` shows the module docstring ``doc`` as written."""
    return subparsers.add_parser(
        name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_load_argument(parser: argparse.ArgumentParser, more_help: str = "") -> None:
    """``--load FILE [FILE ...]`` (required, repeatable: every file given counts): files
    stacked along ``T``; ``more_help`` says how the command reads them."""
    parser.add_argument(
        "--load",
        nargs="+",
        action="extend",
        required=True,
        metavar="FILE",
        help=LOAD_HELP + more_help,
    )


def add_topology_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ranks``, ``--slots-per-rank``, ``--nodes`` and ``--groups``, read by :func:`topology`."""
    parser.add_argument(
        "--ranks", type=int, required=True, metavar="D", help="expert-parallel ranks"
    )
    parser.add_argument(
        "--slots-per-rank",
        type=int,
        required=True,
        metavar="S",
        help="expert slots on each rank (D x S >= experts)",
    )
    parser.add_argument(
        "--nodes", type=int, default=1, metavar="N", help="nodes the ranks span (default 1)"
    )
    parser.add_argument(
        "--groups", type=int, default=1, metavar="G", help="expert groups (default 1)"
    )


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``, read by :func:`threads`."""
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads the layers are planned on, side by side: the same plan for any number "
        "(default: EPLB_RT_PLAN_THREADS, or the cores this process may run on less one, at "
        f"most {planning.DEFAULT_THREADS_MAX})",
    )


def threads(args: argparse.Namespace) -> int:
    """``--threads`` (checked), or :func:`eplb_rt.planning.default_threads` where it is not
    given."""
    check_at_least(("--threads", args.threads, 1))
    return planning.default_threads() if args.threads is None else args.threads


def check_output(path: str | os.PathLike | None, flag: str, directory: bool = False) -> None:
    """Raise unless ``path`` can be written: a file path that is not a directory (or, with
    ``directory``, a directory or a path where one can be made), in a writable folder."""
    if path is None:
        return
    path = os.fspath(path)
    if not path:  # `--json=`: accepted by argparse, and then nothing would be written
        raise ValueError(f"{flag}: empty path; expected a {'directory' if directory else 'file'}")
    if not directory and (path.endswith(os.sep) or os.path.isdir(path)):
        raise ValueError(f"{flag} {path}: is a directory; expected a file path")
    if directory and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a file; expected a directory")
    # A link is written through: the folder that matters is its target's (a dangling link's
    # target folder may not exist).
    real = os.path.realpath(path)
    folder = real if directory and os.path.isdir(real) else os.path.dirname(real) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: folder {folder} is not writable")
    if not directory and os.path.exists(real) and not os.access(real, os.W_OK):
        raise ValueError(f"{flag} {path}: the file exists and is not writable")


def check_outputs_apart(
    inputs: list[tuple[str, str | os.PathLike | None]],
    outputs: list[tuple[str, str | os.PathLike | None]],
) -> None:
    """Raise where an output (``(flag, path)``, ``None``: not given) is an input file (by any
    name: a link, a hard link) or another output: writing it would replace the input (a trace
    by a placement) or the other output after the run succeeded, or, through a hard link, leave
    two names of one file with two contents."""
    seen: dict[object, str] = {}
    for flag, path in inputs:
        if path is not None:
            seen.setdefault(_file_key(path), flag)
    for flag, path in outputs:
        if path is None:
            continue
        key = _file_key(path)
        if key in seen:
            raise ValueError(f"{flag} {os.fspath(path)}: is also {seen[key]}; give another path")
        seen[key] = flag


def _file_key(path: str | os.PathLike) -> object:
    """What names one file: its device and inode where it exists (a hard link is the same
    file under another name), else its resolved path."""
    try:
        status = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (status.st_dev, status.st_ino)


def dense_hint(load_layers: int, placement_layers: int) -> str:
    """What to say where a load counts more layers than a placement holds: SGLang's dumps count
    the dense layers too (DeepSeek-V3's first three), which engines' maps leave out."""
    extra = load_layers - placement_layers
    if extra <= 0:
        return ""
    return (
        f"; a load that counts {extra} dense layer(s) too drops them: `eplb-rt convert --from "
        f"sglang-count --to load --dense-layers {extra} IN OUT.npy`"
    )


def read_load(paths: list[str]) -> np.ndarray:
    """``--load`` files stacked along ``T``: ``[T, L, E] float64``, checked by :func:`nonzero`."""
    return nonzero(formats.read_loads(paths), paths)


def read_previous(path: str, num_ranks: int | None, num_experts: int, against: str):
    """``--previous path``, the placement in force, for the ``num_experts`` experts of
    ``against`` (a flag). A file that holds another count is refused naming both: read for
    that count, a vllm-ascend map of fewer experts would say that one has no slot, of more that
    an id is out of range."""
    try:
        return formats.read_placement(path, None, num_ranks, num_experts)
    except ValueError as err:
        try:
            own = formats.read_placement(path, None, num_ranks)
        except ValueError:
            own = None
        if own is None or own.num_experts == num_experts:
            raise err from None
    raise ValueError(
        f"--previous {path}: {own.num_experts} experts, but {against} has {num_experts}"
    )


def nonzero(load: np.ndarray, paths: list[str]) -> np.ndarray:
    """``load``, unless every count is zero: then no PAR exists and no placement is better."""
    if not load.any():
        raise ValueError(f"--load {' '.join(paths)}: every count is zero; nothing to balance")
    return load


def check_at_least(*items: tuple[str, int | None, int]) -> None:
    """Each ``(flag, value, least)``: ``value`` (``None``: not given) is at least ``least``."""
    for flag, value, least in items:
        if value is not None and value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")


def check_plot(path: str | None) -> None:
    """``--plot``: a writable file whose suffix names a format the plot can be saved in, and
    matplotlib installed (an extra: serving needs none of it)."""
    check_output(path, "--plot")
    if path and os.path.splitext(path)[1].lower() not in (".png", ".pdf", ".svg"):
        raise ValueError(f"--plot {path}: expected a .png, .pdf or .svg file name")
    if path and importlib.util.find_spec("matplotlib") is None:
        raise ValueError(
            f"--plot {path}: needs matplotlib, which is not installed; "
            "pip install 'eplb_rt[plot]' (or matplotlib)"
        )


def check_simulate(args: argparse.Namespace) -> None:
    """``simulate``'s output paths, counts and ``--policies``, before any file is read."""
    check_at_least(
        ("--interval", args.interval, 1),
        ("--episodes", args.episodes, 1),
        ("--orders", args.orders, 1),
        ("--threads", args.threads, 1),
    )
    distinct = len(set(workload_keys(args.load)))
    if args.orders > 1 and distinct < 2:
        raise ValueError(
            f"--orders {args.orders} replays the --load files in several orders: give two or "
            f"more different files, got {len(args.load)} naming {distinct}"
        )
    check_plot(args.plot)
    check_output(args.json, "--json")
    check_output(args.save_placements, "--save-placements", directory=True)
    inputs = [("--load", path) for path in args.load]
    outputs = [("--json", args.json), ("--plot", args.plot)]
    check_outputs_apart(inputs, outputs)
    if args.policies is not None and not args.policies.replace(",", "").strip():
        raise ValueError(
            f"--policies {args.policies!r} names no policy; give one or more of "
            f"{', '.join(algorithms.policy_names())}"
        )
    from eplb_rt.sim.simulate import NO_REBALANCE

    policies = simulated_policies(args)
    for name in policies:
        if name != NO_REBALANCE:
            algorithms.get_policy(name)  # raises naming the known ones
    if args.save_placements is not None:
        check_saved_apart(args.save_placements, policies, inputs + outputs)


def workload_keys(paths: list[str]) -> list[str]:
    """Each ``--load`` file's key for ``simulate --orders``: its path, links resolved, so that a
    file given twice (under any name) is one workload."""
    return [os.path.realpath(path) for path in paths]


def simulated_policies(args: argparse.Namespace) -> list[str]:
    """``simulate``'s rows: ``--policies`` (default: every registered policy), the no-EPLB row
    first unless ``--no-baseline``."""
    from eplb_rt.sim.simulate import NO_REBALANCE

    if args.policies is None:
        names = list(algorithms.policy_names())
    else:
        names = [n.strip() for n in args.policies.split(",") if n.strip()]
    if not args.no_baseline and NO_REBALANCE not in names:
        names = [NO_REBALANCE, *names]
    return names


def saved_folders(root: str | os.PathLike, policies: list[str]) -> list[str]:
    """The folders ``--save-placements ROOT`` writes step files into: ``ROOT/windows`` (the
    scored windows) and ``ROOT/POLICY`` for each policy (its placements)."""
    return [os.path.join(os.fspath(root), name) for name in ("windows", *policies)]


def check_saved_apart(
    root: str | os.PathLike, policies: list[str], paths: list[tuple[str, str | os.PathLike | None]]
) -> None:
    """Raise where a path (``(flag, path)``, ``None``: not given) is ``ROOT``, one of the
    folders ``--save-placements ROOT`` writes, or lies in one: a saved step file would replace
    an input trace, or an output written after it would replace a saved file (or fail on its
    folder). Also where one of those folders is a file, which it could not be written into."""
    folders = {os.path.realpath(f): f for f in saved_folders(root, policies)}
    for folder in folders.values():
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ValueError(
                f"--save-placements {os.fspath(root)}: {folder} is a file; expected a directory"
            )
    top = os.path.realpath(root)
    for flag, path in paths:
        if path is None:
            continue
        real = os.path.realpath(path)
        if real == top:
            where = "is that folder"
        elif real in folders:
            where = f"is the folder {folders[real]}"
        elif os.path.dirname(real) in folders:
            where = f"is in {folders[os.path.dirname(real)]}"
        else:
            continue
        raise ValueError(
            f"{flag} {os.fspath(path)}: {where}, which --save-placements {os.fspath(root)} "
            "writes step files into; give another path"
        )


def topology(args: argparse.Namespace, num_experts: int, options=()) -> Topology:
    """``--ranks --slots-per-rank --nodes --groups`` checked against ``num_experts``; prints a
    warning line when ``--groups`` asks for hierarchical placement that cannot be done, or that
    the ``options`` of a policy planned (a sequence, one per policy) leave off."""
    check_at_least(
        ("--ranks", args.ranks, 1),
        ("--slots-per-rank", args.slots_per_rank, 1),
        ("--nodes", args.nodes, 1),
        ("--groups", args.groups, 1),
    )
    if args.ranks % args.nodes:
        raise ValueError(
            f"--ranks {args.ranks} must be a multiple of --nodes {args.nodes} (ranks per node)"
        )
    topo = Topology(args.ranks, args.slots_per_rank, args.nodes, args.groups)
    topo.check_experts(num_experts)
    groups = topo.num_groups
    why = hierarchy.why_flat(num_experts, topo)
    if why:
        print(
            f"eplb-rt {args.command}: warning: --groups {groups}: hierarchical placement is not "
            f"possible ({why}); planning flat, as with --groups 1",
            file=sys.stderr,
        )
    elif groups > 1:
        flat = [o.policy for o in options if not getattr(o, "hierarchical", False)]
        for name in flat:
            # simulate's options name their policy (it runs several); plan's do not.
            key = f"{name}.hierarchical" if args.command == "simulate" else "hierarchical"
            print(
                f"eplb-rt {args.command}: warning: --groups {groups}: policy {name!r} plans "
                f"flat (its option hierarchical is off); --option {key}=true places whole "
                "groups on nodes",
                file=sys.stderr,
            )
    return topo
