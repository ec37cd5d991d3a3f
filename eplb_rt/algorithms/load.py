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
    arr = np.asarray(load)
    real = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    if not (real or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric (real), got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be [L, E] or [T, L, E], got shape {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"{name} has an empty axis: shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (arr < 0).any():
        raise ValueError(f"{name} contains negative values (min {arr.min():g})")
    if num_layers is not None and arr.shape[1] != num_layers:
        raise ValueError(f"{name} has {arr.shape[1]} layers, expected {num_layers}")
    if num_experts is not None and arr.shape[2] != num_experts:
        raise ValueError(f"{name} has {arr.shape[2]} experts, expected {num_experts}")
    return arr


def cut_episodes(load: np.ndarray, num_episodes: int) -> np.ndarray:
    """Sum ``load [T, L, E] float64`` (as :func:`check_load` returns it) over
    ``min(T, num_episodes)`` contiguous runs of steps.

    Runs differ in length by at most one step, so no step is dropped. A policy sees episodes
    rather than single steps, which are noisy. Returns ``[K, L, E] float64`` (a new array: the
    caller's load is never handed on to a policy).
    """
    steps = episode_steps(load.shape[0], num_episodes)
    if steps.shape[0] == load.shape[0]:
        return load.copy()
    return np.add.reduceat(load, np.cumsum(steps) - steps, axis=0)


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
