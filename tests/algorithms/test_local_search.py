"""``swap_search``: it stops at a local optimum of its objective, scored here by plain numpy on
every swap of every episode-peak rank, and it keeps the placement's invariants."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.algorithms.load import normalise
from eplb_rt.algorithms.local_search import swap_search
from eplb_rt.algorithms.packing import counts_from_row
from eplb_rt.algorithms.replicas import allot_replicas


def _objective(row: np.ndarray, W: np.ndarray, counts: np.ndarray, D: int, tie: float) -> float:
    """Sum over episodes of the peak rank load, plus ``tie * D`` x the sum of squared loads."""
    loads = (W[:, row] / counts[row]).reshape(W.shape[0], D, -1).sum(axis=2)
    return float(loads.max(axis=1).sum() + tie * D * (loads * loads).sum())


def _best_swap_gain(
    row: np.ndarray, W: np.ndarray, counts: np.ndarray, D: int, tie: float
) -> float:
    """The largest objective drop of one swap between an episode-peak rank and another rank."""
    S = row.size // D
    loads = (W[:, row] / counts[row]).reshape(W.shape[0], D, S).sum(axis=2)
    base = _objective(row, W, counts, D, tie)
    best = -np.inf
    for a in np.unique(loads.argmax(axis=1)):
        for p in range(a * S, (a + 1) * S):
            for q in range(row.size):
                b = q // S
                if b == a or row[p] in row[b * S : (b + 1) * S]:
                    continue
                if row[q] in row[a * S : (a + 1) * S]:
                    continue
                trial = row.copy()
                trial[p], trial[q] = row[q], row[p]
                best = max(best, base - _objective(trial, W, counts, D, tie))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tie", [1e-3, 0.3])
@pytest.mark.parametrize("shape", [(1, 13, 4, 5), (5, 16, 6, 3), (16, 24, 5, 7)])
def test_stops_at_a_local_optimum_of_its_objective(seed, tie, shape):
    K, E, D, S = shape  # episodes, experts, ranks, slots per rank
    # tie = 0.3: the squared loads weigh as much as the peaks, so the bound on what a swap can
    # still gain from them is what decides.
    rng = np.random.default_rng(seed)
    W = normalise(rng.pareto(1.2, size=(K, E)) * rng.uniform(0.5, 1.5, size=(1, E)))
    counts = allot_replicas(W.mean(axis=0), D * S, D)
    row = rng.permutation(np.repeat(np.arange(E), counts))
    # A random start may put two replicas of an expert on one rank: re-draw until it does not.
    while any(len(set(r)) < S for r in row.reshape(D, S)):
        row = rng.permutation(row)
    start = _objective(row, W, counts, D, tie)
    swaps = swap_search(row, W, counts, D, 10_000, tie, 0.0)
    assert swaps < 10_000
    assert (counts_from_row(row, E) == counts).all()
    assert all(len(set(r)) == S for r in row.reshape(D, S))
    assert _objective(row, W, counts, D, tie) <= start + 1e-12
    assert _best_swap_gain(row, W, counts, D, tie) <= 1e-9


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("shape", [(1, 12, 4, 4), (6, 16, 6, 3), (17, 40, 8, 6)])
def test_stops_at_a_local_optimum_with_tied_loads(seed, shape):
    # Small whole-number loads: ranks tie for the peak of an episode, and replicas tie in load,
    # so the search meets peak ranks that lead nowhere and swaps of equal gain.
    K, E, D, S = shape
    rng = np.random.default_rng(seed)
    W = rng.integers(0, 4, size=(K, E)).astype(np.float64)
    counts = allot_replicas(W.mean(axis=0), D * S, D)
    row = rng.permutation(np.repeat(np.arange(E), counts))
    while any(len(set(r)) < S for r in row.reshape(D, S)):
        row = rng.permutation(row)
    start = _objective(row, W, counts, D, 1e-3)
    swaps = swap_search(row, W, counts, D, 10_000, 1e-3, 0.0)
    assert swaps < 10_000
    assert (counts_from_row(row, E) == counts).all()
    assert all(len(set(r)) == S for r in row.reshape(D, S))
    assert _objective(row, W, counts, D, 1e-3) <= start + 1e-12
    assert _best_swap_gain(row, W, counts, D, 1e-3) <= 1e-9


def test_no_swap_is_taken_below_min_gain():
    # Ranks {6, 5} = 11 and {3, 2} = 5: swapping 5 and 2 (or 6 and 3) gives 8 | 8, a gain of 3
    # in the peak; a min_gain above it stops the search before the swap.
    W = np.array([[6.0, 5.0, 3.0, 2.0]])
    counts = np.ones(4, dtype=np.int64)
    row = np.array([0, 1, 2, 3])
    assert swap_search(row.copy(), W, counts, 2, 10, 0.0, 3.5) == 0
    out = row.copy()
    assert swap_search(out, W, counts, 2, 10, 0.0, 1.0) == 1
    assert W[0, out[:2]].sum() == W[0, out[2:]].sum() == 8.0
