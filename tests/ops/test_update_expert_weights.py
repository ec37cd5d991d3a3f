"""update_expert_weights_: exact agreement with the reference, errors, opcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eplb_rt import ops
from tests import reference

# One layer's weights on a rank: w13, w2 (bf16), int8 quantised weights and float scales, and
# a tensor of empty rows (no memory at all: its slots are skipped, never copied from null).
TRAILING = [
    ((6, 4), torch.bfloat16),
    ((4, 3), torch.bfloat16),
    ((5,), torch.int8),
    ((), torch.float32),
    ((0, 3), torch.bfloat16),
]


def _layer(num_slots: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn((num_slots, *shape), generator=gen) * 50).to(dtype)
        for shape, dtype in TRAILING
    ]


@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize(
    ("num_slots", "slots"), [(1, [0]), (5, []), (7, [6, 0, 3]), (3, [2, 1, 0])]
)
def test_matches_reference(slot_dtype, num_slots, slots):
    weights = _layer(num_slots, seed=1)
    staged = [w[: len(slots)].clone() + 1 for w in _layer(len(slots), seed=2)]
    slots_t = torch.tensor(slots, dtype=slot_dtype)
    expected = [w.clone() for w in weights]
    reference.update_expert_weights_(expected, staged, slots_t)
    ops.update_expert_weights_(weights, staged, slots_t)
    for got, want in zip(weights, expected, strict=True):
        assert torch.equal(got, want)


def test_large_copy_runs_in_parallel_and_matches():
    weights = [torch.randn((16, 256, 128)), torch.randint(-128, 127, (16, 512), dtype=torch.int8)]
    staged = [torch.randn((9, 256, 128)), torch.randint(-128, 127, (9, 512), dtype=torch.int8)]
    slots = torch.tensor([15, 0, 7, 3, 8, 1, 12, 5, 2])
    expected = [w.clone() for w in weights]
    reference.update_expert_weights_(expected, staged, slots)
    ops.update_expert_weights_(weights, staged, slots)
    for got, want in zip(weights, expected, strict=True):
        assert torch.equal(got, want)


def test_empty_lists_do_nothing():
    ops.update_expert_weights_([], [], torch.zeros(0, dtype=torch.int64))
    ops.update_expert_weights_([], [], torch.tensor([3, 0], dtype=torch.int32))


@pytest.mark.parametrize(
    ("slots", "match"),
    [([2, -7], r"slots\[1\] = -7 must be a local slot \(>= 0\)"), ([5, 1, 5], "both slot 5")],
)
def test_empty_lists_still_check_what_the_slots_say(slots, match):
    """Without weights no slot is out of range, but a negative or repeated one is wrong."""
    with pytest.raises(RuntimeError, match=match):
        ops.update_expert_weights_([], [], torch.tensor(slots))


def _valid_args():
    return {
        "weights": [torch.zeros((4, 3)), torch.zeros((4, 2), dtype=torch.int8)],
        "staged": [torch.ones((2, 3)), torch.ones((2, 2), dtype=torch.int8)],
        "slots": torch.tensor([1, 3]),
    }


BAD_INPUTS = {
    "slot out of range": ({"slots": torch.tensor([1, 4])}, "slots"),
    "negative slot": ({"slots": torch.tensor([-1, 2])}, "slots"),
    "repeated slot": ({"slots": torch.tensor([2, 2])}, "slots"),
    "float slots": ({"slots": torch.tensor([1.0, 3.0])}, "slots"),
    "fewer staged tensors": ({"staged": [torch.ones((2, 3))]}, "staged"),
    "staged dtype": (
        {"staged": [torch.ones((2, 3)), torch.ones((2, 2), dtype=torch.int16)]},
        "staged",
    ),
    "staged trailing shape": (
        {"staged": [torch.ones((2, 4)), torch.ones((2, 2), dtype=torch.int8)]},
        "staged",
    ),
    "staged rows != len(slots)": (
        {"staged": [torch.ones((3, 3)), torch.ones((3, 2), dtype=torch.int8)]},
        "staged",
    ),
    "strided weight": (
        {"weights": [torch.zeros((3, 4)).t(), torch.zeros((4, 2), dtype=torch.int8)]},
        "weights",
    ),
    "different slot counts": (
        {"weights": [torch.zeros((4, 3)), torch.zeros((5, 2), dtype=torch.int8)]},
        "weights",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_and_writes_nothing(case):
    edits, name = case
    args = {**_valid_args(), **edits}
    before = [w.clone() for w in args["weights"]]
    with pytest.raises(RuntimeError, match=name):
        torch.ops.eplb_rt.update_expert_weights_(**args)
    for got, want in zip(args["weights"], before, strict=True):
        assert torch.equal(got, want)


def test_opcheck():
    args = _valid_args()
    torch.library.opcheck(
        torch.ops.eplb_rt.update_expert_weights_.default,
        (args["weights"], args["staged"], args["slots"]),
    )


def test_staged_experts_in_the_memory_of_the_weights_are_refused():
    """A staged expert read while the copy overwrites it: the result would depend on the copy's
    order (and an overlapping memcpy is undefined)."""
    weight = torch.arange(8.0).view(4, 2)
    other = torch.zeros((4, 3))
    for weights, staged in (
        ([weight], [weight[0:2]]),
        ([weight, other], [torch.ones((2, 2)), other[1:3]]),  # another tensor of the layer
    ):
        before = [w.clone() for w in weights]
        with pytest.raises(RuntimeError, match="a weight tensor must not share memory with"):
            ops.update_expert_weights_(weights, staged, torch.tensor([1, 2]))
        assert all(torch.equal(w, b) for w, b in zip(weights, before, strict=True))
    slots = torch.tensor([1, 2])
    with pytest.raises(RuntimeError, match="must not share memory with slots"):
        ops.update_expert_weights_(
            [slots.view(2, 1)], [torch.ones((1, 1), dtype=torch.int64)], slots[1:]
        )


def test_staged_experts_in_the_weights_memory_under_another_storage_are_refused():
    """Two ``from_numpy`` of one array: two storages over the same bytes, which torch's own
    overlap test does not compare."""
    memory = np.arange(8.0, dtype=np.float32)
    weight = torch.from_numpy(memory).view(4, 2)
    staged = torch.from_numpy(memory[2:6]).view(2, 2)
    with pytest.raises(RuntimeError, match="a weight tensor must not share memory with"):
        ops.update_expert_weights_([weight], [staged], torch.tensor([1, 2]))
    assert np.array_equal(memory, np.arange(8.0))


def test_copy_on_write_weights_are_updated_past_the_serial_size():
    """A lazily cloned weight materialises its storage when written: on the calling thread, not
    inside the parallel copy (torch forbids it there)."""
    source = torch.randn(64, 131072)
    weight = torch._lazy_clone(source)
    staged = torch.randn(3, 131072)  # 1.5 MiB staged: the copies run in parallel
    ops.update_expert_weights_([weight], [staged], torch.tensor([5, 0, 63]))
    assert torch.equal(weight[[5, 0, 63]], staged)
    assert torch.equal(weight[1:5], source[1:5]) and not torch.equal(source[5], staged[0])


def test_a_lazily_cloned_weight_takes_experts_staged_from_its_source():
    """Until written, a lazy clone shares its source's bytes under another storage: it is not
    the source's memory the copy writes."""
    source = torch.arange(12.0).view(4, 3)
    weight = torch._lazy_clone(source)
    ops.update_expert_weights_([weight], [source[2:4]], torch.tensor([0, 1]))
    assert torch.equal(weight[:2], source[2:4]) and torch.equal(weight[2:], source[2:])
    assert torch.equal(source, torch.arange(12.0).view(4, 3))


def test_weight_tensors_in_one_memory_are_refused():
    """Two weight tensors over the same memory: which staged expert lands would depend on the
    order of the copies. Views of one buffer that do not overlap are fine."""
    buffer = torch.zeros(24)
    weights = [buffer[:12].view(4, 3), buffer[6:18].view(4, 3)]
    staged = [torch.ones(1, 3), torch.full((1, 3), 2.0)]
    with pytest.raises(RuntimeError, match="must not share memory with another weight tensor"):
        ops.update_expert_weights_(weights, staged, torch.tensor([1]))
    assert not buffer.any()
    apart = [buffer[:12].view(4, 3), buffer[12:].view(4, 3)]
    ops.update_expert_weights_(apart, staged, torch.tensor([1]))
    assert torch.equal(buffer[3:6], torch.ones(3))
    assert torch.equal(buffer[15:18], torch.full((3,), 2.0))


def test_the_slot_check_takes_memory_in_moves_not_slots():
    """A slot dimension far beyond memory (a weight of zero bytes a slot) with nothing to move
    is checked as any other: the duplicate check sorts the M slots, it does not mark S."""
    ops.update_expert_weights_(
        [torch.empty(2**40, 0)], [torch.empty(0, 0)], torch.tensor([], dtype=torch.int64)
    )
    with pytest.raises(RuntimeError, match=r"slots\[0\] and slots\[2\] are both slot 5"):
        ops.update_expert_weights_(
            [torch.empty(2**40, 0)], [torch.empty(3, 0)], torch.tensor([5, 7, 5])
        )


def test_a_mismatched_staged_shape_names_the_shape_expected():
    with pytest.raises(RuntimeError, match=r"staged\[0\] must have shape \[M, \.\.\.\] = \[2, 3\]"):
        ops.update_expert_weights_([torch.zeros(4, 3)], [torch.ones(2, 4)], torch.tensor([0, 1]))


def test_a_tensor_in_an_npu_tiled_format_is_refused(monkeypatch):
    """FRACTAL_NZ (29, what vllm-ascend casts MoE weights to) stores a slot's weights tiled and
    padded across slots: the byte copy would move the wrong bytes. (No NPU here: the format is
    what torch_npu would report.) Refused with nothing written."""
    weight, staged = torch.zeros(4, 3), torch.ones(1, 3)
    for tiled, name in ((staged, r"staged\[0\]"), (weight, r"weights\[0\]")):
        monkeypatch.setattr(ops, "npu_format", lambda t, tiled=tiled: 29 if t is tiled else 2)
        with pytest.raises(ValueError, match=f"{name} is stored in NPU format 29, expected"):
            ops.update_expert_weights_([weight], [staged], torch.tensor([1]))
        assert not weight.any()
    monkeypatch.setattr(ops, "npu_format", lambda t: 2)
    ops.update_expert_weights_([weight], [staged], torch.tensor([1]))
    assert weight[1].tolist() == [1.0, 1.0, 1.0]
