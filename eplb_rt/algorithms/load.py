"""The load arrays that policies and metrics read: validation, episodes, normalisation."""

from __future__ import annotations

import numpy as np


def check_load(
    load: np.ndarray,
    num_layers: int | None = None,
    num_experts: int | None = None,
    name: str = "load",
) -> np.ndarray:
    """Return ``load`` as a C-contiguous ``[T, L, E] float64`` array, or raise ``ValueError``.

    Accepts ``[L, E]`` (one step or an aggregate, returned as ``T = 1``) or ``[T, L, E]``.
    Rejects NaN/inf, negative values, empty axes and shapes that disagree with ``num_layers`` /
    ``num_experts`` when those are given.
    """
    arr = real_array(load, name)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be [L, E] or [T, L, E], got shape {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"{name} has an empty axis: shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    check_values(arr, name)
    if num_layers is not None and arr.shape[1] != num_layers:
        raise ValueError(f"{name} has {arr.shape[1]} layers, expected {num_layers}")
    if num_experts is not None and arr.shape[2] != num_experts:
        raise ValueError(f"{name} has {arr.shape[2]} experts, expected {num_experts}")
    return arr


def real_array(load: object, name: str = "load") -> np.ndarray:
    """``load`` as an array of a real dtype (ints, floats or bools, unconverted), or a
    ``ValueError`` naming ``name``."""
    if np.ma.is_masked(load):  # np.asarray would drop the mask and read the hidden values
        raise ValueError(f"{name} has masked values: fill them (e.g. with 0) first")
    try:
        arr = np.asarray(load)
    except TypeError as err:  # a dtype numpy lacks, e.g. a torch bfloat16 tensor
        kind = getattr(load, "dtype", type(load).__name__)
        raise ValueError(
            f"{name} must be numeric (real) in a dtype numpy reads, got {kind} ({err}); "
            "convert it first, e.g. tensor.float()"
        ) from None
    # By kind: numpy counts timedelta64 as an integer dtype.
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric (real), got dtype {arr.dtype}")
    return arr


def check_values(arr: np.ndarray, name: str = "load") -> None:
    """Raise ``ValueError`` unless every value of ``arr`` (float64) is finite and >= 0, and
    so is their sum (the policies and measures sum the load over steps and experts): two
    reductions (NaN propagates through both; a third, the sum, only for values near the
    float64 range), no temporary array of ``arr``'s size."""
    if arr.size == 0:
        return
    low, high = arr.min(), arr.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        at = _first(~np.isfinite(arr))
        raise ValueError(f"{name} contains NaN or infinite values (first at {at}: {arr[at]})")
    if low < 0:
        at = _first(arr < 0)
        raise ValueError(f"{name} contains negative values (min {low:g}; first at {at})")
    # Values >= 0: every partial sum (a layer's, a step's) is at most the whole, and the whole
    # at most high * size; summed only where that bound is past the float64 range.
    if high > np.finfo(np.float64).max / arr.size:
        with np.errstate(over="ignore"):
            total = arr.sum()
        if not np.isfinite(total):
            raise ValueError(
                f"{name} is too large: its values (up to {high:g}) sum past the float64 "
                "range; scale it down"
            )


def _first(mask: np.ndarray) -> tuple[int, ...]:
    """The index of ``mask``'s first true entry (in C order): where an error points to."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def cut_episodes(load: np.ndarray, num_episodes: int) -> np.ndarray:
    """Sum ``load [T, L, E] float64`` (as :func:`check_load` returns it) over
    ``K = min(T, num_episodes)`` contiguous runs of steps, layer by layer.

    Runs differ in length by at most one step, so no step is dropped. A policy sees episodes
    rather than single steps, which are noisy. Returns ``[L, K, E] float64``, each layer's
    episodes one contiguous block: a new array (the caller's load is never handed on to a
    policy), made without a second one of its size (on a virtual machine, touching fresh pages
    cost about a millisecond a copy of the plan-time case's 2 MB).
    """
    T, L, E = load.shape
    steps = episode_steps(T, num_episodes)
    out = np.empty((L, steps.shape[0], E))
    if steps.shape[0] == T:
        out[...] = load.transpose(1, 0, 2)
        return out
    for k, start in enumerate(np.cumsum(steps) - steps):
        # A run's sum as np.add.reduceat gives it, through a temporary of one step's size.
        out[:, k] = np.add.reduceat(load[start : start + steps[k]], [0], axis=0)[0]
    return out


def whole_numbers(load: np.ndarray) -> bool:
    """Whether every value of ``load`` (a float64 array, as :func:`check_load` returns it) is
    a whole number, as token counts are. Checked a block at a time, without a temporary the
    size of the load."""
    flat = load.reshape(-1)
    for start in range(0, flat.shape[0], _BLOCK):
        block = flat[start : start + _BLOCK]
        if not np.array_equal(block, np.round(block)):
            return False
    return True


_BLOCK = 8192
"""Values :func:`whole_numbers` checks at a time (64 KiB: heap memory that is used again)."""


def episode_steps(num_steps: int, num_episodes: int) -> np.ndarray:
    """``[K] int64``: steps in each of the ``K = min(num_steps, num_episodes)`` episodes that
    :func:`cut_episodes` makes of ``num_steps`` steps (oldest first)."""
    K = min(int(num_steps), int(num_episodes))
    return np.diff(np.linspace(0, num_steps, K + 1).round().astype(np.int64))


def normalise(load: np.ndarray) -> np.ndarray:
    """Scale every ``[..., E]`` row of ``load`` to sum 1 (all-zero rows stay zero).

    Episodes (or workloads) of different volume then count equally: a plan scored on them weighs
    each one's *shape* of load.
    """
    totals = load.sum(axis=-1, keepdims=True)
    return np.divide(load, totals, out=np.zeros_like(load), where=totals > 0)


def heat_to_load(heat: np.ndarray, phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """Logical load ``[T, L, E] float64`` from slot heat ``heat [T, L, P]`` and the placement
    it was counted under: ``phy2log [T, L, P]`` (a row's own, as the runtime's heat ring holds
    them) or ``[L, P]`` (one for every row). An expert's load is the sum of its slots'."""
    T, L, P = heat.shape
    rows = np.broadcast_to(phy2log, (T, L, P)).reshape(T * L, P).astype(np.int64, copy=False)
    if rows.size and (rows.min() < 0 or rows.max() >= num_experts):
        # An id past the layer's experts would be counted as another layer's or step's.
        raise ValueError(
            f"phy2log holds expert ids {rows.min()}..{rows.max()}, expected [0, {num_experts})"
        )
    index = ((np.arange(T * L, dtype=np.int64) * num_experts)[:, None] + rows).reshape(-1)
    load = np.bincount(index, weights=heat.reshape(-1), minlength=T * L * num_experts)
    return load.reshape(T, L, num_experts)
