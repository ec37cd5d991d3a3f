"""Serving replays at the shapes of models no shipped trace covers: what each policy, as shipped,
buys over serving without EPLB while the load moves step by step.

The shipped traces are aggregates; a runtime sees per-step counts of decode-sized batches and
re-plans every ``EplbConfig().interval`` steps from its heat ring. Here each layer has a base
popularity (log-normal, sigma 1) and its per-step counts are ``tokens_per_rank x ranks x top-k``
multinomial draws, under four regimes:

* ``stationary``: one workload throughout;
* ``drift``: each expert's log-share takes a random walk (a total spread of 0.5 over the replay);
* ``switch``: four tasks (each expert's log-share moved by ``N(0, 0.4)``), a new one every
  quarter of the replay;
* ``mix``: two workloads (as prefill and decode in one batch) whose weights swing with a period
  of 700 steps.

Every policy replays through :func:`eplb_rt.sim.simulate` as ``eplb-rt simulate`` runs it: the
runtime's window and interval, the default cost model, starting from the placement before any
heat. One markdown row per shape: each policy's MoE throughput relative to no EPLB (migration
included) and the slots it moved per cycle; then each contender against the first, the geometric
mean of their throughput ratio over every shape and seed, with its standard error (in logs).
Deterministic (seeded); PARs and priced seconds, not wall times, so runs on any host agree.

    PYTHONPATH=. python benchmarks/serving_replay.py [--seeds 2] [--regimes stationary drift]
        [--policies equilibrium flashlb deepseek swift] [--tokens-per-rank 16]
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import task_shift
from benchmarks.common import at_least, mean_se, replay, shape_name
from eplb_rt.algorithms import get_policy
from eplb_rt.config import EplbConfig
from eplb_rt.sim import simulate as sim

REGIMES = ("stationary", "drift", "switch", "mix")
DRIFT = 0.5
"""Spread of each expert's log-share over the whole replay in ``drift``."""
TASK_SPREAD = 0.4
"""How far a task moves each expert's log-share in ``switch`` (and the second workload in
``mix``), as a standard deviation."""
MIX_PERIOD = 700


def series(  # noqa: PLR0917 (a generator's parameters, in the docstring's order)
    rng, regime, experts, top_k, layers, steps, tokens
) -> sim.Workload:
    """``steps`` per-step counts ``[steps, layers, experts]`` of ``tokens`` tokens routed to
    ``top_k`` experts each, under ``regime`` (one of :data:`REGIMES`); labels name the task or
    the regime."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    base = rng.normal(0.0, 1.0, size=(layers, experts))
    moves = rng.normal(0.0, TASK_SPREAD, size=(4, layers, experts))
    task = rng.permutation(4)  # switch: the four tasks in a random order, a quarter each
    walk = np.zeros((layers, experts))
    out = np.empty((steps, layers, experts))
    labels = []
    for t in range(steps):
        if regime == "drift":
            walk += rng.normal(0.0, DRIFT / np.sqrt(steps), size=walk.shape)
            logit, label = base + walk, "drift"
        elif regime == "switch":
            k = task[min(4 * t // steps, 3)]
            logit, label = base + moves[k], f"task {k}"
        elif regime == "mix":
            weight = 0.5 - 0.5 * np.cos(2 * np.pi * t / MIX_PERIOD)
            logit, label = base + weight * moves[0], "mix"
        else:
            logit, label = base, "stationary"
        share = np.exp(logit - logit.max(axis=1, keepdims=True))
        share /= share.sum(axis=1, keepdims=True)
        for j in range(layers):
            out[t, j] = rng.multinomial(tokens * top_k, share[j])
        labels.append(label)
    return sim.Workload(out, tuple(labels))


def run(regime: str, args: argparse.Namespace) -> None:
    """One regime's table, then each policy's throughput against the first's."""
    seeds, layers, steps, policies = args.seeds, args.layers, args.steps, args.policies
    tokens = args.tokens_per_rank
    print(
        f"\n### {regime}: {tokens} tokens per rank a step, {steps} steps, {layers} layers, "
        f"{seeds} seed(s); throughput against no EPLB / slots moved per cycle\n"
    )
    task_shift.table_head(policies)
    ratios = {name: [] for name in policies}
    for model, experts, top_k, topo in task_shift.shapes():
        cells = {name: [] for name in policies}
        ranks = topo.num_ranks
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            load = series(rng, regime, experts, top_k, layers, steps, tokens * ranks)
            scores = replay(load, topo, policies, EplbConfig().interval)
            for name in policies:
                cells[name].append(scores[name])
                ratios[name].append(np.log(scores[name][0] / scores[policies[0]][0]))
        row = " | ".join(
            f"{np.mean([c[0] for c in cells[n]]):.3f} / "
            f"{100 * np.mean([c[2] for c in cells[n]]):.1f} %"
            for n in policies
        )
        print(f"| {model} | {shape_name(topo)} | {row} |", flush=True)
    print(f"\nThroughput against {policies[0]}'s, geometric mean over shapes and seeds:")
    for name in policies[1:]:
        mean, sem = mean_se(ratios[name])
        print(f"- {name}: {np.exp(mean):.4f} (log s.e. {sem:.4f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=at_least(1), default=2)
    parser.add_argument("--layers", type=at_least(1), default=6)
    parser.add_argument("--steps", type=at_least(EplbConfig().interval + 1), default=1200)
    parser.add_argument("--tokens-per-rank", type=at_least(1), default=16)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    parser.add_argument(
        "--policies", nargs="+", default=["equilibrium", "flashlb", "deepseek", "swift"]
    )
    args = parser.parse_args(argv)
    for name in args.policies:
        get_policy(name)  # an unknown name fails before any replay
    for regime in args.regimes:
        run(regime, args)


if __name__ == "__main__":
    main()
