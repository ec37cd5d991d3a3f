"""A lower bound on the best max rank load of a layer, exact solvers for small layers, the gap.

For a layer with expert loads ``w [E]`` on ``D`` ranks x ``S`` slots (``P = D * S``), any
placement with any replica shares has a max rank load ``M`` with

* ``M >= sum(w) / D`` (the mean rank load);
* ``c_e >= w_e / M`` replicas of each expert ``e``: whatever the shares, the replicas carry
  ``w_e`` together and none carries more than its rank, so more than ``M``; and ``c_e`` is at
  most ``D`` (distinct ranks) and at least 1;
* ``sum_e c_e <= P``: the replicas fit in the slots.

The smallest such ``M`` (:func:`lower_bound`) is the mean or a point ``w_e / k``, found by a
binary search; for uniform shares it is the largest per-replica load of the min-max allotment.
It ignores how slots group into ranks; :func:`exact_min_max` solves small layers exactly (MILP,
HiGHS), also with a limit on the slots that change against a previous placement.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from eplb_rt.algorithms.load import check_load
from eplb_rt.algorithms.metrics import max_rank_load, peak_ratio
from eplb_rt.placement import Placement, Topology

_ROUNDING = 1e-9
"""Slack on ``w / M`` before rounding up, so ``M = w / k`` counts ``k`` replicas, not ``k + 1``
(a looser count only lowers the bound, so it stays valid)."""


def lower_bound(load: np.ndarray, topo: Topology) -> np.ndarray:
    """``[L]`` lower bound on the max rank load of each layer of ``load`` (``[L, E]`` or
    ``[T, L, E]``, summed over ``T``), valid for uniform and non-uniform shares alike."""
    agg = check_load(load).sum(axis=0)
    topo.check_experts(agg.shape[1])
    D, P = topo.num_ranks, topo.num_slots
    out = np.zeros(agg.shape[0])
    splits = np.arange(1, D + 1, dtype=np.float64)
    for layer, w in enumerate(agg):
        if w.sum() <= 0:
            continue
        floor = max(w.sum() / D, w.max() / min(D, P - w.size + 1))
        points = np.unique((w[:, None] / splits[None, :]).ravel())
        candidates = np.concatenate([[floor], points[points > floor]])
        lo, hi = 0, len(candidates) - 1  # the last candidate (the hottest expert whole) fits
        while lo < hi:
            mid = (lo + hi) // 2
            if np.maximum(1.0, np.ceil(w / candidates[mid] - _ROUNDING)).sum() <= P:
                hi = mid
            else:
                lo = mid + 1
        out[layer] = candidates[lo]
    return out


def par_lower_bound(load: np.ndarray, topo: Topology) -> np.ndarray:
    """``[L]`` lower bound on PAR per layer (bound / mean rank load), NaN where unloaded."""
    agg = check_load(load).sum(axis=0)
    mean = agg.sum(axis=-1) / topo.num_ranks
    return peak_ratio(lower_bound(agg, topo), mean)


def gap(placement: Placement, load: np.ndarray) -> np.ndarray:
    """``[L]`` relative gap ``max rank load / lower bound - 1`` (0 = provably optimal; NaN for a
    layer without load)."""
    agg = check_load(load, placement.num_layers, placement.num_experts).sum(axis=0)
    bound = lower_bound(agg, placement.topology())
    peak = max_rank_load(placement, agg)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bound > 0, peak / np.where(bound > 0, bound, 1.0) - 1.0, np.nan)


def exact_min_max(
    w: np.ndarray,
    topo: Topology,
    uniform: bool = True,
    *,
    time_limit: float = 30.0,
    previous: np.ndarray | None = None,
    max_moves: int | None = None,
) -> tuple[float, np.ndarray]:
    """Exact best max rank load of one small layer ``w [E]`` (MILP, HiGHS).

    ``uniform``: uniform shares, else any split of each expert over its replicas. With
    ``previous [P]``: at most ``max_moves`` slots change (ranks keep their labels; slots inside a
    rank permute freely). Returns ``(value, row [P])``, each rank's experts in id order. For
    tests and tiny layers: the model grows as ``E * D^2``.
    """
    w = np.asarray(w, dtype=np.float64)
    E, D, S = w.shape[0], topo.num_ranks, topo.num_slots_per_rank
    topo.check_experts(E)
    kept = []  # (rank, expert) pairs of the previous placement
    if previous is not None:
        prev = np.asarray(previous, dtype=np.int64)
        if prev.shape != (D * S,) or max_moves is None:
            raise ValueError(f"previous must be [{D * S}] with max_moves, got {prev.shape}")
        kept = sorted({(p // S, int(prev[p])) for p in range(D * S)})
    need = D * S - max_moves if previous is not None else None
    if uniform:
        return _exact_uniform(w, D, S, time_limit, kept, need)
    return _exact_shares(w, D, S, time_limit, kept, need)


def _minimise_last(n, rows, integer, upper, time_limit):
    """Minimise ``x[n - 1]`` over ``0 <= x <= upper`` subject to ``rows``, each
    ``(coefs [(index, value)], low, high)``; ``integer [n]`` marks integer variables."""
    A = np.zeros((len(rows), n))
    for i, (coefs, _, _) in enumerate(rows):
        for j, v in coefs:
            A[i, j] += v
    c = np.zeros(n)
    c[-1] = 1.0
    res = milp(
        c,
        constraints=LinearConstraint(A, [r[1] for r in rows], [r[2] for r in rows]),
        integrality=integer,
        bounds=Bounds(np.zeros(n), upper),
        options={"time_limit": time_limit, "mip_rel_gap": 1e-9, "presolve": False},
    )
    if res.x is None or res.status != 0:
        raise RuntimeError(f"exact solver did not finish: {res.message}")
    return res.x


def _exact_uniform(w, D, S, time_limit, kept, need):  # noqa: PLR0917
    E = w.shape[0]
    # Variables: z[e, k] (expert e has k+1 replicas), y[e, r, k] (e on rank r with k+1 replicas), T.
    nz = E * D
    n = nz + E * D * D + 1
    zi = lambda e, k: e * D + k  # noqa: E731
    yi = lambda e, r, k: nz + (e * D + r) * D + k  # noqa: E731
    rows = []
    for e in range(E):
        rows.append(([(zi(e, k), 1.0) for k in range(D)], 1, 1))
        for k in range(D):
            rows.append(([(yi(e, r, k), 1.0) for r in range(D)] + [(zi(e, k), -(k + 1.0))], 0, 0))
        rows += [([(yi(e, r, k), 1.0) for k in range(D)], 0, 1) for r in range(D)]
    for r in range(D):
        rows.append(([(yi(e, r, k), 1.0) for e in range(E) for k in range(D)], S, S))
        load = [(yi(e, r, k), w[e] / (k + 1)) for e in range(E) for k in range(D)]
        rows.append(([*load, (n - 1, -1.0)], -np.inf, 0))
    if kept:
        rows.append(([(yi(e, r, k), 1.0) for r, e in kept for k in range(D)], need, np.inf))
    integer = np.r_[np.ones(n - 1), 0]
    x = _minimise_last(n, rows, integer, np.r_[np.ones(n - 1), np.inf], time_limit)
    row = [e for r in range(D) for e in range(E) for k in range(D) if x[yi(e, r, k)] > 0.5]
    return float(x[-1]), np.array(row, dtype=np.int64)


def _exact_shares(w, D, S, time_limit, kept, need):  # noqa: PLR0917
    E = w.shape[0]
    # Variables: x[e, r] binary (e on r), f[e, r] tokens of e on r, T.
    nx = E * D
    n = 2 * nx + 1
    rows = []
    for e in range(E):
        rows.append(([(e * D + r, 1.0) for r in range(D)], 1, D))
        rows.append(([(nx + e * D + r, 1.0) for r in range(D)], w[e], w[e]))
        rows += [([(nx + e * D + r, 1.0), (e * D + r, -w[e])], -np.inf, 0) for r in range(D)]
    for r in range(D):
        rows.append(([(e * D + r, 1.0) for e in range(E)], S, S))
        rows.append(([(nx + e * D + r, 1.0) for e in range(E)] + [(n - 1, -1.0)], -np.inf, 0))
    if kept:
        rows.append(([(e * D + r, 1.0) for r, e in kept], need, np.inf))
    integer = np.r_[np.ones(nx), np.zeros(nx + 1)]
    x = _minimise_last(n, rows, integer, np.r_[np.ones(nx), np.repeat(w, D), np.inf], time_limit)
    row = [e for r in range(D) for e in range(E) if x[e * D + r] > 0.5]
    return float(x[-1]), np.array(row, dtype=np.int64)
