"""Episode statistics of expert load: the state over time that robust policies read.

A policy sees a load history ``[T, L, E]``. Single steps are noisy, and plans fitted to the sum
alone ignore how expert loads move together, so the history is cut into *episodes* (contiguous
runs of steps, summed) and each layer gets the mean, variance and covariance of expert load
across episodes. Aggregate-only data (``T = 1``, e.g. a recorder's totals) is one episode:
mean = that load, variance and covariance zero.

The object is pure numpy and keeps no reference to the caller's arrays.
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.load import check_load


def cut_episodes(load: np.ndarray, num_episodes: int) -> np.ndarray:
    """Sum ``load [T, L, E]`` over ``min(T, num_episodes)`` contiguous runs of steps.

    Runs differ in length by at most one step (the first ``T mod K`` runs take the extra one),
    so no step is dropped. Returns ``[K, L, E] float64``.
    """
    arr = check_load(load)
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    T = arr.shape[0]
    K = min(T, int(num_episodes))
    if K == T:
        return arr.copy()
    bounds = np.linspace(0, T, K + 1).round().astype(np.int64)
    return np.add.reduceat(arr, bounds[:-1], axis=0)


def normalise_episodes(episodes: np.ndarray) -> np.ndarray:
    """Scale each episode's layer rows to sum to 1 (all-zero rows stay zero).

    Episodes of different lengths (or workloads of different sizes) then count equally: a plan
    scored on them weighs each episode's *shape* of load, not its volume. ``[K, L, E]`` in and out.
    """
    totals = episodes.sum(axis=2, keepdims=True)
    return np.divide(episodes, totals, out=np.zeros_like(episodes), where=totals > 0)


class EpisodeStats:
    """The last ``history`` steps of load ``[H, L, E]`` and their per-episode statistics.

    Args:
        num_layers: ``L``.
        num_experts: ``E``.
        history: ``H``, steps kept (older steps fall out of the ring).
        episode_steps: steps per episode (e.g. 1024 steps in 64 episodes of 16). The last episode
            may be shorter when fewer steps are held.

    Feed steps with :meth:`push` (one ``[L, E]`` step) or :meth:`extend` (``[T, L, E]``); read
    :meth:`episodes`, :meth:`mean`, :meth:`var`, :meth:`cov`. Use :meth:`from_load` to wrap a
    whole history at once.
    """

    def __init__(self, num_layers: int, num_experts: int, history: int, episode_steps: int = 1):
        for name, value in (
            ("num_layers", num_layers),
            ("num_experts", num_experts),
            ("history", history),
            ("episode_steps", episode_steps),
        ):
            if int(value) < 1:
                raise ValueError(f"EpisodeStats.{name} must be >= 1, got {value}")
        self.num_layers = int(num_layers)
        self.num_experts = int(num_experts)
        self.history = int(history)
        self.episode_steps = int(episode_steps)
        self._ring = np.zeros((self.history, self.num_layers, self.num_experts))
        self._next = 0  # ring row the next step goes to
        self._filled = 0  # rows holding data

    @classmethod
    def from_load(cls, load: np.ndarray, num_episodes: int) -> EpisodeStats:
        """Statistics over all of ``load [T, L, E]`` (or ``[L, E]``) cut into ``num_episodes``."""
        arr = check_load(load)
        T, L, E = arr.shape
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
        stats = cls(L, E, history=T, episode_steps=-(-T // min(T, num_episodes)))
        stats.extend(arr)
        return stats

    # ----------------------------------------------------------------------------- feeding
    def push(self, step_load: np.ndarray) -> None:
        """Append one step ``[L, E]``; the oldest step falls out once ``history`` are held."""
        arr = check_load(step_load, self.num_layers, self.num_experts, name="step_load")
        if arr.shape[0] != 1:
            raise ValueError(f"push takes one step [L, E], got shape {np.shape(step_load)}")
        self._ring[self._next] = arr[0]
        self._next = (self._next + 1) % self.history
        self._filled = min(self._filled + 1, self.history)

    def extend(self, load: np.ndarray) -> None:
        """Append ``[T, L, E]`` steps in order (only the last ``history`` are kept)."""
        arr = check_load(load, self.num_layers, self.num_experts)
        for row in arr[-self.history :]:
            self._ring[self._next] = row
            self._next = (self._next + 1) % self.history
            self._filled = min(self._filled + 1, self.history)

    def clear(self) -> None:
        self._ring[:] = 0.0
        self._next = 0
        self._filled = 0

    # ----------------------------------------------------------------------------- reading
    @property
    def num_steps(self) -> int:
        """Steps currently held (at most ``history``)."""
        return self._filled

    def steps(self) -> np.ndarray:
        """Held steps in time order, ``[n, L, E]`` (a copy)."""
        if self._filled < self.history:
            return self._ring[: self._filled].copy()
        return np.concatenate([self._ring[self._next :], self._ring[: self._next]])

    def episodes(self) -> np.ndarray:
        """``[K, L, E]``: held steps summed per episode of ``episode_steps`` (oldest first)."""
        steps = self.steps()
        if steps.shape[0] == 0:
            raise ValueError("EpisodeStats holds no steps yet")
        starts = np.arange(0, steps.shape[0], self.episode_steps)
        return np.add.reduceat(steps, starts, axis=0)

    @property
    def num_episodes(self) -> int:
        return -(-self._filled // self.episode_steps)

    def mean(self) -> np.ndarray:
        """``[L, E]``: mean load per episode."""
        return self.episodes().mean(axis=0)

    def var(self) -> np.ndarray:
        """``[L, E]``: population variance of load across episodes (zero for one episode)."""
        return self.episodes().var(axis=0)

    def cov(self) -> np.ndarray:
        """``[L, E, E]``: population covariance of expert loads across episodes, per layer."""
        eps = self.episodes()
        centred = eps - eps.mean(axis=0)
        return np.einsum("kle,klf->lef", centred, centred) / eps.shape[0]

    def total(self) -> np.ndarray:
        """``[L, E]``: load summed over all held steps."""
        return self.steps().sum(axis=0)
