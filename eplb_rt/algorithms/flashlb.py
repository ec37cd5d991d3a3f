# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""``flashlb``: FlashLB-style joint allotment and placement with episode statistics.

Our own implementation of the idea behind vllm-ascend's FlashLB:

* **Statistics.** The history is cut into episodes (normalised, see
  :mod:`eplb_rt.algorithms.episodes`); per layer the mean ``mu [E]`` and covariance
  ``cov [E, E]`` of expert load across episodes.
* **Device score.** A rank is scored by ``mean + z * std`` of its load, the variance including
  the covariance of the experts it holds (``z = 0.674``: the 75th percentile of a normal load).
* **Tree search.** Experts in decreasing mean load are taken in groups of ``D``. For each group
  the search branches over how many redundant replicas the group receives (around its
  proportional share), splits them inside the group by min-max-replica, and places the group's
  replicas one by one on the rank whose score grows least. A beam of ``width`` states survives
  each group, ranked by a look-ahead estimate: the larger of the current worst score and the
  fill level the not-yet-placed experts will bring. States that would leave too few slots for
  the remaining experts are pruned.
* **Neighbour search** over the replica counts of the best state (one replica moved from a donor
  to a recipient, re-placed), scored on the episodes (mean peak-to-average over episodes).
* **Hungarian alignment** of the new slots to the previous placement, and **layer-wise
  cherry-picking**: a layer is re-deployed only when its PAR passes ``threshold`` and the new
  placement is better by ``margin`` (hysteresis); other layers keep their slots.
* Optional **LPT-incremental**: keep the previous slots except those of the hottest experts and
  of experts whose replica count changed, and re-place only those replicas.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit

from eplb_rt.algorithms import _kernels as K
from eplb_rt.algorithms.align import align_row
from eplb_rt.algorithms.episodes import cut_episodes, normalise_episodes
from eplb_rt.algorithms.registry import register
from eplb_rt.placement import Placement, Topology


@dataclasses.dataclass(frozen=True)
class FlashLBOptions:
    """Options of the ``flashlb`` policy.

    Attributes:
        num_episodes: episodes the history is cut into for the statistics.
        z: weight of the standard deviation in the device score (0.674 = 75th percentile).
        width: states kept per group in the tree search (beam width).
        branch: replica-count choices tried per group and state (odd; centred on the
            proportional share).
        neighbour_rounds: rounds of the neighbour search over replica counts.
        neighbour_width: donor and recipient experts tried per round (one- and two-replica
            moves among them).
        threshold: with ``previous``: a layer is re-deployed only if its PAR exceeds this.
        margin: ... and the new placement removes at least this fraction of the layer's
            excess ``PAR - 1`` (hysteresis).
        incremental: with ``previous``: LPT-incremental re-placement inside a layer.
        hot_fraction: share of experts (hottest first) re-placed by the incremental mode.
    """

    num_episodes: int = 16
    z: float = 0.674
    width: int = 4
    branch: int = 3
    neighbour_rounds: int = 4
    neighbour_width: int = 3
    threshold: float = 1.0
    margin: float = 0.01
    incremental: bool = False
    hot_fraction: float = 0.1

    def __post_init__(self) -> None:
        if min(self.num_episodes, self.width, self.branch, self.neighbour_width) < 1:
            raise ValueError("num_episodes, width, branch and neighbour_width must be >= 1")
        if self.neighbour_rounds < 0 or self.margin < 0 or self.z < 0:
            raise ValueError("neighbour_rounds, margin and z must be >= 0")
        if not 0.0 <= self.hot_fraction <= 1.0:
            raise ValueError(f"hot_fraction must be in [0, 1], got {self.hot_fraction}")


@njit(cache=True, nogil=True)
def _place_group(experts, counts, mu, cov, z, mean, var, row, fill, holds, S):
    """Place all replicas of ``experts`` (counts fixed) greedily by device score, in place."""
    D = mean.shape[0]
    n = experts.shape[0]
    per = np.empty(n)
    for t in range(n):
        per[t] = mu[experts[t]] / counts[experts[t]]
    order = K.stable_order(-per)
    for t in order:
        i = experts[t]
        share = 1.0 / counts[i]
        for _ in range(counts[i]):
            best = -1
            best_score = np.inf
            for r in range(D):
                if fill[r] >= S or holds[r, i]:
                    continue
                v = var[r] + share * share * cov[i, i]
                for s in range(fill[r]):
                    j = row[r * S + s]
                    v += 2.0 * share * cov[i, j] / counts[j]
                sc = mean[r] + share * mu[i] + z * np.sqrt(v if v > 0.0 else 0.0)
                if sc < best_score:
                    best_score = sc
                    best = r
            if best < 0:
                # Every rank with room holds i already: fall back to the repairing placer and
                # recompute the statistics of all ranks.
                K._place_one(i, share * mu[i], mean, fill, holds, row, S)
                _rank_stats(row, fill, counts, mu, cov, mean, var, S)
                continue
            j_sum = 0.0
            for s in range(fill[best]):
                j = row[best * S + s]
                j_sum += cov[i, j] / counts[j]
            var[best] += share * share * cov[i, i] + 2.0 * share * j_sum
            mean[best] += share * mu[i]
            row[best * S + fill[best]] = i
            fill[best] += 1
            holds[best, i] = True


@njit(cache=True, nogil=True)
def _rank_stats(row, fill, counts, mu, cov, mean, var, S):
    D = mean.shape[0]
    for r in range(D):
        m = 0.0
        v = 0.0
        for a in range(fill[r]):
            i = row[r * S + a]
            m += mu[i] / counts[i]
            for b in range(fill[r]):
                j = row[r * S + b]
                v += cov[i, j] / (counts[i] * counts[j])
        mean[r] = m
        var[r] = v


@njit(cache=True, nogil=True)
def _allot_within(experts, mu, extra, counts, D):
    """Give ``extra`` replicas to ``experts`` by min-max-replica (cap ``D``); returns leftover."""
    for _ in range(extra):
        best = -1
        best_val = -1.0
        for i in experts:
            if counts[i] < D:
                v = mu[i] / counts[i]
                if v > best_val:
                    best_val = v
                    best = i
        if best < 0:
            return extra
        counts[best] += 1
        extra -= 1
    return 0


@njit(cache=True, nogil=True)
def tree_search(mu, cov, z, D, S, width, branch):
    """Beam search over expert groups; returns ``(row [P], counts [E])`` of the best state."""
    E = mu.shape[0]
    P = D * S
    order = K.stable_order(-mu)
    G = (E + D - 1) // D
    total = mu.sum()
    B = width
    rows = np.full((B, P), -1, dtype=np.int64)
    fills = np.zeros((B, D), dtype=np.int64)
    holdss = np.zeros((B, D, E), dtype=np.bool_)
    means = np.zeros((B, D))
    varss = np.zeros((B, D))
    countss = np.ones((B, E), dtype=np.int64)
    spare = np.full(B, P - E, dtype=np.int64)
    alive = 1
    C = B * branch
    c_rows = np.empty((C, P), dtype=np.int64)
    c_fills = np.empty((C, D), dtype=np.int64)
    c_holds = np.empty((C, D, E), dtype=np.bool_)
    c_means = np.empty((C, D))
    c_vars = np.empty((C, D))
    c_counts = np.empty((C, E), dtype=np.int64)
    c_spare = np.empty(C, dtype=np.int64)
    c_est = np.empty(C)
    placed_load = 0.0
    for g in range(G):
        experts = order[g * D : min(E, (g + 1) * D)]
        group_load = 0.0
        for i in experts:
            group_load += mu[i]
        remaining_load = total - placed_load
        last = g == G - 1
        n = 0
        for b in range(alive):
            share = group_load / remaining_load if remaining_load > 0 else 0.0
            centre = int(np.floor(spare[b] * share + 0.5))
            for t in range(branch):
                extra = centre + t - branch // 2
                if last:
                    extra = spare[b]
                    if t > 0:
                        break
                if extra < 0 or extra > spare[b]:
                    continue
                c_rows[n] = rows[b]
                c_fills[n] = fills[b]
                c_holds[n] = holdss[b]
                c_means[n] = means[b]
                c_vars[n] = varss[b]
                c_counts[n] = countss[b]
                left = _allot_within(experts, mu, extra, c_counts[n], D)
                c_spare[n] = spare[b] - extra + left
                _place_group(
                    experts,
                    c_counts[n],
                    mu,
                    cov,
                    z,
                    c_means[n],
                    c_vars[n],
                    c_rows[n],
                    c_fills[n],
                    c_holds[n],
                    S,
                )
                worst = 0.0
                for r in range(D):
                    sc = c_means[n, r] + z * np.sqrt(max(c_vars[n, r], 0.0))
                    worst = max(worst, sc)
                # Look-ahead: the rest of the load spreads at best evenly over all ranks.
                est = max(worst, total / D)
                # Prune: the remaining experts need a slot each.
                free = 0
                for r in range(D):
                    free += S - c_fills[n, r]
                if free < E - (g * D + experts.shape[0]):
                    continue
                c_est[n] = est
                n += 1
        if n == 0:
            break
        keep = K.stable_order(c_est[:n])[:B]
        alive = keep.shape[0]
        for b in range(alive):
            c = keep[b]
            rows[b] = c_rows[c]
            fills[b] = c_fills[c]
            holdss[b] = c_holds[c]
            means[b] = c_means[c]
            varss[b] = c_vars[c]
            countss[b] = c_counts[c]
            spare[b] = c_spare[c]
        placed_load += group_load
    # Any spare left (caps bound in the last group): min-max over all experts, placed greedily.
    best = 0
    row = rows[best].copy()
    counts = countss[best].copy()
    fill = fills[best].copy()
    holds = holdss[best].copy()
    mean = means[best].copy()
    extra = spare[best]
    if extra > 0:
        before = counts.copy()
        _allot_within(np.arange(E), mu, extra, counts, D)
        for i in range(E):
            for _ in range(counts[i] - before[i]):
                K._place_one(i, mu[i] / counts[i], mean, fill, holds, row, S)
    return row, counts


@njit(cache=True, nogil=True)
def place_counts(mu, cov, z, counts, D, S):
    """Greedy score placement of all experts with fixed ``counts`` (hottest first)."""
    E = mu.shape[0]
    row = np.full(D * S, -1, dtype=np.int64)
    fill = np.zeros(D, dtype=np.int64)
    holds = np.zeros((D, E), dtype=np.bool_)
    mean = np.zeros(D)
    var = np.zeros(D)
    _place_group(np.arange(E), counts, mu, cov, z, mean, var, row, fill, holds, S)
    return row


@njit(cache=True, nogil=True)
def episode_par(row, W, D, S):
    """Mean over episodes of max / mean rank load (uniform shares); 1.0 for empty episodes."""
    counts = K.counts_from_row(row, W.shape[1])
    loads = K.rank_loads(row, W, counts, D, S)
    acc = 0.0
    for k in range(W.shape[0]):
        tot = loads[k].sum()
        acc += loads[k].max() * D / tot if tot > 0 else 1.0
    return acc / W.shape[0]


@njit(cache=True, nogil=True)
def neighbour_search(row, counts, W, mu, cov, z, D, S, rounds, width):
    """Move one replica between experts (hottest recipients, cheapest donors), re-place, keep
    improvements by the episode score. Returns the best row (counts updated in place)."""
    E = mu.shape[0]
    best_row = row
    best_val = episode_par(row, W, D, S)
    trial = counts.copy()
    for _ in range(rounds):
        rec_key = np.empty(E)
        don_key = np.empty(E)
        for e in range(E):
            rec_key[e] = -mu[e] / counts[e] if counts[e] < D else np.inf
            don_key[e] = mu[e] / (counts[e] - 1) if counts[e] > 1 else np.inf
        recipients = K.stable_order(rec_key)[:width]
        donors = K.stable_order(don_key)[:width]
        improved = False
        cand_row = best_row
        cand_counts = counts.copy()
        # One-replica moves, and two-replica moves (two recipients, two donors): when too many
        # large replicas share ranks no single move helps.
        for i1 in range(recipients.shape[0]):
            for i2 in range(-1, recipients.shape[0]):
                for j1 in range(donors.shape[0]):
                    for j2 in range(-1, donors.shape[0]):
                        if (i2 < 0) != (j2 < 0) or (i2 >= 0 and (i2 < i1 or j2 < j1)):
                            continue
                        trial[:] = counts
                        trial[recipients[i1]] += 1
                        trial[donors[j1]] -= 1
                        if i2 >= 0:
                            trial[recipients[i2]] += 1
                            trial[donors[j2]] -= 1
                        ok = True
                        for e in range(E):
                            if trial[e] < 1 or trial[e] > D:
                                ok = False
                        if not ok:
                            continue
                        r = place_counts(mu, cov, z, trial, D, S)
                        v = episode_par(r, W, D, S)
                        if v < best_val - 1e-12:
                            best_val = v
                            cand_row = r
                            cand_counts[:] = trial
                            improved = True
        if not improved:
            break
        best_row = cand_row
        counts[:] = cand_counts
    return best_row


def _layer_plan(W: np.ndarray, topo: Topology, opts: FlashLBOptions) -> np.ndarray:
    D, S = topo.num_ranks, topo.num_slots_per_rank
    mu = np.ascontiguousarray(W.mean(axis=0))
    centred = W - mu
    cov = np.ascontiguousarray(centred.T @ centred / W.shape[0])
    row, counts = tree_search(mu, cov, opts.z, D, S, opts.width, opts.branch)
    return neighbour_search(
        row, counts, W, mu, cov, opts.z, D, S, opts.neighbour_rounds, opts.neighbour_width
    )


def _incremental(
    prev_row: np.ndarray, new_row: np.ndarray, W: np.ndarray, topo: Topology, opts: FlashLBOptions
) -> np.ndarray:
    """Previous slots, with only the hottest experts and those whose count changed re-placed."""
    D, S, E = topo.num_ranks, topo.num_slots_per_rank, W.shape[1]
    mu = W.mean(axis=0)
    new_counts = np.bincount(new_row, minlength=E)
    old_counts = np.bincount(prev_row, minlength=E)
    hot = np.argsort(-mu, kind="stable")[: int(np.ceil(opts.hot_fraction * E))]
    redo = np.zeros(E, dtype=bool)
    redo[hot] = True
    redo |= new_counts != old_counts
    row = prev_row.copy()
    row[redo[row]] = -1
    grid = row.reshape(D, S)
    order = np.argsort(-(mu / np.maximum(new_counts, 1)), kind="stable")
    loads = np.zeros(D)
    for r in range(D):
        kept = grid[r][grid[r] >= 0]
        loads[r] = (mu[kept] / new_counts[kept]).sum()
    for e in order:
        if not redo[e]:
            continue
        for _ in range(new_counts[e]):
            free = [(loads[r], r) for r in range(D) if (grid[r] < 0).any() and e not in grid[r]]
            if not free:
                return new_row  # cannot fit incrementally: take the full plan
            _, r = min(free)
            grid[r][np.flatnonzero(grid[r] < 0)[0]] = e
            loads[r] += mu[e] / new_counts[e]
    return grid.reshape(-1)


def _warm_up() -> None:
    topo = Topology(4, 3)
    load = np.arange(1.0, 1 + 2 * 2 * 9).reshape(2, 2, 9)
    first = flashlb(load, None, topo, FlashLBOptions())
    flashlb(load[::-1].copy(), first, topo, FlashLBOptions(incremental=True))


@register(
    "flashlb",
    FlashLBOptions,
    "FlashLB: tree search over expert groups by mean+z*std score, aligned and cherry-picked",
    warm_up=_warm_up,
)
def flashlb(
    load: np.ndarray, previous: Placement | None, topo: Topology, opts: FlashLBOptions
) -> Placement:
    """load: ``[T, L, E]`` float64. Returns the placement of all ``L`` layers (uniform shares)."""
    episodes = normalise_episodes(cut_episodes(load, opts.num_episodes))
    _, L, E = episodes.shape
    D, S = topo.num_ranks, topo.num_slots_per_rank
    rows = np.empty((L, topo.num_slots), dtype=np.int64)
    for layer in range(L):
        W = np.ascontiguousarray(episodes[:, layer, :])
        new_row = _layer_plan(W, topo, opts)
        if previous is None:
            rows[layer] = new_row
            continue
        prev_row = previous.phy2log[layer].astype(np.int64)
        if opts.incremental:
            new_row = _incremental(prev_row, new_row, W, topo, opts)
        new_row, _ = align_row(new_row, prev_row, D, E)
        old_par = episode_par(prev_row, W, D, S)
        new_par = episode_par(new_row, W, D, S)
        redeploy = old_par > opts.threshold and new_par < old_par - opts.margin * (old_par - 1.0)
        rows[layer] = new_row if redeploy else prev_row
    return Placement(rows, E, topo.num_ranks)
