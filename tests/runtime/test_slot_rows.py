"""A slot's bytes (``executor.slot_rows``): the layouts engines hold weights in."""

from __future__ import annotations

import pytest
import torch

from eplb_rt.runtime.device import Device
from eplb_rt.runtime.executor import MigrationExecutor, slot_rows


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


def _executor() -> MigrationExecutor:
    """One rank's executor, without a process group."""
    return MigrationExecutor(Device("cpu"), rank=0, ranks=[0], group=None, lanes=1, timeout_s=5)


def _described(tensors: dict[str, torch.Tensor]) -> tuple[str, int]:
    executor = _executor()
    executor.register(0, tensors, 4)
    return executor.describe(0), executor.signature


def test_ranks_agree_on_the_bytes_a_slot_moves_not_only_its_elements():
    """A padded slice and a tensor of the same slot shape fill rows of 36 and 28 bytes: they
    passed as one layout, and gloo aborted the process at the transfer."""
    padded = _described({"w": torch.zeros(4, 9)[:, :7]})
    dense = _described({"w": torch.zeros(4, 7)})
    assert padded[0] == "w (7,) float32 strides (1,) 36 bytes"
    assert dense[0] == "w (7,) float32 strides (1,) 28 bytes"
    assert padded[1] != dense[1]


def test_the_stride_of_a_dimension_of_size_one_is_no_difference():
    """It places nothing: the same bytes, which ranks took for different weights (no plan
    migrated)."""
    transposed = _described({"w": torch.zeros(4, 7, 1).transpose(1, 2)})  # strides (7, 1, 1)
    plain = _described({"w": torch.zeros(4, 1, 7)})  # strides (7, 7, 1)
    assert transposed == plain and plain[0] == "w (1, 7) float32 strides (-, 1) 28 bytes"


def test_the_halves_of_a_fused_tensor_are_named_as_views_of_it():
    w13 = torch.zeros(4, 10)
    executor = _executor()
    with pytest.raises(ValueError, match="'w3' and 'w1' are views of one tensor: register that"):
        executor.register(0, {"w1": w13[:, :5], "w3": w13[:, 5:]}, 4)
    assert executor.weights == {} and executor.signature == 0


def test_empty_tensors_of_any_strides_are_one_layout():
    """No element, no byte a slot: their strides place nothing (they blocked every plan)."""
    a = _described({"w": torch.zeros(4, 0, 5)})
    b = _described({"w": torch.zeros(4, 5, 0).transpose(1, 2)})
    assert a == b and a[0] == "w (0, 5) float32 strides (-, -) 0 bytes"


def test_unrelated_tensors_of_one_arena_are_not_called_views_of_one_tensor():
    arena = torch.zeros(200)
    good = arena[:40].view(4, 10)
    interleaved = arena[100:140].view(10, 4).t()  # [4, 10]: its slots interleave
    executor = _executor()
    with pytest.raises(ValueError, match="does not hold each slot as one block") as err:
        executor.register(0, {"a": good, "b": interleaved}, 4)
    assert "views of one tensor" not in str(err.value)
