"""The reference model's shapes (eplb_rt/models/moe.py)."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.models.moe import MoEConfig


def test_counts_computed_from_arrays_are_stored_as_python_ints():
    cfg = MoEConfig(num_layers=np.int64(2), num_experts=np.int32(8), top_k=np.uint8(2))
    assert (cfg.num_layers, cfg.num_experts, cfg.top_k) == (2, 8, 2)
    assert all(type(v) is int for v in (cfg.num_layers, cfg.num_experts, cfg.top_k))


@pytest.mark.parametrize(
    ("field", "value"), [("num_layers", 0), ("top_k", 2.0), ("hidden", True), ("ffn", -4)]
)
def test_bad_counts_are_named(field, value):
    said = rf"^MoEConfig\.{field} must be an integer >= 1, got {value!r}$"
    with pytest.raises(ValueError, match=said):
        MoEConfig(**{field: value})


def test_top_k_above_the_experts_is_refused():
    with pytest.raises(ValueError, match=r"top_k \(9\) exceeds num_experts \(8\)"):
        MoEConfig(num_experts=8, top_k=9)
