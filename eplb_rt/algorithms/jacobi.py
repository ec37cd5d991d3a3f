"""Small dense decompositions in plain numba loops: the same bits on every CPU.

Engines such as vLLM run the policy on every rank with the same load, and each rank moves
weights by its own answer, so every rank must plan the same table. LAPACK's results depend on
which BLAS kernels a CPU runs (their last bits differ between AVX2 and SSE3 kernels), and a
near tie in a search that follows can then go two ways. These kernels fix the order of every
operation, and numba, without fast-math, keeps it: Householder reflections for a basis of a few
long rows, one-sided Jacobi rotations for the singular values of the small matrix that remains
(accurate to the last bits even for the small ones, which a Gram matrix would square away).
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jit import kernel

_EPS = np.finfo(np.float64).eps

_MAX_SWEEPS = 64
"""Jacobi sweeps converge quadratically: a handful for the matrices of the policies."""


@kernel
def row_reflectors(A):
    """The coordinates of the rows of ``A [K, E] float64`` in an orthonormal basis of their span,
    and that basis as reflectors: ``(C [K, m], V [m, E])``, ``m = min(K, E)``, with
    ``A = C @ reflected_basis(V)``.

    Householder reflections applied to the rows (a QR factorisation of ``A.T``): ``C`` is lower
    triangular, and the basis is orthonormal even where the rows of ``A`` are dependent. The
    basis itself takes as many operations again, so it is formed apart, only by a caller that
    needs it (:func:`reflected_basis`, the same bits whenever it is formed).
    """
    K, E = A.shape
    m = min(K, E)
    L = A.copy()
    V = np.zeros((m, E))  # the reflectors' unit vectors; a zero row is no reflection
    for k in range(m):
        norm = 0.0
        for e in range(k, E):
            norm += L[k, e] * L[k, e]
        norm = np.sqrt(norm)
        if norm == 0.0:
            continue
        alpha = -norm if L[k, k] >= 0.0 else norm
        for e in range(k, E):
            V[k, e] = L[k, e]
        V[k, k] -= alpha
        vnorm = 0.0
        for e in range(k, E):
            vnorm += V[k, e] * V[k, e]
        vnorm = np.sqrt(vnorm)
        for e in range(k, E):
            V[k, e] /= vnorm
        _reflect_rows(L, k, V, k)
    C = np.zeros((K, m))
    for i in range(K):
        for j in range(min(i + 1, m)):
            C[i, j] = L[i, j]
    return C, V


@kernel
def reflected_basis(V):
    """``Q [m, E]``: the orthonormal basis whose reflectors ``V [m, E]`` :func:`row_reflectors`
    gives."""
    m, E = V.shape
    # Row j of Q is e_j reflected by the last reflector first: A = L H_{m-1} ... H_0. The
    # rows take the reflectors in step (each its own in the same order, so the same bits).
    Q = np.zeros((m, E))
    for j in range(m):
        Q[j, j] = 1.0
    for k in range(m - 1, -1, -1):
        _reflect_rows(Q, 0, V, k)
    return Q


@kernel(inline=True)
def _reflect_rows(X, first, V, k):
    """``x -= 2 (x . v) v`` in place for each row ``x`` of ``X`` from ``first`` on, ``v = V[k]``
    (zero before column ``k``).

    Four rows at a time: each dot product is a chain of additions, one after the other, and
    four chains side by side take little longer than one (every chain sums in column order,
    as one row alone would: the same bits). Rows by index: a view of a row would take a
    reference at every call (:mod:`eplb_rt.algorithms.jit`)."""
    n, E = X.shape
    i = first
    while i < n:
        rows = min(4, n - i)
        d0 = d1 = d2 = d3 = 0.0
        if rows == 4:
            for e in range(k, E):
                v = V[k, e]
                d0 += X[i, e] * v
                d1 += X[i + 1, e] * v
                d2 += X[i + 2, e] * v
                d3 += X[i + 3, e] * v
        else:
            for e in range(k, E):
                v = V[k, e]
                d0 += X[i, e] * v
                if rows > 1:
                    d1 += X[i + 1, e] * v
                if rows > 2:
                    d2 += X[i + 2, e] * v
        d0 *= 2.0
        d1 *= 2.0
        d2 *= 2.0
        d3 *= 2.0
        for e in range(k, E):
            v = V[k, e]
            X[i, e] -= d0 * v
            if rows > 1:
                X[i + 1, e] -= d1 * v
            if rows > 2:
                X[i + 2, e] -= d2 * v
            if rows > 3:
                X[i + 3, e] -= d3 * v
        i += rows


@kernel
def row_svd(A):
    """Singular values and vectors of a small ``A [K, n] float64``: ``(U [K, K], s [K], Vt [K,
    n])`` with ``A = U @ diag(s) @ Vt``, ``s`` descending.

    One-sided Jacobi: pairs of rows rotated until every two are orthogonal; their norms are the
    singular values, and a row of ``Vt`` is zero where its value is (``K > n``, or dependent
    rows). Signs follow from the rotations, the same on every CPU.
    """
    K, n = A.shape
    B = A.copy()
    U = np.eye(K)
    # Two rows count as orthogonal when their cosine is within the rounding of their dot
    # product (n products); a row within that rounding of the whole matrix counts as zero (with
    # more rows than columns, K - n rows end there, and rotating their rounding never settles).
    orthogonal = n * _EPS
    frobenius = 0.0  # squared
    for i in range(K):
        for x in range(n):
            frobenius += A[i, x] * A[i, x]
    negligible = frobenius * orthogonal**2
    for _ in range(_MAX_SWEEPS):
        rotated = False
        for i in range(K - 1):
            for j in range(i + 1, K):
                alpha, beta, gamma = 0.0, 0.0, 0.0
                for x in range(n):
                    alpha += B[i, x] * B[i, x]
                    beta += B[j, x] * B[j, x]
                    gamma += B[i, x] * B[j, x]
                if alpha <= negligible or beta <= negligible:
                    continue
                if abs(gamma) <= orthogonal * np.sqrt(alpha * beta):
                    continue
                rotated = True
                zeta = (beta - alpha) / (2.0 * gamma)
                t = 1.0 / (abs(zeta) + np.sqrt(1.0 + zeta * zeta))
                if zeta < 0.0:
                    t = -t
                c = 1.0 / np.sqrt(1.0 + t * t)
                s = c * t
                for x in range(n):
                    bi, bj = B[i, x], B[j, x]
                    B[i, x] = c * bi - s * bj
                    B[j, x] = s * bi + c * bj
                for r in range(K):
                    ui, uj = U[r, i], U[r, j]
                    U[r, i] = c * ui - s * uj
                    U[r, j] = s * ui + c * uj
        if not rotated:
            break
    norms = np.empty(K)
    for i in range(K):
        total = 0.0
        for x in range(n):
            total += B[i, x] * B[i, x]
        norms[i] = np.sqrt(total)
    order = np.argsort(-norms, kind="mergesort")  # stable: equal values keep their rows' order
    s = norms[order]
    Vt = np.zeros((K, n))
    Us = np.empty((K, K))
    for k in range(K):
        i = order[k]
        if s[k] > 0.0:
            for x in range(n):
                Vt[k, x] = B[i, x] / s[k]
        for r in range(K):
            Us[r, k] = U[r, i]
    return Us, s, Vt
