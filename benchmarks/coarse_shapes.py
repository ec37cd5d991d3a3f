"""Few slots a rank: each policy's plan on a sample of a trace's load, scored on that load.

Where a rank holds two or three replicas, the replica counts decide how well it can be balanced:
a swap moves half or a third of a rank's load at once. Each policy plans on a multinomial sample
of every layer's load (``--tokens`` a layer, split over ``--episodes`` draws, as a runtime's
window of routed tokens would show it), and each plan is scored by its PAR on the trace's load
itself, the distribution the sample was drawn from: what the window predicts for the load that
follows. ``not counts`` is our policy on the same sample scaled by ``1 + 1e-9``: it no longer
knows the sample's noise, so its replica-count search does not stop where a round gains less than
that noise (BENCHMARKS §3, "Seventieth session").

Per cell: the mean PAR over ``--draws`` samples, and ours less each other contender's, paired over
the draws, with its standard error. Seeded: any host gives the same figures.

    PYTHONPATH=. python benchmarks/coarse_shapes.py [--draws 8] [--episodes 1]
        [--cells gpt-oss OLMoE DeepSeek-V3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import traces
from benchmarks.common import at_least, mean_se
from eplb_rt import Topology
from eplb_rt.algorithms import metrics, plan

CELLS = {
    # trace: (its load [L, E], tokens a layer in the sample, ranks x slots)
    "gpt-oss": (lambda: traces.gptoss()[0], 20_000, [(32, 2), (16, 3), (8, 5)]),
    "OLMoE": (lambda: traces.olmoe()[0], 20_000, [(64, 2), (32, 3), (16, 5)]),
    "DeepSeek-V3": (
        lambda: traces.deepseek_v3("prefill_in1024", moe_only=True)[0],
        4_000_000,
        [(256, 2), (128, 3), (64, 5)],
    ),
}
CONTENDERS = ("equilibrium", "equilibrium, not counts", "flashlb", "deepseek")


def sample(load: np.ndarray, tokens: int, episodes: int, rng: np.random.Generator) -> np.ndarray:
    """``[episodes, L, E]``: each layer's ``tokens`` drawn from ``load [L, E]``, split evenly."""
    share = load / load.sum(axis=1, keepdims=True)
    return np.stack(
        [[rng.multinomial(tokens // episodes, p) for p in share] for _ in range(episodes)]
    ).astype(np.float64)


def cell(load: np.ndarray, tokens: int, shape, *, draws: int, episodes: int, seed: int) -> dict:
    """Every contender's PARs on ``load`` over ``draws`` samples, and its mean plan time."""
    rng = np.random.default_rng(seed)
    topology = Topology(*shape)
    pars = {name: [] for name in CONTENDERS}
    seconds = dict.fromkeys(CONTENDERS, 0.0)
    for _ in range(draws):
        drawn = sample(load, tokens, episodes, rng)
        for name in CONTENDERS:
            policy, *how = name.split(", ")
            given = drawn * (1.0 + 1e-9) if how else drawn
            start = time.perf_counter()
            placement = plan(policy, given, topology)
            seconds[name] += (time.perf_counter() - start) / draws
            pars[name].append(float(np.nanmean(metrics.par(placement, load))))
    return {"pars": pars, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=at_least(1), default=8)
    parser.add_argument("--episodes", type=at_least(1), default=1)
    parser.add_argument("--cells", nargs="+", choices=sorted(CELLS), default=list(CELLS))
    args = parser.parse_args(argv)
    others = CONTENDERS[1:]
    print(f"Mean PAR on the trace's load over {args.draws} samples, {args.episodes} episode(s):\n")
    print("| trace | shape | tokens a layer | " + " | ".join(CONTENDERS) + " | "
          + " | ".join(f"ours - {name}" for name in others) + " |")  # fmt: skip
    print("|---" * (3 + len(CONTENDERS) + len(others)) + "|")
    for trace in args.cells:
        make, tokens, shapes = CELLS[trace]
        load = make()
        for seed, shape in enumerate(shapes):
            got = cell(load, tokens, shape, draws=args.draws, episodes=args.episodes, seed=seed)
            pars, seconds = got["pars"], got["seconds"]
            ours = np.array(pars["equilibrium"])
            means = [f"{np.mean(pars[n]):.4f} ({seconds[n]:.2f} s)" for n in CONTENDERS]
            gaps = []
            for name in others:
                mean, se = mean_se(ours - np.array(pars[name]))
                gaps.append(f"{mean:+.4f} ± {se:.4f}")
            print(f"| {trace} | {shape[0]}x{shape[1]} | {tokens:,} | " + " | ".join(means + gaps)
                  + " |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
