"""``balance_swaps``: it takes the swaps of a plain search of its objective (the sum over the rows
of the squared rank loads), scored here by numpy on every swap of the rank it searches, and
keeps the placement's invariants."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.algorithms.load import normalise
from eplb_rt.algorithms.local_search import _HEAD, _place, balance_swaps
from eplb_rt.algorithms.packing import counts_from_row
from eplb_rt.algorithms.replicas import allot_replicas
from tests.rows import random_row, rank_loads


def _objective(row: np.ndarray, W: np.ndarray, counts: np.ndarray, D: int) -> float:
    loads = rank_loads(row, W, counts, D)
    return float((loads * loads).sum())


def _far(row: np.ndarray, W: np.ndarray, counts: np.ndarray, D: int) -> np.ndarray:
    """``[D]``: each rank's squared distance from the mean rank, over the rows."""
    loads = rank_loads(row, W, counts, D)
    return ((loads - loads.mean(axis=1, keepdims=True)) ** 2).sum(axis=0)


def _reference(row: np.ndarray, W: np.ndarray, counts: np.ndarray, D: int, max_swaps: int) -> int:
    """The search as the docstring states it: the rank farthest from the mean that is not passed
    over takes its best swap (every swap scored on the whole objective); a rank without one is
    passed over until a swap changes it."""
    S = row.size // D
    mean = rank_loads(row, W, counts, D).mean(axis=1)
    floor = 1e-12 * (_far(row, W, counts, D).max() + mean @ mean)
    stuck = np.zeros(D, dtype=bool)
    swaps = 0
    while swaps < max_swaps and not stuck.all():
        far = np.where(stuck, -np.inf, _far(row, W, counts, D))
        p = int(np.argmax(far))
        before = _objective(row, W, counts, D)
        best, best_swap = floor, None
        for q in range(D):
            if q == p:
                continue
            for a in range(p * S, (p + 1) * S):
                for b in range(q * S, (q + 1) * S):
                    if row[a] in row[q * S : (q + 1) * S] or row[b] in row[p * S : (p + 1) * S]:
                        continue
                    trial = row.copy()
                    trial[a], trial[b] = row[b], row[a]
                    gain = before - _objective(trial, W, counts, D)
                    if gain > best:
                        best, best_swap = gain, (a, b)
        if best_swap is None:
            stuck[p] = True
            continue
        a, b = best_swap
        row[a], row[b] = row[b], row[a]
        stuck[p] = stuck[b // S] = False
        swaps += 1
    return swaps


def _start(rng, K: int, E: int, D: int, S: int):
    """Float loads with a spread of sizes, their replica counts and a random valid placement."""
    W = normalise(rng.pareto(1.2, size=(K, E)) * rng.uniform(0.5, 1.5, size=(1, E)))
    counts = allot_replicas(W.mean(axis=0), D * S, D)
    return W, counts, random_row(rng, counts, D)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("max_swaps", [10_000, 3])
@pytest.mark.parametrize(
    "shape",
    # K around the eight coordinates a distance sums before its first test (8, 9), and past them.
    [
        (1, 7, 3, 3),
        (4, 9, 6, 2),
        (3, 11, 5, 3),
        (5, 13, 3, 5),
        (8, 10, 4, 3),
        (9, 12, 5, 3),
        (17, 23, 7, 4),
    ],
)
def test_takes_the_swaps_of_the_plain_search(seed, max_swaps, shape):
    K, E, D, S = shape  # rows, experts, ranks, slots per rank
    rng = np.random.default_rng(seed)
    W, counts, row = _start(rng, K, E, D, S)
    expected = row.copy()
    swaps = _reference(expected, W, counts, D, max_swaps)
    assert balance_swaps(row, W, counts, D, max_swaps) == swaps
    # Compared as partitions: a swap and the swap of the two ranks' other slots gain the same
    # (they leave the same two sets of replicas, each on the other rank), which happens
    # whenever two ranks share an expert or hold two slots, and rounding picks one of them.
    assert _partition(row, D) == _partition(expected, D)


def _partition(row: np.ndarray, D: int) -> list[tuple[int, ...]]:
    return sorted(tuple(sorted(r)) for r in row.reshape(D, -1).tolist())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(2, 16, 4, 5), (16, 64, 8, 9), (17, 256, 64, 5)])
def test_keeps_the_placement_valid_and_lowers_the_objective(seed, shape):
    K, E, D, S = shape
    rng = np.random.default_rng(seed)
    W, counts, row = _start(rng, K, E, D, S)
    start = _objective(row, W, counts, D)
    swaps = balance_swaps(row, W, counts, D, 10_000)
    assert 0 < swaps < 10_000
    assert (counts_from_row(row, E) == counts).all()
    assert all(len(set(r)) == S for r in row.reshape(D, S))
    assert _objective(row, W, counts, D) < start


def test_equal_loads_take_no_swap_and_a_clear_gain_is_taken():
    # Equal loads everywhere: no swap gains, so nothing moves.
    W = np.ones((3, 12))
    counts = np.ones(12, dtype=np.int64)
    row = np.arange(12)
    assert balance_swaps(row, W, counts, 4, 100) == 0
    assert (row == np.arange(12)).all()
    # Ranks {6, 5} and {3, 2} in one row: swapping 5 with 2 (or 6 with 3) gives 8 | 8.
    W = np.array([[6.0, 5.0, 3.0, 2.0]])
    row = np.array([0, 1, 2, 3])
    assert balance_swaps(row, W, np.ones(4, dtype=np.int64), 2, 10) == 1
    assert W[0, row[:2]].sum() == W[0, row[2:]].sum() == 8.0


def test_gain_of_a_swap_is_half_the_gap_between_the_ranks_less_the_slots_distance():
    # The identity the search prunes with, on random vectors: swapping x_a (rank p) with x_b
    # (rank q) lowers |l_p|^2 + |l_q|^2 by (|l_p - l_q|^2 - |z_a - z_b|^2) / 2, z = 2x - l.
    rng = np.random.default_rng(0)
    for _ in range(100):
        x_a, x_b, rest_p, rest_q = rng.normal(size=(4, 5))
        l_p, l_q = rest_p + x_a, rest_q + x_b
        after = (l_p - x_a + x_b) @ (l_p - x_a + x_b) + (l_q - x_b + x_a) @ (l_q - x_b + x_a)
        z_a, z_b = 2 * x_a - l_p, 2 * x_b - l_q
        gap = (l_p - l_q) @ (l_p - l_q) - (z_a - z_b) @ (z_a - z_b)
        assert l_p @ l_p + l_q @ l_q - after == pytest.approx(gap / 2)


@pytest.mark.parametrize("seed", range(20))
def test_a_changed_slot_goes_where_the_order_by_head_then_slot_puts_it(seed):
    # The walk's order after a swap: the slots of the two ranks get new heads one by one, and
    # the order must be by first coordinate, equal ones by slot, as a sort of every slot gives.
    rng = np.random.default_rng(seed)
    D, S = int(rng.integers(2, 9)), int(rng.integers(1, 6))
    P = D * S
    by_slot = rng.integers(0, 4, size=(P, _HEAD)).astype(np.float64)  # whole numbers: many ties
    order = np.lexsort((np.arange(P), by_slot[:, 0]))
    heads = by_slot[order]
    where = np.argsort(order)
    rank_at = order // S
    for _ in range(10):
        changed = rng.choice(P, size=int(rng.integers(1, min(P, 2 * S) + 1)), replace=False)
        by_slot[changed] = rng.integers(0, 4, size=(changed.size, _HEAD))
        for s in changed:
            _place(heads, order, where, rank_at, s, by_slot[s].copy(), S)
        assert (order == np.lexsort((np.arange(P), by_slot[:, 0]))).all()
        assert (where[order] == np.arange(P)).all()
        assert (rank_at == order // S).all()
        assert (heads == by_slot[order]).all()
