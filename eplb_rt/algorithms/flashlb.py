# ruff: noqa: PLR0917  (numba kernels take plain positional arrays)
"""``flashlb``: vllm-ascend's FlashLB search, as our own numba kernels.

The search, per layer (the same decisions as the ``FlashLB`` of vllm-ascend 0.26 to 0.30):

* **Statistics.** Every expert's load per episode, plus one token per step (the original's
  smoothing: no expert is ever exactly idle), in tokens, so a busy episode weighs more; the
  mean ``mu [E]``, variance and covariance ``cov [E, E]`` across episodes (``K - 1`` in the
  denominator; zero for a single episode). The covariance is summed in plain loops, so every
  rank plans the same table on any CPU; the original's ``matmul`` rounds as the BLAS kernels
  of the CPU do.
* **Device score** ``mean + z * std`` of a rank's load, the variance including the covariance
  of the replicas it holds (``z``: the 75th percentile of a normal load).
* **Allotment** by min-max on the score ``mu + z * std``: the next replica goes to the expert
  with the highest score per replica.
* **Placement** (LPT): experts by decreasing mean per replica, each replica to the rank whose
  device score after taking it is lowest (first rank on ties).
* **Neighbour search over quarters.** Experts sorted by score, cut into ``depth`` groups; for
  each group but the last, the redundant replicas still free are split between it and the
  experts after it. Starting from the split the joint allotment gives, the splits ``1 .. width``
  below and above (below first) are tried; each is allotted within both parts, placed, and
  scored by the mean over episodes of ``(D * peak + 0.01) / (total + 0.01)``; the lowest (the
  first found on ties) fixes the group's replicas.
* **Previous placement.** A layer is re-planned only when the placement in force scores above
  ``threshold``, and replaced only when the new one scores lower; the new slots are aligned to
  the old ones (Hungarian on ranks, kept experts keep their slot).

Beyond the original, counts never exceed the number of ranks and a replica whose ranks with room
all hold its expert makes room by one move (:func:`packing.place_replica`): the original cannot
place such tables at all. The history is cut into ``num_episodes`` runs of whole steps (the
registry's episodes), so no step is dropped; the original keeps the latest ``64 * (T // 64)``.
Experts of equal score are taken in index order on every CPU; the original's numpy sort orders
them by the SIMD kernels the CPU has. Otherwise the kernels return the original's placements
(``tests/integrations`` compares them on shipped traces). They are faster by skipping ranks
whose score cannot win (a lower bound from ``std(a + b) >= |std(a) - std(b)|``) and exact
divisions by one, and by not placing again the split a group inherits from the group before
(the joint allotment's, already scored).
"""

from __future__ import annotations

import dataclasses
from statistics import NormalDist

import numpy as np

from eplb_rt.algorithms.align import align_order
from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.packing import counts_from_row, place_replica
from eplb_rt.algorithms.registry import Layer, Layers, Options, option, register
from eplb_rt.placement import Topology

SMOOTHING = 1.0
"""Tokens added to every expert per step before the statistics (the original's ``+ 1``)."""
_EPS = 1e-2
"""Added to peak and total in the score (the original's), so an idle episode scores 1."""
_LARGEST = 1e18
"""Largest episode load an expert may carry: its square, summed over episodes, stays finite in
float32 (3.4e38)."""
_RANK_LARGEST = 9e18
"""Largest episode load an expert may carry times the slots of a rank: a rank's variance sums
``S**2`` covariances of its replicas in float32, so ``(S * load)**2`` stays below half its
range. (Past it the variances read inf or NaN, no rank scored best, and replicas went to the
first rank with room: PAR 1.13 where 1.00 was planned.)"""
_SLACK = 1e-4
"""Relative slack on the standard deviations in the rank pruning bound: the ranks' variances
are kept in float32 (as the original does), so the bound is loosened to stay below the score."""


@dataclasses.dataclass(frozen=True)
class FlashLBOptions(Options):
    """Options of the ``flashlb`` policy (defaults: the original's ``FlashLBConfig``).

    Attributes:
        num_episodes: samples the history is cut into for the statistics (the original's
            ``sample_size``).
        z: weight of the standard deviation in the device score (0.6745: 75th percentile).
        depth: groups the experts are cut into (1: one min-max allotment, no search).
        width: splits tried on each side of the joint allotment's, per group.
        threshold: with a previous placement: a layer is re-planned only when the placement
            in force scores above this (``(D * peak + 0.01) / (total + 0.01)`` per episode).
    """

    num_episodes: int = option(64, low=1)
    z: float = option(NormalDist().inv_cdf(0.75), low=0)
    depth: int = option(4, low=1)
    width: int = option(8, low=0)
    threshold: float = option(1.0, low=1)


# ------------------------------------------------------------------------------ allotment
@kernel
def allot_history(weight, members, extra, cap):
    """Min-max allotment of up to ``extra`` replicas within ``members [n]`` (indices into
    ``weight [E]``): one replica each, then each next one to the member with the highest
    ``weight`` per replica (first member on ties) below ``cap``.

    Returns ``(history [extra + 1, n] int64, placed)``: row ``k`` holds the counts after ``k``
    replicas; ``placed`` is how many found a member (rows after it repeat the last).
    """
    n = members.shape[0]
    history = np.ones((extra + 1, n), dtype=np.int64)
    unit = np.empty(n)
    for m in range(n):
        unit[m] = weight[members[m]]
    placed = 0
    for k in range(extra):
        best = -1
        best_value = -1.0
        for m in range(n):
            if history[k, m] < cap and unit[m] > best_value:
                best_value = unit[m]
                best = m
        history[k + 1] = history[k]
        if best < 0:
            continue
        history[k + 1, best] += 1
        unit[best] = weight[members[best]] / history[k + 1, best]
        placed = k + 1
    return history, placed


# ------------------------------------------------------------------------------ placement
@kernel
def _rank_var(i, ri, vi, d, S, row, fill, dvar, cov, counts):
    """Variance of rank ``d``'s load with one more replica of ``i`` (``ri`` replicas, variance
    per replica ``vi``), summed in the original's order so ties break alike."""
    v = dvar[d] + vi
    for s in range(fill[d]):
        j = row[d * S + s]
        c = 2 * cov[i, j]
        if ri != 1:  # x / 1 == x exactly: skip the division
            c /= ri
        if counts[j] != 1:
            c /= counts[j]
        v += c
    return v


@kernel
def _refresh(mu, cov, counts, row, fill, dmu, dvar, dsd):
    """Recompute every rank's mean and variance from its slots (after a repairing move)."""
    D = dmu.shape[0]
    S = row.shape[0] // D
    for d in range(D):
        m = 0.0
        v = 0.0
        for a in range(fill[d]):
            x = row[d * S + a]
            m += mu[x] / counts[x]
            for b in range(fill[d]):
                y = row[d * S + b]
                v += cov[x, y] / (counts[x] * counts[y])
        dmu[d] = np.float32(m)
        dvar[d] = np.float32(v)
        dsd[d] = np.sqrt(max(dvar[d], 0.0))


@kernel
def lpt_place_scored(mu, var, cov, counts, z, num_ranks, num_slots_per_rank):
    """FlashLB's placement of the replicas ``counts [E]``; returns ``row [P] int64``.

    Experts by decreasing ``mu / counts`` (numba's quicksort, as the original, so ties fall the
    same way); each replica to the rank with room and without the expert whose ``mean + z * std``
    after taking it is lowest (lowest rank on ties). The ranks' mean and variance are rounded to
    float32 as the original keeps them. A rank is scored exactly only when its lower bound
    ``mean + z * |std_rank - std_replica|`` could beat the best so far, cheapest bound first.
    """
    D = num_ranks
    S = num_slots_per_rank
    E = mu.shape[0]
    per = mu / counts
    order = np.argsort(-per)
    row = np.full(D * S, -1, dtype=np.int64)
    fill = np.zeros(D, dtype=np.int64)
    holds = np.zeros((D, E), dtype=np.bool_)
    dmu = np.zeros(D)
    dvar = np.zeros(D)
    dsd = np.zeros(D)
    bound = np.empty(D)
    for i in order:
        ri = counts[i]
        pi = mu[i] / ri
        vi = var[i] / (ri * ri)
        sdi = np.sqrt(vi)
        for _ in range(ri):
            first = -1
            for d in range(D):
                if fill[d] >= S or holds[d, i]:
                    continue
                gap = abs(dsd[d] - sdi) - _SLACK * (dsd[d] + sdi)
                bound[d] = dmu[d] + pi + z * max(gap, 0.0)
                if first < 0 or bound[d] < bound[first]:
                    first = d
            if first < 0:  # every rank with room holds i: make room by one move
                place_replica(i, per, dmu, fill, holds, row)
                _refresh(mu, cov, counts, row, fill, dmu, dvar, dsd)
                continue
            best = -1
            best_risk = 1e30
            best_var = 0.0
            for k in range(D + 1):
                d = first if k == 0 else k - 1
                if k > 0 and (d == first or fill[d] >= S or holds[d, i]):
                    continue
                if bound[d] > best_risk:
                    continue
                v = _rank_var(i, ri, vi, d, S, row, fill, dvar, cov, counts)
                risk = (dmu[d] + pi) + z * np.sqrt(v)
                if risk < best_risk or (risk == best_risk and d < best):
                    best = d
                    best_risk = risk
                    best_var = v
            if best < 0:  # no finite score (cannot happen with a covariance matrix)
                best = first
                best_var = _rank_var(i, ri, vi, best, S, row, fill, dvar, cov, counts)
            dmu[best] = np.float32(dmu[best] + pi)
            dvar[best] = np.float32(best_var)
            dsd[best] = np.sqrt(max(dvar[best], 0.0))
            row[best * S + fill[best]] = i
            fill[best] += 1
            holds[best, i] = True
    return row


@kernel
def score_row(X, row, counts, num_ranks):
    """Mean over the episodes of ``X [K, E]`` of ``(D * peak + 0.01) / (total + 0.01)`` for
    ``row [P]`` with replicas ``counts [E]``, in float32 as the original (so equal candidates
    tie as they do there)."""
    K = X.shape[0]
    S = row.shape[0] // num_ranks
    acc = np.float32(0.0)
    for t in range(K):
        peak = 0.0
        total = 0.0
        for d in range(num_ranks):
            s = 0.0
            for k in range(S):
                e = row[d * S + k]
                s += X[t, e] / counts[e]
            total += s
            peak = max(peak, s)
        acc += np.float32((peak * num_ranks + _EPS) / (total + _EPS))
    return np.float32(acc / K)


# ------------------------------------------------------------------------------ the search
@kernel
def _try(X, mu, var, cov, z, D, S, trial, best_counts, best_row, best_score):
    """Score ``trial`` counts; returns ``(score, row)``, reusing the best's when equal."""
    if best_score < np.inf and (trial == best_counts).all():
        return best_score, best_row
    row = lpt_place_scored(mu, var, cov, trial, z, D, S)
    return score_row(X, row, trial, D), row


# Inlined into the loop over layers, its only caller: numba compiles a called kernel once more
# into every kernel that calls it.
@kernel(inline=True)
def flash_search(X, mu, var, cov, order, z, num_ranks, num_slots_per_rank, depth, width):
    """The search of one layer; returns ``(row [P] int64, score)``.

    ``X [K, E]`` the smoothed episodes, ``mu``/``var [E]``, ``cov [E, E]`` their statistics,
    ``order [E]`` the experts by decreasing ``mu + z * sqrt(var)``.
    """
    D = num_ranks
    S = num_slots_per_rank
    E = mu.shape[0]
    weight = mu + z * np.sqrt(var)
    avail = D * S - E
    counts = np.ones(E, dtype=np.int64)
    if depth <= 1:
        history, _ = allot_history(weight, np.arange(E), avail, D)
        counts[:] = history[-1]
        row = lpt_place_scored(mu, var, cov, counts, z, D, S)
        return row, score_row(X, row, counts, D)
    size = -(-E // depth)
    best_counts = counts.copy()
    best_row = np.empty(0, dtype=np.int64)
    best_score = np.inf
    trial = counts.copy()
    for node in range(depth - 1):
        high = avail
        cur = order[node * size : (node + 1) * size]
        rem = order[(node + 1) * size :]
        joint, _ = allot_history(weight, order[node * size :], high, D)
        start = joint[-1, : cur.shape[0]].sum() - cur.shape[0]
        cur_hist, cur_cap = allot_history(weight, cur, high, D)
        rem_hist, rem_cap = allot_history(weight, rem, high, D)
        # Splits the two parts can hold (each expert at most one replica per rank); the joint
        # allotment's is one of them.
        low = high - rem_cap
        reach = min(max(start, high - start), width)
        chosen = -1
        chosen_score = np.inf
        for r in range(2 * reach + 1):
            mid = start if r == 0 else (start - (r + 1) // 2 if r % 2 == 1 else start + r // 2)
            if mid < low or mid > cur_cap:
                continue
            trial[:] = counts
            trial[cur] = cur_hist[mid]
            trial[rem] = rem_hist[high - mid]
            score, row = _try(X, mu, var, cov, z, D, S, trial, best_counts, best_row, best_score)
            if score < chosen_score:
                chosen = mid
                chosen_score = score
                best_counts[:] = trial
                best_row = row
                best_score = score
        counts[cur] = cur_hist[chosen]
        avail -= chosen
        if avail == 0 or node == depth - 2:
            counts[rem] = rem_hist[avail]
            break
    return best_row, best_score


# ------------------------------------------------------------------------------ the policy
def statistics(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mu [L, E], var [L, E], cov [L, E, E])`` of ``X [L, K, E]`` across each layer's
    episodes, with ``K - 1`` in the denominator; zero variance for a single episode. The mean
    and variance as the original computes them per layer (the stacked numpy reductions round as
    the per-layer ones); the covariance as :func:`_cross_products`, not the original's
    ``matmul``, whose last bits follow the BLAS kernels of the CPU."""
    L, K, E = X.shape
    mu = X.mean(axis=1)
    if K == 1:
        return mu, np.zeros((L, E)), np.zeros((L, E, E))
    centred = X - mu[:, None, :]
    var = np.sum(centred**2, axis=1) / (K - 1)
    cov = _cross_products(centred)
    cov /= K - 1  # in place: [L, E, E] is the plan's largest array (140 MB for Kimi K2)
    return mu, var, cov


@kernel
def _cross_products(centred):
    """``[L, E, E]``: ``centred[l].T @ centred[l]`` for ``centred [L, K, E] float64``, summed over
    the episodes in order in plain loops: every rank of an engine that plans on each rank (as
    vllm-ascend and vLLM do) gets the same bits on any CPU."""
    L, K, E = centred.shape
    out = np.empty((L, E, E))
    for j in range(L):
        c = centred[j]
        for e in range(E):
            for f in range(e + 1):
                total = 0.0
                for k in range(K):
                    total += c[k, e] * c[k, f]
                out[j, e, f] = total
                out[j, f, e] = total
    return out


@kernel
def _search_layers(X, mu, var, cov, order, z, num_ranks, num_slots_per_rank, depth, width, prev,
                   threshold):  # fmt: skip
    """:func:`flash_search` of every layer (arrays as :func:`statistics` gives them, ``order
    [L, E]``) and, where ``prev [L, P]`` is not empty, the gate against the slots in force: a
    layer scoring at most ``threshold`` is kept, a new plan replaces it only when it scores
    lower, its ranks relabelled to the previous ones. Returns ``rows [L, P] int64``."""
    L, E = mu.shape
    rows = np.empty((L, num_ranks * num_slots_per_rank), dtype=np.int64)
    # Scores are float32 (:func:`score_row`); the original compares them with the threshold in
    # float32 too (numpy's rule for a Python float next to a float32).
    limit = np.float32(threshold)
    for j in range(L):
        old = np.float32(np.inf)
        if prev.shape[0]:
            old = score_row(X[j], prev[j], counts_from_row(prev[j], E), num_ranks)
            if old <= limit:
                rows[j] = prev[j]
                continue
        row, new = flash_search(
            X[j], mu[j], var[j], cov[j], order[j], z, num_ranks, num_slots_per_rank, depth, width
        )
        if not prev.shape[0]:
            rows[j] = row
        elif new < old:
            rows[j] = row[align_order(row, prev[j], num_ranks, E)]
        else:
            rows[j] = prev[j]
    return rows


_COUNT_SCALE = 20
"""A load that is not counts is scaled so that its layer's largest episode sums to about
``2**_COUNT_SCALE`` (a million, a busy serving window's tokens)."""


def _in_counts(tokens: np.ndarray) -> np.ndarray:
    """``tokens [L, K, E]`` times a power of two per layer (exact: the plan is that of the load
    as given) that brings the layer's largest episode total to ``[2**19, 2**20)``."""
    top = tokens.sum(axis=2).max(axis=1)  # [L]; 0 for a layer without load
    _, exponent = np.frexp(top)
    return np.ldexp(tokens, (_COUNT_SCALE - exponent)[:, None, None])


def plan_layers(layers: Layers, topo: Topology, opts: FlashLBOptions) -> tuple[np.ndarray, None]:
    """Every planned layer at once: ``(rows [L', P] int64, None)``, as :func:`flashlb` plans
    each. The means and variances are a few stacked numpy operations, the covariances and the
    searches one numba call each, so a plan in the balancer's thread returns to Python (a GIL
    hand-off) a few times, not several times a layer."""
    # The original adds a token per step, in counts; a load in other units (shares, scaled
    # loads) would be swamped by it, so it gets none, and is brought to a scale of counts: its
    # float32 statistics would underflow below about 1e-38 (every expert scored alike) or
    # overflow, and the score's epsilon is one in counts.
    if layers.counts:
        X = layers.tokens + SMOOTHING * layers.steps[None, :, None]
    else:
        X = _in_counts(layers.tokens)
    largest = min(_LARGEST, _RANK_LARGEST / topo.num_slots_per_rank)
    peaks = X.max(axis=(1, 2), initial=0.0)  # [L']
    if (peaks > largest).any():
        # Said of one expert of a layer: a plan on several threads checks each thread's
        # layers apart, and a hierarchical one each node's experts apart.
        j = int(np.argmax(peaks > largest))
        raise ValueError(
            f"flashlb: an expert of layer {layers.index[j]} carries {peaks[j]:.3g} in an "
            f"episode, which overflows its float32 statistics (the original's) at "
            f"{topo.num_slots_per_rank} slots a rank; scale the load below {largest:.3g}"
        )
    mu, var, cov = statistics(X)
    # Experts of equal score in index order. The original takes numpy's default sort, whose
    # order of ties follows the SIMD kernels of the CPU (AVX2 or not): every rank must plan
    # the same table.
    order = np.argsort(-(mu + opts.z * np.sqrt(var)), axis=-1, kind="stable")
    prev = layers.previous
    if prev is None:
        prev = np.empty((0, topo.num_slots), dtype=np.int64)
    rows = _search_layers(
        X, mu, var, cov, order, opts.z, topo.num_ranks, topo.num_slots_per_rank, opts.depth,
        opts.width, prev, opts.threshold,
    )  # fmt: skip
    return rows, None


@register(
    "flashlb",
    FlashLBOptions,
    "FlashLB (vllm-ascend): neighbour search of replica counts per quarter of the experts, "
    "mean+z*std placement, scored on episodes",
    warm_up_options=({}, {"depth": 1}),
    layers_fn=plan_layers,
)
def flashlb(layer: Layer, topo: Topology, opts: FlashLBOptions) -> np.ndarray:
    """One layer (as :func:`plan_layers` plans it); returns ``row [P] int64`` (uniform shares)."""
    return plan_layers(Layers.of(layer), topo, opts)[0][0]
