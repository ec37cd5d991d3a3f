"""What counts as a number where eplb_rt takes one: Python and numpy scalars alike (a value
computed from arrays is a numpy one), never a bool. Torch-free."""

from __future__ import annotations

import math

import numpy as np


def is_bool(value: object) -> bool:
    """A Python or numpy bool."""
    return isinstance(value, (bool, np.bool_))


def is_integer(value: object) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not is_bool(value)


def is_real(value: object) -> bool:
    """A Python or numpy integer or float, not a bool (NaN and inf too: callers bound it)."""
    real = isinstance(value, (int, float, np.integer, np.floating))
    return real and not is_bool(value)


def as_float(value: object) -> float:
    """A real number (:func:`is_real`) as a float; an int past the float range as +-inf (the
    bound it breaks), not an ``OverflowError``."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def check_count(name: str, value: object, low: int = 1, *, optional: bool = False) -> int | None:
    """``value`` as a Python int where it is an integer (:func:`is_integer`) ``>= low`` (or
    ``None`` where ``optional``), else a ``ValueError`` naming ``name``. The one check of a count
    argument (ranks, layers, experts, steps): a float would be truncated, a bool is not a
    count, a numpy integer computed from arrays is one (returned as a Python int: kernels type a
    numpy uint64 as float)."""
    if value is None and optional:
        return None
    if not (is_integer(value) and value >= low):
        or_none = " or None" if optional else ""
        raise ValueError(f"{name} must be an integer >= {low}{or_none}, got {value!r}")
    return int(value)


def check_divisor(name: str, value: object, total: int, what: str) -> int:
    """:func:`check_count` of ``value``, which must also divide ``total`` (``what`` names it in
    the message, e.g. ``"num_ranks (8)"``)."""
    if not (is_integer(value) and value >= 1 and total % value == 0):
        raise ValueError(f"{name} must be an integer >= 1 dividing {what}, got {value!r}")
    return int(value)
