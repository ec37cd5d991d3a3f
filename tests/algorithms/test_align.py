"""Ranks relabelled to keep a placement in place (:mod:`eplb_rt.algorithms.align`): bad rows."""

import numpy as np
import pytest

from eplb_rt.algorithms.align import align_row


def test_align_row_keeps_what_it_can_on_an_odd_shape():
    previous = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3])  # 3 ranks x 3 slots, 5 experts
    new = np.array([3, 4, 0, 0, 1, 2, 1, 2, 3])  # the previous ranks, relabelled
    row, share = align_row(new, previous, 3, 5)
    assert share is None
    assert sorted(map(sorted, row.reshape(3, 3).tolist())) == sorted(
        map(sorted, new.reshape(3, 3).tolist())
    )
    assert [set(r) for r in row.reshape(3, 3)] == [set(r) for r in previous.reshape(3, 3)]


@pytest.mark.parametrize(
    ("new", "previous", "ranks", "experts", "match"),
    [
        ([0, 1, 2, 3, 0, 1], [0, 1], 2, 4, r"differ in shape: \(2,\) against \(6,\)"),
        ([0, 1, 2, 3], [0, 1, 2, 3], 3, 4, "dividing 4 slots, got 3"),
        ([0, 1, 2, 4], [0, 1, 2, 3], 2, 4, r"new_row\[3\] = 4 must be an expert id in \[0, 4\)"),
        ([0, 1, 2, 3], [-1, 1, 2, 3], 2, 4, r"prev_row\[0\] = -1 must be an expert id"),
        ([[0, 1, 2, 3]], [[0, 1, 2, 3]], 2, 4, r"must be a \[P\] slot table"),
        ([0, 1, 2, 3], [0, 1, 2, 3], 2, 0, "num_experts must be an integer >= 1, got 0"),
    ],
)
def test_align_row_refuses_rows_it_would_read_past(new, previous, ranks, experts, match):
    with pytest.raises(ValueError, match=match):
        align_row(np.array(new), np.array(previous), ranks, experts)
