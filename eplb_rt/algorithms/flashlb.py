# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""``flashlb``: FlashLB-style joint allotment and placement with episode statistics.

Our own implementation of the idea behind vllm-ascend's FlashLB:

* **Statistics.** The history is cut into episodes (each normalised); per layer the mean
  ``mu [E]`` and covariance ``cov [E, E]`` of expert load across episodes.
* **Device score.** A rank is scored by ``mean + z * std`` of its load, the variance including
  the covariance of the experts it holds (``z = 0.674``: the 75th percentile of a normal load).
* **Tree search.** Experts by decreasing mean load, in groups of ``D``; per group the search
  branches over the redundant replicas the group receives (around its proportional share),
  splits them by min-max-replica and places them by score. A beam of ``width`` states survives
  each group, ranked by a look-ahead (worst score or the mean rank load, the larger).
* **Neighbour search** over the best state's replica counts, scored on the episodes' mean PAR.
* **Hungarian alignment** to the previous placement and **layer-wise cherry-picking**: a layer is
  re-deployed only when its PAR passes ``threshold`` and the new one is better by ``margin``.
* Optional **LPT-incremental**: only the hottest experts and those whose count changed move.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit

from eplb_rt.algorithms.align import align_row
from eplb_rt.algorithms.metrics import row_par
from eplb_rt.algorithms.packing import place_replica, score_place, stable_order
from eplb_rt.algorithms.registry import Layer, Options, option, register
from eplb_rt.algorithms.replicas import SCORE, allot_more, count_search
from eplb_rt.placement import Topology


@dataclasses.dataclass(frozen=True)
class FlashLBOptions(Options):
    """Options of the ``flashlb`` policy.

    Attributes:
        num_episodes: episodes the history is cut into for the statistics.
        z: weight of the standard deviation in the device score (0.674 = 75th percentile).
        width: states kept per group in the tree search (beam width).
        branch: replica-count choices per group and state (around the proportional share).
        neighbour_rounds, neighbour_width: rounds and donor/recipient experts of the count search.
        threshold: with a previous placement: a layer is re-deployed only above this PAR ...
        margin: ... and when the new one removes this fraction of its excess ``PAR - 1``.
        incremental: with a previous placement: LPT-incremental re-placement inside a layer.
        hot_fraction: share of experts (hottest first) re-placed by the incremental mode.
    """

    num_episodes: int = option(16, low=1)
    z: float = option(0.674, low=0)
    width: int = option(4, low=1)
    branch: int = option(3, low=1)
    neighbour_rounds: int = option(4, low=0)
    neighbour_width: int = option(3, low=1)
    threshold: float = option(1.0, low=1)
    margin: float = option(0.01, low=0)
    incremental: bool = option(False)
    hot_fraction: float = option(0.1, low=0, high=1)


@njit(cache=True, nogil=True)
def tree_search(mu, cov, z, D, S, width, branch):
    """Beam search over expert groups; returns ``(row [P], counts [E])`` of the best state.

    States live in one pool: the beam's and, per group, their children's (``width * branch``).
    """
    E = mu.shape[0]
    P = D * S
    order = stable_order(-mu)
    total = mu.sum()
    N = width * (branch + 1)
    rows = np.full((N, P), -1, dtype=np.int64)
    fills = np.zeros((N, D), dtype=np.int64)
    holds = np.zeros((N, D, E), dtype=np.bool_)
    means = np.zeros((N, D))
    varss = np.zeros((N, D))
    counts = np.ones((N, E), dtype=np.int64)
    spare = np.full(N, P - E, dtype=np.int64)
    est = np.empty(N)
    beam = np.zeros(1, dtype=np.int64)
    children = np.empty(width * branch, dtype=np.int64)
    in_beam = np.zeros(N, dtype=np.bool_)
    placed_load = 0.0
    for start in range(0, E, D):
        experts = order[start : start + D]
        group_load = mu[experts].sum()
        last = start + D >= E
        share = group_load / (total - placed_load) if total > placed_load else 0.0
        in_beam[:] = False
        in_beam[beam] = True
        n = 0
        c = 0
        for b in beam:
            centre = int(np.floor(spare[b] * share + 0.5))
            for t in range(1 if last else branch):
                extra = spare[b] if last else centre + t - branch // 2
                if extra < 0 or extra > spare[b]:
                    continue
                while in_beam[c]:
                    c += 1
                rows[c], fills[c], holds[c] = rows[b], fills[b], holds[b]
                means[c], varss[c], counts[c] = means[b], varss[b], counts[b]
                spare[c] = spare[b] - extra + allot_more(mu, counts[c], experts, extra, D)
                score_place(
                    experts, counts[c], mu, cov, z, means[c], varss[c], rows[c], fills[c], holds[c]
                )
                # Prune: the remaining experts need a slot each.
                if P - fills[c].sum() < E - start - experts.shape[0]:
                    continue
                # Look-ahead: the rest of the load spreads at best evenly over all ranks.
                est[c] = total / D
                for r in range(D):
                    est[c] = max(est[c], means[c, r] + z * np.sqrt(max(varss[c, r], 0.0)))
                children[n] = c
                n += 1
                c += 1
        if n == 0:
            break
        beam = children[:n][stable_order(est[children[:n]])[:width]].copy()
        placed_load += group_load
    # Any spare left (caps bound in the last group): min-max over all experts, placed greedily.
    b = beam[0]
    if spare[b] > 0:
        before = counts[b].copy()
        allot_more(mu, counts[b], np.arange(E), spare[b], D)
        per = mu / counts[b]
        for i in range(E):
            for _ in range(counts[b, i] - before[i]):
                place_replica(i, per, means[b], fills[b], holds[b], rows[b])
    return rows[b].copy(), counts[b].copy()


def _incremental(
    prev: np.ndarray, new: np.ndarray, mu: np.ndarray, topo: Topology, opts: FlashLBOptions
) -> np.ndarray:
    """Previous slots, with only the hottest experts and those whose count changed re-placed."""
    D, S, E = topo.num_ranks, topo.num_slots_per_rank, mu.shape[0]
    counts = np.bincount(new, minlength=E)
    redo = counts != np.bincount(prev, minlength=E)
    redo[np.argsort(-mu, kind="stable")[: int(np.ceil(opts.hot_fraction * E))]] = True
    grid = np.where(redo[prev], -1, prev).reshape(D, S)
    per = mu / np.maximum(counts, 1)
    loads = np.where(grid >= 0, per[grid], 0.0).sum(axis=1)
    for e in np.argsort(-per, kind="stable"):
        for _ in range(counts[e] if redo[e] else 0):
            free = [(loads[r], r) for r in range(D) if (grid[r] < 0).any() and e not in grid[r]]
            if not free:
                return new  # cannot fit incrementally: take the full plan
            r = min(free)[1]
            grid[r][np.flatnonzero(grid[r] < 0)[0]] = e
            loads[r] += per[e]
    return grid.reshape(-1)


@register(
    "flashlb",
    FlashLBOptions,
    "FlashLB: tree search over expert groups by mean+z*std score, aligned and cherry-picked",
    warm_up_options=({}, {"incremental": True}),
)
def flashlb(layer: Layer, topo: Topology, opts: FlashLBOptions) -> np.ndarray:
    """One layer; returns ``row [P] int64`` (uniform shares)."""
    D, S = topo.num_ranks, topo.num_slots_per_rank
    W, prev = layer.episodes, layer.previous
    mu = np.ascontiguousarray(W.mean(axis=0))
    centred = W - mu
    cov = np.ascontiguousarray(centred.T @ centred / W.shape[0])
    row, counts = tree_search(mu, cov, opts.z, D, S, opts.width, opts.branch)
    row = count_search(
        SCORE,
        row,
        W,
        mu,
        cov,
        opts.z,
        counts,
        D,
        opts.neighbour_rounds,
        opts.neighbour_width,
        0,
        0.0,
    )
    if prev is None:
        return row
    if opts.incremental:
        row = _incremental(prev, row, mu, topo, opts)
    row, _ = align_row(row, prev, D, mu.shape[0])
    old_par = row_par(prev, W, D)
    new_par = row_par(row, W, D)
    redeploy = old_par > opts.threshold and new_par < old_par - opts.margin * (old_par - 1.0)
    return row if redeploy else prev
