"""Static placements out of sample on task-shift workloads, at the shapes of models no shipped
trace covers (Mixtral, Llama 4, gpt-oss-120b, Qwen3, DeepSeek-V3, Kimi K2).

The shipped traces hold a few models' workloads, each summed over many tokens, so the episodes
a plan sees there are distinct workloads with no measurable sampling noise. Users' workloads
are also smaller, and come from models at other shapes. Here each layer has a base popularity
(lognormal, ``sigma_base``), each of four tasks moves every expert's share by an independent
lognormal factor (``sigma_task``: what one task shows says nothing of the next), and a task's
counts are ``tokens x top-k`` multinomial draws (``tokens`` 0: the shares themselves, times
:data:`SHARE_VOLUME`: distinct workloads without sampling noise, as the shipped traces' episodes
are). Each task is held out in
turn: planned on the other three (one episode each), scored on it (mean PAR over the layers).
Each contender is compared with the first, paired over seeds and folds (mean difference and its
standard error).
The engines' own policies join with ``--peers`` (parts of ``bench_peers.py``'s contender names;
their wheels fetched by ``scripts/fetch_peers.py``, skipped with the reason where missing).
Deterministic (seeded); the numbers are PARs, not times, so runs on any host agree.

    PYTHONPATH=. python benchmarks/task_shift.py [--seeds 8] [--regimes 1,0.3,4096 ...]
        [--contenders equilibrium deepseek flashlb "equilibrium:spread=0,unseen=0"]
        [--peers "SGLang deepseek_vec" "vllm-ascend FlashLB"]
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np

from benchmarks import bench_peers
from benchmarks.common import mean_se, shape_name
from eplb_rt import Topology
from eplb_rt.algorithms import warm_up
from eplb_rt.envs import parse_options

# model: (experts, top-k, shapes as (ranks, slots per rank))
MODELS = {
    "Mixtral 8x7B": (8, 2, [(4, 3)]),
    "Llama 4 Scout": (16, 1, [(8, 3)]),
    "gpt-oss-120b": (128, 4, [(32, 5)]),
    "Qwen3-235B": (128, 8, [(16, 9), (32, 5)]),
    "DeepSeek-V3": (256, 8, [(32, 9), (64, 5)]),
    "Kimi K2": (384, 8, [(64, 7), (128, 4)]),
}
REGIMES = ("1,0.3,4096", "1,0.1,4096", "1,0.2,16384", "0.5,0.3,4096")
"""``sigma_base,sigma_task,tokens``: tasks far apart over few tokens (a few per cent of their
spread is sampling noise), close ones (a quarter is), far apart over more tokens, and a flatter
base. ``--regimes 1,0.3,0`` and the like give the tasks' shares without sampling noise."""

SHARE_VOLUME = 1e6
"""What the shares of ``tokens`` 0 are scaled to: fractional loads (no sampling noise to infer)
of a volume like the counts'. vllm-ascend's FlashLB and SGLang's ``deepseek_vec`` plan loads
that sum to 1 as they would not plan the same loads in tokens (Kimi K2 64x7: PAR 1.75 against
1.13), so shares summing to 1 would measure their input, not their plans."""


def task_loads(  # noqa: PLR0917 (a generator's parameters, in the docstring's order)
    rng, experts, top_k, layers, tasks, tokens, sigma_base, sigma_task
) -> np.ndarray:
    """``[tasks, layers, experts] float64`` counts: the shares' base times each task's factor
    (``tokens`` 0: each layer's shares times :data:`SHARE_VOLUME`, without drawing counts)."""
    base = rng.lognormal(0.0, sigma_base, size=(layers, experts))
    out = np.empty((tasks, layers, experts))
    for t in range(tasks):
        share = base * rng.lognormal(0.0, sigma_task, size=(layers, experts))
        share /= share.sum(axis=1, keepdims=True)
        if tokens == 0:
            out[t] = share * SHARE_VOLUME
            continue
        for j in range(layers):
            out[t, j] = rng.multinomial(tokens * top_k, share[j])
    return out


def shapes():
    """``(model, experts, top-k, topology)`` of every shape of :data:`MODELS`, in order."""
    for model, (experts, top_k, pairs) in MODELS.items():
        for ranks, slots in pairs:
            yield model, experts, top_k, Topology(ranks, slots)


def table_head(names: list[str]) -> None:
    """A markdown table's head: model, shape and one column per name."""
    print("| model | shape | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))


def contender(spec: str) -> tuple[str, dict]:
    """``policy`` or ``policy:key=value,key=value``."""
    name, _, rest = spec.partition(":")
    return name, parse_options([item for item in rest.split(",") if item], "a contender's option")


def run(regime: str, seeds: int, layers: int, planners: dict) -> None:
    """One regime's table: mean PAR per cell and contender, then the paired differences; a cell
    whose loads repeat an earlier one's is left out (named after the table)."""
    sigma_base, sigma_task, tokens = regime.split(",")
    sigma_base, sigma_task, tokens = float(sigma_base), float(sigma_task), int(tokens)
    volume = f"{tokens:,} tokens a task" if tokens else "the tasks' shares, no sampling"
    print(
        f"\n### sigma_base {sigma_base}, sigma_task {sigma_task}, {volume} "
        f"({seeds} seeds x 4 held-out tasks, {layers} layers)\n"
    )
    names = list(planners)
    table_head(names)
    paired = {n: [] for n in names}
    # Without counts top-k does not enter the loads: models of the same experts at the same
    # shape get the same ones, and a cell counted twice would weigh twice in the differences.
    same, first = [], {}
    for model, experts, top_k, topo in shapes():
        key = (experts, topo.num_ranks, topo.num_slots_per_rank, top_k if tokens else 0)
        if key in first:
            same.append(f"{model} {shape_name(topo)} (the loads of {first[key]})")
            continue
        first[key] = f"{model} {shape_name(topo)}"
        scores = {n: [] for n in names}
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            loads = task_loads(rng, experts, top_k, layers, 4, tokens, sigma_base, sigma_task)
            for held in range(4):
                train = np.delete(loads, held, axis=0)
                for name, planner in planners.items():
                    scores[name].append(_score(planner, train, loads[held], topo))
        for name in names:
            paired[name] += list(np.subtract(scores[name], scores[names[0]]))
        cells = " | ".join(_cell(scores[n]) for n in names)
        print(f"| {model} | {shape_name(topo)} | {cells} |", flush=True)
    if same:
        print("\nLeft out: " + "; ".join(same) + ".")
    print(
        "\nPaired with the first contender over every cell, seed and fold where both planned "
        "(mean ± s.e.):"
    )
    for name in names[1:]:
        diff = np.array(paired[name])
        diff = diff[np.isfinite(diff)]
        failed = len(paired[name]) - diff.size
        note = f" ({failed} plans failed or lost an expert)" if failed else ""
        if diff.size < 2:
            print(f"- {name}: no pairs{note}")
            continue
        mean, sem = mean_se(diff)
        print(f"- {name}: {mean:+.4f} ± {sem:.4f}{note}")


def _score(planner, train: np.ndarray, test: np.ndarray, topo: Topology) -> float:
    """Mean PAR of ``planner``'s table for ``train [3, L, E]`` on ``test [L, E]``; NaN where the
    table loses an expert, or where an engine's planner failed (:func:`_tolerant`)."""
    phy2log = planner(train, topo, None)
    return float("nan") if phy2log is None else bench_peers.score(phy2log, test[None], topo)


def _tolerant(planner):
    """An engine's planner whose errors (a shape its code does not handle) are a failed plan,
    ``None``; our own planners raise as they would for a user."""

    def run(load, topology, previous):
        try:
            return planner(load, topology, previous)
        except Exception:  # an engine's code: any error is a failed plan
            return None

    return run


def _cell(scores: list[float]) -> str:
    """The mean of a cell's scores, or how many plans failed."""
    finite = [x for x in scores if np.isfinite(x)]
    if len(finite) < len(scores):
        return f"{np.mean(finite):.4f} ({len(scores) - len(finite)} failed)" if finite else "failed"
    return f"{np.mean(finite):.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES))
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=["equilibrium", "deepseek", "flashlb", "equilibrium:spread=0,unseen=0"],
        help="eplb_rt policies, each with options after a colon",
    )
    parser.add_argument(
        "--peers", nargs="*", default=[], help="parts of the engines' contender names"
    )
    args = parser.parse_args(argv)
    warm_up(sorted({contender(s)[0] for s in args.contenders}))
    planners = {spec: bench_peers.ours(*contender(spec)) for spec in args.contenders}
    with contextlib.ExitStack() as stack:
        if args.peers:
            found = bench_peers.contenders(stack, args.peers)
            planners.update(
                {k: _tolerant(v) for k, v in found.items() if not k.startswith("eplb_rt ")}
            )
        for regime in args.regimes:
            run(regime, args.seeds, args.layers, planners)


if __name__ == "__main__":
    main()
