"""A slot's bytes (``executor.slot_rows``): the layouts engines hold weights in."""

from __future__ import annotations

import pytest
import torch

from eplb_rt.runtime.executor import slot_rows


def _slots_as_bytes(tensor: torch.Tensor) -> list[bytes]:
    """Each slot's elements, in its own order, as bytes (the reference)."""
    flat = [tensor[i].contiguous().reshape(-1) for i in range(tensor.shape[0])]
    return [bytes(f.view(torch.uint8).tolist()) for f in flat]


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.arange(15.0).view(5, 3),
        lambda: torch.arange(7, dtype=torch.int16),  # [S]: one element a slot
        lambda: torch.arange(2 * 5 * 3.0).view(2, 5, 3)[1],  # one layer of a stacked tensor
        lambda: torch.zeros(4, 0, 3),
        lambda: torch.arange(4.0).view(1, 4),  # one slot: any stride
    ],
    ids=["contiguous", "1-d", "slice", "empty", "one-slot"],
)
def test_rows_are_each_slots_bytes(make):
    tensor = make()
    rows = slot_rows("w", tensor)
    assert rows.dtype == torch.uint8 and rows.is_contiguous()
    assert [bytes(r.tolist()) for r in rows] == _slots_as_bytes(tensor)
    if tensor.numel():
        assert rows.data_ptr() == tensor.data_ptr()


def test_a_column_major_padded_slot_moves_with_its_padding():
    padded = torch.arange(4 * 3 * 8.0).view(4, 3, 8)  # [slot, m, n padded to 8]
    blocks = padded[:, :, :6].transpose(1, 2)  # [slot, n, m]: column-major, padded
    rows = slot_rows("scale", blocks)
    assert rows.shape == (4, 3 * 8 * 4) and rows.data_ptr() == blocks.data_ptr()
    rows[0] = rows[2]  # a slot rewritten through its row
    assert torch.equal(blocks[0], blocks[2]) and torch.equal(padded[0], padded[2])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: torch.zeros(2, 5).t(), "one block of memory"),  # slots interleave
        (lambda: torch.zeros(1, 6).expand(4, 6), "one block of memory"),  # one block, 4 slots
        # Rows padded to 8, but the storage ends where the last slot does.
        (lambda: torch.zeros(3 * 8 + 6).as_strided((4, 6), (8, 1)), "storage ends"),
    ],
    ids=["transposed", "expanded", "unpadded-end"],
)
def test_layouts_without_a_block_a_slot_are_refused(make, match):
    tensor = make()
    with pytest.raises(ValueError, match=match):
        slot_rows("w", tensor)
