"""The host emulation rejects each class of wrong kernel the way the hardware would punish it.

Every planted-fault kernel (tests/ascendc/fault_kernels.cpp) breaks exactly one rule and must
fail with a message naming that rule; its correct twin ("<name>_ok") must run cleanly, so a check
that rejects everything cannot pass.
"""

from __future__ import annotations

import time

import pytest

FAULTS = {
    "datacopy_unaligned_length": r"DataCopy GM->UB of 7 x int32 = 28 bytes: not a multiple of 32",
    "datacopypad_block_too_long": r"DataCopyPad GM->UB: blockCount 1 and blockLen 65536 bytes",
    "ub_overflow": r"Unified Buffer overflow: .* 204800 bytes > capacity 196608 bytes",
    "use_without_deque": r"Adds on a LocalTensor that is enqueued: it is used without DeQue",
    "use_after_free": r"GetValue on a LocalTensor used after FreeTensor",
    "queue_depth_exceeded": r"EnQue: queue depth 1 exceeded",
    "atomic_add_int64": r"SetAtomicAdd<int64>: atomic add on 64-bit types is not supported",
    "gm_out_of_bounds": r"out of bounds: elements \[8, 72\) of a GlobalTensor<int32> of 64",
    "pipe_race": r"GetValue on the scalar \(S\) pipe .* last written by the copy-in \(MTE2\)",
    "scalar_copy_out_race": r"DataCopy UB->GM on the copy-out \(MTE3\) pipe .* by the scalar \(S\)",
    "syncall_missing_core": r"SyncAll: 1 core\(s\) finished the kernel without reaching",
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_planted_fault_is_rejected(sim, name):
    with pytest.raises(sim.SimError, match=FAULTS[name]):
        sim.run_fault(name, block_dim=4)


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_correct_twin_runs(sim, name):
    twin = "syncall_ok" if name == "syncall_missing_core" else f"{name}_ok"
    sim.run_fault(twin, block_dim=4)


def test_sim_error_is_a_runtime_error(sim):
    assert issubclass(sim.SimError, RuntimeError)


def test_syncall_with_a_late_core_times_out_instead_of_hanging(sim):
    start = time.monotonic()
    with pytest.raises(sim.SimError, match=r"SyncAll timed out after 100 ms: 3 of 4 cores arrived"):
        sim.run_fault("syncall_timeout", block_dim=4, timeout_ms=100)
    assert time.monotonic() - start < 5.0


def test_syncall_on_one_core(sim):
    sim.run_fault("syncall_ok", block_dim=1)


def test_every_fault_kernel_is_tested(sim):
    names = set(sim.fault_kernel_names())
    covered = set(FAULTS) | {f"{n}_ok" for n in FAULTS} | {"syncall_ok", "syncall_timeout"}
    assert names == covered - {"syncall_missing_core_ok"}
