"""What counts as a number, and the one check of a count argument (eplb_rt/scalars.py)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from eplb_rt.scalars import as_float, check_count, check_divisor, is_integer, is_real


@pytest.mark.parametrize("value", [0, 7, -3, np.int8(2), np.uint64(5), 2**70])
def test_integers(value):
    assert is_integer(value) and is_real(value)


@pytest.mark.parametrize("value", [True, np.bool_(False), 2.0, np.float32(1), "3", None])
def test_not_integers(value):
    assert not is_integer(value)


def test_as_float_bounds_huge_ints():
    assert as_float(10**400) == math.inf and as_float(-(10**400)) == -math.inf
    assert as_float(np.int64(3)) == 3.0


@pytest.mark.parametrize(("value", "low"), [(1, 1), (np.int64(9), 1), (0, 0), (np.uint64(2), 2)])
def test_check_count_returns_a_python_int(value, low):
    out = check_count("num_ranks", value, low)
    assert type(out) is int and out == value


@pytest.mark.parametrize("value", [0, -1, 1.0, 2.5, True, np.bool_(True), "4", None, np.float64(3)])
def test_check_count_names_the_argument_and_the_value(value):
    with pytest.raises(
        ValueError, match=rf"^num_ranks must be an integer >= 1, got {re.escape(repr(value))}$"
    ):
        check_count("num_ranks", value)


def test_check_count_takes_a_lower_bound():
    assert check_count("steps", 0, 0) == 0
    with pytest.raises(ValueError, match=r"^history must be an integer >= 2, got 1$"):
        check_count("history", 1, 2)


def test_check_count_optional():
    assert check_count("num_experts", None, optional=True) is None
    with pytest.raises(ValueError, match=r"^num_experts must be an integer >= 1 or None, got 0$"):
        check_count("num_experts", 0, optional=True)
    with pytest.raises(ValueError, match=r"^num_experts must be an integer >= 1, got None$"):
        check_count("num_experts", None)


def test_check_divisor():
    assert check_divisor("num_nodes", np.int32(4), 8, "num_ranks (8)") == 4
    for value in (3, 0, 16, 2.0, True):
        got = re.escape(repr(value))
        said = rf"^num_nodes must be an integer >= 1 dividing num_ranks \(8\), got {got}$"
        with pytest.raises(ValueError, match=said):
            check_divisor("num_nodes", value, 8, "num_ranks (8)")
