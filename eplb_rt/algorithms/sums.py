"""Sums and means in numba that round as numpy's do, bit for bit.

The policies' numba kernels compute what used to be numpy expressions (``x.sum()``,
``W.mean(axis=0)``, ``W.std(axis=0)``). Rounding decides ties in the searches that follow, so a
kernel that summed in another order could change a placement; these keep numpy's order:
pairwise summation along a row (eight running sums in blocks of at most 128 elements, halves
above that), one row after another down a column.
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jit import kernel

_BLOCK = 128
"""numpy's pairwise block: shorter runs are summed by eight running sums."""


@kernel(inline=True)
def _run(a, lo, n):
    """Sum of a run ``a[lo:lo + n]`` (``n <= 128``) as numpy sums a block."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    # Eight scalars, not an array of eight: an allocation per run cost more than its sums.
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = lo + 8
    while i < lo + n - n % 8:
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for t in range(i, lo + n):
        res += a[t]
    return res


@kernel(inline=True)
def _half(n):
    """Where numpy splits a run longer than a block: halfway, down to a multiple of 8."""
    half = n // 2
    return half - half % 8


@kernel
def _pairwise(a):
    """Sum of ``a [n]`` in numpy's pairwise order: halves (the first a multiple of 8 long) until
    a run fits a block. The tree is walked with a stack (numba does not cache recursion)."""
    n = a.shape[0]
    if n <= _BLOCK:
        return _run(a, 0, n)
    half = _half(n)
    if n - half <= _BLOCK:  # two runs (up to 256 experts): no stack to allocate
        return _run(a, 0, half) + _run(a, half, n - half)
    los = np.empty(64, dtype=np.int64)
    ns = np.empty(64, dtype=np.int64)  # a run's length, or -1: add the two sums on top
    sums = np.empty(64)
    los[0], ns[0] = 0, a.shape[0]
    todo = 1
    done = 0
    while todo:
        todo -= 1
        lo, n = los[todo], ns[todo]
        if n < 0:
            done -= 1
            sums[done - 1] += sums[done]
        elif n <= _BLOCK:
            sums[done] = _run(a, lo, n)
            done += 1
        else:
            half = _half(n)
            # Popped in reverse: the first half, the second, then their addition.
            los[todo], ns[todo] = 0, -1
            los[todo + 1], ns[todo + 1] = lo + half, n - half
            los[todo + 2], ns[todo + 2] = lo, half
            todo += 3
    return sums[0]


@kernel
def pairwise_sum(a):
    """``a.sum()`` of a C-contiguous array of any shape, rounded as numpy rounds it."""
    flat = a.reshape(a.size)
    return 0.0 + _pairwise(flat)


@kernel(inline=True)
def row_sum(a):
    """``a.sum()`` of ``a [n] float64``, rounded as numpy rounds it, compiled into its caller: a
    kernel summing many short rows (a rank's few slots) spends more on a call per row than on
    its sum."""
    n = a.shape[0]
    return 0.0 + (_run(a, 0, n) if n <= _BLOCK else _pairwise(a))


@kernel
def column_sum(W):
    """``W.sum(axis=0)`` of ``W [K, E] float64``, rounded as numpy rounds it (for ``E > 1``;
    a single column numpy sums pairwise)."""
    out = W[0].copy()
    for k in range(1, W.shape[0]):
        out += W[k]
    return out


@kernel
def column_mean(W):
    """``W.mean(axis=0)`` of ``W [K, E] float64``, rounded as numpy rounds it (as
    :func:`column_sum`)."""
    return column_sum(W) / W.shape[0]


@kernel
def column_std(W):
    """``W.std(axis=0)`` of ``W [K, E] float64``, rounded as numpy rounds it (``E > 1``)."""
    mean = column_mean(W)
    d = W[0] - mean
    out = d * d
    for k in range(1, W.shape[0]):
        d = W[k] - mean
        out += d * d
    return np.sqrt(out / W.shape[0])
