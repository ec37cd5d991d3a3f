"""Balance and migration metrics of a placement on a load.

PAR (peak-to-average ratio) of a layer = max rank load / mean rank load, where each expert's load
is split over its replicas by the placement's shares. 1.0 is perfect balance. Layers with no load
have no PAR (NaN) and are left out of means.

The functions that take a :class:`Placement` are numpy, but for :func:`rank_load`'s sums (a
kernel, which rounds as numpy does); the numba kernels at the end are the same measures for the
policies' inner loops (one layer's ``row [P]``, uniform shares).
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.load import check_load, check_values, real_array
from eplb_rt.algorithms.sums import row_sum
from eplb_rt.placement import Placement


def _checked(placement: Placement, load: np.ndarray) -> np.ndarray:
    """``load`` as float64 ``[..., L, E]`` for ``placement`` (real, finite, >= 0), or a
    ``ValueError``."""
    arr = real_array(load).astype(np.float64, copy=False)
    if arr.ndim < 2 or arr.shape[-2:] != (placement.num_layers, placement.num_experts):
        raise ValueError(
            f"load has shape {arr.shape}, expected [..., {placement.num_layers}, "
            f"{placement.num_experts}] for {placement.describe()}"
        )
    check_values(arr)
    return arr


def slot_load(placement: Placement, load: np.ndarray) -> np.ndarray:
    """Tokens each slot receives. ``load``: ``[L, E]`` or ``[T, L, E]``; returns ``[..., L, P]``."""
    arr = _checked(placement, load)
    # One gather from each step's loads flattened over layers: indices broadcast over the steps
    # (take_along_axis) were an int64 array as large as the result, and took twice as long.
    L, E, P = placement.num_layers, placement.num_experts, placement.num_slots
    lead = arr.shape[:-2]
    flat = (placement.phy2log.astype(np.int64) + E * np.arange(L)[:, None]).ravel()
    taken = np.take(arr.reshape(*lead, L * E), flat, axis=-1).reshape(*lead, L, P)
    return taken * placement.slot_share


def rank_load(placement: Placement, load: np.ndarray) -> np.ndarray:
    """Tokens each rank receives. ``load``: ``[L, E]`` or ``[T, L, E]``; returns ``[..., L, D]``,
    equal bit for bit to :func:`slot_load` summed over each rank's slots, without its ``[..., L,
    P]`` arrays (two of them, 91 MB each for 256 steps of 58 layers on 256 ranks x 3 slots)."""
    return _rank_load(placement, _checked(placement, load))


def _rank_load(placement: Placement, arr: np.ndarray) -> np.ndarray:
    """:func:`rank_load` of a load already checked."""
    L, E = arr.shape[-2:]
    # The leading count spelled out: -1 is ambiguous for a placement of no layers.
    steps = np.ascontiguousarray(arr.reshape(int(np.prod(arr.shape[:-2])), L, E))
    ranks = _rank_loads(
        steps, placement.phy2log.astype(np.int64), placement.slot_share, placement.num_ranks
    )
    return ranks.reshape(*arr.shape[:-2], L, placement.num_ranks)


@kernel
def _rank_loads(load, phy2log, share, num_ranks):
    """``[N, L, D]``: each rank's tokens in each of ``load [N, L, E]``, its slots' (``phy2log [L,
    P] int64``, ``share [L, P] float64``) summed as numpy sums a rank's slots."""
    N, L, _ = load.shape
    S = phy2log.shape[1] // num_ranks
    out = np.empty((N, L, num_ranks))
    slots = np.empty(S)
    for n in range(N):
        for j in range(L):
            tokens = load[n, j]
            for r in range(num_ranks):
                for s in range(S):
                    p = r * S + s
                    slots[s] = tokens[phy2log[j, p]] * share[j, p]
                out[n, j, r] = row_sum(slots)
    return out


def par(placement: Placement, load: np.ndarray) -> np.ndarray:
    """Peak-to-average ratio per layer. ``load``: ``[L, E]`` or ``[T, L, E]`` -> ``[..., L]``.

    NaN for a layer (or step) whose total load is zero.
    """
    arr = _checked(placement, load)
    # PAR does not depend on the scale: each layer's load scaled by a power of two (exact) to a
    # largest expert in [0.5, 1), so that a subnormal load, whose rank loads and their mean
    # round (a replica's share of 5e-324 is 0), is measured as any other.
    scale = np.frexp(arr.max(axis=-1, keepdims=True))[1]
    ranks = _rank_load(placement, np.ldexp(arr, -scale))
    return peak_ratio(ranks.max(axis=-1), ranks.mean(axis=-1))


def peak_ratio(peak: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``peak / mean`` (same shapes, float64), NaN where ``mean`` is 0: PAR, or a bound's
    ratio to the mean, of an unloaded layer is undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean > 0, peak / np.where(mean > 0, mean, 1.0), np.nan)


def max_rank_load(placement: Placement, load: np.ndarray) -> np.ndarray:
    """Largest rank load per layer, ``[..., L]``."""
    return rank_load(placement, load).max(axis=-1)


def score(placement: Placement, load: np.ndarray, previous: Placement | None = None) -> dict:
    """The summary ``eplb-rt score`` prints: PAR mean/max over loaded layers, per-layer values.

    ``load`` is ``[L, E]`` or ``[T, L, E]`` (summed over ``T``). With ``previous``, adds the moves.
    """
    agg = check_load(load, placement.num_layers, placement.num_experts).sum(axis=0)
    per_layer = par(placement, agg)
    loaded = ~np.isnan(per_layer)
    out: dict = {
        "layers": int(placement.num_layers),
        "loaded_layers": int(loaded.sum()),
        "zero_load_layers": np.flatnonzero(~loaded).tolist(),
        "par_mean": float(per_layer[loaded].mean()) if loaded.any() else float("nan"),
        "par_max": float(per_layer[loaded].max()) if loaded.any() else float("nan"),
        "par_per_layer": [None if np.isnan(x) else float(x) for x in per_layer],
        "max_rank_load_per_layer": max_rank_load(placement, agg).tolist(),
    }
    if previous is not None:
        moves = placement.moves(previous)
        out["moves"] = int(moves.sum())
        out["moves_per_layer"] = moves.tolist()
        out["moved_fraction"] = placement.moved_fraction(previous)
    return out


@kernel
def row_rank_loads(row, W, num_ranks):
    """``[K, D]``: rank loads of one layer's ``row [P]`` on each episode of ``W [K, E]``."""
    K, E = W.shape
    S = row.shape[0] // num_ranks
    counts = np.zeros(E, dtype=np.int64)
    for p in range(row.shape[0]):
        counts[row[p]] += 1
    out = np.zeros((K, num_ranks))
    for p in range(row.shape[0]):
        e = row[p]
        for k in range(K):
            out[k, p // S] += W[k, e] / counts[e]
    return out


@kernel
def row_par(row, W, num_ranks):
    """Mean over the episodes of ``W [K, E]`` of one layer's PAR (1.0 for an empty episode)."""
    loads = row_rank_loads(row, W, num_ranks)
    acc = 0.0
    for k in range(loads.shape[0]):
        peak = 0.0
        total = 0.0
        for r in range(num_ranks):
            peak = max(peak, loads[k, r])
            total += loads[k, r]
        acc += peak * num_ranks / total if total > 0.0 else 1.0
    return acc / loads.shape[0]
