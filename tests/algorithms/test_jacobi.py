"""The plain-loop decompositions against NumPy's LAPACK, on odd sizes and rank-deficient rows."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.algorithms.jacobi import reflected_basis, row_reflectors, row_svd


def _rows(K: int, n: int, rank: int, seed: int) -> np.ndarray:
    """``[K, n]`` rows of the given rank (at most ``min(K, n)``), entries of mixed scale."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(K, rank)) @ (rng.normal(size=(rank, n)) * rng.pareto(1.5, n))


SIZES = [(1, 1), (1, 7), (2, 3), (3, 3), (5, 2), (4, 9), (7, 13), (16, 256), (17, 5)]


@pytest.mark.parametrize(("K", "n"), SIZES)
@pytest.mark.parametrize("deficient", [False, True])
def test_row_svd_matches_lapack(K, n, deficient):
    rank = max(min(K, n) - deficient, 1)
    A = _rows(K, n, rank, K * 100 + n)
    U, s, Vt = row_svd(A)
    assert U.shape == (K, K) and s.shape == (K,) and Vt.shape == (K, n)
    np.testing.assert_allclose(U @ np.diag(s) @ Vt, A, atol=1e-12 * np.abs(A).max())
    np.testing.assert_allclose(U.T @ U, np.eye(K), atol=1e-13)
    expected = np.zeros(K)
    expected[: min(K, n)] = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(s, expected, atol=1e-12 * expected[0])
    assert (np.diff(s) <= 0).all()
    # The right vectors of the nonzero values are orthonormal; the others are zero rows.
    live = s > 1e-9 * s[0]
    np.testing.assert_allclose(Vt[live] @ Vt[live].T, np.eye(live.sum()), atol=1e-12)
    assert (Vt[s == 0] == 0).all()


def test_row_svd_small_values_keep_their_relative_accuracy():
    """A Gram matrix would square 1e-9 to 1e-18 and lose it under the rounding of 1; Jacobi
    rotations on the rows find it to many digits."""
    rng = np.random.default_rng(3)
    Q1 = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    Q2 = np.linalg.qr(rng.normal(size=(6, 6)))[0][:4]
    values = np.array([1.0, 0.5, 1e-5, 1e-9])
    _, s, _ = row_svd(Q1 @ np.diag(values) @ Q2)
    np.testing.assert_allclose(s, values, rtol=1e-6)


def test_zero_rows_and_equal_values():
    A = np.zeros((3, 4))
    A[1] = [3.0, 0.0, 0.0, 4.0]
    U, s, Vt = row_svd(A)
    np.testing.assert_array_equal(s, [5.0, 0.0, 0.0])
    np.testing.assert_allclose(np.abs(Vt[0]), [0.6, 0.0, 0.0, 0.8])
    np.testing.assert_allclose(U @ np.diag(s) @ Vt, A, atol=1e-15)
    _, s, _ = row_svd(np.eye(3) * 2.0)
    np.testing.assert_array_equal(s, [2.0, 2.0, 2.0])


@pytest.mark.parametrize(("K", "E"), SIZES)
@pytest.mark.parametrize("deficient", [False, True])
def test_reflectors_give_a_basis_of_the_rows(K, E, deficient):
    rank = max(min(K, E) - deficient, 1)
    A = _rows(K, E, rank, K * 7 + E)
    C, V = row_reflectors(A)
    Q = reflected_basis(V)
    m = min(K, E)
    assert C.shape == (K, m) and Q.shape == (m, E)
    np.testing.assert_allclose(C @ Q, A, atol=1e-12 * np.abs(A).max())
    np.testing.assert_allclose(Q @ Q.T, np.eye(m), atol=1e-13)
    assert (np.triu(C, 1) == 0).all()


def test_reflectors_of_zero_rows():
    C, V = row_reflectors(np.zeros((3, 5)))
    Q = reflected_basis(V)
    np.testing.assert_array_equal(C, 0.0)
    np.testing.assert_allclose(Q @ Q.T, np.eye(3), atol=1e-15)


def test_the_same_bits_on_every_call():
    A = _rows(6, 40, 5, 11)

    def everything(a):
        C, V = row_reflectors(a)
        return [*row_svd(a), C, V, reflected_basis(V)]

    for x, y in zip(everything(A), everything(A.copy()), strict=True):
        np.testing.assert_array_equal(x, y)


def _reflect_alone(x: list, v: list, start: int) -> None:
    """``x -= 2 (x . v) v``, the dot product summed in column order: one row at a time."""
    dot = 0.0
    for e in range(start, len(x)):
        dot += x[e] * v[e]
    dot *= 2.0
    for e in range(start, len(x)):
        x[e] -= dot * v[e]


def _reflectors_one_row_at_a_time(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(C, V, Q)`` as the kernels define them, each row reflected on its own (plain floats)."""
    K, E = A.shape
    m = min(K, E)
    L = A.tolist()
    V = [[0.0] * E for _ in range(m)]
    for k in range(m):
        norm = 0.0
        for e in range(k, E):
            norm += L[k][e] * L[k][e]
        norm = float(np.sqrt(norm))
        if norm == 0.0:
            continue
        alpha = -norm if L[k][k] >= 0.0 else norm
        V[k][k:] = L[k][k:]
        V[k][k] -= alpha
        vnorm = 0.0
        for e in range(k, E):
            vnorm += V[k][e] * V[k][e]
        vnorm = float(np.sqrt(vnorm))
        for e in range(k, E):
            V[k][e] /= vnorm
        for i in range(k, K):
            _reflect_alone(L[i], V[k], k)
    Q = [[float(j == e) for e in range(E)] for j in range(m)]
    for j in range(m):
        for k in range(m - 1, -1, -1):
            _reflect_alone(Q[j], V[k], k)
    C = np.tril(np.array(L)[:, :m])
    return C, np.array(V), np.array(Q)


@pytest.mark.parametrize("deficient", [False, True])
@pytest.mark.parametrize(("K", "E"), [(1, 6), (3, 11), (5, 9), (6, 7), (7, 30), (9, 4), (13, 40)])
def test_reflections_in_step_keep_the_bits_of_one_row_at_a_time(K, E, deficient):
    """The kernels reflect four rows in step; each row's dot products must still be summed in
    column order (K - k from 1 to 13 covers every remainder of four, E < K the short bases;
    dependent rows leave a reflector of nothing, a zero row one that is skipped)."""
    A = _rows(K, E, max(min(K, E) - 2 * deficient, 1), K * 31 + E)
    if deficient and K > 2:
        A[K // 2] = 0.0
    C, V = row_reflectors(A)
    C0, V0, Q0 = _reflectors_one_row_at_a_time(A)
    np.testing.assert_array_equal(C, C0)
    np.testing.assert_array_equal(V, V0)
    np.testing.assert_array_equal(reflected_basis(V), Q0)
