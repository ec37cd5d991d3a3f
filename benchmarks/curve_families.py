"""Held-out ends of workload families that follow a curve, built from the small traces.

    PYTHONPATH=. python benchmarks/curve_families.py [--policy equilibrium]
        [--option equilibrium.unseen=0 ...]  # an option of the policy (repeatable)

DeepSeek-V3's prefill workloads (one prompt length each) lie on a curve; the other shipped
traces are mixes of tasks, domains or subsets that do not. To check on other models what a
policy does with a curve, each pair of workloads ``(A, B)`` of ESFT, OLMoE and gpt-oss spans a
family ``W(t)`` proportional to ``A^(1 - t) B^t`` (per layer and expert: the log-shares move in a
straight line, the shares bend), at ``t`` = 0, 1/3, 2/3, 1. The policy plans on three of them
(one episode each) and is scored on the fourth, for each end held out: the new workload lies
beyond the seen ones along the curve, as 512 and 4096 tokens do among DeepSeek-V3's. One
markdown row per trace and shape: mean PAR over the pairs and both ends, its standard error,
and how many cases.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from benchmarks import selection, traces
from benchmarks.common import shape_name
from eplb_rt.algorithms import metrics, plan
from eplb_rt.algorithms.load import normalise
from eplb_rt.placement import Topology

STEPS = (0.0, 1 / 3, 2 / 3, 1.0)
CASES = {
    "ESFT": ([Topology(8, 9)], lambda: [traces.esft(t) for t in traces.ESFT_TASKS]),
    "OLMoE": ([Topology(8, 9)], lambda: [traces.olmoe(domain=d) for d in traces.OLMOE_DOMAINS]),
    "gpt-oss": (
        [Topology(8, 5), Topology(8, 9), Topology(16, 5), Topology(4, 18)],
        lambda: [traces.gptoss(s) for s in traces.gptoss_subsets()],
    ),
}


def family(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """``[L, E]`` loads at :data:`STEPS` between shares ``a`` and ``b`` (both ``[L, E]``), each
    layer summing to 1e6 (shares below 1e-6 raised to it, so every log is finite)."""
    la, lb = np.log(np.maximum(a, 1e-6)), np.log(np.maximum(b, 1e-6))
    out = []
    for t in STEPS:
        w = np.exp((1 - t) * la + t * lb)
        out.append(1e6 * w / w.sum(axis=-1, keepdims=True))
    return out


def held_out_ends(policy: str, shares: list[np.ndarray], topo: Topology, options) -> np.ndarray:
    """PAR of the plan on the three others, for each family's two ends held out: ``[2 * pairs]``."""
    pars = []
    for a, b in itertools.combinations(range(len(shares)), 2):
        loads = family(shares[a], shares[b])
        for held in (0, len(STEPS) - 1):
            train = np.stack([x for i, x in enumerate(loads) if i != held])
            placement = plan(policy, train, topo, options=options)
            pars.append(float(np.nanmean(metrics.par(placement, loads[held]))))
    return np.array(pars)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="equilibrium")
    parser.add_argument("--option", action="append", default=[], metavar="POLICY.KEY=VALUE")
    args = parser.parse_args(argv)
    given = selection.options(args.option, [args.policy])
    options = given.get(args.policy)
    print(f"| trace | shape | {args.policy}: mean PAR of the held-out ends | cases |")
    print("|---|---|---|---:|")
    for name, (shapes, load) in CASES.items():
        shares = [normalise(x.sum(axis=0)) for x in load()]
        for topo in shapes:
            pars = held_out_ends(args.policy, shares, topo, options)
            se = pars.std(ddof=1) / np.sqrt(len(pars))
            shape = shape_name(topo)
            print(f"| {name} | {shape} | {pars.mean():.4f} ± {se:.4f} | {len(pars)} |", flush=True)


if __name__ == "__main__":
    main()
