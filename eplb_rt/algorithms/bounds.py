"""Lower bounds on the best max rank load of a layer, exact solvers for small layers, the gap.

For a layer with expert loads ``w [E]`` on ``D`` ranks x ``S`` slots (``P = D * S``):

* **mean**: ``sum(w) / D`` -- no placement does better (reached only with perfect balance).
* **spread**: ``max(w) / D`` -- an expert's tokens go to at most ``D`` replicas on distinct ranks,
  so some rank takes at least ``w_e / D`` of it, whatever the shares.
* **replica** (uniform shares only): a rank holding a replica of ``e`` takes ``w_e / c_e``. The
  min-max-replica allotment minimises ``max_e w_e / c_e`` over all allotments with
  ``sum c = P``, ``1 <= c_e <= D`` (each extra replica goes where the per-replica load is largest,
  an exchange argument shows no allotment has a smaller maximum), so that maximum bounds every
  uniform placement.
* **pigeonhole** (uniform): for the same optimal allotment the per-replica loads sorted
  ``v_1 >= v_2 >= ...``; among the ``D + 1`` largest replicas two share a rank. This bounds the
  placements *with that allotment* only, so it is reported, not folded into the bound.

:func:`lower_bound` returns the best valid bound (``max`` of mean, spread and, for uniform,
replica). :func:`exact_min_max` solves small layers exactly as a MILP (HiGHS via
``scipy.optimize.milp``), for uniform shares or free shares; tests compare them with the bounds.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from eplb_rt.algorithms._packing import allot_replicas
from eplb_rt.algorithms.load import check_load
from eplb_rt.algorithms.metrics import max_rank_load
from eplb_rt.placement import Placement, Topology


def layer_bounds(w: np.ndarray, topo: Topology) -> dict[str, float]:
    """The bounds of one layer ``w [E]`` by name (see the module docstring)."""
    w = np.asarray(w, dtype=np.float64)
    D = topo.num_ranks
    counts = allot_replicas(w, topo.num_slots, D)
    per = np.sort(np.repeat(w / counts, counts))[::-1]
    pigeon = per[D - 1] + per[D] if per.shape[0] > D else 0.0
    return {
        "mean": float(w.sum() / D),
        "spread": float(w.max() / D),
        "replica": float(per[0]),
        "pigeonhole_minmax_allotment": float(pigeon),
    }


def lower_bound(load: np.ndarray, topo: Topology, uniform: bool = True) -> np.ndarray:
    """``[L]`` lower bound on the max rank load of each layer of ``load`` (``[L, E]`` or
    ``[T, L, E]``, summed over ``T``). ``uniform``: for uniform shares (else any shares)."""
    agg = check_load(load).sum(axis=0)
    topo.check_experts(agg.shape[1])
    out = np.empty(agg.shape[0])
    for layer, w in enumerate(agg):
        b = layer_bounds(w, topo)
        out[layer] = max(b["mean"], b["spread"], b["replica"] if uniform else 0.0)
    return out


def gap(placement: Placement, load: np.ndarray) -> np.ndarray:
    """``[L]`` relative gap ``max rank load / lower bound - 1`` (0 = provably optimal; NaN for a
    layer without load). The bound is for the placement's kind of shares (uniform or not)."""
    agg = check_load(load, placement.num_layers, placement.num_experts).sum(axis=0)
    bound = lower_bound(agg, placement.topology(), uniform=placement.is_uniform)
    peak = max_rank_load(placement, agg)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bound > 0, peak / np.where(bound > 0, bound, 1.0) - 1.0, np.nan)


def exact_min_max(
    w: np.ndarray, topo: Topology, uniform: bool = True, time_limit: float = 30.0
) -> tuple[float, np.ndarray]:
    """Exact best max rank load of one small layer ``w [E]`` (MILP, HiGHS).

    ``uniform=True``: replica counts and placement with uniform shares. ``uniform=False``: any
    shares (each expert's tokens split freely over its replicas). Returns ``(value, row [P])``.
    Meant for tests and tiny instances (a few experts and ranks): the model grows as ``E * D^2``.
    """
    w = np.asarray(w, dtype=np.float64)
    E, D, S = w.shape[0], topo.num_ranks, topo.num_slots_per_rank
    topo.check_experts(E)
    if uniform:
        return _exact_uniform(w, D, S, time_limit)
    return _exact_shares(w, D, S, time_limit)


def _solve(c, constraints, integrality, lb, ub, *, time_limit):
    res = milp(
        c,
        constraints=constraints,
        integrality=integrality,
        bounds=Bounds(lb, ub),
        options={"time_limit": time_limit, "mip_rel_gap": 1e-9},
    )
    if res.x is None or res.status not in (0,):
        raise RuntimeError(f"exact solver did not finish: {res.message}")
    return res.x


class _Rows:
    """Constraint rows ``low <= sum(v * x[i] for i, v in coefs) <= high`` over ``n`` variables."""

    def __init__(self, n: int):
        self.n = n
        self.rows: list[np.ndarray] = []
        self.lo: list[float] = []
        self.hi: list[float] = []

    def add(self, coefs, low, high) -> None:
        row = np.zeros(self.n)
        for i, v in coefs:
            row[i] += v
        self.rows.append(row)
        self.lo.append(low)
        self.hi.append(high)

    def constraint(self) -> LinearConstraint:
        return LinearConstraint(np.array(self.rows), self.lo, self.hi)


def _exact_uniform(w, D, S, time_limit):
    E = w.shape[0]
    # Variables: z[e, k] (expert e has k+1 replicas), y[e, r, k] (e on rank r with k+1 replicas), T.
    nz = E * D
    ny = E * D * D
    n = nz + ny + 1
    zi = lambda e, k: e * D + k  # noqa: E731
    yi = lambda e, r, k: nz + (e * D + r) * D + k  # noqa: E731
    rows = _Rows(n)
    add = rows.add

    for e in range(E):
        add([(zi(e, k), 1.0) for k in range(D)], 1, 1)
        for k in range(D):
            add([(yi(e, r, k), 1.0) for r in range(D)] + [(zi(e, k), -(k + 1.0))], 0, 0)
        for r in range(D):
            add([(yi(e, r, k), 1.0) for k in range(D)], 0, 1)
    for r in range(D):
        add([(yi(e, r, k), 1.0) for e in range(E) for k in range(D)], S, S)
        add(
            [(yi(e, r, k), w[e] / (k + 1)) for e in range(E) for k in range(D)] + [(n - 1, -1.0)],
            -np.inf,
            0,
        )
    c = np.zeros(n)
    c[-1] = 1.0
    integrality = np.ones(n)
    integrality[-1] = 0
    ub = np.ones(n)
    ub[-1] = np.inf
    x = _solve(
        c,
        rows.constraint(),
        integrality,
        np.zeros(n),
        ub,
        time_limit=time_limit,
    )
    row = [e for r in range(D) for e in range(E) for k in range(D) if x[yi(e, r, k)] > 0.5]
    return float(x[-1]), np.array(row, dtype=np.int64)


def _exact_shares(w, D, S, time_limit):
    E = w.shape[0]
    # Variables: x[e, r] binary (e on r), f[e, r] tokens of e on r, T.
    nx = E * D
    n = 2 * nx + 1
    rows = _Rows(n)
    add = rows.add

    for e in range(E):
        add([(e * D + r, 1.0) for r in range(D)], 1, D)
        add([(nx + e * D + r, 1.0) for r in range(D)], w[e], w[e])
        for r in range(D):
            add([(nx + e * D + r, 1.0), (e * D + r, -w[e])], -np.inf, 0)
    for r in range(D):
        add([(e * D + r, 1.0) for e in range(E)], S, S)
        add([(nx + e * D + r, 1.0) for e in range(E)] + [(n - 1, -1.0)], -np.inf, 0)
    c = np.zeros(n)
    c[-1] = 1.0
    integrality = np.zeros(n)
    integrality[:nx] = 1
    ub = np.concatenate([np.ones(nx), np.repeat(w, D), [np.inf]])
    x = _solve(
        c,
        rows.constraint(),
        integrality,
        np.zeros(n),
        ub,
        time_limit=time_limit,
    )
    row = [e for r in range(D) for e in range(E) if x[e * D + r] > 0.5]
    return float(x[-1]), np.array(row, dtype=np.int64)
