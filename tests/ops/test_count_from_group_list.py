"""count_from_group_list: exact agreement with the reference, errors, opcheck."""

from __future__ import annotations

import pytest
import torch

from eplb_rt import ops
from tests import reference
from tests.ops.helpers import heat_ring_view


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("cumulative", [False, True], ids=["plain", "cumulative"])
@pytest.mark.parametrize(("s_local", "offset", "num_slots"), [(0, 0, 5), (1, 0, 1), (7, 14, 21)])
def test_matches_reference(dtype, cumulative, s_local, offset, num_slots):
    gen = torch.Generator().manual_seed(s_local + offset)
    counts = torch.randint(0, 50, (s_local,), generator=gen)
    group_list = (counts.cumsum(0) if cumulative else counts).to(dtype)
    ring, heat = heat_ring_view(3, 2, num_slots, layer=1, seed=4)
    before = ring.clone()
    heat_ref = heat.clone()
    step = torch.tensor([7], dtype=torch.int64)  # beyond H = 3: row 1
    reference.count_from_group_list(group_list, heat_ref, step, offset, cumulative)
    ops.count_from_group_list(group_list, heat, step, offset, cumulative)
    assert torch.equal(heat, heat_ref)
    diff = ring - before
    assert torch.equal(diff[1, 1, offset : offset + s_local], counts.to(torch.int32))
    assert int(diff.abs().sum()) == int(counts.sum())


def _valid_args():
    return {
        "group_list": torch.tensor([3, 0, 5], dtype=torch.int64),
        "heat": torch.zeros((2, 6), dtype=torch.int32),
        "step": torch.tensor([3], dtype=torch.int64),
        "slot_offset": 3,
        "cumulative": False,
    }


BAD_INPUTS = {
    "negative count": ({"group_list": torch.tensor([3, -1, 5])}, "group_list"),
    "decreasing prefix sums": (
        {"group_list": torch.tensor([3, 2, 5]), "cumulative": True},
        "group_list",
    ),
    "past the last slot": ({"slot_offset": 4}, "slot_offset"),
    "negative offset": ({"slot_offset": -1}, "slot_offset"),
    "float group_list": ({"group_list": torch.ones(3)}, "group_list"),
    "2-d group_list": ({"group_list": torch.ones((3, 1), dtype=torch.int64)}, "group_list"),
    "int64 heat": ({"heat": torch.zeros((2, 6), dtype=torch.int64)}, "heat"),
    "int32 step": ({"step": torch.tensor([3], dtype=torch.int32)}, "step"),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_and_writes_nothing(case):
    edits, name = case
    args = {**_valid_args(), **edits}
    heat_before = args["heat"].clone()
    with pytest.raises(RuntimeError, match=name):
        torch.ops.eplb_rt.count_from_group_list(**args)
    assert torch.equal(args["heat"], heat_before)


def test_a_difference_past_int64_is_refused_with_its_entries():
    """The difference of two int64 entries may not fit int64: the error names both entries
    (not their wrapped difference, which read as a large count) and nothing is written."""
    args = {**_valid_args(), "group_list": torch.tensor([0, 5, -(2**63)]), "cumulative": True}
    with pytest.raises(RuntimeError, match="for i = 2 is -9223372036854775808 - 5, a token count"):
        torch.ops.eplb_rt.count_from_group_list(**args)
    assert not args["heat"].any()


@pytest.mark.parametrize("cumulative", [False, True], ids=["plain", "cumulative"])
def test_opcheck(cumulative):
    args = _valid_args()
    if cumulative:
        args["group_list"] = args["group_list"].cumsum(0)
    torch.library.opcheck(
        torch.ops.eplb_rt.count_from_group_list.default,
        (args["group_list"], args["heat"], args["step"], args["slot_offset"], cumulative),
    )


def test_an_offset_near_2_63_is_refused_and_nothing_is_written():
    """offset + S_local would wrap to a negative number in a check that adds them, and the
    counts land before the row (here in the ring's row before it)."""
    ring = torch.zeros((2, 4), dtype=torch.int32)
    group_list = torch.tensor([5, 6], dtype=torch.int32)
    step = torch.tensor([0])
    for offset in (2**63 - 2, 2**63 - 1, 5):
        with pytest.raises(RuntimeError, match="slot_offset \\+ S_local must be <= P = 4"):
            ops.count_from_group_list(group_list, ring[1:], step, offset)
    assert not ring.any()


def test_counts_read_from_the_heat_itself_are_refused():
    heat = torch.tensor([[1, 3, 6, 10]], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="heat must not share memory with group_list"):
        ops.count_from_group_list(heat[0], heat, torch.tensor([0]), 0, cumulative=True)
    ring = torch.zeros((2, 4), dtype=torch.int32)
    step = ring.view(torch.int64)[1, :1]  # the step counter in the heat's own memory
    with pytest.raises(RuntimeError, match="heat must not share memory with step"):
        ops.count_from_group_list(torch.tensor([1]), ring, step, 0)
    assert torch.equal(heat, torch.tensor([[1, 3, 6, 10]], dtype=torch.int32)) and not ring.any()


def test_overlapping_heat_rows_are_refused():
    # An expanded row: every row is the same memory, so a count would land once per row.
    heat = torch.zeros((1, 4), dtype=torch.int32).expand(3, 4)
    with pytest.raises(RuntimeError, match=r"heat rows must not overlap \(row stride >= P\)"):
        ops.count_from_group_list(torch.tensor([1, 2]), heat, torch.tensor([0]), 0)
    assert not heat.any()
