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
