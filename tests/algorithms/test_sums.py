"""The numba sums round as numpy's: bit-equal on odd sizes, across numpy's block boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.algorithms.sums import column_mean, column_std, column_sum, pairwise_sum, row_sum

# Run lengths around numpy's pairwise block (8 running sums, blocks of 128, halves above).
SIZES = [1, 2, 7, 8, 9, 15, 16, 17, 127, 128, 129, 130, 255, 256, 257, 1000, 1023, 4097]


def _values(rng: np.random.Generator, shape) -> np.ndarray:
    """Positive values over ten decades: their sums round differently in every order."""
    return rng.random(shape) * 10.0 ** rng.integers(-5, 5, shape)


@pytest.mark.parametrize("n", SIZES)
def test_pairwise_sum_is_numpys_sum(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        a = _values(rng, n)
        assert pairwise_sum(a) == row_sum(a) == a.sum()


@pytest.mark.parametrize("shape", [(1, 5), (3, 7), (16, 129), (17, 256), (5, 1000)])
def test_pairwise_sum_of_a_matrix_is_numpys_sum(shape):
    a = _values(np.random.default_rng(shape[1]), shape)
    assert pairwise_sum(a) == a.sum()
    for row in a:
        assert pairwise_sum(row) == row.sum()


@pytest.mark.parametrize("shape", [(1, 3), (2, 2), (7, 9), (16, 256), (33, 129)])
def test_column_sum_mean_and_std_are_numpys(shape):
    W = _values(np.random.default_rng(sum(shape)), shape)
    assert np.array_equal(column_sum(W), W.sum(axis=0))
    assert np.array_equal(column_mean(W), W.mean(axis=0))
    assert np.array_equal(column_std(W), W.std(axis=0))


def test_the_order_matters_so_the_check_can_fail():
    """The reference check can fail: summed in order, these values round differently."""
    a = np.array([1e16, 1.0, -1e16, 1.0] * 40)
    sequential = 0.0
    for v in a:
        sequential += v
    assert pairwise_sum(a) == a.sum() != sequential
