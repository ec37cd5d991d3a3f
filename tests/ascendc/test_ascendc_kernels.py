"""The AscendC kernels, run unchanged on the host emulation, against the op semantics.

Sizes are chosen to hit what breaks kernels: one core, more cores than work, tails that are not
a multiple of 32 bytes, several tiles per core, all padding, empty inputs, int8 weights with
float32 scales. Integers are compared exactly.
"""

from __future__ import annotations

import ascendc_expected as expected
import numpy as np
import pytest
import torch

KIB = 1024


def route_matches_reference(sim, topk, log2phy, logcnt, share, *, heat, step, **launch):
    """Run the kernel on ``heat`` and the reference on a copy; ids and heat must be equal.

    ``phy`` starts as a sentinel, so ids a core never wrote show. Returns the cores used."""
    want_heat = heat.copy()
    want_phy = expected.route_and_count(
        topk, log2phy, logcnt, share, want_heat, step=step, code_offset=launch.get("code_offset", 0)
    )
    phy = np.full(topk.shape, -7, dtype=topk.dtype)
    used = sim.route_and_count(
        topk, log2phy, logcnt, share, heat, np.array([step], dtype=np.int64), phy, **launch
    )
    np.testing.assert_array_equal(phy, want_phy)
    np.testing.assert_array_equal(heat, want_heat)
    return used


ROUTE_CASES = [
    # N, K, E, P, R, id dtype, shares, cores, H, L, padding fraction, ub bytes
    pytest.param(1, 1, 1, 1, 1, np.int32, False, 1, 1, 1, 0.0, 192 * KIB, id="one-of-everything"),
    pytest.param(
        3, 2, 5, 7, 3, np.int32, False, 8, 2, 1, 0.2, 192 * KIB, id="more-cores-than-tokens"
    ),
    pytest.param(37, 3, 13, 17, 4, np.int32, True, 4, 3, 2, 0.1, 192 * KIB, id="odd-tails-shares"),
    pytest.param(37, 3, 13, 17, 4, np.int64, False, 3, 3, 2, 0.1, 192 * KIB, id="odd-tails-int64"),
    pytest.param(1000, 8, 61, 67, 3, np.int32, True, 2, 4, 3, 0.05, 192 * KIB, id="tiles-per-core"),
    pytest.param(
        501, 5, 31, 40, 2, np.int64, False, 5, 5, 1, 0.3, 8 * KIB, id="small-ub-many-tiles"
    ),
    pytest.param(64, 4, 7, 7, 1, np.int32, False, 4, 2, 1, 1.0, 192 * KIB, id="all-padding"),
    # tables and histogram longer than one 32 KiB DataCopyPad chunk
    pytest.param(
        300, 4, 1100, 9000, 9, np.int32, True, 3, 2, 1, 0.1, 192 * KIB, id="tables-over-32KiB"
    ),
    pytest.param(0, 8, 9, 12, 2, np.int32, False, 4, 2, 1, 0.0, 192 * KIB, id="empty-batch"),
]


@pytest.mark.parametrize(
    ("n", "k", "e", "p", "r", "id_dtype", "shares", "cores", "h", "layers", "pad", "ub"),
    ROUTE_CASES,
)
def test_route_and_count_matches_reference(
    sim, *, n, k, e, p, r, id_dtype, shares, cores, h, layers, pad, ub
):
    rng = np.random.default_rng(n * 1000 + p)
    log2phy, logcnt = expected.random_tables(rng, e, p, r)
    share = expected.random_shares(rng, log2phy, logcnt) if shares else None
    topk = rng.integers(0, e, size=(n, k)).astype(id_dtype)
    topk[rng.random((n, k)) < pad] = -1
    ring = rng.integers(0, 50, size=(h, layers, p)).astype(np.int32)
    layer = layers - 1
    step_value = 2**33 + 12345  # wraps in the rule's uint32 arithmetic
    step = np.array([step_value], dtype=np.int64)
    phy = np.full((n, k), -7, dtype=id_dtype)

    want_ring = ring.copy()
    want_phy = expected.route_and_count(
        topk, log2phy, logcnt, share, want_ring[:, layer, :], step=step_value
    )
    sim.route_and_count(
        topk, log2phy, logcnt, share, ring[:, layer, :], step, phy, core_num=cores, ub_bytes=ub
    )

    if n > 0:
        np.testing.assert_array_equal(phy, want_phy)
    np.testing.assert_array_equal(ring, want_ring)  # other rows and layers untouched
    assert ring[step_value % h, layer].sum() - want_ring[step_value % h, layer].sum() == 0


def test_route_and_count_idle_cores_touch_nothing(sim):
    """Launching more cores than the tiling uses: the extra cores must not count or write."""
    rng = np.random.default_rng(3)
    log2phy, logcnt = expected.random_tables(rng, 4, 6, 2)
    topk = rng.integers(-1, 4, size=(5, 2)).astype(np.int32)
    heat = np.zeros((2, 6), dtype=np.int32)
    used = route_matches_reference(
        sim, topk, log2phy, logcnt, None, heat=heat, step=1, core_num=8, block_dim=6
    )
    assert used == 6


@pytest.mark.parametrize("cores", [1, 3])
def test_route_and_count_skips_values_it_cannot_check(sim, cores):
    """docs/kernels.md: ids outside [-1, E), replica counts outside [1, R] and slots outside
    [0, P) are skipped on the device (phy id -1, nothing counted), which the CPU op refuses;
    a negative step counts into row step mod H, as the CPU op's."""
    rng = np.random.default_rng(17)
    good = np.array([[0, 3], [1, -1], [2, 4], [5, -1]], dtype=np.int32)  # P = 6
    logcnt = np.array([2, 1, 2, 1], dtype=np.int32)
    topk = rng.integers(0, 4, size=(41, 3)).astype(np.int64)
    topk[::5, 0] = 4  # E
    topk[::7, 1] = -5
    topk[::9, 2] = 2**40
    step, H = -1, 3
    heat = rng.integers(0, 9, size=(H, 6)).astype(np.int32)
    valid = np.where((topk < -1) | (topk >= 4), -1, topk)
    want_heat = heat.copy()
    want = expected.route_and_count(valid, good, logcnt, None, want_heat, step=step)
    # Expert 2's second slot out of range: the pairs sent there skipped, the others as before.
    bad = good.copy()
    bad[2, 1] = 6
    want = np.where(want == 4, -1, want)
    want_heat[step % H, 4] = heat[step % H, 4]
    # Expert 3 with no replica, expert 1 with more than R: all their pairs skipped.
    counts = logcnt.copy()
    counts[3], counts[1] = 0, 3
    skipped = (valid == 3) | (valid == 1)
    for e in (3, 1):
        want_heat[step % H, good[e, 0]] = heat[step % H, good[e, 0]]
    want = np.where(skipped, -1, want)
    phy = np.full(topk.shape, -7, dtype=np.int64)
    sim.route_and_count(
        topk, bad, counts, None, heat, np.array([step], dtype=np.int64), phy, core_num=cores
    )
    np.testing.assert_array_equal(phy, want)
    np.testing.assert_array_equal(heat, want_heat)


def test_route_and_count_large_batch_uses_every_core(sim):
    """8192 tokens x top-8 on 40 cores: 40 ranges of 1640 ids (tails in the last one)."""
    rng = np.random.default_rng(8)
    log2phy, logcnt = expected.random_tables(rng, 256, 320, 4)
    topk = rng.integers(-1, 256, size=(8192, 8)).astype(np.int32)
    heat = np.zeros((2, 320), dtype=np.int32)
    assert (
        route_matches_reference(sim, topk, log2phy, logcnt, None, heat=heat, step=3, core_num=40)
        == 40
    )
    assert heat.sum() == np.count_nonzero(topk >= 0)


def test_route_and_count_accumulates_over_steps(sim):
    rng = np.random.default_rng(11)
    log2phy, logcnt = expected.random_tables(rng, 6, 10, 3)
    heat = np.zeros((3, 10), dtype=np.int32)
    want = heat.copy()
    for s in range(7):
        topk = rng.integers(-1, 6, size=(19, 2)).astype(np.int64)
        phy = np.zeros_like(topk)
        want_phy = expected.route_and_count(topk, log2phy, logcnt, None, want, step=s)
        sim.route_and_count(
            topk, log2phy, logcnt, None, heat, np.array([s], dtype=np.int64), phy, core_num=3
        )
        np.testing.assert_array_equal(phy, want_phy)
    np.testing.assert_array_equal(heat, want)
    assert heat.sum() == want.sum()


def test_route_and_count_tiling_stays_inside_the_socs_unified_buffer(sim):
    """Tables of 160 KiB leave 24 KiB for int64 id tiles: sized against the whole 192 KiB, the
    tiles overran the A2's usable UB (184 KiB: AscendC keeps the last 8 KiB)."""
    family, ub_bytes, _ = sim.soc_info(sim.DEFAULT_SOC)
    assert (family, ub_bytes) == ("Atlas A2 (Ascend910B)", 184 * 1024)
    rng = np.random.default_rng(21)
    log2phy = np.full((4096, 8), -1, dtype=np.int32)  # 128 KiB + logcnt 16 KiB + heat 16 KiB
    log2phy[:, 0] = rng.permutation(4096)
    logcnt = np.ones(4096, dtype=np.int32)
    topk = rng.integers(-1, 4096, size=(3000, 4)).astype(np.int64)
    heat = np.zeros((2, 4096), dtype=np.int32)
    route_matches_reference(sim, topk, log2phy, logcnt, None, heat=heat, step=1, core_num=2)


@pytest.mark.parametrize("code_offset", [1, 24576, 65535])
@pytest.mark.parametrize("shares", [False, True], ids=["uniform", "shares"])
def test_route_and_count_shifts_its_codes_by_the_offset(sim, code_offset, shares):
    """A rank's code offset (data-parallel ranks' batches each start at token 0), on cores
    that split the batch: the same replicas as the reference's rule."""
    rng = np.random.default_rng(code_offset)
    log2phy, logcnt = expected.random_tables(rng, 29, 41, 4)
    share = expected.random_shares(rng, log2phy, logcnt) if shares else None
    topk = rng.integers(-1, 29, size=(53, 3)).astype(np.int32)
    heat = np.zeros((3, 41), dtype=np.int32)
    route_matches_reference(
        sim, topk, log2phy, logcnt, share, heat=heat, step=5, core_num=3, code_offset=code_offset
    )
    with pytest.raises(ValueError, match=r"code_offset must be in \[0, 65536\), got 65536"):
        sim.route_and_count(topk, log2phy, logcnt, share, heat, np.array([5], dtype=np.int64),
                            np.zeros_like(topk), code_offset=65536)  # fmt: skip


def test_soc_table_knows_the_families_and_rejects_others(sim):
    assert sim.soc_info("Ascend910_9391")[0] == "Atlas A3 (Ascend910_93xx)"
    assert sim.soc_info("Ascend910B4")[0] == "Atlas A2 (Ascend910B)"
    assert sim.soc_info("Ascend910_9382")[1] == 184 * 1024
    assert sim.soc_info("Ascend310B1") is None
    assert sim.soc_info("Ascend910B2C")[0] == "Atlas A2 (Ascend910B)"
    # The older training parts (no DataCopyPad), the name npu-smi shows for an A3 part (CANN's
    # name has the part's number), a family's prefix alone.
    for older in ("Ascend910B", "Ascend910A", "Ascend910", "Ascend910_93"):
        assert sim.soc_info(older) is None, older
    assert sim.soc_info("Ascend310P3") is None  # no DataCopyPad, no int32 atomic add


@pytest.mark.parametrize(
    ("shares", "p", "r"), [(False, 512, 256), (True, 384, 128)], ids=["uniform", "shares"]
)
def test_route_and_count_reads_tables_past_the_ub_from_gm(sim, shares, p, r):
    """DeepSeek-V3 at EP128 with 128 redundant experts and shares (R = 128: log2phy and
    replica_share take 256 KiB), or at EP256 with 256 (R = 256: log2phy alone 256 KiB), past
    the A2's UB. The rows are read from GM, step after step (a commit rewrites the tables in
    between), with the results of the tables in UB."""
    e = 256
    # 12288 tokens x top-8 on 48 cores: 2048 ids a core, one whole tile with the tables in GM
    tiling = sim.route_and_count_tiling(12288, 8, e, r, p, 4, shares)
    assert not tiling["tables_in_ub"] and tiling["tile_pairs"] == 2048
    assert sim.route_and_count_tiling(12288, 8, e, 8, p, 4, shares)["tables_in_ub"]
    rng = np.random.default_rng(5)
    heat = np.zeros((3, p), dtype=np.int32)
    held = None  # the tables, rewritten in place by each step's commit as the runtime does
    for step in range(3):
        tables = expected.random_tables(rng, e, p, r)
        if shares:
            tables = (*tables, expected.random_shares(rng, *tables))
        if held is None:
            held = [t.copy() for t in tables]
        for buffer, table in zip(held, tables, strict=True):
            buffer[...] = table
        log2phy, logcnt, *share = held
        topk = rng.integers(-1, e, size=(700, 8)).astype(np.int32)
        route_matches_reference(
            sim, topk, log2phy, logcnt, *(share or [None]), heat=heat, step=step, core_num=6
        )


def test_route_and_count_rejects_a_histogram_larger_than_ub(sim):
    logcnt = np.ones(64, dtype=np.int32)
    with pytest.raises(
        ValueError, match=r"histogram of P=60000 slots need .* expected at most 188416"
    ):
        sim.route_and_count(
            np.zeros((4, 2), np.int32),
            np.zeros((64, 1), np.int32),
            logcnt,
            None,
            np.zeros((1, 60000), np.int32),
            np.zeros(1, np.int64),
            np.zeros((4, 2), np.int32),
        )


def test_weighted_rule_on_every_code_matches_reference(sim):
    """Choice k of token n routes to expert k, so over 2^16 tokens every expert sees every 16-bit
    position code once: the kernel's rule (csrc/common/replica_rule.h) must pick what the
    reference picks for share rows at the edges of the float32 comparisons."""
    shares = np.array(
        [
            [1.0, 0.0, 0.0, 0.0, 0.0],  # everything on replica 0
            [0.0, 0.0, 0.5, 0.5, 0.0],  # empty replicas before and after
            [0.2, 0.2, 0.2, 0.2, 0.2],  # sums to 1 only up to rounding
            [0.1, 0.2, 0.3, 0.15, 0.25],
            [0.0, 0.0, 0.0, 0.0, 1.0],
            [0.5, 0.25, 0.125, 0.0625, 0.0625],
        ],
        dtype=np.float32,
    )
    e, r = shares.shape
    log2phy = np.arange(e * r, dtype=np.int32).reshape(e, r)
    logcnt = np.full(e, r, dtype=np.int32)
    logcnt[4] = 4  # cnt - 1 absorbs the rest: replica 3 of a row whose first 4 shares sum to 0
    log2phy[4, 4] = -1
    n = 1 << 16
    topk = np.tile(np.arange(e, dtype=np.int32), (n, 1))
    heat = np.zeros((1, e * r), dtype=np.int32)
    route_matches_reference(sim, topk, log2phy, logcnt, shares, heat=heat, step=3, core_num=4)
    assert heat[0, :r].tolist() == [n, 0, 0, 0, 0]


GROUP_CASES = [
    # S_local, dtype, cumulative, slot offset, P, cores
    pytest.param(1, np.int32, False, 0, 1, 1, id="one-slot"),
    pytest.param(5, np.int64, True, 3, 11, 8, id="cumulative-offset"),
    pytest.param(13, np.int32, True, 0, 13, 2, id="whole-row"),
    pytest.param(3000, np.int32, False, 17, 3100, 8, id="three-cores"),
    pytest.param(5000, np.int64, True, 0, 5003, 1, id="tiles-per-core"),
    pytest.param(2500, np.int64, True, 1, 2600, 3, id="cumulative-across-cores"),
]


@pytest.mark.parametrize(("s", "dtype", "cumulative", "offset", "p", "cores"), GROUP_CASES)
def test_count_from_group_list_matches_reference(sim, *, s, dtype, cumulative, offset, p, cores):
    rng = np.random.default_rng(s + p)
    counts = rng.integers(0, 40, size=s)
    group_list = (np.cumsum(counts) if cumulative else counts).astype(dtype)
    ring = rng.integers(0, 9, size=(3, 2, p)).astype(np.int32)
    step = 4
    want = ring.copy()
    expected.count_from_group_list(group_list, want[:, 1, :], step, offset, cumulative)
    sim.count_from_group_list(
        group_list, ring[:, 1, :], np.array([step], np.int64), offset, cumulative, core_num=cores
    )
    np.testing.assert_array_equal(ring, want)


def test_count_from_group_list_empty_and_bad_offset(sim):
    heat = np.zeros((2, 4), dtype=np.int32)
    assert (
        sim.count_from_group_list(np.zeros(0, np.int32), heat, np.zeros(1, np.int64), 4, False) == 0
    )
    assert not heat.any()
    with pytest.raises(
        ValueError, match=r"slot_offset \+ S_local <= P=4, got slot_offset=2 S_local=3"
    ):
        sim.count_from_group_list(np.ones(3, np.int32), heat, np.zeros(1, np.int64), 2, False)


def test_a_one_row_heat_needs_no_row_stride(sim):
    """A ``[1, P]`` heat whose row stride is under P (a transposed column, an expanded row):
    the op's checks and the CPU and CUDA backends take it, the tiling refused it."""
    heat = np.zeros((8, 1), dtype=np.int32).T  # strides (4, 4) bytes
    topk = np.array([[0, 1], [2, -1]], dtype=np.int32)
    log2phy = np.arange(8, dtype=np.int32).reshape(4, 2)
    logcnt = np.full(4, 2, dtype=np.int32)
    route_matches_reference(sim, topk, log2phy, logcnt, None, heat=heat, step=0, core_num=2)
    want = heat.copy()
    expected.count_from_group_list(np.array([3, 4], np.int32), want, 0, 2, False)
    sim.count_from_group_list(np.array([3, 4], np.int32), heat, np.zeros(1, np.int64), 2, False)
    np.testing.assert_array_equal(heat, want)
    overlapping = np.lib.stride_tricks.as_strided(np.zeros(9, np.int32), (2, 8), (4, 4))
    with pytest.raises(ValueError, match=r"heat row stride >= P \(H > 1\)"):
        sim.count_from_group_list(
            np.array([3], np.int32), overlapping, np.zeros(1, np.int64), 0, False
        )


def test_tilings_refuse_sizes_whose_sums_overflow(sim):
    """The ops cap these sizes before they reach the tilings; any other caller summed first and
    compared after (signed overflow, UBSan's report): a slot offset near INT64_MAX wrapped
    negative and passed, and so would N x K."""
    heat = np.zeros((2, 8), dtype=np.int32)
    with pytest.raises(ValueError, match=r"slot_offset \+ S_local <= P=8, got slot_offset=9223"):
        sim.count_from_group_list(
            np.ones(4, np.int32), heat, np.zeros(1, np.int64), 2**63 - 1, False
        )
    assert not heat.any()
    with pytest.raises(ValueError, match=r"N x K overflows int64, got N=4611686018427387904 K=9"):
        sim.route_and_count_tiling(2**62, 9, 8, 2, 16, 4, False)


def test_count_from_group_list_negative_count_adds_nothing(sim):
    """Device backends cannot check values; a decreasing cumulative list must not corrupt heat."""
    heat = np.zeros((1, 3), dtype=np.int32)
    sim.count_from_group_list(np.array([5, 3, 9], np.int32), heat, np.zeros(1, np.int64), 0, True)
    np.testing.assert_array_equal(heat, [[5, 0, 6]])


def test_count_from_group_list_clamps_a_count_past_int32(sim):
    """Heat holds int32 counts: a malformed count past that range is added as INT32_MAX, never
    wrapped to a negative or small one."""
    top = np.iinfo(np.int32).max
    heat = np.zeros((1, 3), dtype=np.int32)
    plain = np.array([5, 2**31, 2**32 + 7], np.int64)
    sim.count_from_group_list(plain, heat, np.zeros(1, np.int64), 0, False)
    np.testing.assert_array_equal(heat, [[5, top, top]])
    heat = np.zeros((1, 2), dtype=np.int32)
    prefix = np.array([-(2**31), 2**31 - 1], np.int32)  # a step of 2**32 - 1
    sim.count_from_group_list(prefix, heat, np.zeros(1, np.int64), 0, True)
    np.testing.assert_array_equal(heat, [[0, top]])


def test_count_from_group_list_saturates_differences_past_int64(sim):
    """Two int64 entries may differ by more than int64 holds: a fall from 5 to INT64_MIN is a
    negative count (adds 0), the rise from there to INT64_MAX one past int32 (adds INT32_MAX),
    not their wrapped differences."""
    low, high = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    heat = np.zeros((1, 3), dtype=np.int32)
    prefix = np.array([5, low, high], np.int64)
    sim.count_from_group_list(prefix, heat, np.zeros(1, np.int64), 0, True)
    np.testing.assert_array_equal(heat, [[5, 0, np.iinfo(np.int32).max]])


def _bytes2d(t: torch.Tensor) -> np.ndarray:
    """[rows, bytes] uint8 numpy view sharing t's storage (any dtype, incl. bf16)."""
    row_bytes = int(np.prod(t.shape[1:])) * t.element_size()
    return t.view(torch.uint8).reshape(t.shape[0], row_bytes).numpy()


@pytest.mark.parametrize("slot_dtype", [np.int64, np.int32])
@pytest.mark.parametrize(
    ("num_slots", "moved", "cores"), [(6, 3, 4), (1, 1, 1), (5, 5, 8), (4, 0, 2)]
)
def test_update_expert_weights_matches_reference(sim, slot_dtype, num_slots, moved, cores):
    gen = torch.Generator().manual_seed(num_slots * 10 + moved)
    shapes = {
        "w13_int8": ((num_slots, 7, 129), torch.int8),  # 903-byte rows: unaligned tails and starts
        "w13_scale": ((num_slots, 7), torch.float32),  # 28-byte rows
        "w2_bf16": ((num_slots, 64), torch.bfloat16),  # 128-byte rows: whole aligned tiles
        "w_big": ((num_slots, 70001), torch.uint8),  # > 64 KiB: two tiles, odd tail
    }
    weights, staged = [], []
    for shape, dtype in shapes.values():
        w = torch.randint(-100, 100, shape, generator=gen).to(dtype)
        s = torch.randint(-100, 100, (moved, *shape[1:]), generator=gen).to(dtype)
        weights.append(w)
        staged.append(s)
    slots = torch.randperm(num_slots, generator=gen)[:moved].numpy().astype(slot_dtype)
    want = [w.clone() for w in weights]
    for w, s in zip(want, staged, strict=True):
        w[torch.from_numpy(slots.astype(np.int64))] = s
    sim.update_expert_weights(
        [_bytes2d(w) for w in weights], [_bytes2d(s) for s in staged], slots, core_num=cores
    )
    for got, exp in zip(weights, want, strict=True):
        assert torch.equal(got.view(torch.uint8), exp.view(torch.uint8))


def test_update_expert_weights_skips_out_of_range_slot(sim):
    w = np.arange(4 * 40, dtype=np.uint8).reshape(4, 40)
    s = np.full((2, 40), 255, dtype=np.uint8)
    before = w.copy()
    sim.update_expert_weights([w], [s], np.array([9, 1], dtype=np.int64))
    before[1] = 255
    np.testing.assert_array_equal(w, before)


@pytest.mark.parametrize("cores", [1, 3, 8])
def test_update_expert_weights_copies_the_last_of_rows_given_one_slot(sim, cores):
    """A bad plan gives slot 0 twice: the rows' tiles are spread over the cores, and copied
    together they would mix. The last row given the slot is copied, whole, on any core count."""
    tile = 32 * 1024
    w = np.zeros((3, 3 * tile), dtype=np.uint8)  # three tiles a row
    s = np.stack([np.full(3 * tile, v, dtype=np.uint8) for v in (1, 2, 3)])
    for _ in range(5):  # the emulated cores run as threads: a mix would show in some run
        w[:] = 0
        sim.update_expert_weights([w], [s], np.array([0, 1, 0], dtype=np.int64), core_num=cores)
        assert (w[0] == 3).all() and (w[1] == 2).all() and not w[2].any()


@pytest.mark.parametrize(
    ("num_experts", "r", "optional"),
    [(1, 1, ()), (7, 3, ("share", "map")), (5, 2, ("map",)), (257, 9, ("share", "map"))],
)
def test_update_expert_map_overwrites_in_place(sim, num_experts, r, optional):
    """log2phy and logcnt always; replica_share and expert_map each when given (2-4 tables)."""
    rng = np.random.default_rng(num_experts)
    dst = [np.zeros((num_experts, r), np.int32), np.zeros(num_experts, np.int32)]
    src = [
        rng.integers(-1, 99, (num_experts, r)).astype(np.int32),
        rng.integers(1, r + 1, num_experts).astype(np.int32),
    ]
    if "share" in optional:
        dst.append(np.zeros((num_experts, r), np.float32))
        src.append(rng.random((num_experts, r)).astype(np.float32))
    if "map" in optional:
        dst.append(np.zeros(num_experts, np.int32))
        src.append(rng.integers(-1, 5, num_experts).astype(np.int32))
    ids = [id(d) for d in dst]
    assert sim.update_expert_map(dst, src) == len(dst)
    for d, s in zip(dst, src, strict=True):
        np.testing.assert_array_equal(d, s)
    assert [id(d) for d in dst] == ids
