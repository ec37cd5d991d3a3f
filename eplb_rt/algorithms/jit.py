"""The one way eplb_rt compiles a numba kernel: :func:`kernel`, so every kernel gets the same flags.

* ``cache=True``: compiled once and saved; the build ships the saved kernels in the package
  (:mod:`eplb_rt.algorithms.kernel_cache`).
* ``nogil=True``: the balancer plans in a thread beside the serving one.
* ``error_model="numpy"``: a division by zero gives ``inf`` or ``NaN``, as numpy's does, instead
  of raising ``ZeroDivisionError``. Under Python's model every division carries a branch that
  raises, and numba then keeps the reference counts it takes on a kernel's array arguments
  (atomic operations at every call) instead of pruning them: in the move walks, whose kernels
  are called once per candidate move and row, that was nearly half the time. No kernel divides
  by zero on purpose or relies on the exception.
"""

from __future__ import annotations

from numba import njit

_FLAGS = {"cache": True, "nogil": True, "error_model": "numpy"}


def kernel(fn=None, *, inline: bool = False):
    """Compile ``fn`` as a numba kernel (``@kernel``); ``@kernel(inline=True)`` inlines it into
    every kernel that calls it (numba's ``inline="always"``: the callee's code is compiled into
    each caller, and a Python caller gets its own copy)."""
    flags = dict(_FLAGS, inline="always") if inline else _FLAGS
    if fn is None:
        return njit(**flags)
    return njit(**flags)(fn)
