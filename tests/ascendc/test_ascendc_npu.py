"""The four ops on an Ascend NPU (PrivateUse1 kernels) against the host expectations.

Runs only where torch_npu, CANN and a device are present and eplb_rt was built with the NPU
backend; everywhere else it is skipped (marker ``npu``). Sizes mirror the emulation tests.
"""

from __future__ import annotations

import importlib.util

import ascendc_expected as expected
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.npu


@pytest.fixture(scope="module")
def npu():
    if importlib.util.find_spec("torch_npu") is None:
        pytest.skip("torch_npu is not installed")
    import torch_npu  # noqa: F401  (registers the npu device)

    if not torch.npu.is_available():
        pytest.skip("no Ascend device")
    import eplb_rt.ops  # noqa: F401  (loads eplb_rt._C and its schemas)

    return torch.device("npu")


@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize(
    ("n", "k", "e", "p", "r"), [(1, 1, 1, 1, 1), (37, 3, 13, 17, 4), (4096, 8, 61, 67, 3)]
)
def test_route_and_count_on_npu(npu, *, id_dtype, n, k, e, p, r):
    rng = np.random.default_rng(n + p)
    log2phy, logcnt = expected.random_tables(rng, e, p, r)
    topk = rng.integers(-1, e, size=(n, k))
    ring = np.zeros((4, 2, p), dtype=np.int32)
    step = 6
    want = ring.copy()
    topk_np = topk.astype(np.int32 if id_dtype == torch.int32 else np.int64)
    want_phy = expected.route_and_count(topk_np, log2phy, logcnt, None, want[:, 1, :], step=step)

    heat = torch.from_numpy(ring).to(npu)
    phy = torch.full((n, k), -1, dtype=id_dtype, device=npu)
    torch.ops.eplb_rt.route_and_count(
        torch.from_numpy(topk_np).to(npu),
        torch.from_numpy(log2phy).to(npu),
        torch.from_numpy(logcnt).to(npu),
        None,
        heat[:, 1, :],
        torch.tensor([step], dtype=torch.int64, device=npu),
        phy,
    )
    np.testing.assert_array_equal(phy.cpu().numpy(), want_phy)
    np.testing.assert_array_equal(heat.cpu().numpy(), want)


@pytest.mark.parametrize(
    ("shares", "p", "r"), [(False, 512, 256), (True, 384, 128)], ids=["uniform", "shares"]
)
def test_route_and_count_with_the_tables_in_gm_on_npu(npu, shares, p, r):
    """The emulation's tables past the UB (DeepSeek-V3 at EP256, or at EP128 with shares: the
    rows read from GM, the data cache refreshed before each read) on the device, with and
    without replica shares, two steps apart on one ring."""
    e, n, k = 256, 12288, 8
    rng = np.random.default_rng(p)
    log2phy, logcnt = expected.random_tables(rng, e, p, r)
    share = expected.random_shares(rng, log2phy, logcnt) if shares else None
    want = np.zeros((3, p), dtype=np.int32)
    heat = torch.from_numpy(want.copy()).to(npu)
    tables = [torch.from_numpy(t).to(npu) for t in (log2phy, logcnt)]
    share_npu = None if share is None else torch.from_numpy(share).to(npu)
    for step in (4, 5):
        topk = rng.integers(-1, e, size=(n, k))
        want_phy = expected.route_and_count(topk, log2phy, logcnt, share, want, step=step)
        phy = torch.full((n, k), -1, dtype=torch.int64, device=npu)
        torch.ops.eplb_rt.route_and_count(
            torch.from_numpy(topk).to(npu), *tables, share_npu, heat,
            torch.tensor([step], dtype=torch.int64, device=npu), phy,
        )  # fmt: skip
        np.testing.assert_array_equal(phy.cpu().numpy(), want_phy)
    np.testing.assert_array_equal(heat.cpu().numpy(), want)


@pytest.mark.parametrize("cumulative", [False, True])
@pytest.mark.parametrize(
    ("seed", "size", "dtype", "slots", "step", "offset"),
    [(1, 16, np.int64, 40, 2, 5), (2, 300, np.int32, 331, 4, 17)],
    ids=["int64, one core", "int32, many cores"],
)
def test_count_from_group_list_on_npu(npu, *, seed, size, dtype, slots, step, offset, cumulative):
    """16 int64 entries (one core's work), and an int32 group list of 300 local slots over many
    cores, each at an offset into a ring's row."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 50, size=size)
    group_list = (np.cumsum(counts) if cumulative else counts).astype(dtype)
    ring = np.zeros((3, slots), dtype=np.int32)
    want = ring.copy()
    expected.count_from_group_list(group_list, want, step, offset, cumulative)
    heat = torch.from_numpy(ring).to(npu)
    torch.ops.eplb_rt.count_from_group_list(
        torch.from_numpy(group_list).to(npu),
        heat,
        torch.tensor([step], dtype=torch.int64, device=npu),
        offset,
        cumulative,
    )
    np.testing.assert_array_equal(heat.cpu().numpy(), want)


def test_update_expert_weights_and_map_on_npu(npu):
    gen = torch.Generator().manual_seed(0)
    w13 = torch.randint(-100, 100, (6, 7, 129), generator=gen, dtype=torch.int8)
    scale = torch.rand((6, 7), generator=gen)
    staged = [
        torch.randint(-100, 100, (2, 7, 129), generator=gen, dtype=torch.int8),
        torch.rand((2, 7)),
    ]
    slots = torch.tensor([4, 1])
    want = [w13.clone(), scale.clone()]
    for w, s in zip(want, staged, strict=True):
        w[slots] = s
    weights = [w13.to(npu), scale.to(npu)]
    ptrs = [w.data_ptr() for w in weights]
    torch.ops.eplb_rt.update_expert_weights_(weights, [s.to(npu) for s in staged], slots.to(npu))
    assert [w.data_ptr() for w in weights] == ptrs
    for got, exp in zip(weights, want, strict=True):
        assert torch.equal(got.cpu(), exp)

    log2phy = torch.zeros((5, 2), dtype=torch.int32, device=npu)
    logcnt = torch.zeros(5, dtype=torch.int32, device=npu)
    new_log2phy = torch.tensor([[0, -1], [1, 2], [3, -1], [4, -1], [5, -1]], dtype=torch.int32)
    new_logcnt = torch.tensor([1, 2, 1, 1, 1], dtype=torch.int32)
    torch.ops.eplb_rt.update_expert_map_(
        log2phy, logcnt, None, None, new_log2phy.to(npu), new_logcnt.to(npu), None, None, 6
    )
    assert torch.equal(log2phy.cpu(), new_log2phy)
    assert torch.equal(logcnt.cpu(), new_logcnt)

    # From pinned host memory: checked on the host (slot 6 >= P = 6 is refused), then copied.
    bad = new_log2phy.clone()
    bad[4, 0] = 6
    with pytest.raises(RuntimeError, match=r"new_log2phy\[4, 0\] = 6 must be a slot in \[0, P = 6"):
        torch.ops.eplb_rt.update_expert_map_(
            log2phy, logcnt, None, None, bad.pin_memory(), new_logcnt.pin_memory(), None, None, 6
        )
    swapped = new_log2phy.flip(0).contiguous()
    torch.ops.eplb_rt.update_expert_map_(
        log2phy,
        logcnt,
        None,
        None,
        swapped.pin_memory(),
        new_logcnt.flip(0).pin_memory(),
        None,
        None,
        6,
    )
    assert torch.equal(log2phy.cpu(), swapped)


def test_update_expert_map_with_all_four_tables_on_npu(npu):
    """Shares and this rank's expert map too, into views at an offset (a layer's rows of the
    runtime's [L, ...] tables), from device and from pinned host memory: the CPU op's result."""
    from tests.ops.helpers import random_expert_map, random_tables

    def tables(seed):
        t = random_tables(37, 61, 3, seed=seed)
        return [t.log2phy, t.logcnt, t.replica_share, random_expert_map(37, 61, seed)]

    for source in ("npu", "pinned"):
        old, new = tables(1), tables(2)
        want = [t.clone() for t in old]
        torch.ops.eplb_rt.update_expert_map_(*want, *new, 61)
        # Layer 1 of a two-layer table on the device: the rows start past the first layer's.
        held = [torch.stack([torch.zeros_like(t), t]).to(npu) for t in old]
        views = [h[1] for h in held]
        given = [t.to(npu) if source == "npu" else t.pin_memory() for t in new]
        torch.ops.eplb_rt.update_expert_map_(*views, *given, 61)
        for got, exp in zip(views, want, strict=True):
            assert torch.equal(got.cpu(), exp), source
        for h in held:
            assert not h[0].cpu().any()  # the other layer's rows untouched


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned start", "storage offset"])
def test_update_expert_weights_rows_off_32_bytes_on_npu(npu, offset):
    """Rows of 28 bytes (a scale row of 7 floats), every slot rewritten: neighbouring slots
    share 32-byte blocks, which different cores write with DataCopyPad; each must write only
    its own bytes (the emulation cannot show what the hardware's block writes do)."""
    gen = torch.Generator().manual_seed(3)
    whole = torch.rand((34, 7), generator=gen)  # 33 slots from row `offset`, one row spare
    staged = torch.rand((33, 7), generator=gen)
    slots = torch.randperm(33, generator=gen)
    want = whole.clone()
    want[offset : offset + 33][slots] = staged
    on_npu = whole.to(npu)
    view = on_npu[offset : offset + 33]
    torch.ops.eplb_rt.update_expert_weights_([view], [staged.to(npu)], slots.to(npu))
    assert torch.equal(on_npu.cpu(), want)  # the row outside the view untouched too


def test_first_use_check_on_npu(npu):
    """The device's route_and_count equals the CPU op (the build's SoC matches the device's)."""
    import eplb_rt
    from eplb_rt import ops

    assert eplb_rt.build_info()["npu_soc"].startswith("Ascend")
    ops.check_device(npu)
