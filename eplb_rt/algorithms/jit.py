"""The one way eplb_rt compiles a numba kernel: :func:`kernel`, so every kernel gets the same flags.

* ``cache=True``: compiled once and saved; the build ships the saved kernels in the package
  (:mod:`eplb_rt.algorithms.kernel_cache`).
* ``nogil=True``: the balancer plans in a thread beside the serving one.
* ``error_model="numpy"``: a division by zero gives ``inf`` or ``NaN``, as numpy's does, instead
  of raising ``ZeroDivisionError``. numba takes a reference on each array argument when a
  kernel starts (an atomic operation, and another to drop it), and prunes the pair only where
  no branch can leave the kernel early. Under Python's model every division carries a branch
  that raises: in the move walks, whose kernels are called once per candidate move and row,
  those references were nearly half the time. No kernel divides by zero on purpose or relies
  on the exception. The same holds for a call of a kernel that may raise (``max()`` of an empty
  array) and for a view of a row (a new reference): the walks' small kernels read rows by index
  and inline the rare full scores they fall back to.
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
