"""The host emulation rejects each class of wrong kernel the way the hardware would punish it.

Every planted-fault kernel (tests/ascendc/fault_kernels.cpp) breaks exactly one rule and must
fail with a message naming that rule; its correct twin ("<name>_ok") must run cleanly, so a check
that rejects everything cannot pass.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

FAULTS = {
    "datacopy_unaligned_length": r"DataCopy GM->UB of 7 x int32 = 28 bytes: not a multiple of 32",
    "datacopypad_block_too_long": r"DataCopyPad GM->UB: blockCount 1 and blockLen 65536 bytes",
    "ub_overflow": r"Unified Buffer overflow: .* 204800 bytes > capacity 188416 bytes",
    "use_without_deque": r"Adds on a LocalTensor that is enqueued: it is used without DeQue",
    "use_after_free": r"GetValue on a LocalTensor used after FreeTensor",
    "queue_depth_exceeded": r"EnQue: queue depth 1 exceeded",
    "cores_store_same_bytes": r"shared_store_kernel: cores \d and \d both store 256 GM bytes "
    r"without SetAtomicAdd and without a SyncAll between",
    "datacopy_empty": r"DataCopy GM->UB of 0 x int32 = 0 bytes: outside the supported range",
    "datacopypad_too_many_blocks": r"DataCopyPad GM->UB: blockCount 4096 and blockLen 32 bytes",
    "atomic_add_int64": r"SetAtomicAdd<int64>: atomic add on unsigned or 64-bit types is not",
    "atomic_add_uint32": r"SetAtomicAdd<uint32>: atomic add on unsigned or 64-bit types is not",
    "gm_out_of_bounds": r"out of bounds: elements \[8, 72\) of a GlobalTensor<int32> of 64",
    "pipe_race": r"GetValue on the scalar \(S\) pipe .* last written by the copy-in \(MTE2\)",
    "scalar_copy_out_race": r"DataCopy UB->GM on the copy-out \(MTE3\) pipe .* by the scalar \(S\)",
    "syncall_missing_core": r"SyncAll: 1 core\(s\) finished the kernel without reaching",
    "write_after_read": r"SetValue on the scalar \(S\) pipe overwrites a LocalTensor that the "
    r"copy-out \(MTE3\) pipe may still be reading, .*\(write-after-read",
    "event_wrong_pipes": r"GetValue on the scalar \(S\) pipe .* last written by the copy-in",
    "event_wait_without_set": r"WaitFlag<MTE3_S>\(1\) without a SetFlag before it",
    "event_set_never_waited": r"ended with 1 event flag\(s\) set and never waited for",
    "tbuf_position": r"allows TBuf only at TPosition::VECCALC",
    "stale_data_cache": r"GlobalTensor::GetValue: the DataCache returns a value GM no longer "
    r"holds .* call DataCacheCleanAndInvalid",
    "kernel_type_not_pinned": r"kernel_type_kernel does not pin its type with "
    r"KERNEL_TASK_TYPE_DEFAULT\(KERNEL_TYPE_AIV_ONLY\)",
    "read_without_syncall": r"sync_all_kernel: core \d reads 4 GM bytes that core \d stores "
    r"without a SyncAll between: whether it sees the old or the new value varies",
    "read_during_atomic_add": r"atomic_then_read_kernel: core \d reads 256 GM bytes that core \d "
    r"atomically adds to without a SyncAll between",
    "store_during_atomic_add": r"atomic_then_read_kernel: core 0 stores and core \d atomically "
    r"adds 256 GM bytes without a SyncAll between",
}

TWINS = {
    "datacopy_empty": "datacopy_unaligned_length_ok",
    "atomic_add_uint32": "atomic_add_int64_ok",
    "syncall_missing_core": "syncall_ok",
    "event_wait_without_set": "event_balance_ok",
    "event_set_never_waited": "event_balance_ok",
    "read_without_syncall": "syncall_ok",
    "read_during_atomic_add": "atomic_then_read_ok",
    "store_during_atomic_add": "atomic_then_read_ok",
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_planted_fault_is_rejected(sim, name):
    with pytest.raises(sim.SimError, match=FAULTS[name]):
        sim.run_fault(name, block_dim=4)


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_correct_twin_runs(sim, name):
    twin = TWINS.get(name, f"{name}_ok")
    sim.run_fault(twin, block_dim=4)


def test_sim_error_is_a_runtime_error(sim):
    assert issubclass(sim.SimError, RuntimeError)


def test_syncall_with_a_late_core_times_out_instead_of_hanging(sim):
    start = time.monotonic()
    # Several cores time out together; the first to give up reports, counted before it left.
    # Core 0 stays away until then (at most 10 s: longer means the timeout did not fire).
    with pytest.raises(sim.SimError, match=r"SyncAll timed out after 1000 ms: 3 of 4 cores"):
        sim.run_fault("syncall_timeout", block_dim=4, timeout_ms=1000)
    assert time.monotonic() - start < 5.0


def test_syncall_on_one_core(sim):
    sim.run_fault("syncall_ok", block_dim=1)


def test_every_fault_kernel_is_tested(sim):
    names = set(sim.fault_kernel_names())
    covered = set(FAULTS) | {TWINS.get(n, f"{n}_ok") for n in FAULTS} | {"syncall_timeout"}
    assert names == covered


def _races(accesses) -> bool:
    """Brute force: two touches of one round by different cores sharing a byte, not both reads
    (kind 0) and not both atomic adds (kind 2)."""
    for i, (lo, hi, core, rnd, kind) in enumerate(accesses):
        for lo2, hi2, core2, rnd2, kind2 in accesses[:i]:
            shared = rnd == rnd2 and core != core2 and lo < hi2 and lo2 < hi
            benign = kind == kind2 and kind != 1  # two reads, or two atomic adds
            if shared and not benign:
                return True
    return False


def test_race_sweep_agrees_with_every_pair(sim):
    """The launch's sweep over GM touches finds a race exactly where comparing every pair does
    (random touches: few cores and rounds, short overlapping ranges, all three kinds)."""
    rng = np.random.default_rng(7)
    raced = 0
    for _ in range(3000):
        n = int(rng.integers(1, 9))
        lo = rng.integers(0, 40, n)
        rows = [
            (int(a), int(a + rng.integers(1, 8)), int(rng.integers(0, 3)), int(rng.integers(0, 2)),
             int(rng.integers(0, 3)))
            for a in lo
        ]  # fmt: skip
        want = _races(rows)
        got = sim.racing_accesses(rows)
        assert bool(got) == want, (rows, got)
        raced += want
    assert 500 < raced < 2500  # both outcomes well represented
