"""Workloads that switch every interval, on the shipped traces: what each policy, as ``eplb-rt
simulate`` runs it, buys over serving without EPLB, over many orders of the workloads.

Each shipped trace holds a few distinct workloads of one model (tasks, text domains, prompt
lengths), each summed over many tokens. Played one after another, one a step (the simulator's
interval for aggregates), every plan is fitted on the workloads before and scored on the next,
which it has not seen: a placement must hold for a new task, and its moves must pay there. One
order of a few workloads is one draw of that test (an expert hot in the second task and the
fifth weighs differently in another order), so each cell plays many orders: the listed one
first, then seeded random ones (every order where there are no more than asked).

Every policy replays through :func:`eplb_rt.sim.simulate` with the runtime's window and the
default cost model, from the placement before any heat. Per cell and policy: the MoE throughput
relative to no EPLB (migration included), mean over the orders with its standard error, the
mean PAR and the slots moved per cycle; then each contender against the first, the mean paired
difference of throughput (over the same orders) and its standard error. Deterministic (seeded);
PARs and priced seconds, not wall times, so runs on any host agree.

    PYTHONPATH=. python benchmarks/trace_switches.py [--orders 40] [--episodes 1]
        [--cells "OLMoE domains" "ESFT tasks"] [--policies equilibrium flashlb deepseek swift]

``--episodes 1`` plans on the last workload alone (``eplb-rt simulate --episodes 1``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from benchmarks import traces
from benchmarks.common import at_least, mean_se, replay
from eplb_rt import Topology
from eplb_rt.algorithms import get_policy
from eplb_rt.config import EplbConfig
from eplb_rt.sim import simulate as sim


def _gptoss_tasks() -> list[tuple[str, np.ndarray]]:
    return [(subset, traces.gptoss(subset)) for subset in traces.gptoss_subsets()]


def _gptoss_phases() -> list[tuple[str, np.ndarray]]:
    """Every subset's thinking, then the answers of those that publish one."""
    published = {subset: traces.gptoss_phases(subset) for subset in traces.gptoss_subsets()}
    return [
        (f"{subset} {phase}", traces.gptoss(subset, phase))
        for phase in traces.GPTOSS_PHASES
        for subset, phases in published.items()
        if phase in phases
    ]


def _gptoss_all_tasks() -> list[tuple[str, np.ndarray]]:
    """:func:`traces.gptoss_tasks`: the six MMLU subsets, then instruction following and fact
    checking, tasks the defaults were not tuned on."""
    return [(subset, traces.gptoss(subset)) for subset in traces.gptoss_tasks()]


def _gptoss_mmlu_pro() -> list[tuple[str, np.ndarray]]:
    """The catalogue's fourteen MMLU-Pro categories (``traces.gptoss_catalogue``), each its
    prompt buckets summed."""
    return [(name, traces.gptoss(name)) for name in traces.gptoss_catalogue(100, "mmlu_pro_test")]


def _olmoe_domains() -> list[tuple[str, np.ndarray]]:
    return [(domain, traces.olmoe("olmoe", domain)) for domain in traces.OLMOE_DOMAINS]


def _esft_tasks() -> list[tuple[str, np.ndarray]]:
    """Each task's requests summed: one workload a task."""
    return [(task, traces.esft(task).sum(axis=0, keepdims=True)) for task in traces.ESFT_TASKS]


def _deepseek_lengths() -> list[tuple[str, np.ndarray]]:
    return [(w, traces.deepseek_v3(w, moe_only=True)) for w in traces.DEEPSEEK_V3_WORKLOADS]


CELLS: dict[str, tuple[Callable[[], list[tuple[str, np.ndarray]]], list[tuple[int, int]]]] = {
    "gpt-oss-20b tasks": (_gptoss_tasks, [(8, 5), (4, 9)]),
    "gpt-oss-20b tasks and phases": (_gptoss_phases, [(8, 5)]),
    "gpt-oss-20b ten subsets": (_gptoss_all_tasks, [(8, 5), (4, 9)]),
    "gpt-oss-20b MMLU-Pro categories": (_gptoss_mmlu_pro, [(8, 5), (4, 9)]),
    "OLMoE domains": (_olmoe_domains, [(8, 10), (16, 5)]),
    "ESFT tasks": (_esft_tasks, [(8, 9), (16, 5)]),
    "DeepSeek-V3 prompt lengths": (_deepseek_lengths, [(32, 9), (64, 5)]),
}
"""Cell name: (its workloads, one aggregate ``[1, L, E]`` per task, domain or prompt length, in the
trace's order; the shapes played)."""


def run_cell(name: str, wanted: int, policies: list[str], episodes: int | None) -> list[dict]:
    """Print one markdown row per shape of cell ``name``; return each shape's ``{"shape": (ranks,
    slots), "orders": count, "scores": {policy: [orders, 3] array}}``, a row per order of
    :func:`~benchmarks.common.replay`'s (throughput, mean PAR, moved share)."""
    load_fn, shapes = CELLS[name]
    workloads = load_fn()
    played = list(sim.orders(range(len(workloads)), wanted))
    rows = []
    for ranks, slots in shapes:
        topo = Topology(ranks, slots)
        scores = {p: [] for p in policies}
        for order in played:
            workload = sim.Workload.concat([workloads[i] for i in order])
            # One aggregate a step, as ``eplb-rt simulate`` replays aggregates.
            result = replay(workload, topo, policies, interval=1, episodes=episodes)
            for p in policies:
                scores[p].append(result[p])
        arrays = {p: np.array(scores[p]) for p in policies}
        cells = []
        for p in policies:
            thr, se = mean_se(arrays[p][:, 0])
            cells.append(
                f"{thr:.3f} ± {se:.3f} / {arrays[p][:, 1].mean():.3f} / "
                f"{100 * arrays[p][:, 2].mean():.1f} %"
            )
        against = []
        for p in policies[1:]:
            diff, se = mean_se(arrays[policies[0]][:, 0] - arrays[p][:, 0])
            against.append(f"{diff:+.4f} ± {se:.4f}")
        print(
            f"| {name} | {ranks}x{slots} | {len(played)} | " + " | ".join(cells + against) + " |",
            flush=True,
        )
        rows.append({"shape": (ranks, slots), "orders": len(played), "scores": arrays})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=at_least(2), default=40)
    parser.add_argument(
        "--episodes", type=at_least(1), default=None, help="plans see the last N workloads"
    )
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument(
        "--policies",
        nargs="+",
        default=[EplbConfig().policy, "flashlb", "deepseek", "swift"],
        help="the first is the one the others are compared with",
    )
    args = parser.parse_args(argv)
    if len(set(args.policies)) != len(args.policies):
        parser.error(f"a policy listed twice: {args.policies}")
    for name in args.policies:
        get_policy(name)  # an unknown name fails before any replay, naming the known ones
    first, rest = args.policies[0], args.policies[1:]
    print(
        f"Throughput against no EPLB ± its s.e. over the orders / mean PAR / slots moved per "
        f"cycle; then {first}'s throughput less each other's, paired over the orders.\n"
    )
    head = args.policies + [f"{first} less {p}" for p in rest]
    print("| workloads | shape | orders | " + " | ".join(head) + " |")
    print("|---|---|---|" + "---|" * len(head))
    rows = []
    for name in args.cells:
        rows += run_cell(name, args.orders, args.policies, args.episodes)
    logs = {p: [] for p in rest}
    for row in rows:
        for p in rest:
            scores = row["scores"]
            logs[p].append(np.log(scores[first][:, 0] / scores[p][:, 0]).mean())
    if rest:
        print(f"\n{first}'s throughput against each other's, geometric mean over the cells:")
    for p in rest:
        mean, se = mean_se(logs[p])
        wins = sum(x > 0 for x in logs[p])
        print(f"- {p}: {np.exp(mean):.4f} (log s.e. {se:.4f}); ahead in {wins} of {len(rows)}")
    return rows


if __name__ == "__main__":
    main()
