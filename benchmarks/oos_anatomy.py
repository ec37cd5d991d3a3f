"""Where the default policy's static out-of-sample PAR on DeepSeek-V3 comes from.

    PYTHONPATH=. python benchmarks/oos_anatomy.py [--shapes 32x9,64x5]
        [--option equilibrium.unseen=0 ...]  # an option of the policy (repeatable)

Leave-one-out as ``eval_policies.py --sections out``: the policy plans on three prefill
workloads (one episode each) and is scored on the fourth. The held-out load ``t`` of a layer
(scaled to sum 1) is split against the training episodes ``W [3, E]`` (mean ``w``): its part in
their affine span, ``w + (W - w)^T a`` with ``a`` the least-squares fit (negative shares cut, then
scaled to sum 1), and the rest, the residual no combination of the seen workloads gives. Per fold
and shape, mean over the 58 layers, one markdown row:

* PAR of the plan on the held-out load, on its in-span part, on the training mean, and on the
  training mean plus the residual (how much each part costs the plan);
* refits with the plan's own replica counts (LPT, then pairwise swaps on the one load), scored on
  the held-out load: refitted on the held-out load itself (what the counts allow), and on its
  in-span part only (what knowing where the new workload lies among the seen ones, and nothing
  of its residual, would buy);
* the Spearman correlation over ranks between the absolute deviation of a rank's held-out load
  from its training-mean load and the rank's predicted spread ``sum over its replicas of
  v_e / c_e^2``, with ``v_e`` the residual variance of :func:`unseen_axes` (the hold-outs inside
  the training set) or ``w_e^2`` (deviations in proportion to load): near 0 means no variance
  model of these tells which ranks a new workload will load.

The ``mean`` row is over the four folds (the ``out`` section's figure is its first column).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import spearmanr

from benchmarks import selection, traces
from eplb_rt.algorithms import plan
from eplb_rt.algorithms.episode_rows import unseen_axes
from eplb_rt.algorithms.load import normalise
from eplb_rt.algorithms.metrics import row_par, row_rank_loads
from eplb_rt.algorithms.replicas import LPT, construct
from eplb_rt.placement import Topology

COLUMNS = (
    "held-out",
    "in-span part",
    "training mean",
    "mean + residual",
    "refit on held-out",
    "refit on in-span part",
    "rho (unseen v_e)",
    "rho (w_e^2)",
)


def in_span(W: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``[E]``: the part of ``t [E]`` in the affine span of ``W [K, E]``, shares summing to 1."""
    w = W.mean(axis=0)
    X = W - w
    a, *_ = np.linalg.lstsq(X.T, t - w, rcond=None)
    return normalise(np.maximum(w + X.T @ a, 0.0)[None, :])[0]


def refit(load: np.ndarray, counts: np.ndarray, num_ranks: int) -> np.ndarray:
    """``row [P]``: the replicas ``counts [E]`` placed for ``load [E]`` alone (LPT, then swaps)."""
    P = int(counts.sum())
    return construct(LPT, load[None, :], load, np.zeros((1, 1)), 0.0, counts, num_ranks, 4 * P, 0.0)


def per_rank(row: np.ndarray, load: np.ndarray, num_ranks: int) -> np.ndarray:
    """``[D]``: the rank loads of ``row [P]`` for ``load [E]``, each replica ``load / count``."""
    return row_rank_loads(row, load[None, :], num_ranks)[0]


def layer_row(W, t, row, counts, num_ranks) -> list[float]:
    """The :data:`COLUMNS` of one layer: ``W [3, E]`` training episodes, ``t [E]`` held out,
    ``row [P]`` and ``counts [E]`` the plan's slots and replica counts."""
    w = W.mean(axis=0)
    part = in_span(W, t)
    rest = normalise(np.maximum(w + t - part, 0.0)[None, :])[0]
    pars = [row_par(row, x[None, :], num_ranks) for x in (t, part, w, rest)]
    pars += [row_par(refit(x, counts, num_ranks), t[None, :], num_ranks) for x in (t, part)]
    dev = np.abs(per_rank(row, t - w, num_ranks))
    axes, _ = unseen_axes(W)
    # A replica's variance is its expert's over count squared: v / c per replica, / c again.
    c = counts.astype(float)
    spreads = ((axes**2).sum(axis=0), w**2)
    rhos = [spearmanr(dev, per_rank(row, v / c, num_ranks))[0] for v in spreads]
    return pars + rhos


def parse_shape(text: str) -> tuple[int, int]:
    """``"32x9"`` -> ``(32, 9)``: ranks and slots per rank."""
    ranks, x, slots = text.partition("x")
    if not (x and ranks.isdigit() and slots.isdigit() and int(ranks) > 0 and int(slots) > 0):
        raise SystemExit(f"--shapes: expected RANKSxSLOTS such as 32x9, got {text!r}")
    return int(ranks), int(slots)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="32x9,64x5", help="ranks x slots, comma-separated")
    parser.add_argument("--option", action="append", default=[], metavar="equilibrium.KEY=VALUE")
    args = parser.parse_args()
    given = selection.options(args.option, ["equilibrium"])
    options = given.get("equilibrium")
    shapes = [parse_shape(text) for text in args.shapes.split(",")]
    loads = [traces.deepseek_v3(x, moe_only=True) for x in traces.DEEPSEEK_V3_WORKLOADS]
    print("| shape | held out | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for D, S in shapes:
        shape = f"{D}x{S}"
        folds = []
        for name, (train, test) in zip(
            traces.DEEPSEEK_V3_WORKLOADS, traces.leave_one_out(loads), strict=True
        ):
            placement = plan("equilibrium", train, Topology(D, S), options=options)
            counts = placement.logcnt.astype(np.int64)
            W = normalise(train)  # [3, L, E]
            t = normalise(test.sum(axis=0))
            rows = [
                layer_row(W[:, layer], t[layer], placement.phy2log[layer], counts[layer], D)
                for layer in range(t.shape[0])
                if t[layer].sum() > 0
            ]
            folds.append(np.nanmean(rows, axis=0))
            cells = " | ".join(f"{x:.4f}" for x in folds[-1])
            print(f"| {shape} | {name.removeprefix('prefill_')} | {cells} |")
        print(f"| {shape} | mean | " + " | ".join(f"{x:.4f}" for x in np.mean(folds, 0)) + " |")


if __name__ == "__main__":
    main()
