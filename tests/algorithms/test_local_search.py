"""``swap_search``: it stops at a local optimum of its objective, scored here by plain numpy on
every swap of every episode-peak rank, takes the swaps a plain search of that objective takes
(ties included), and keeps the placement's invariants."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from eplb_rt.algorithms.load import normalise
from eplb_rt.algorithms.local_search import swap_search
from eplb_rt.algorithms.packing import counts_from_row
from eplb_rt.algorithms.replicas import allot_replicas
from tests.rows import random_row, rank_loads


def _objective(row: np.ndarray, W: np.ndarray, counts: np.ndarray, D: int, tie: float) -> float:
    """Sum over episodes of the peak rank load, plus ``tie * D`` x the sum of squared loads."""
    loads = rank_loads(row, W, counts, D)
    return float(loads.max(axis=1).sum() + tie * D * (loads * loads).sum())


def _swaps(row: np.ndarray, a: int, ranks, S: int):
    """The swaps ``(p, q)`` of a slot of rank ``a`` with a slot of each of ``ranks`` in turn
    (``a``'s slots, then the other rank's, in order) that keep one replica per expert a rank."""
    for b in ranks:
        if b == a:
            continue
        for p in range(a * S, (a + 1) * S):
            for q in range(b * S, (b + 1) * S):
                if (
                    row[p] not in row[b * S : (b + 1) * S]
                    and row[q] not in row[a * S : (a + 1) * S]
                ):
                    yield p, q


def _gain(row: np.ndarray, p: int, q: int, objective) -> float:
    """How much ``objective`` (of a row) drops when slots ``p`` and ``q`` swap experts."""
    trial = row.copy()
    trial[p], trial[q] = row[q], row[p]
    return objective(row) - objective(trial)


def _best_swap_gain(
    row: np.ndarray, W: np.ndarray, counts: np.ndarray, D: int, tie: float
) -> float:
    """The largest objective drop of one swap between an episode-peak rank and another rank."""
    S = row.size // D
    objective = functools.partial(_objective, W=W, counts=counts, D=D, tie=tie)
    peaks = np.unique(rank_loads(row, W, counts, D).argmax(axis=1))
    gains = [_gain(row, p, q, objective) for a in peaks for p, q in _swaps(row, a, range(D), S)]
    return max(gains, default=-np.inf)


def _reference_search(
    row, W, counts, D: int, *, max_rounds: int, tie: float, min_gain: float
) -> int:
    """``swap_search`` as its docstring states it, every swap scored on the whole objective.

    Each round the episode-peak ranks (an episode's largest load, the lower rank on ties) are
    tried by their lead over the runner-up summed over the episodes they peak (the lower rank
    on ties), each taking its best swap gaining more than ``max(min_gain, 1e-12)``; a rank that
    had none waits until a swap changes it, and is retried before the search stops. Of equal
    gains the first in a scan of every pair: the other ranks by the bound on a pair's gain
    (largest first, the lower rank on ties), then the slots of the peak rank and of the other.
    """
    S = row.size // D
    objective = functools.partial(_objective, W=W, counts=counts, D=D, tie=tie)
    floor = max(min_gain, 1e-12)
    stuck = np.zeros(D, dtype=bool)
    swaps = 0
    while swaps < max_rounds:
        loads = rank_loads(row, W, counts, D)
        top = loads.argmax(axis=1)
        ranked = -np.sort(-loads, axis=1)
        lead = np.zeros(D)
        np.add.at(lead, top, ranked[:, 0] - ranked[:, 1])
        tried = np.zeros(D, dtype=bool)
        best = None
        while best is None:
            waiting = [r for r in np.unique(top) if not tried[r]]
            if not waiting:
                return swaps
            ready = [r for r in waiting if not stuck[r]]
            if not ready:
                stuck[:] = False
                continue
            a = max(ready, key=lambda r: (lead[r], -r))
            tried[a] = stuck[a] = True
            # The bound: the pair's new peak is at least the mean of its loads, and a tie term
            # d (la - lb - d) at most (la - lb)^2 / 4.
            upper = np.zeros(D)
            for b in range(D):
                if b == a:
                    continue
                la, lb = loads[:, a], loads[:, b]
                others = np.delete(loads, [a, b], axis=1).max(axis=1, initial=-np.inf)
                upper[b] = (
                    np.maximum(np.maximum(la, lb), others)
                    - np.maximum(0.5 * (la + lb), others)
                    + 0.5 * tie * D * (la - lb) ** 2
                ).sum()
            gain_best = floor
            for p, q in _swaps(row, a, sorted(range(D), key=lambda b: -upper[b]), S):
                gain = _gain(row, p, q, objective)
                if gain > gain_best:
                    gain_best, best = gain, (p, q)
        p, q = best
        row[p], row[q] = row[q], row[p]
        stuck[p // S] = stuck[q // S] = False
        swaps += 1
    return swaps


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
    row = random_row(rng, counts, D)
    start = _objective(row, W, counts, D, tie)
    swaps = swap_search(row, W, counts, D, 10_000, tie, 0.0, 0.0)
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
    row = random_row(rng, counts, D)
    start = _objective(row, W, counts, D, 1e-3)
    swaps = swap_search(row, W, counts, D, 10_000, 1e-3, 0.0, 0.0)
    assert swaps < 10_000
    assert (counts_from_row(row, E) == counts).all()
    assert all(len(set(r)) == S for r in row.reshape(D, S))
    assert _objective(row, W, counts, D, 1e-3) <= start + 1e-12
    assert _best_swap_gain(row, W, counts, D, 1e-3) <= 1e-9


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize(
    ("tie", "min_gain", "max_rounds"),
    [(0.0, 0.0, 10_000), (2**-7, 0.0, 10_000), (2**-7, 1.5, 10_000), (0.0, 0.0, 3)],
)
@pytest.mark.parametrize("shape", [(1, 7, 3, 3), (3, 11, 5, 3), (5, 13, 3, 5), (4, 17, 7, 3)])
def test_takes_the_swaps_of_the_plain_search(seed, tie, min_gain, max_rounds, shape):
    # Replica loads in halves and a tie weight of 2^-7: every gain is exact whatever the order
    # of its sums, so equal gains are equal in both searches and the tie rule is what is tested
    # (whole-number loads tie often, for the peak and between swaps).
    K, E, D, S = shape
    rng = np.random.default_rng(seed)
    counts = allot_replicas(rng.pareto(1.2, size=E) + 0.1, D * S, D)
    W = rng.integers(0, 7, size=(K, E)) / 2.0 * counts
    row = random_row(rng, counts, D)
    expected = row.copy()
    swaps = _reference_search(
        expected, W, counts, D, max_rounds=max_rounds, tie=tie, min_gain=min_gain
    )
    assert swap_search(row, W, counts, D, max_rounds, tie, min_gain, 0.0) == swaps
    assert (row == expected).all()


def test_no_swap_is_taken_below_min_gain():
    # Ranks {6, 5} = 11 and {3, 2} = 5: swapping 5 and 2 (or 6 and 3) gives 8 | 8, a gain of 3
    # in the peak; a min_gain above it stops the search before the swap.
    W = np.array([[6.0, 5.0, 3.0, 2.0]])
    counts = np.ones(4, dtype=np.int64)
    row = np.array([0, 1, 2, 3])
    assert swap_search(row.copy(), W, counts, 2, 10, 0.0, 3.5, 0.0) == 0
    out = row.copy()
    assert swap_search(out, W, counts, 2, 10, 0.0, 1.0, 0.0) == 1
    assert W[0, out[:2]].sum() == W[0, out[2:]].sum() == 8.0


def _mean_par(row: np.ndarray, W: np.ndarray, counts: np.ndarray, D: int) -> float:
    loads = rank_loads(row, W, counts, D)
    return float((loads.max(axis=1) / loads.mean(axis=1)).mean())


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("shape", [(1, 13, 4, 5), (3, 16, 6, 3), (5, 24, 5, 7)])
def test_stops_at_the_first_swap_that_reaches_enough(seed, shape):
    # The search with a stop makes the first swaps of the search without it, up to the first
    # after which the episodes' mean PAR is at most ``enough``.
    K, E, D, S = shape
    rng = np.random.default_rng(seed)
    W = normalise(rng.pareto(1.2, size=(K, E)) * rng.uniform(0.5, 1.5, size=(1, E)))
    counts = allot_replicas(W.mean(axis=0), D * S, D)
    start = random_row(rng, counts, D)
    full = start.copy()
    total = swap_search(full, W, counts, D, 10_000, 1e-3, 0.0, 0.0)
    pars = [_mean_par(start, W, counts, D)]
    for n in range(1, total + 1):
        prefix = start.copy()
        swap_search(prefix, W, counts, D, n, 1e-3, 0.0, 0.0)
        pars.append(_mean_par(prefix, W, counts, D))
    enough = (pars[0] + pars[-1]) / 2
    row = start.copy()
    swaps = swap_search(row, W, counts, D, 10_000, 1e-3, 0.0, enough)
    assert swaps == next(n for n, par in enumerate(pars) if par <= enough * (1 + 1e-12))
    expected = start.copy()
    swap_search(expected, W, counts, D, swaps, 1e-3, 0.0, 0.0)
    assert (row == expected).all()
    assert swap_search(start.copy(), W, counts, D, 10_000, 1e-3, 0.0, pars[0] * (1 + 1e-9)) == 0
