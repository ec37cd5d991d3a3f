"""Random shapes, core counts and UB sizes through the emulated kernels (hypothesis).

Complements the hand-picked odd sizes of test_ascendc_kernels.py: any tiling the host functions
produce must give exactly the expected result.
"""

from __future__ import annotations

import ascendc_expected as expected
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KIB = 1024
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def routing_cases(draw):
    num_experts = draw(st.integers(1, 40))
    max_replicas = draw(st.integers(1, 5))
    num_slots = draw(st.integers(num_experts, num_experts * max_replicas))
    return {
        "n": draw(st.integers(0, 300)),
        "k": draw(st.integers(1, 9)),
        "e": num_experts,
        "r": max_replicas,
        "p": num_slots,
        "h": draw(st.integers(1, 4)),
        "cores": draw(st.integers(1, 12)),
        "shares": draw(st.booleans()),
        "id_dtype": draw(st.sampled_from([np.int32, np.int64])),
        "ub": draw(st.sampled_from([8 * KIB, 16 * KIB, 192 * KIB])),
        "pad": draw(st.sampled_from([0.0, 0.3, 1.0])),
        "step": draw(st.integers(0, 2**40)),
        "seed": draw(st.integers(0, 2**31)),
    }


@SETTINGS
@given(case=routing_cases())
def test_route_and_count_random(sim, case):
    rng = np.random.default_rng(case["seed"])
    log2phy, logcnt = expected.random_tables(rng, case["e"], case["p"], case["r"])
    share = None
    if case["shares"]:
        share = np.zeros(log2phy.shape, dtype=np.float32)
        for e, cnt in enumerate(logcnt):
            w = rng.random(cnt).astype(np.float32)
            share[e, :cnt] = w / max(w.sum(dtype=np.float32), np.float32(1e-6))
    topk = rng.integers(0, case["e"], size=(case["n"], case["k"])).astype(case["id_dtype"])
    topk[rng.random(topk.shape) < case["pad"]] = -1
    heat = rng.integers(0, 5, size=(case["h"], case["p"])).astype(np.int32)
    phy = np.full(topk.shape, -3, dtype=case["id_dtype"])
    want_heat = heat.copy()
    want_phy = expected.route_and_count(topk, log2phy, logcnt, share, want_heat, step=case["step"])
    sim.route_and_count(
        topk,
        log2phy,
        logcnt,
        share,
        heat,
        np.array([case["step"]], np.int64),
        phy,
        core_num=case["cores"],
        ub_bytes=case["ub"],
    )
    np.testing.assert_array_equal(phy, want_phy)
    np.testing.assert_array_equal(heat, want_heat)


@SETTINGS
@given(
    s=st.integers(0, 3000),
    extra=st.integers(0, 5),
    cumulative=st.booleans(),
    dtype=st.sampled_from([np.int32, np.int64]),
    cores=st.integers(1, 6),
    seed=st.integers(0, 2**31),
)
def test_count_from_group_list_random(sim, *, s, extra, cumulative, dtype, cores, seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 100, size=s)
    group_list = (np.cumsum(counts) if cumulative else counts).astype(dtype)
    offset = int(rng.integers(0, extra + 1))
    heat = np.zeros((2, max(s + extra, 1)), dtype=np.int32)
    want = heat.copy()
    expected.count_from_group_list(group_list, want, 9, offset, cumulative)
    sim.count_from_group_list(
        group_list, heat, np.array([9], np.int64), offset, cumulative, core_num=cores
    )
    np.testing.assert_array_equal(heat, want)


@SETTINGS
@given(
    num_slots=st.integers(1, 9),
    row_bytes=st.integers(1, 70_000),
    cores=st.integers(1, 10),
    slot_dtype=st.sampled_from([np.int32, np.int64]),
    ub=st.sampled_from([4 * KIB, 192 * KIB]),
    seed=st.integers(0, 2**31),
)
def test_update_expert_weights_random(sim, *, num_slots, row_bytes, cores, slot_dtype, ub, seed):
    rng = np.random.default_rng(seed)
    moved = int(rng.integers(0, num_slots + 1))
    weights = rng.integers(0, 256, size=(num_slots, row_bytes), dtype=np.uint8)
    staged = rng.integers(0, 256, size=(moved, row_bytes), dtype=np.uint8)
    slots = rng.permutation(num_slots)[:moved].astype(slot_dtype)
    want = weights.copy()
    expected.update_expert_weights_([want], [staged], slots)
    sim.update_expert_weights([weights], [staged], slots, core_num=cores, ub_bytes=ub)
    np.testing.assert_array_equal(weights, want)
