"""update_expert_map_: in-place copy (same storage), value checks, errors, opcheck."""

from __future__ import annotations

import pytest
import torch

from eplb_rt import ops
from tests import reference
from tests.ops.helpers import random_expert_map, random_tables


def _tables(seed: int, num_experts: int = 7, max_replicas: int = 3):
    t = random_tables(num_experts, 11, max_replicas, seed=seed)
    return [t.log2phy, t.logcnt, t.replica_share, random_expert_map(num_experts, 11, seed)]


@pytest.mark.parametrize("optional", [False, True], ids=["required-only", "all-tables"])
@pytest.mark.parametrize(("num_experts", "max_replicas"), [(1, 1), (7, 3), (11, 2)])
def test_copies_in_place(optional, num_experts, max_replicas):
    old = _tables(1, num_experts, max_replicas)
    new = _tables(2, num_experts, max_replicas)
    pointers = [t.data_ptr() for t in old]
    expected = [t.clone() for t in old]
    extra = {}
    extra_ref = {}
    if optional:
        extra = {
            "replica_share": old[2],
            "new_replica_share": new[2],
            "expert_map": old[3],
            "new_expert_map": new[3],
        }
        extra_ref = {**extra, "replica_share": expected[2], "expert_map": expected[3]}
    reference.update_expert_map_(expected[0], expected[1], new[0], new[1], **extra_ref)
    ops.update_expert_map_(old[0], old[1], new[0], new[1], num_slots=11, **extra)
    for got, want in zip(old, expected, strict=True):
        assert torch.equal(got, want)
    assert [t.data_ptr() for t in old] == pointers


def test_layer_slice_of_a_stacked_table_is_updated():
    stacked = torch.full((3, 4, 2), -1, dtype=torch.int32)
    counts = torch.ones((3, 4), dtype=torch.int32)
    new_l2p = torch.tensor([[0, 5], [1, -1], [2, -1], [3, 4]], dtype=torch.int32)
    new_cnt = torch.tensor([2, 1, 1, 2], dtype=torch.int32)
    ops.update_expert_map_(stacked[1], counts[1], new_l2p, new_cnt, num_slots=6)
    assert torch.equal(stacked[1], new_l2p)
    assert torch.equal(counts[1], new_cnt)
    assert (stacked[[0, 2]] == -1).all()


def _valid_args():
    old = _tables(3, 5, 2)
    new = _tables(4, 5, 2)
    return {
        "log2phy": old[0],
        "logcnt": old[1],
        "replica_share": old[2],
        "expert_map": old[3],
        "new_log2phy": new[0],
        "new_logcnt": new[1],
        "new_replica_share": new[2],
        "new_expert_map": new[3],
        "num_slots": 11,
    }


def _poke(name, index, value):
    def edit(args):
        args[name] = args[name].clone()
        args[name][index] = value

    return edit


def _set(name, value):
    def edit(args):
        args[name] = value

    return edit


def _padding_slot(args):
    """Writes a slot where the row must be -1 (after the expert's replicas)."""
    args["new_logcnt"] = args["new_logcnt"].clone()
    args["new_logcnt"][0] = 1
    args["new_log2phy"] = args["new_log2phy"].clone()
    args["new_log2phy"][0, 1] = 3


def _padding_share(value, first):
    """Expert 0 keeps one replica (share ``first``); its padding share is ``value``: refused
    when not finite or negative, as a share past an expert's replicas is anywhere else."""

    def edit(args):
        for name in ("new_logcnt", "new_log2phy", "new_replica_share"):
            args[name] = args[name].clone()
        args["new_logcnt"][0] = 1
        args["new_log2phy"][0, 1] = -1
        args["new_replica_share"][0] = torch.tensor([first, value])

    return edit


def _replicas_on_one_slot(args):
    """Gives expert 1's first replica the slot of expert 0's first replica."""
    args["new_log2phy"] = args["new_log2phy"].clone()
    args["new_log2phy"][1, 0] = args["new_log2phy"][0, 0]


def _slot_given_twice(args):
    """Gives expert 3 the local slot of expert 1 (which holds one)."""
    args["new_expert_map"] = args["new_expert_map"].clone()
    args["new_expert_map"][args["new_expert_map"] == 5] = -1
    args["new_expert_map"][1] = 5
    args["new_expert_map"][3] = 5


BAD_INPUTS = {
    "logcnt 0": (_poke("new_logcnt", 2, 0), r"new_logcnt\[2\] = 0 must be in \[1, R = 2\]"),
    "logcnt > R": (_poke("new_logcnt", 1, 3), r"new_logcnt\[1\] = 3 must be in \[1, R = 2\]"),
    "missing slot": (_poke("new_log2phy", (0, 0), -1), "new_log2phy"),
    "slot in padding": (_padding_slot, "new_log2phy"),
    "negative share": (
        _poke("new_replica_share", (1, 0), -0.5),
        r"new_replica_share\[1, 0\] = \-0\.5 must be finite and >= 0",
    ),
    "nan share": (
        _poke("new_replica_share", (2, 1), float("nan")),
        r"new_replica_share\[2, 1\] = nan must be finite and >= 0",
    ),
    "nan share in padding": (
        _padding_share(float("nan"), 1.0),
        r"new_replica_share\[0, 1\] = nan must be finite and >= 0",
    ),
    "negative padding share before an off sum": (
        _padding_share(-1.0, 0.5),
        r"new_replica_share\[0, 1\] = \-1 must be finite and >= 0",
    ),
    "off sum, padding share fine": (
        _padding_share(0.5, 0.5),
        r"the shares of expert 0 over its 1 replicas \(new_replica_share\[0, :1\]\) must sum "
        r"to 1 within 0.0001, got 0.5",
    ),
    "expert_map below -1": (
        _poke("new_expert_map", 4, -2),
        r"new_expert_map\[4\] = \-2 must be a local slot in \[0, P = 11\) or \-1 \(abse",
    ),
    "slot id 50 with P = 11": (_poke("new_log2phy", (0, 0), 50), r"new_log2phy.*\[0, P = 11\)"),
    "slot id P": (_poke("new_log2phy", (3, 0), 11), r"new_log2phy\[3, 0\] = 11"),
    "inf share": (
        _poke("new_replica_share", (0, 0), float("inf")),
        r"new_replica_share\[0, 0\] = inf must be finite and >= 0",
    ),
    "shares not summing to 1": (
        _poke("new_replica_share", (1, 0), 0.9),
        r"the shares of expert 1 over its \d replicas .* must sum to 1",
    ),
    "expert_map >= P": (
        _poke("new_expert_map", 0, 11),
        r"new_expert_map\[0\] = 11 must be a local slot in \[0, P = 11\) or \-1 \(abse",
    ),
    "two experts on one local slot": (
        _slot_given_twice,
        r"new_expert_map\[1\] and new_expert_map\[3\] are both local slot 5",
    ),
    "two replicas on one slot": (
        _replicas_on_one_slot,
        r"new_log2phy\[0, 0\] and new_log2phy\[1, 0\] are both slot \d+ \(a slot holds one",
    ),
    "num_slots 0": (_set("num_slots", 0), r"num_slots \(P\) must be >= 1"),
    "share without new share": (
        _set("new_replica_share", None),
        r"replica_share and new_replica_share must both be given or both be None",
    ),
    "new map without map": (
        _set("expert_map", None),
        r"expert_map and new_expert_map must both be given or both be None",
    ),
    "int64 log2phy": (_set("new_log2phy", torch.zeros((5, 2), dtype=torch.int64)), "new_log2phy"),
    "log2phy shape": (_set("new_log2phy", torch.zeros((5, 3), dtype=torch.int32)), "new_log2phy"),
    "logcnt shape": (
        _set("new_logcnt", torch.ones(4, dtype=torch.int32)),
        r"new_logcnt must have the shape of logcnt \[5\]",
    ),
    "float64 share": (
        _set("replica_share", torch.ones((5, 2), dtype=torch.float64)),
        r"replica_share must be float32",
    ),
    "strided target": (_set("log2phy", torch.zeros((2, 5), dtype=torch.int32).t()), "log2phy"),
}


def test_tables_of_no_expert_are_refused():
    """E = 0 (route_and_count refuses it too): the empty tables have no memory, and copying
    from their null pointers is undefined (UBSan's report)."""
    empty = torch.empty((0, 2), dtype=torch.int32)
    counts = torch.empty(0, dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"log2phy \[E, R\] needs E >= 1 and R >= 1"):
        torch.ops.eplb_rt.update_expert_map_(empty, counts, None, None, empty.clone(),
                                             counts.clone(), None, None, 4)  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_and_writes_nothing(case):
    edit, message = case
    args = _valid_args()
    edit(args)
    targets = ["log2phy", "logcnt", "replica_share", "expert_map"]
    before = {k: args[k].clone() for k in targets if args[k] is not None}
    with pytest.raises(RuntimeError, match=f"^update_expert_map_: {message}"):
        torch.ops.eplb_rt.update_expert_map_(**args)
    for k, want in before.items():
        assert torch.equal(args[k], want)


@pytest.mark.parametrize("optional", [False, True], ids=["required-only", "all-tables"])
def test_opcheck(optional):
    a = _valid_args()
    if not optional:
        for k in ("replica_share", "expert_map", "new_replica_share", "new_expert_map"):
            a[k] = None
    torch.library.opcheck(
        torch.ops.eplb_rt.update_expert_map_.default,
        (
            a["log2phy"],
            a["logcnt"],
            a["replica_share"],
            a["expert_map"],
            a["new_log2phy"],
            a["new_logcnt"],
            a["new_replica_share"],
            a["new_expert_map"],
            a["num_slots"],
        ),
    )


def test_new_tables_in_the_memory_of_the_old_ones_are_refused():
    """new_logcnt read from log2phy's memory would be checked, then overwritten by the copy of
    log2phy before it is copied itself."""
    args = _valid_args()
    buffer = torch.arange(12, dtype=torch.int32)
    args["log2phy"], args["new_logcnt"] = buffer[:10].view(5, 2), buffer[7:12]
    before = buffer.clone()
    with pytest.raises(RuntimeError, match="log2phy must not share memory with new_logcnt"):
        torch.ops.eplb_rt.update_expert_map_(**args)
    assert torch.equal(buffer, before)


def test_a_table_may_be_refreshed_from_itself():
    args = _valid_args()
    for name in ("log2phy", "logcnt", "replica_share", "expert_map"):
        args[f"new_{name}"] = args[name]
    expected = {k: args[k].clone() for k in ("log2phy", "logcnt", "replica_share", "expert_map")}
    torch.ops.eplb_rt.update_expert_map_(**args)
    assert all(torch.equal(args[k], v) for k, v in expected.items())


def test_an_expert_map_check_takes_memory_in_experts_not_slots():
    """A slot count far beyond memory is checked as any other (it only bounds the ids)."""
    args = _valid_args()
    args["num_slots"] = 2**62
    torch.ops.eplb_rt.update_expert_map_(**args)
    assert torch.equal(args["expert_map"], args["new_expert_map"])


def test_two_tables_in_one_memory_are_refused():
    """expert_map over logcnt: the copy of new_expert_map would overwrite the checked new_logcnt
    and leave an invalid replica count in force."""
    args = _valid_args()
    args["expert_map"] = args["logcnt"]
    before = {k: args[k].clone() for k in ("log2phy", "logcnt", "replica_share")}
    with pytest.raises(RuntimeError, match="logcnt must not share memory with expert_map"):
        torch.ops.eplb_rt.update_expert_map_(**args)
    assert all(torch.equal(args[k], v) for k, v in before.items())
