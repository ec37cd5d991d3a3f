"""ops.check_device: the first-use check of a device backend against the CPU op."""

from __future__ import annotations

import pytest

from eplb_rt import ops


def test_cpu_passes_its_own_check():
    ops.check_device("cpu")


def test_a_backend_that_does_nothing_is_reported(monkeypatch):
    """The second run (the 'device') launches nothing, as a kernel built for another SoC does.
    The CPU op's first pairs, by hand (step 3, N = 5): token 0 has position 15, code
    15 * 40503 mod 2^16 = 17721 >= 0.25 * 2^16, so expert 0 takes replica 1 (slot 3); its choice
    1 has code 42754 >= 0.5 * 2^16: expert 2's replica 1 (slot 2); token 1: slot 1, padding."""
    real = ops._route_and_count
    runs = []

    def first_run_only(*args):
        runs.append(args)
        if len(runs) == 1:
            real(*args)

    monkeypatch.setattr(ops, "_route_and_count", first_run_only)
    with pytest.raises(
        RuntimeError,
        match=r"the cpu kernels fail their first-use check \(a few pairs\): route_and_count gave "
        r"phy_ids \+ heat row \[-7, -7, .*\]\.\.\., the CPU op \[3, 2, 1, -1, .*\(15 of 15 values "
        r"differ\)\. This build: .*'npu_soc'",
    ):
        ops.check_device("cpu")
    assert len(runs) == 2


def test_counts_lost_between_cores_are_reported(monkeypatch):
    """Cores adding into one heat row at once may lose counts (atomics the device lacks): the
    few pairs by hand run on one core, so a batch of 512 pairs over many is checked too. Here
    the 'device' loses one count of the large batch."""
    real = ops._route_and_count
    runs = []

    def loses_one(*args):
        ids, heat, phy = args[0], args[4], args[6]
        runs.append(ids.shape)
        real(*args)
        if len(runs) == 4:  # the device's run of the second case
            heat[1, int(phy[phy >= 0][0])] -= 1

    monkeypatch.setattr(ops, "_route_and_count", loses_one)
    with pytest.raises(
        RuntimeError, match=r"first-use check \(512 pairs over many cores\).*\(1 of 623 values"
    ):
        ops.check_device("cpu")
    assert [tuple(s) for s in runs] == [(5, 2), (5, 2), (64, 8), (64, 8)]


def test_compiled_code_skips_the_check(monkeypatch):
    """Traced, the check (a tiny op on the device, compared on the host) broke the graph where
    a first call on a device happened under torch.compile, and failed on fake tensors."""
    import torch

    def unreachable(device):
        raise AssertionError(f"check_device({device}) ran inside compiled code")

    monkeypatch.setattr(ops, "check_device", unreachable)
    monkeypatch.setattr(ops, "_checked_devices", set())
    accelerator = torch.device("cuda", 0)  # never touched: only its type decides the check

    def first_call(x):
        ops._first_use(accelerator)
        return x + 1

    compiled = torch.compile(first_call, backend="eager", fullgraph=True)
    assert compiled(torch.ones(2)).tolist() == [2.0, 2.0]
    with pytest.raises(AssertionError, match="ran inside compiled code"):
        first_call(torch.ones(2))  # eager, the check runs


def test_a_device_named_without_index_counts_as_the_current_one(monkeypatch):
    """``check_device("cuda")`` before a graph capture: the ops' own tensors say ``cuda:0``,
    and the check must not run again (inside the capture) for want of an index."""
    import torch

    monkeypatch.setattr(ops, "_check_cases", lambda: [])  # no CUDA here: the bookkeeping only
    monkeypatch.setattr(ops, "_checked_devices", set())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    ops.check_device("cuda")
    assert ops._checked_devices == {torch.device("cuda", 0)}
    monkeypatch.setattr(ops, "check_device", lambda device: pytest.fail(f"checked {device} again"))
    ops._first_use(torch.device("cuda", 0))
