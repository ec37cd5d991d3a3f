"""``eplb-rt simulate``: replay load over time and compare policies out of sample.

Each LOAD file is a ``[T, L, E]`` series (per step or per request) or an aggregate ``[L, E]``;
several files are played one after another, labelled by file name (and position, NAME#N, where a
file is given more than once). Every INTERVAL steps each policy re-plans from the last EPISODES x
INTERVAL steps (by default what a runtime's plan reads from its heat ring: the last 255 steps,
every one before where fewer; its previous placement carried) and is scored on the next
INTERVAL steps, through the runtime's planning pipeline (the same gate, in seconds, priced by
--expert-bytes, --bandwidth and --token-us; a placement is expected to serve as many steps as the
window, EPISODES x INTERVAL or 255, even where fewer steps exist yet, or as long as the load holds
where the steps read show it holding, as in the runtime).
The row "none (no EPLB)" keeps the starting placement. With --orders N the files are also
replayed in N orders (the given one first), and a second table gives each policy's means over
the orders with their standard errors, and the first policy's throughput less each other's,
paired over the same orders.
"""

from __future__ import annotations

import argparse
import os
import sys

from eplb_rt import algorithms, envs, formats
from eplb_rt.commands import _args
from eplb_rt.commands._args import add_command, add_load_argument, add_topology_arguments
from eplb_rt.commands.plan import add_cost_arguments, cost_from_args
from eplb_rt.config import EplbConfig
from eplb_rt.sim import simulate as sim


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "simulate",
        "replay a load series and compare policies over time (PAR, moves, plan time)",
        __doc__,
    )
    add_load_argument(
        p,
        "; played one after another in the order given, labelled by file name (NAME#N: the "
        "file given as the N-th, where it is given more than once)",
    )
    add_topology_arguments(p)
    p.add_argument(
        "--policies",
        default=None,
        metavar="A,B,C",
        help="policies to compare (default: every registered policy)",
    )
    p.add_argument(
        "--no-baseline",
        action="store_true",
        help=f"leave out the {sim.NO_REBALANCE!r} row (initial placement kept)",
    )
    p.add_argument(
        "--interval",
        type=int,
        default=None,
        metavar="STEPS",
        help="steps between re-plans and per scored window (default: 1 when every "
        "file is an aggregate, else T // 16)",
    )
    p.add_argument(
        "--episodes",
        type=int,
        default=None,
        metavar="N",
        help="plans see the last N intervals of steps (default: what a runtime's plan reads "
        "from its heat ring, the last EplbConfig().history - 1 = 255 steps, every step before "
        "where fewer)",
    )
    p.add_argument(
        "--orders",
        type=int,
        default=1,
        metavar="N",
        help="replay the --load files in N orders (N times the time): the given one first, "
        "then seeded random ones, or every distinct order when N is at least their number; a "
        "second table gives each policy's means over the orders with their standard errors, "
        "and the first policy's throughput less each other's, order by order (the first: the "
        "default policy where --policies is not given, else the first listed). One order of a "
        "few distinct workloads is one draw (default: 1, the given order only)",
    )
    add_cost_arguments(p)
    _args.add_threads_argument(p)
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="POLICY.KEY=VALUE",
        help="a policy option, repeatable; VALUE is converted to the option's type and checked",
    )
    p.add_argument(
        "--plot", metavar="OUT.png", help="write PAR over time and moves as a .png, .pdf or .svg"
    )
    p.add_argument("--json", metavar="OUT.json", help="write every number as JSON")
    p.add_argument(
        "--save-placements",
        metavar="DIR",
        help="write each cycle's placement (DIR/POLICY/step_N.json, vllm-ascend) and "
        "scored load window (DIR/windows/step_N.npy) for `eplb-rt score`",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _args.check_simulate(args)
    loads = [formats.read_load(path) for path in args.load]
    labels = _labels(args.load)
    workload = sim.Workload.concat(list(zip(labels, loads, strict=True)))
    _args.nonzero(workload.load, args.load)
    names = _args.simulated_policies(args)
    interval = args.interval
    if interval is None:
        # From each file's own T (an [L, E] file reads as T = 1), so that aggregates given
        # more than once are still aggregates: planned on one, scored on the next.
        aggregates = all(load.shape[0] == 1 for load in loads)
        interval = 1 if aggregates else max(1, workload.num_steps // 16)
    options = parse_policy_options(args.option)
    planned = [n for n in names if n in algorithms.policy_names()]  # the baseline plans nothing
    made = [algorithms.get_policy(n).make_options(options.get(n, {})) for n in planned]
    spec = sim.SimulationSpec(
        topology=_args.topology(args, workload.load.shape[2], made),
        policies=tuple(names),
        interval=interval,
        episodes=args.episodes,
        cost=cost_from_args(args),
        options=options,
        threads=_args.threads(args),
    )
    result = _run_with_progress(workload, spec)

    from eplb_rt.sim import report

    doc = report.to_document(result)
    if args.orders > 1:
        played = list(sim.orders(_args.workload_keys(args.load), args.orders))
        docs = [doc]
        for k, order in enumerate(played[1:], start=2):
            again = sim.Workload.concat([(labels[i], loads[i]) for i in order])
            docs.append(
                report.to_document(_run_with_progress(again, spec, f"order {k}/{len(played)}"))
            )
        labelled = [[labels[i] for i in order] for order in played]
        doc["orders"] = report.over_orders(docs, labelled, _paired_with(args, planned))
    if args.save_placements:
        doc["saved"] = _save_placements(result, args.save_placements)
    # The files first: a reader of stdout that leaves (`| head`) must not cost them.
    if args.json:
        # to_document wrote inf / NaN as null
        formats.write_json(args.json, doc, indent=1, allow_nan=False)
    if args.plot:
        from eplb_rt.sim.plot import plot

        plot(doc, args.plot)
    print(report.markdown(doc))
    return 0


def _labels(paths: list[str]) -> list[str]:
    """File names without extension; the whole path where two files' names collide; and where
    one file is given more than once, ``#`` and its position in ``paths`` (from 1), so that
    each part played has its own label (a file given twice in a row is two parts). Where a
    file's own name looks like such a label (``x.npy x.npy x#2.npy``), every part is its whole
    path and position: the text after the last ``#`` is the position, so no two are alike."""
    stems = {p: os.path.splitext(os.path.basename(p))[0] for p in dict.fromkeys(paths)}
    names = [stems[p] if list(stems.values()).count(stems[p]) == 1 else p for p in paths]
    labels = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names, start=1)]
    if len(set(labels)) < len(labels):
        labels = [f"{p}#{i}" for i, p in enumerate(paths, start=1)]
    return labels


def parse_policy_options(items: list[str]) -> dict:
    """``["POLICY.KEY=VALUE", ...]`` -> ``{policy: {key: value}}``, values read as ``plan`` does."""
    options: dict = {}
    for item in items:
        policy, dot, rest = item.partition(".")
        if not (dot and policy and "=" in rest and "=" not in policy):
            raise ValueError(f"--option {item!r}: expected POLICY.KEY=VALUE")
        given = options.setdefault(policy, {})
        for key, value in envs.parse_options([rest], "--option").items():
            if key in given:
                twice = f"{given[key]!r} and {value!r}"
                raise ValueError(f"--option {policy}.{key} given twice ({twice})")
            given[key] = value
    for policy, given in options.items():
        if policy in algorithms.policy_names():  # the simulation spec reports the rest
            spec = algorithms.get_policy(policy)
            known = {k: v for k, v in given.items() if k in spec.option_names}
            typed = spec.make_options(known)
            options[policy] = {k: getattr(typed, k) if k in known else v for k, v in given.items()}
    return options


def _paired_with(args: argparse.Namespace, planned: list[str]) -> str | None:
    """The policy ``--orders``' table pairs the others with: the default policy where
    ``--policies`` is not given, else the first listed that re-plans; ``None`` where fewer than
    two policies re-plan."""
    if len(planned) < 2:
        return None
    default = EplbConfig().policy
    return default if args.policies is None and default in planned else planned[0]


def _run_with_progress(
    workload: sim.Workload, spec: sim.SimulationSpec, desc: str = "simulate"
) -> sim.SimulationResult:
    from tqdm import tqdm

    total = len(spec.policies) * len(spec.cycle_starts(workload.num_steps))
    # disable=None: a bar on a terminal only, so logs and pipes stay clean.
    with tqdm(
        total=total, desc=desc, unit="plan", file=sys.stderr, disable=None, leave=False
    ) as bar:

        def advance(name: str, _cycle: sim.Cycle) -> None:
            bar.set_postfix_str(name, refresh=False)
            bar.update()

        return sim.simulate(workload, spec, on_cycle=advance)


def _save_placements(result: sim.SimulationResult, root: str) -> dict:
    """Write each cycle's placement and scored window; returns the paths written."""
    windows, *folders = _args.saved_folders(root, list(result.cycles))  # as checked up front
    os.makedirs(windows, exist_ok=True)
    saved: dict = {"windows": {}, "placements": {}}
    first = next(iter(result.cycles.values()))
    for cycle in first:
        path = os.path.join(windows, f"step_{cycle.start}.npy")
        formats.write_load(result.workload.load[cycle.start : cycle.stop], path)
        saved["windows"][str(cycle.start)] = path
    for (name, cycles), folder in zip(result.cycles.items(), folders, strict=True):
        os.makedirs(folder, exist_ok=True)
        saved["placements"][name] = {}
        for cycle in cycles:
            path = os.path.join(folder, f"step_{cycle.start}.json")
            formats.write_placement(cycle.placement, path)
            saved["placements"][name][str(cycle.start)] = path
    return saved
