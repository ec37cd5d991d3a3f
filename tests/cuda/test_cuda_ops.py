"""The CUDA kernels of the four ops, compared exactly with tests/reference.py and the CPU backend.

Needs the CUDA backend of ``eplb_rt._C`` and a GPU; skipped otherwise (by ``build_info``, never
by catching an import error). Two oracles run on CPU copies: ``tests/reference.py`` (called like
the wrappers in ``eplb_rt.ops``: route_and_count returns phy_ids, optional tables by keyword) and
the CPU backend (``torch.ops.eplb_rt`` on CPU tensors).

Sizes are odd on purpose: one expert, K=1, prime counts, an empty batch, all padding, a batch
that ends in a partial 16-byte vector, the last single-block (decode) size and the first
multi-block one, a prefill batch, and P too large for the shared-memory histogram.
"""

import importlib

import pytest
import torch

from tests.devices import NEEDS_CUDA

pytestmark = NEEDS_CUDA

ORACLES = ("reference", "cpu_backend")
OP_NAMES = (
    "route_and_count",
    "count_from_group_list",
    "update_expert_weights_",
    "update_expert_map_",
)
DECODE_MAX_PAIRS = 1024  # csrc/cuda/route_and_count.cu: kDecodeMaxPairs


def reference():
    """tests/reference.py, imported when a GPU test runs (never at collection)."""
    return importlib.import_module("tests.reference")


def oracle_fn(oracle: str, name: str):
    """Op `name` of the reference or of the CPU backend, for the ops whose reference takes the
    op's own arguments (count_from_group_list, update_expert_weights_)."""
    return getattr(torch.ops.eplb_rt if oracle == "cpu_backend" else reference(), name)


def random_layer(num_experts, num_slots, max_replicas, weighted, gen):
    """A valid layer: log2phy [E, R] int32 (-1 padded), logcnt [E] int32, shares [E, R] or None."""
    assert num_experts <= num_slots <= num_experts * max_replicas
    # Each expert gets at most max_replicas - 1 extra replicas: draw them from a pool that holds
    # every expert that many times.
    pool = torch.arange(num_experts).repeat(max_replicas - 1)
    extra = pool[torch.randperm(len(pool), generator=gen)[: num_slots - num_experts]]
    logcnt = (1 + torch.bincount(extra, minlength=num_experts)).tolist()
    slots = torch.randperm(num_slots, generator=gen).tolist()
    log2phy = torch.full((num_experts, max_replicas), -1, dtype=torch.int32)
    share = torch.zeros(num_experts, max_replicas, dtype=torch.float32)
    start = 0
    for e, cnt in enumerate(logcnt):
        log2phy[e, :cnt] = torch.tensor(slots[start : start + cnt], dtype=torch.int32)
        w = torch.rand(cnt, generator=gen) + 0.1
        share[e, :cnt] = w / w.sum()
        start += cnt
    return log2phy, torch.tensor(logcnt, dtype=torch.int32), share if weighted else None


def random_topk(num_tokens, top_k, num_experts, *, pad_fraction, dtype, gen):
    ids = torch.randint(num_experts, (num_tokens, top_k), generator=gen)
    pad = torch.rand(num_tokens, top_k, generator=gen) < pad_fraction
    return ids.masked_fill(pad, -1).to(dtype)


def random_ring(ring_size, num_layers, num_slots, gen):
    """A heat ring [H, L, P] that already holds counts, so += is told apart from =."""
    return torch.randint(0, 5, (ring_size, num_layers, num_slots), generator=gen, dtype=torch.int32)


# id, N, K, E, P, R, H, step, padding fraction
ROUTE_CASES = [
    ("empty_batch", 0, 8, 7, 11, 3, 4, 0, 0.0),
    ("one_expert_k1", 1, 1, 1, 1, 1, 1, 0, 0.0),
    ("prime", 37, 3, 7, 11, 3, 5, 13, 0.1),
    ("all_padding", 50, 4, 7, 11, 3, 2, 1, 1.0),
    ("decode", 64, 8, 256, 288, 3, 16, 5, 0.0),
    ("last_single_block", DECODE_MAX_PAIRS // 8, 8, 256, 288, 2, 16, 1023, 0.05),
    ("first_multi_block", DECODE_MAX_PAIRS // 8 + 1, 8, 256, 288, 2, 16, 9, 0.05),
    ("vector_tail_big_step", 1031, 5, 61, 67, 2, 3, 2**33 + 3, 0.1),
    ("prefill", 16384, 8, 256, 320, 4, 8, 7, 0.02),
    ("p_beyond_shared_memory", 4096, 8, 12289, 13000, 2, 2, 3, 0.0),
    # The histogram fits in shared memory, the routing tables do not (both, uniform / weighted).
    ("tables_beyond_shared_memory", 4096, 8, 4099, 4201, 3, 2, 3, 0.0),
    ("tables_staged_uniform_only", 4096, 8, 2100, 2200, 2, 3, 11, 0.05),
]


def cuda_route_and_count(topk_ids, layer, ring, *, layer_index, step, phy_ids=None):
    """The CUDA op on device copies; returns (phy_ids, ring) on the CPU."""
    log2phy, logcnt, share = layer
    dev = torch.device("cuda")
    ids_d = topk_ids.to(dev)
    ring_d = ring.to(dev)
    phy_d = torch.full_like(ids_d, -1) if phy_ids is None else phy_ids
    torch.ops.eplb_rt.route_and_count(
        ids_d,
        log2phy.to(dev),
        logcnt.to(dev),
        None if share is None else share.to(dev),
        ring_d[:, layer_index, :],
        torch.tensor(step, dtype=torch.int64, device=dev),
        phy_d,
    )
    return phy_d.cpu(), ring_d.cpu()


def oracle_route_and_count(oracle, topk_ids, layer, ring, *, layer_index, step):
    """The oracle on CPU copies; returns (phy_ids, ring)."""
    log2phy, logcnt, share = layer
    ring_c = ring.clone()
    heat, step_t = ring_c[:, layer_index, :], torch.tensor(step)
    if oracle == "reference":
        phy_c = reference().route_and_count(
            topk_ids, log2phy, logcnt, heat, step_t, replica_share=share
        )
    else:
        phy_c = torch.full_like(topk_ids, -1)
        torch.ops.eplb_rt.route_and_count(topk_ids, log2phy, logcnt, share, heat, step_t, phy_c)
    return phy_c, ring_c


@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "weighted"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("case", ROUTE_CASES, ids=[c[0] for c in ROUTE_CASES])
def test_route_and_count_matches(case, dtype, weighted, oracle):
    _, n, k, e, p, r, h, step, pad = case
    gen = torch.Generator().manual_seed(n * 7919 + e)
    layer = random_layer(e, p, r, weighted, gen)
    topk_ids = random_topk(n, k, e, pad_fraction=pad, dtype=dtype, gen=gen)
    ring = random_ring(h, 3, p, gen)
    phy_d, ring_d = cuda_route_and_count(topk_ids, layer, ring, layer_index=1, step=step)
    phy_c, ring_c = oracle_route_and_count(oracle, topk_ids, layer, ring, layer_index=1, step=step)
    assert torch.equal(phy_d, phy_c)
    assert torch.equal(ring_d, ring_c)  # the current row of layer 1 only, and exactly


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_route_and_count_unaligned_ids_take_the_scalar_path(dtype):
    """topk_ids / phy_ids that start one element past a 16-byte boundary."""
    gen = torch.Generator().manual_seed(3)
    n, k, e, p = 3001, 8, 31, 40
    layer = random_layer(e, p, 2, False, gen)
    topk_ids = random_topk(n, k, e, pad_fraction=0.05, dtype=dtype, gen=gen)
    buffer = torch.full((n * k + 1,), -1, dtype=dtype, device="cuda")
    phy_d = buffer[1:].view(n, k)
    assert phy_d.data_ptr() % 16 != 0
    ids_buffer = torch.empty(n * k + 1, dtype=dtype, device="cuda")
    ids_buffer[1:] = topk_ids.flatten().cuda()
    ring = random_ring(2, 1, p, gen)
    log2phy, logcnt, _ = layer
    ring_d = ring.cuda()
    torch.ops.eplb_rt.route_and_count(
        ids_buffer[1:].view(n, k),
        log2phy.cuda(),
        logcnt.cuda(),
        None,
        ring_d[:, 0, :],
        torch.tensor([4], device="cuda"),
        phy_d,
    )
    phy_ref, ring_ref = oracle_route_and_count(
        "reference", topk_ids, layer, ring, layer_index=0, step=4
    )
    assert torch.equal(phy_d.cpu(), phy_ref)
    assert torch.equal(ring_d.cpu(), ring_ref)


def test_route_and_count_skips_ids_it_cannot_check():
    """Documented device behaviour (csrc/cuda/launchers.h): ids < -1 or >= E are not checked on
    the device (that would need a synchronisation); they are skipped like padding and written as
    -1, and phy_ids is written for every pair."""
    gen = torch.Generator().manual_seed(5)
    n, k, e, p = 300, 4, 13, 20
    layer = random_layer(e, p, 2, True, gen)
    topk_ids = random_topk(n, k, e, pad_fraction=0.1, dtype=torch.int64, gen=gen)
    bad = topk_ids.clone()
    bad[::7, 0] = e
    bad[::11, 1] = -2
    bad[::13, 2] = 2**40
    ring = random_ring(4, 1, p, gen)
    garbage = torch.full((n, k), 7777, dtype=torch.int64, device="cuda")
    phy_d, ring_d = cuda_route_and_count(bad, layer, ring, layer_index=0, step=2, phy_ids=garbage)
    as_padding = bad.masked_fill((bad < -1) | (bad >= e), -1)
    phy_ref, ring_ref = oracle_route_and_count(
        "reference", as_padding, layer, ring, layer_index=0, step=2
    )
    assert torch.equal(phy_d, phy_ref)
    assert torch.equal(ring_d, ring_ref)


def test_route_and_count_replays_in_a_cuda_graph():
    """The ring row comes from the device step counter: a captured graph replayed after the
    counter advances counts into the next row, with no host synchronisation inside."""
    gen = torch.Generator().manual_seed(11)
    n, k, e, p, h = 64, 8, 256, 288, 4
    log2phy, logcnt, share = random_layer(e, p, 3, True, gen)
    topk_ids = random_topk(n, k, e, pad_fraction=0.05, dtype=torch.int32, gen=gen)
    dev = torch.device("cuda")
    args = [t.to(dev) for t in (topk_ids, log2phy, logcnt, share)]
    ring = torch.zeros(h, 1, p, dtype=torch.int32, device=dev)
    step = torch.zeros(1, dtype=torch.int64, device=dev)
    phy = torch.full_like(args[0], -1)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.ops.eplb_rt.route_and_count(*args, ring[:, 0, :], step, phy)
    ring.zero_()
    ring_ref = torch.zeros(h, 1, p, dtype=torch.int32)
    for s in range(h + 2):
        step.fill_(s)
        graph.replay()
        phy_ref, ring_ref = oracle_route_and_count(
            "reference", topk_ids, (log2phy, logcnt, share), ring_ref, layer_index=0, step=s
        )
        assert torch.equal(phy.cpu(), phy_ref)
    assert torch.equal(ring.cpu(), ring_ref)


def test_route_and_count_rejects_bad_metadata_and_writes_nothing():
    gen = torch.Generator().manual_seed(1)
    log2phy, logcnt, _ = random_layer(7, 11, 3, False, gen)
    log2phy, logcnt = log2phy.cuda(), logcnt.cuda()
    ids = random_topk(5, 2, 7, pad_fraction=0.0, dtype=torch.int32, gen=gen).cuda()
    ring = torch.zeros(2, 1, 11, dtype=torch.int32, device="cuda")
    step = torch.zeros(1, dtype=torch.int64, device="cuda")
    phy = torch.full_like(ids, -1)
    # The whole message: the dtype names once came out as freed bytes on a GPU (torch 2.11).
    wrong_dtype = r"phy_ids must have the dtype of topk_ids \(int32\), got int64$"
    with pytest.raises(RuntimeError, match=wrong_dtype):
        torch.ops.eplb_rt.route_and_count(
            ids, log2phy, logcnt, None, ring[:, 0, :], step, phy.long()
        )
    with pytest.raises(RuntimeError, match="logcnt must have shape"):
        torch.ops.eplb_rt.route_and_count(ids, log2phy, logcnt[:-1], None, ring[:, 0, :], step, phy)
    with pytest.raises(RuntimeError, match="heat must be int32"):
        torch.ops.eplb_rt.route_and_count(
            ids, log2phy, logcnt, None, ring[:, 0, :].long(), step, phy
        )
    assert int(ring.abs().sum()) == 0
    assert bool((phy == -1).all())


# id, S_local, P, slot_offset
GROUP_CASES = [("empty", 0, 5, 5), ("one", 1, 1, 0), ("prime", 7, 23, 16), ("wide", 300, 301, 1)]


@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize("cumulative", [False, True], ids=["plain", "cumulative"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("case", GROUP_CASES, ids=[c[0] for c in GROUP_CASES])
def test_count_from_group_list_matches(case, dtype, cumulative, oracle):
    _, s_local, p, offset = case
    gen = torch.Generator().manual_seed(s_local + p)
    counts = torch.randint(0, 50, (s_local,), generator=gen)
    group_list = (counts.cumsum(0) if cumulative else counts).to(dtype)
    ring = random_ring(3, 2, p, gen)
    ring_d = ring.cuda()
    torch.ops.eplb_rt.count_from_group_list(
        group_list.cuda(), ring_d[:, 1, :], torch.tensor(5, device="cuda"), offset, cumulative
    )
    oracle_fn(oracle, "count_from_group_list")(
        group_list, ring[:, 1, :], torch.tensor(5), offset, cumulative
    )
    assert torch.equal(ring_d.cpu(), ring)


def test_count_from_group_list_skips_negative_counts():
    """Documented device behaviour: a negative count (not checked without a sync) is skipped."""
    ring = torch.zeros(2, 1, 4, dtype=torch.int32, device="cuda")
    group_list = torch.tensor([3, -2, 5, 0], dtype=torch.int64, device="cuda")
    step = torch.tensor(1, device="cuda")
    torch.ops.eplb_rt.count_from_group_list(group_list, ring[:, 0, :], step, 0, False)
    assert ring[1, 0].tolist() == [3, 0, 5, 0]
    assert int(ring[0].abs().sum()) == 0


def test_count_from_group_list_clamps_counts_past_int32():
    """Documented device behaviour: a count past int32 (not checked without a sync) is added as
    INT32_MAX, never wrapped; a step of 2**32 - 1 between int32 prefix sums included."""
    top = 2**31 - 1
    ring = torch.zeros(1, 3, dtype=torch.int32, device="cuda")
    plain = torch.tensor([5, 2**31, 2**32 + 7], dtype=torch.int64, device="cuda")
    torch.ops.eplb_rt.count_from_group_list(plain, ring, torch.tensor(0, device="cuda"), 0, False)
    assert ring[0].tolist() == [5, top, top]
    ring = torch.zeros(1, 2, dtype=torch.int32, device="cuda")
    prefix = torch.tensor([-(2**31), top], dtype=torch.int32, device="cuda")
    torch.ops.eplb_rt.count_from_group_list(prefix, ring, torch.tensor(0, device="cuda"), 0, True)
    assert ring[0].tolist() == [0, top]


def test_count_from_group_list_rejects_slots_past_p():
    ring = torch.zeros(2, 1, 4, dtype=torch.int32, device="cuda")
    group_list = torch.ones(3, dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match="slot_offset"):
        torch.ops.eplb_rt.count_from_group_list(
            group_list, ring[:, 0, :], torch.tensor(0, device="cuda"), 2, False
        )
    assert int(ring.abs().sum()) == 0


NUM_SLOTS = 9
# Per tensor: dtype and trailing shape. Byte sizes per slot 462 (not a multiple of 16), 5, 12, 4
# and 16384 (16-byte path).
WEIGHT_SPECS = [
    (torch.bfloat16, (7, 33)),
    (torch.int8, (5,)),
    (torch.float32, (3,)),
    (torch.float32, ()),
    (torch.bfloat16, (64, 128)),
]


def random_weights(specs, rows, gen):
    out = []
    for dtype, shape in specs:
        values = torch.randint(-100, 100, (rows, *shape), generator=gen)
        out.append(values.to(dtype) if dtype == torch.int8 else values.to(dtype) / 7)
    return out


@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("num_moves", [0, 1, 4, NUM_SLOTS])
def test_update_expert_weights_matches(num_moves, slot_dtype, oracle):
    gen = torch.Generator().manual_seed(num_moves)
    weights = random_weights(WEIGHT_SPECS, NUM_SLOTS, gen)
    staged = random_weights(WEIGHT_SPECS, num_moves, gen)
    slots = torch.randperm(NUM_SLOTS, generator=gen)[:num_moves].to(slot_dtype)
    weights_d = [w.cuda() for w in weights]
    torch.ops.eplb_rt.update_expert_weights_(weights_d, [s.cuda() for s in staged], slots.cuda())
    oracle_fn(oracle, "update_expert_weights_")(weights, staged, slots)
    for got, want in zip(weights_d, weights, strict=True):
        assert torch.equal(got.cpu(), want)


def test_update_expert_weights_many_tensors_and_unaligned_storage():
    """More tensors than one launch carries (kMaxWeightTensors = 32), and int8 weights whose
    storage starts one byte past an aligned address (the byte path)."""
    gen = torch.Generator().manual_seed(17)
    specs = [WEIGHT_SPECS[i % len(WEIGHT_SPECS)] for i in range(40)]
    weights = random_weights(specs, NUM_SLOTS, gen)
    staged = random_weights(specs, 3, gen)
    slots = torch.tensor([8, 0, 5])
    weights_d = [w.cuda() for w in weights]
    base = torch.zeros(NUM_SLOTS * 5 + 1, dtype=torch.int8, device="cuda")
    unaligned = base[1:].view(NUM_SLOTS, 5)
    unaligned.copy_(weights[1].cuda())
    weights_d[1] = unaligned
    torch.ops.eplb_rt.update_expert_weights_(weights_d, [s.cuda() for s in staged], slots.cuda())
    for w, s in zip(weights, staged, strict=True):
        w[slots] = s
    for got, want in zip(weights_d, weights, strict=True):
        assert torch.equal(got.cpu(), want)
    assert int(base[0]) == 0


def test_update_expert_weights_copies_the_last_of_moves_to_one_slot():
    """Documented device behaviour: of moves given one slot (not checked without a sync), the
    last is copied whole; blocks of both would otherwise mix their words."""
    weight = torch.zeros(3, 1 << 20, dtype=torch.uint8, device="cuda")
    staged = torch.stack([torch.full((1 << 20,), v, dtype=torch.uint8) for v in (1, 2, 3)])
    torch.ops.eplb_rt.update_expert_weights_(
        [weight], [staged.cuda()], torch.tensor([0, 1, 0]).cuda()
    )
    assert bool((weight[0] == 3).all()) and bool((weight[1] == 2).all())
    assert not bool(weight[2].any())


def test_update_expert_weights_rejects_mismatched_staging_and_writes_nothing():
    weights = [torch.zeros(4, 3, device="cuda"), torch.zeros(4, 2, device="cuda")]
    staged = [torch.ones(1, 3, device="cuda"), torch.ones(1, 5, device="cuda")]
    with pytest.raises(RuntimeError, match=r"staged\[1\] must have shape"):
        torch.ops.eplb_rt.update_expert_weights_(weights, staged, torch.tensor([2], device="cuda"))
    assert all(int(w.abs().sum()) == 0 for w in weights)


def map_tables(num_experts, max_replicas, with_share, with_map, gen):
    log2phy, logcnt, share = random_layer(num_experts, num_experts + 2, max_replicas, True, gen)
    slots = torch.randperm(num_experts + 2, generator=gen)[:num_experts]
    expert_map = torch.where(torch.rand(num_experts, generator=gen) < 1 / 3, -1, slots).int()
    return [log2phy, logcnt, share if with_share else None, expert_map if with_map else None]


@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize("with_map", [False, True], ids=["no_map", "map"])
@pytest.mark.parametrize("with_share", [False, True], ids=["no_share", "share"])
def test_update_expert_map_copies_in_place(with_share, with_map, oracle):
    gen = torch.Generator().manual_seed(2)
    old = map_tables(7, 3, with_share, with_map, gen)
    new = map_tables(7, 3, with_share, with_map, gen)
    old_d = [None if t is None else t.cuda() for t in old]
    pointers = [None if t is None else t.data_ptr() for t in old_d]
    new_d = [None if t is None else t.cuda() for t in new]
    torch.ops.eplb_rt.update_expert_map_(*old_d, *new_d, 9)
    if oracle == "reference":
        names = ("replica_share", "expert_map")
        kwargs = {n: old[i + 2] for i, n in enumerate(names)}
        kwargs |= {f"new_{n}": new[i + 2] for i, n in enumerate(names)}
        reference().update_expert_map_(old[0], old[1], new[0], new[1], **kwargs)
    else:
        torch.ops.eplb_rt.update_expert_map_(*old, *new, 9)
    for got, want, ptr in zip(old_d, old, pointers, strict=True):
        if want is None:
            assert got is None
            continue
        assert got.data_ptr() == ptr  # same storage: captured graphs keep reading it
        assert torch.equal(got.cpu(), want)


def test_update_expert_map_rejects_a_lone_share_and_writes_nothing():
    gen = torch.Generator().manual_seed(4)
    old = [t.cuda() for t in map_tables(5, 2, True, True, gen)]
    new = [t.cuda() for t in map_tables(5, 2, True, True, gen)]
    before = [t.clone() for t in old]
    with pytest.raises(RuntimeError, match="replica_share and new_replica_share"):
        torch.ops.eplb_rt.update_expert_map_(*old, new[0], new[1], None, new[3], 7)
    with pytest.raises(RuntimeError, match="new_logcnt must have"):
        torch.ops.eplb_rt.update_expert_map_(*old, new[0], new[1][:-1], new[2], new[3], 7)
    for table, kept in zip(old, before, strict=True):
        assert torch.equal(table, kept)


def test_update_expert_map_from_pinned_host_tables_checks_values_then_copies():
    """New tables staged in pinned host memory: checked on the host, copied asynchronously."""
    gen = torch.Generator().manual_seed(6)
    old = [t.cuda() for t in map_tables(5, 2, True, True, gen)]
    new = [t.pin_memory() for t in map_tables(5, 2, True, True, gen)]
    pointers = [t.data_ptr() for t in old]
    bad = new[0].clone().pin_memory()
    bad[0, 0] = 7  # P = 7: out of range
    with pytest.raises(RuntimeError, match=r"new_log2phy\[0, 0\] = 7 must be a slot in \[0, P = 7"):
        torch.ops.eplb_rt.update_expert_map_(*old, bad, *new[1:], 7)
    torch.ops.eplb_rt.update_expert_map_(*old, *new, 7)
    torch.cuda.synchronize()
    for got, want, ptr in zip(old, new, pointers, strict=True):
        assert got.data_ptr() == ptr
        assert torch.equal(got.cpu(), want)


def opcheck_args():
    gen = torch.Generator().manual_seed(9)
    log2phy, logcnt, share = (t.cuda() for t in random_layer(13, 17, 2, True, gen))
    ids = random_topk(33, 3, 13, pad_fraction=0.1, dtype=torch.int64, gen=gen).cuda()
    ring = torch.zeros(4, 2, 17, dtype=torch.int32, device="cuda")
    step = torch.tensor([6], device="cuda")
    weights = [w.cuda() for w in random_weights(WEIGHT_SPECS, NUM_SLOTS, gen)]
    staged = [w.cuda() for w in random_weights(WEIGHT_SPECS, 2, gen)]
    tables = [t.cuda() for t in map_tables(7, 3, True, True, gen)]
    new_tables = [t.cuda() for t in map_tables(7, 3, True, True, gen)]
    return {
        "route_and_count": (
            ids,
            log2phy,
            logcnt,
            share,
            ring[:, 1, :],
            step,
            torch.full_like(ids, -1),
        ),
        "count_from_group_list": (
            torch.tensor([1, 4, 4, 9], dtype=torch.int32, device="cuda"),
            ring[:, 0, :],
            step,
            3,
            True,
        ),
        "update_expert_weights_": (weights, staged, torch.tensor([7, 2], device="cuda")),
        "update_expert_map_": (*tables, *new_tables, 9),
    }


@pytest.mark.parametrize("name", OP_NAMES)
def test_opcheck(name):
    torch.library.opcheck(getattr(torch.ops.eplb_rt, name).default, opcheck_args()[name])
