"""route_and_count: exact agreement with tests/reference.py, errors, the share guarantee."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_rt import ops
from tests import reference
from tests.ops.helpers import Tables, heat_ring_view, random_ids, random_tables, realistic_tables

ID_DTYPES = [torch.int32, torch.int64]

# (N, K, E, P, R): empty batch, one expert, K=1, primes, decode size, a size that runs in parallel.
SIZES = [
    (0, 8, 5, 7, 2),
    (1, 1, 1, 1, 1),
    (7, 1, 13, 17, 3),
    (31, 3, 1, 4, 4),
    (64, 8, 256, 288, 3),
    (2503, 8, 61, 89, 3),
]


def run_both(ids, tables, heat, step, shares, *, code_offset=0):
    """Runs the kernel and the reference on copies; returns (phy, heat) of each."""
    heat_ref = heat.clone()
    phy_ref = reference.route_and_count(
        ids, tables.log2phy, tables.logcnt, heat_ref, step, replica_share=shares,
        code_offset=code_offset,
    )  # fmt: skip
    phy = ops.route_and_count(
        ids, tables.log2phy, tables.logcnt, heat, step, replica_share=shares,
        code_offset=code_offset,
    )  # fmt: skip
    return phy, phy_ref, heat_ref


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "N{}-K{}-E{}-P{}-R{}".format(*s))
@pytest.mark.parametrize("dtype", ID_DTYPES, ids=str)
@pytest.mark.parametrize("with_shares", [False, True], ids=["uniform", "shares"])
@pytest.mark.parametrize("code_offset", [0, 40001, 65535], ids=lambda c: f"offset{c}")
def test_matches_reference(size, dtype, with_shares, code_offset):
    n, k, e, p, r = size
    tables = random_tables(e, p, r, seed=n + e)
    ids = random_ids(n, k, e, dtype, seed=p)
    ring, heat = heat_ring_view(5, 3, p, layer=1, seed=k)
    before = ring.clone()
    step = torch.tensor([17], dtype=torch.int64)  # beyond H = 5: row 2
    shares = tables.replica_share if with_shares else None
    phy, phy_ref, heat_ref = run_both(ids, tables, heat, step, shares, code_offset=code_offset)
    assert phy.dtype == dtype
    assert torch.equal(phy, phy_ref)
    assert torch.equal(heat, heat_ref)
    # Only row 2 of this layer changed, by exactly the number of routed pairs.
    changed = ring != before
    assert not changed[:, [0, 2], :].any()
    assert not changed[[0, 1, 3, 4]].any()
    assert int((ring - before).sum()) == int((ids >= 0).sum())


@pytest.mark.parametrize("shares", [None, [0.5, 0.5], [0.3, 0.7]], ids=str)
def test_ranks_offset_by_their_share_of_the_period_split_one_token_each_as_one_batch(shares):
    """Data-parallel attention: 8 ranks, one decode token each, all to an expert of two
    replicas. With one offset every rank's token 0 picked the same replica, 8 / 0 in every
    step; offset by rank * 2^16 / 8 they split as the shares say, within a token."""
    log2phy = torch.tensor([[3, 5]], dtype=torch.int32)
    logcnt = torch.tensor([2], dtype=torch.int32)
    share = None if shares is None else torch.tensor([shares], dtype=torch.float32)
    ids = torch.zeros((1, 1), dtype=torch.int64)
    for step in range(50):
        step_t = torch.tensor([step])
        for offsets, spread in (([0] * 8, False), ([r * 8192 for r in range(8)], True)):
            heat = torch.zeros((1, 6), dtype=torch.int32)
            for offset in offsets:
                ops.route_and_count(
                    ids, log2phy, logcnt, heat, step_t, replica_share=share, code_offset=offset
                )
            want = 8 * (0.5 if shares is None else shares[0])
            if spread:
                assert abs(int(heat[0, 3]) - want) <= 1, (step, heat)
            else:
                assert int(heat[0, 3]) in (0, 8)


@pytest.mark.parametrize("offset", [-1, 65536, 2**40])
def test_a_code_offset_outside_the_period_is_refused_and_writes_nothing(offset):
    tables = random_tables(6, 11, 2, seed=0)
    ids = random_ids(9, 2, 6, torch.int64, seed=1)
    heat = torch.zeros((3, 11), dtype=torch.int32)
    out = torch.full_like(ids, -7)
    with pytest.raises(RuntimeError, match=rf"code_offset must be in \[0, 65536\), got {offset}"):
        ops.route_and_count(ids, tables.log2phy, tables.logcnt, heat, torch.tensor([1]), out=out,
                            code_offset=offset)  # fmt: skip
    assert not heat.any() and (out == -7).all()


@pytest.mark.parametrize("dtype", ID_DTYPES, ids=str)
def test_all_padding_counts_nothing(dtype):
    tables = random_tables(6, 11, 2, seed=0)
    ids = torch.full((9, 4), -1, dtype=dtype)
    heat = torch.zeros((3, 11), dtype=torch.int32)
    phy = ops.route_and_count(ids, tables.log2phy, tables.logcnt, heat, torch.tensor([4]))
    assert torch.equal(phy, ids)
    assert not heat.any()


@pytest.mark.parametrize("step", [0, 1, 2**16 + 3, 2**32 + 7, 2**40 - 1, -3])
def test_any_step_matches_reference(step):
    tables = realistic_tables(23, 31, seed=1)
    ids = random_ids(97, 5, 23, torch.int64, seed=2)
    heat = torch.zeros((7, 31), dtype=torch.int32)
    step_t = torch.tensor([step], dtype=torch.int64)
    for shares in (None, tables.replica_share):
        phy, phy_ref, heat_ref = run_both(ids, tables, heat, step_t, shares)
        assert torch.equal(phy, phy_ref)
        assert torch.equal(heat, heat_ref)


def test_out_buffer_is_written_and_returned():
    tables = random_tables(5, 9, 2, seed=3)
    ids = random_ids(8, 2, 5, torch.int32, seed=4)
    out = torch.full_like(ids, 12345)
    heat = torch.zeros((2, 9), dtype=torch.int32)
    got = ops.route_and_count(ids, tables.log2phy, tables.logcnt, heat, torch.tensor([0]), out=out)
    assert got is out
    expected = reference.route_and_count(
        ids, tables.log2phy, tables.logcnt, torch.zeros_like(heat), torch.tensor([0])
    )
    assert torch.equal(out, expected)


# Shares that stress the integer bounds of the CPU kernel against the float rule: zeros, tiny
# values, thirds, sums at the edges of the tolerance (1 +- 1e-4).
ODD_SHARES = [
    [0.0, 0.5, 0.5],
    [1e-9, 1e-9, 1.0],
    [0.3, 0.3, 0.4],
    [1.0 / 3, 1.0 / 3, 1.0 / 3],
    [0.0, 0.0, 1.0],
    [1.0, 0.0, 0.0],
    [0.5, 0.49991, 0.0],
    [0.25, 0.25, 0.50009],
]
# Shares that split no expert's tokens: refused on the CPU, however many pairs a batch has.
NOT_SHARES = [
    [-0.1, 0.6, 0.5],
    [float("nan"), 0.5, 0.5],
    [0.2, float("inf"), 0.1],
    [0.1, 0.1, 0.1],
    [5.0, 0.0, 0.0],
    [0.7, -0.5, 0.9],
]


@pytest.mark.parametrize("share_row", ODD_SHARES, ids=str)
def test_every_code_matches_float_rule(share_row):
    # One expert, 3 replicas, 2^16 tokens with K=1 at step 0: every code 0..65535 occurs once.
    log2phy = torch.tensor([[4, 0, 2]], dtype=torch.int32)
    logcnt = torch.tensor([3], dtype=torch.int32)
    share = torch.tensor([share_row], dtype=torch.float32)
    ids = torch.zeros((reference.PERIOD, 1), dtype=torch.int32)
    heat = torch.zeros((1, 5), dtype=torch.int32)
    phy, phy_ref, heat_ref = run_both(
        ids, Tables(log2phy, logcnt, share), heat, torch.tensor([0]), share
    )
    assert torch.equal(phy, phy_ref)
    assert torch.equal(heat, heat_ref)


@pytest.mark.parametrize("share_row", NOT_SHARES, ids=str)
@pytest.mark.parametrize("tokens", [1, reference.PERIOD], ids=["one pair", "a period"])
def test_shares_that_split_no_tokens_are_refused(share_row, tokens):
    log2phy = torch.tensor([[4, 0, 2]], dtype=torch.int32)
    logcnt = torch.tensor([3], dtype=torch.int32)
    share = torch.tensor([share_row], dtype=torch.float32)
    ids = torch.zeros((tokens, 1), dtype=torch.int32)
    heat = torch.zeros((1, 5), dtype=torch.int32)
    out = torch.full_like(ids, 7)
    with pytest.raises(RuntimeError, match=r"^route_and_count: (replica_share|the shares)"):
        ops.route_and_count(ids, log2phy, logcnt, heat, torch.tensor([0]), replica_share=share,
                            out=out)  # fmt: skip
    assert not heat.any()
    assert (out == 7).all()


@pytest.mark.parametrize("shares", [[0.5, 0.25, 0.25], [0.1, 0.7, 0.2], [0.9, 0.1], None], ids=str)
@pytest.mark.parametrize("step", [0, 3], ids=lambda s: f"step{s}")
def test_share_guarantee_over_one_period(shares, step):
    """Over 2^16 consecutive tokens each replica gets its share of an expert's pairs within ±1."""
    cnt = 3 if shares is None else len(shares)
    log2phy = torch.arange(cnt, dtype=torch.int32).reshape(1, cnt)
    logcnt = torch.tensor([cnt], dtype=torch.int32)
    share = None if shares is None else torch.tensor([shares], dtype=torch.float32)
    ids = torch.zeros((reference.PERIOD, 2), dtype=torch.int64)  # K = 2: each k is its own period
    heat = torch.zeros((1, cnt), dtype=torch.int32)
    ops.route_and_count(ids, log2phy, logcnt, heat, torch.tensor([step]), replica_share=share)
    target = [1.0 / cnt] * cnt if shares is None else shares
    expected = torch.tensor(target, dtype=torch.float64) * 2 * reference.PERIOD
    assert int(heat.sum()) == 2 * reference.PERIOD
    assert (heat[0].to(torch.float64) - expected).abs().max() <= 2.0  # ±1 per k


def test_unused_expert_with_bad_table_is_ignored():
    log2phy = torch.tensor([[0, -1], [-1, -1]], dtype=torch.int32)
    logcnt = torch.tensor([1, 0], dtype=torch.int32)  # expert 1 is broken but nobody routes to it
    ids = torch.tensor([[0, -1]], dtype=torch.int32)
    heat = torch.zeros((1, 2), dtype=torch.int32)
    phy = ops.route_and_count(ids, log2phy, logcnt, heat, torch.tensor([0]))
    assert phy.tolist() == [[0, -1]]
    assert heat.tolist() == [[1, 0]]


def test_unused_expert_with_bad_shares_is_ignored():
    """Shares are checked where they route a pair, as the slots are."""
    log2phy = torch.tensor([[0, -1], [1, 2]], dtype=torch.int32)
    logcnt = torch.tensor([1, 2], dtype=torch.int32)
    share = torch.tensor([[1.0, 0.0], [float("nan"), 0.3]])
    for n in (1, 40):  # the per-pair path and the tables' path
        ids = torch.tensor([[0, -1]] * n, dtype=torch.int32)
        heat = torch.zeros((1, 3), dtype=torch.int32)
        phy = ops.route_and_count(
            ids, log2phy, logcnt, heat, torch.tensor([0]), replica_share=share
        )
        assert phy[:, 0].eq(0).all()
        assert heat.tolist() == [[n, 0, 0]]


def _valid_args(padded_rows: int = 0):
    """Six pairs on 5 experts; ``padded_rows`` rows of -1 appended make the batch large enough
    (more than 4 pairs per expert) for the CPU kernel's table-based path."""
    tables = random_tables(5, 8, 2, seed=7)
    tables.logcnt[:] = 2
    tables.log2phy[:, 0] = torch.arange(5, dtype=torch.int32)
    tables.log2phy[:, 1] = torch.tensor([5, 6, 7, 5, 6], dtype=torch.int32)
    return {
        "topk_ids": torch.tensor([[0, 1], [2, 3], [4, -1]] + [[-1, -1]] * padded_rows),
        "log2phy": tables.log2phy,
        "logcnt": tables.logcnt,
        "replica_share": None,
        "heat": torch.zeros((3, 8), dtype=torch.int32),
        "step": torch.tensor([1], dtype=torch.int64),
        "phy_ids": torch.full((3 + padded_rows, 2), 99, dtype=torch.int64),
    }


def _set(name, value):
    def edit(args):
        args[name] = value

    return edit


def _poke(name, index, value):
    def edit(args):
        args[name] = args[name].clone()
        args[name][index] = value

    return edit


def _share(index, value):
    """Even shares (0.5 each, every expert on two replicas) with one entry set to ``value``."""

    def edit(args):
        args["replica_share"] = torch.full((5, 2), 0.5)
        args["replica_share"][index] = value

    return edit


BAD_INPUTS = {
    "id too large": (
        _poke("topk_ids", (1, 0), 5),
        r"topk_ids\[1, 0\] = 5 must be a logical expert id",
    ),
    "id below -1": (
        _poke("topk_ids", (0, 1), -2),
        r"topk_ids\[0, 1\] = -2 must be a logical expert id",
    ),
    "used logcnt 0": (_poke("logcnt", 3, 0), r"logcnt\[3\] = 0 must be in \[1, R = 2\]"),
    "used logcnt > R": (_poke("logcnt", 0, 3), r"logcnt\[0\] = 3 must be in \[1, R = 2\]"),
    "used slot >= P": (_poke("log2phy", (4, 1), 8), r"log2phy\[4, 1\] = 8 must be a slot"),
    "used slot -1": (_poke("log2phy", (2, 0), -1), r"log2phy\[2, 0\] = -1 must be a slot"),
    "float ids": (_set("topk_ids", torch.zeros((3, 2))), r"topk_ids must be int32 or int64"),
    "1-d ids": (_set("topk_ids", torch.zeros(6, dtype=torch.int64)), r"topk_ids must be 2-D"),
    "strided ids": (
        _set("topk_ids", torch.zeros((2, 3), dtype=torch.int64).t()),
        r"topk_ids must be contiguous",
    ),
    "int64 log2phy": (
        _set("log2phy", torch.zeros((5, 2), dtype=torch.int64)),
        r"log2phy must be int32",
    ),
    "short logcnt": (
        _set("logcnt", torch.ones(4, dtype=torch.int32)),
        r"logcnt must have shape \[E\]",
    ),
    "share shape": (
        _set("replica_share", torch.ones((5, 3))),
        r"replica_share must have the shape of log2phy",
    ),
    "share NaN": (
        _share((1, 0), float("nan")),
        r"replica_share\[1, 0\] = nan must be finite and >= 0 \(expert 1 is used by "
        r"topk_ids\[0, 1\]\)",
    ),
    "share negative": (_share((3, 1), -0.25), r"replica_share\[3, 1\] = -0.25 must be finite"),
    "share inf": (_share((4, 0), float("inf")), r"replica_share\[4, 0\] = inf must be finite"),
    "shares sum to 0.8": (
        _share((2, 1), 0.3),
        r"the shares of expert 2 over its 2 replicas \(replica_share\[2, :2\]\) must sum to 1 "
        r"within 0.0001, got 0.8 \(expert 2 is used by topk_ids\[1, 0\]\)",
    ),
    "share dtype": (
        _set("replica_share", torch.ones((5, 2), dtype=torch.float64)),
        r"replica_share must be float32",
    ),
    "int64 heat": (_set("heat", torch.zeros((3, 8), dtype=torch.int64)), r"heat must be int32"),
    "heat no rows": (
        _set("heat", torch.zeros((0, 8), dtype=torch.int32)),
        r"heat must have at least one row",
    ),
    "heat strided": (
        _set("heat", torch.zeros((8, 3), dtype=torch.int32).t()),
        r"heat must have unit stride",
    ),
    "heat rows overlapping": (
        _set("heat", torch.zeros((1, 8), dtype=torch.int32).expand(3, 8)),
        r"heat rows must not overlap \(row stride >= P\)",
    ),
    "heat no slots": (
        _set("heat", torch.zeros((3, 0), dtype=torch.int32)),
        r"heat must have at least one slot \(P >= 1\)",
    ),
    "no experts": (
        _set("log2phy", torch.zeros((0, 2), dtype=torch.int32)),
        r"log2phy \[E, R\] needs E >= 1",
    ),
    "int32 step": (_set("step", torch.tensor([1], dtype=torch.int32)), r"step must be int64"),
    "two steps": (_set("step", torch.tensor([1, 2])), r"step must have one element"),
    "phy dtype": (
        _set("phy_ids", torch.zeros((3, 2), dtype=torch.int32)),
        r"phy_ids must have the dtype of topk_ids",
    ),
    "phy shape": (
        _set("phy_ids", torch.zeros((2, 3), dtype=torch.int64)),
        r"phy_ids must have the shape of topk_ids",
    ),
}


@pytest.mark.parametrize("padded_rows", [0, 10], ids=["small", "large"])
@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_and_writes_nothing(case, padded_rows):
    edit, message = case
    args = _valid_args(padded_rows)
    edit(args)
    heat_before = args["heat"].clone()
    phy_before = args["phy_ids"].clone()
    with pytest.raises(RuntimeError, match=f"^route_and_count: {message}"):
        torch.ops.eplb_rt.route_and_count(**args)
    assert torch.equal(args["heat"], heat_before)
    assert torch.equal(args["phy_ids"], phy_before)


def _in_one_buffer(args, table):
    """``args`` with ``table`` (an input) and the heat laid in one buffer of 24 4-byte words:
    the table its first words, the heat all of them."""
    source = args[table] if args[table] is not None else torch.full((5, 2), 0.5)
    buffer = torch.zeros(24, dtype=source.dtype)
    buffer[: source.numel()] = source.flatten()
    args[table] = buffer[: source.numel()].view(source.shape)
    args["heat"] = buffer.view(torch.int32).view(3, 8)
    return args


@pytest.mark.parametrize("table", ["log2phy", "logcnt", "replica_share"])
def test_a_heat_in_the_memory_of_a_table_is_refused(table):
    args = _in_one_buffer(_valid_args(), table)
    before = args[table].clone()
    with pytest.raises(RuntimeError, match=f"heat must not share memory with {table}"):
        torch.ops.eplb_rt.route_and_count(**args)
    assert torch.equal(args[table], before)


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("phy_ids", torch.int32, r"phy_ids must have the dtype of topk_ids \(int64\), got int32$"),
        ("logcnt", torch.int64, r"logcnt must be int32, got int64$"),
        ("step", torch.int32, r"step must be int64, got int32$"),
        ("topk_ids", torch.float32, r"topk_ids must be int32 or int64, got float32$"),
    ],
)
def test_a_wrong_dtype_is_named_in_full(name, bad, message):
    # The names are copied out of c10 (torch 2.11 returns them as temporaries: a view of one
    # put freed bytes into this message on a GPU).
    args = _valid_args()
    args[name] = args[name].to(bad)
    heat = args["heat"].clone()
    with pytest.raises(RuntimeError, match=message):
        torch.ops.eplb_rt.route_and_count(**args)
    assert torch.equal(args["heat"], heat)


def test_phy_ids_in_the_memory_of_log2phy_are_refused():
    args = _valid_args()
    args["topk_ids"] = args["topk_ids"].int()
    tables = args["log2phy"].clone()
    args["phy_ids"] = args["log2phy"].view(-1)[:6].view(3, 2)
    with pytest.raises(RuntimeError, match="phy_ids must not share memory with log2phy"):
        torch.ops.eplb_rt.route_and_count(**args)
    assert torch.equal(args["log2phy"], tables)


def test_memory_shared_through_another_storage_is_refused():
    """The same bytes under two storages (DLPack, numpy): torch's own overlap test sees none,
    and ids overwritten while they are routed indexed past the route tables."""
    from torch.utils.dlpack import from_dlpack

    args = _valid_args()
    buffer = torch.randint(0, 4, (3 * 2 + 1,))
    args["topk_ids"] = buffer[:-1].view(3, 2)
    args["phy_ids"] = from_dlpack(buffer)[1:].view(3, 2)  # one id ahead of topk_ids
    before = buffer.clone()
    with pytest.raises(RuntimeError, match="phy_ids must not share memory with topk_ids unless"):
        torch.ops.eplb_rt.route_and_count(**args)
    assert torch.equal(buffer, before)
    args = _valid_args()
    words = np.zeros(args["heat"].numel(), dtype=np.int32)  # the heat's, the table's first
    table = args["log2phy"]
    words[: table.numel()] = table.flatten().numpy()
    args["heat"] = torch.from_numpy(words).view(args["heat"].shape)
    args["log2phy"] = torch.from_numpy(words[: table.numel()]).view(table.shape)
    before = words.copy()
    with pytest.raises(RuntimeError, match="heat must not share memory with log2phy"):
        torch.ops.eplb_rt.route_and_count(**args)
    assert np.array_equal(words, before)


def test_phy_ids_may_be_written_over_topk_ids():
    apart, in_place = _valid_args(), _valid_args()
    torch.ops.eplb_rt.route_and_count(**apart)
    in_place["phy_ids"] = in_place["topk_ids"]
    torch.ops.eplb_rt.route_and_count(**in_place)
    assert torch.equal(in_place["topk_ids"], apart["phy_ids"])
    assert torch.equal(in_place["heat"], apart["heat"])


@pytest.mark.parametrize("padded_rows", [0, 10], ids=["small", "large"])
def test_valid_args_are_valid(padded_rows):
    torch.ops.eplb_rt.route_and_count(**_valid_args(padded_rows))


@pytest.mark.parametrize("with_shares", [False, True], ids=["uniform", "shares"])
def test_opcheck(with_shares):
    tables = realistic_tables(11, 17, seed=5)
    ids = random_ids(13, 3, 11, torch.int64, seed=6)
    args = (
        ids,
        tables.log2phy,
        tables.logcnt,
        tables.replica_share if with_shares else None,
        torch.zeros((4, 17), dtype=torch.int32),
        torch.tensor([6], dtype=torch.int64),
        torch.empty_like(ids),
    )
    torch.library.opcheck(torch.ops.eplb_rt.route_and_count.default, args)


@pytest.mark.parametrize("bad", ["id", "table"])
def test_bad_input_in_a_parallel_sized_batch_writes_nothing(bad):
    """The checks also hold when the batch is split over threads: the bad pair is the last one."""
    tables = random_tables(41, 53, 3, seed=8)
    ids = random_ids(4099, 8, 41, torch.int32, seed=9)
    if bad == "id":
        ids[-1, -1] = 41
    else:
        ids[-1, -1] = 40
        tables.logcnt[40] = 0
        tables.logcnt[:40] = torch.clamp(tables.logcnt[:40], min=1)
        ids[:-1][ids[:-1] == 40] = 39
    heat = torch.zeros((2, 53), dtype=torch.int32)
    out = torch.full_like(ids, 7)
    message = r"topk_ids\[4098, 7\] = 41" if bad == "id" else r"logcnt\[40\] = 0"
    with pytest.raises(RuntimeError, match=message):
        ops.route_and_count(ids, tables.log2phy, tables.logcnt, heat, torch.tensor([0]), out=out)
    assert not heat.any()
    assert (out == 7).all()


@pytest.mark.parametrize("padded_rows", [0, 10], ids=["small", "large"])
@pytest.mark.parametrize("dtype", ID_DTYPES, ids=str)
@pytest.mark.parametrize("where", ["min", "max", "E", "-2"])
def test_extreme_ids_are_rejected(dtype, where, padded_rows):
    info = torch.iinfo(dtype)
    value = {"min": info.min, "max": info.max, "E": 5, "-2": -2}[where]
    args = _valid_args(padded_rows)
    args["topk_ids"] = args["topk_ids"].to(dtype)
    args["phy_ids"] = args["phy_ids"].to(dtype)
    args["topk_ids"][2, 0] = value
    with pytest.raises(RuntimeError, match=rf"topk_ids\[2, 0\] = {value} must be"):
        torch.ops.eplb_rt.route_and_count(**args)
    assert not args["heat"].any()


RANDOM_CASES = st.fixed_dictionaries(
    {
        "num_tokens": st.integers(0, 40),
        "top_k": st.integers(0, 9),
        "num_experts": st.integers(1, 20),
        "num_slots": st.integers(1, 30),
        "max_replicas": st.integers(1, 4),
        "step": st.integers(-(2**40), 2**40),
        "dtype": st.sampled_from(ID_DTYPES),
        "with_shares": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=80, deadline=None)
@given(case=RANDOM_CASES)
def test_random_sizes_match_reference(case):
    c = case
    tables = random_tables(c["num_experts"], c["num_slots"], c["max_replicas"], seed=c["seed"])
    if c["with_shares"]:  # some zero shares: replicas that must never be picked
        share = tables.replica_share
        share[share < 0.2] = 0.0
        share[share.sum(dim=1) == 0, 0] = 1.0  # one replica of an expert takes its tokens
        share /= share.sum(dim=1, keepdim=True)
    ids = random_ids(c["num_tokens"], c["top_k"], c["num_experts"], c["dtype"], seed=c["seed"])
    heat = torch.zeros((3, c["num_slots"]), dtype=torch.int32)
    shares = tables.replica_share if c["with_shares"] else None
    phy, phy_ref, heat_ref = run_both(ids, tables, heat, torch.tensor([c["step"]]), shares)
    assert torch.equal(phy, phy_ref)
    assert torch.equal(heat, heat_ref)


def test_compiles_with_mutations_kept():
    """Under torch.compile (functionalised graph) heat and phy_ids are still written in place."""
    tables = realistic_tables(17, 23, seed=11)
    ids = random_ids(29, 4, 17, torch.int64, seed=12)
    step = torch.tensor([3])

    def route(heat, out):
        ops.route_and_count(ids, tables.log2phy, tables.logcnt, heat, step, out=out)
        return out

    compiled = torch.compile(route, backend="aot_eager", fullgraph=True)
    heat, heat_eager = (
        torch.zeros((2, 23), dtype=torch.int32),
        torch.zeros((2, 23), dtype=torch.int32),
    )
    out, out_eager = torch.empty_like(ids), torch.empty_like(ids)
    compiled(heat, out)
    route(heat_eager, out_eager)
    assert torch.equal(out, out_eager)
    assert torch.equal(heat, heat_eager)


def test_a_ring_marked_static_is_counted_in_its_layer_under_inductor_with_dynamic_shapes():
    """The workaround the ops' docstring gives: Inductor with dynamic shapes writes a view of an
    argument at a symbolic offset (``ring[:, layer, :]``) at offset 0 (torch 2.13); with the
    ring marked static every count lands in its layer, as eagerly."""
    tables = realistic_tables(5, 7, seed=3)
    ids = random_ids(11, 2, 5, torch.int64, seed=4)
    step = torch.tensor([1])

    def route(ring, layer: int):
        ops.route_and_count(ids, tables.log2phy, tables.logcnt, ring[:, layer, :], step)
        ops.count_from_group_list(torch.ones(7, dtype=torch.int64), ring[:, layer, :], step, 0)
        return ring.sum()

    compiled = torch.compile(route, backend="inductor", dynamic=True)
    for layer in (2, 1):
        ring, eager = (
            torch.zeros((2, 3, 7), dtype=torch.int32),
            torch.zeros((2, 3, 7), dtype=torch.int32),
        )
        torch._dynamo.mark_static(ring)
        compiled(ring, layer)
        route(eager, layer)
        assert torch.equal(ring, eager)
        assert ring.sum() == ring[:, layer].sum() > 0
