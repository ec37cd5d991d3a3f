"""Fuzzing the four ops' arguments (CPU backend): any input gets either the result of
tests/reference.py or one of our error messages (naming the op), never a crash or another error,
and a rejected call leaves every buffer it could write unchanged.

Sizes are tiny and values are drawn around the edges of every range (one past the end, -1, -2,
NaN, a wrong dtype or shape), so a few hundred examples per op reach every check. Deterministic
(``derandomize``): the same examples on every run.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from eplb_rt import ops
from tests import reference

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
OURS = re.compile(
    r"^(route_and_count|count_from_group_list|update_expert_weights_|update_expert_map_): "
)
INDEX_DTYPES = [torch.int32, torch.int64]
MOSTLY_INT32 = [torch.int32] * 5 + [torch.int64]  # a wrong dtype now and then


def ints(draw, shape, low, high, dtype):
    """A tensor of `shape` with values drawn from [low, high] (edges included)."""
    n = 1
    for d in shape:
        n *= d
    values = draw(st.lists(st.integers(low, high), min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.int64).reshape(shape).to(dtype)


def floats(draw, shape):
    n = shape[0] * shape[1]
    edge = st.sampled_from([0.0, 1.0, 0.5, -0.25, float("nan"), float("inf")])
    values = draw(st.lists(st.one_of(st.floats(0, 1, width=32), edge), min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def call(fn, buffers):
    """Runs fn(); on a rejection checks our message and that `buffers` are unchanged.
    Returns True when the call succeeded."""
    before = [b.clone() for b in buffers]
    try:
        fn()
    except RuntimeError as exc:
        assert OURS.match(str(exc)), f"not one of our messages: {exc}"
        event("rejected")  # --hypothesis-show-statistics: both outcomes must be common
        for b, kept in zip(buffers, before, strict=True):
            assert torch.equal(b, kept) or (b.is_floating_point() and b.isnan().equal(kept.isnan()))
        return False
    event("accepted")
    return True


@st.composite
def route_args(draw):
    e, r, p = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 7))
    n, k, h = draw(st.integers(0, 5)), draw(st.integers(0, 3)), draw(st.integers(1, 3))
    id_dtype = draw(st.sampled_from(INDEX_DTYPES))
    args = {
        "topk_ids": ints(draw, (n, k), -2, e, id_dtype),
        "log2phy": ints(draw, (e, r), -2, p, draw(st.sampled_from(MOSTLY_INT32))),
        "logcnt": ints(draw, (draw(st.sampled_from([e, e, e, e + 1])),), 0, r + 1, torch.int32),
        "heat": ints(draw, (h, p), 0, 9, draw(st.sampled_from(MOSTLY_INT32))),
        "step": torch.tensor([draw(st.integers(-3, 2**33))]),
        "replica_share": draw(st.sampled_from([None, "share"])),
    }
    if args["replica_share"] == "share":
        share = floats(draw, (e, r))
        if draw(st.booleans()):
            # Rows that split the tokens (zeros among them), as tables hold them: the rest are
            # refused, these reach the reference.
            share = share.nan_to_num(0.0, 0.0, 0.0).clamp(min=0.0)
            share[share.sum(dim=1) == 0, 0] = 1.0
            share = share / share.sum(dim=1, keepdim=True)
        args["replica_share"] = share
    out_dtype = draw(st.sampled_from([id_dtype] * 5 + [torch.int32, torch.int64]))
    args["out"] = torch.full((n, k), -7, dtype=out_dtype)
    return args


@FUZZ
@given(route_args())
def test_route_and_count_fuzz(args):
    heat_ref = args["heat"].clone()
    ok = call(lambda: ops.route_and_count(**args), [args["heat"], args["out"]])
    if ok:
        want = reference.route_and_count(
            args["topk_ids"],
            args["log2phy"],
            args["logcnt"],
            heat_ref,
            args["step"],
            replica_share=args["replica_share"],
        )
        assert torch.equal(args["out"], want)
        assert torch.equal(args["heat"], heat_ref)


@st.composite
def group_args(draw):
    s, p, h = draw(st.integers(0, 5)), draw(st.integers(1, 7)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([*INDEX_DTYPES, torch.int32, torch.float32]))
    return {
        "group_list": ints(draw, (s,), -2, 2**31 + 1, torch.int64).to(dtype),
        "heat": ints(draw, (h, p), 0, 9, torch.int32),
        "step": torch.tensor([draw(st.integers(-3, 100))]),
        "slot_offset": draw(st.integers(-1, p)),
        "cumulative": draw(st.booleans()),
    }


@FUZZ
@given(group_args())
def test_count_from_group_list_fuzz(args):
    heat_ref = args["heat"].clone()
    if call(lambda: ops.count_from_group_list(**args), [args["heat"]]):
        reference.count_from_group_list(**{**args, "heat": heat_ref})
        assert torch.equal(args["heat"], heat_ref)


@st.composite
def weight_args(draw):
    s, m = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    weights, staged = [], []
    for _ in range(draw(st.integers(0, 2))):
        dtype = draw(st.sampled_from([torch.int8, torch.float32, torch.bfloat16]))
        width = draw(st.integers(0, 5))
        weights.append(torch.arange(s * width).reshape(s, width).to(dtype))
        staged_rows = draw(st.sampled_from([m, m, m, m + 1]))
        staged_dtype = draw(st.sampled_from([dtype] * 5 + [torch.float16]))
        rows = (100 + torch.arange(staged_rows * width)).reshape(staged_rows, width)
        staged.append(rows.to(staged_dtype))
    if draw(st.integers(0, 9)) == 0:
        staged = staged[:-1]
    slots = ints(draw, (m,), -1, s, draw(st.sampled_from(INDEX_DTYPES)))
    return weights, staged, slots


@FUZZ
@given(weight_args())
def test_update_expert_weights_fuzz(args):
    weights, staged, slots = args
    want = [w.clone() for w in weights]
    if call(lambda: ops.update_expert_weights_(weights, staged, slots), weights):
        reference.update_expert_weights_(want, staged, slots)
        for got, expected in zip(weights, want, strict=True):
            assert torch.equal(got, expected)


@st.composite
def map_args(draw):
    e, r, p = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 7))
    # Mostly valid new tables (each expert 1..R distinct slots, shares summing to 1), then pokes.
    cnt = [draw(st.integers(1, min(r, p))) for _ in range(e)]
    new_l2p = torch.full((e, r), -1, dtype=torch.int32)
    new_share = torch.zeros((e, r))
    for i, c in enumerate(cnt):
        new_l2p[i, :c] = torch.tensor(draw(st.permutations(range(p)))[:c], dtype=torch.int32)
        new_share[i, :c] = 1.0 / c
    slots = draw(st.permutations(range(p + e)))  # the expert map's distinct local slots
    new = {
        "new_log2phy": new_l2p,
        "new_logcnt": torch.tensor(cnt, dtype=torch.int32),
        "new_replica_share": new_share,
        "new_expert_map": torch.tensor(
            [s if s < p and draw(st.booleans()) else -1 for s in slots[:e]], dtype=torch.int32
        ),
    }
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(sorted(new)))
        flat = new[name].reshape(-1)
        i = draw(st.integers(0, flat.numel() - 1))
        if flat.is_floating_point():
            flat[i] = draw(st.sampled_from([-0.5, 0.0, 0.3, 2.0, float("nan"), float("inf")]))
        else:
            flat[i] = draw(st.sampled_from([-2, -1, 0, p, 50, r + 1]))
    old = {
        "log2phy": torch.zeros((e, r), dtype=torch.int32),
        "logcnt": torch.ones(e, dtype=torch.int32),
        "replica_share": torch.zeros((e, r)),
        "expert_map": torch.full((e,), -1, dtype=torch.int32),
    }
    if draw(st.booleans()):
        for name in ("replica_share", "expert_map"):
            old[name] = new[f"new_{name}"] = None
    return {**old, **new, "num_slots": draw(st.sampled_from([p, p, p, p - 1, 0]))}


@FUZZ
@given(map_args())
def test_update_expert_map_fuzz(args):
    targets = [args[k] for k in ("log2phy", "logcnt", "replica_share", "expert_map")]
    if not call(lambda: ops.update_expert_map_(**args), [t for t in targets if t is not None]):
        return
    # Accepted: the new tables were valid, so P bounded every slot and each shares row sums to 1.
    p, cnt = args["num_slots"], args["new_logcnt"]
    for i, c in enumerate(cnt.tolist()):
        row = args["new_log2phy"][i]
        assert 1 <= c <= row.numel() and ((row[:c] >= 0) & (row[:c] < p)).all()
        assert (row[c:] == -1).all()
        if args["new_replica_share"] is not None:
            assert abs(float(args["new_replica_share"][i, :c].sum()) - 1.0) <= 1e-4
    if args["new_expert_map"] is not None:
        held = args["new_expert_map"][args["new_expert_map"] >= 0]
        assert held.unique().numel() == held.numel() and (held < p).all()
    for name in ("log2phy", "logcnt", "replica_share", "expert_map"):
        if args[name] is not None:
            assert torch.equal(args[name], args[f"new_{name}"])


def test_an_argument_the_wrappers_read_that_is_not_a_tensor_is_named():
    heat = torch.zeros((2, 4), dtype=torch.int32)
    step = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"^route_and_count: topk_ids must be a tensor, got list$"):
        ops.route_and_count(
            [[0, 1]], torch.zeros((2, 1), dtype=torch.int32), torch.ones(2), heat, step
        )
    with pytest.raises(TypeError, match=r"^count_from_group_list: heat must be a tensor, got list"):
        ops.count_from_group_list(torch.ones(2, dtype=torch.int32), [[0]], step, 0)
    with pytest.raises(
        TypeError, match=r"^update_expert_weights_: slots must be a tensor, got list"
    ):
        ops.update_expert_weights_([torch.zeros(4, 2)], [torch.zeros(2, 2)], [1, 3])
    assert not heat.any()
