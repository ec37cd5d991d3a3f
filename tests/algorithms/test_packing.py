"""Packing kernels: swaps of items between equal packs (``swap_items``) against a plain search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from eplb_rt.algorithms.packing import pack_equal_groups, stable_order, swap_items


def _peaks(pack_of: np.ndarray, rows: np.ndarray, num_packs: int) -> float:
    """Sum over the rows of the heaviest pack's load."""
    return sum(np.bincount(pack_of, weights=r, minlength=num_packs).max() for r in rows)


def _partition(pack_of: np.ndarray) -> set[frozenset[int]]:
    """The packs as sets of items: with two items a pack, swapping ``a`` for ``c`` or ``b`` for
    ``d`` between packs ``{a, b}`` and ``{c, d}`` gains the same and differs only by labels."""
    return {frozenset(np.flatnonzero(pack_of == p).tolist()) for p in np.unique(pack_of)}


def _reference(pack_of: np.ndarray, rows: np.ndarray, num_packs: int):
    """The same search written plainly: each round scores every swap from scratch and takes the
    first of largest gain (the kernel's order), until none gains. ``(packs, swaps)``."""
    pack_of = pack_of.copy()
    floor = 1e-12 * np.abs(rows).sum()
    for swaps in itertools.count():
        now = _peaks(pack_of, rows, num_packs)
        best, pair = floor, None
        for x, y in itertools.combinations(range(pack_of.size), 2):
            if pack_of[x] == pack_of[y]:
                continue
            trial = pack_of.copy()
            trial[[x, y]] = trial[[y, x]]
            gain = now - _peaks(trial, rows, num_packs)
            if gain > best:
                best, pair = gain, (x, y)
        if pair is None:
            return pack_of, swaps
        pack_of[list(pair)] = pack_of[list(pair)[::-1]]


@pytest.mark.parametrize(
    ("items", "packs", "rows"),
    # Many packs and few rows: most packs are the peak of no row (swaps between them not scored).
    [(6, 2, 1), (9, 3, 5), (12, 4, 3), (10, 5, 7), (24, 8, 2), (21, 7, 1), (16, 8, 16)],
)
@pytest.mark.parametrize("seed", range(4))
def test_swaps_match_the_plain_search(items, packs, rows, seed):
    rng = np.random.default_rng(seed)
    loads = rng.gamma(0.7, 10.0, size=(rows, items))
    start = pack_equal_groups(loads.sum(axis=0), packs)
    got = start.copy()
    swaps = swap_items(got, loads, packs, items * items)
    want, want_swaps = _reference(start, loads, packs)
    assert _partition(got) == _partition(want)
    assert swaps == want_swaps
    assert (np.bincount(got, minlength=packs) == items // packs).all()
    assert _peaks(got, loads, packs) <= _peaks(start, loads, packs)


def test_lpt_is_a_swap_away_from_the_optimum():
    """LPT packs 18 and 11 with 6 (35 against 30); one swap gives the optimum, 33 and 32."""
    weights = np.array([11.0, 18.0, 6.0, 16.0, 13.0, 1.0])
    lpt = pack_equal_groups(weights, 2)
    assert _peaks(lpt, weights[None], 2) == 35.0
    assert swap_items(lpt, weights[None], 2, 36) == 1
    assert _peaks(lpt, weights[None], 2) == 33.0


def test_balances_every_row_not_their_sum():
    """Two episodes, each with its own two heavy items: summed, every packing of two a pack is
    balanced; only the one that splits each episode's pair balances both episodes."""
    rows = np.array([[10.0, 10.0, 1.0, 1.0], [1.0, 1.0, 10.0, 10.0]])
    pack_of = np.array([0, 0, 1, 1])  # each episode's pair together: peaks 20 + 20
    assert swap_items(pack_of, rows, 2, 16) == 1
    assert pack_of[0] != pack_of[1] and pack_of[2] != pack_of[3]
    assert _peaks(pack_of, rows, 2) == 22.0


def test_no_gain_no_swap():
    rows = np.ones((3, 8))
    pack_of = np.repeat(np.arange(4), 2)
    assert swap_items(pack_of, rows, 4, 64) == 0
    assert (pack_of == np.repeat(np.arange(4), 2)).all()


@pytest.mark.parametrize("n", [0, 1, 2, 15, 16, 17, 31, 33, 64, 257, 1000])
@pytest.mark.parametrize("kind", ["distinct", "ties", "sorted", "reversed"])
def test_stable_order_is_numpys_stable_argsort(n, kind):
    rng = np.random.default_rng(n)
    values = {
        "distinct": rng.random(n),
        "ties": rng.integers(0, 4, n).astype(float),  # equal keys keep index order
        "sorted": np.arange(n, dtype=float),
        "reversed": np.arange(n, 0, -1, dtype=float) // 3,  # descending runs of ties
    }[kind]
    np.testing.assert_array_equal(stable_order(values), np.argsort(values, kind="stable"))
