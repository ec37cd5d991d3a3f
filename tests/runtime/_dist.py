"""Run a function on several ranks (spawned processes) for the multiprocess tests: gloo on the
CPU; on an accelerator one device per rank, gloo for CPU tensors and the device's own backend
(NCCL, HCCL) for device tensors, as a serving engine sets it up."""

from __future__ import annotations

import datetime
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eplb_rt.commands import _ranks as ranks

DEVICE_BACKENDS = {"cuda": "nccl", "npu": "hccl"}


def _entry(rank: int, world: int, where: tuple[int, str, float | None], fn, args) -> None:
    """One rank: ``where`` is the port of the rendezvous the parent serves, the device type and
    the collectives' timeout in seconds (``None``: torch's default; ``mp.spawn`` passes
    arguments by position)."""
    import _policies  # noqa: F401  (registers the rt_test_* policies; imports torch_npu if any)

    port, device, timeout_s = where
    torch.set_num_threads(1)
    backend = "gloo"
    if device != "cpu":
        getattr(torch, device).set_device(rank)
        backend = f"cpu:gloo,{device}:{DEVICE_BACKENDS[device]}"
    timeout = None if timeout_s is None else datetime.timedelta(seconds=timeout_s)
    ranks.join(port, rank, world, backend, timeout)
    try:
        fn(rank, world, *args)
    except BaseException:
        # The other ranks then fail on a closed connection; show the root cause first.
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, *args, device: str = "cpu", timeout_s: float | None = None) -> None:
    """Run ``fn(rank, world, *args)`` on ``world`` ranks, rank ``r`` on device ``r`` of type
    ``device`` where it is not the CPU, their collectives under ``timeout_s`` (as an engine's
    ``init_process_group(timeout=...)``); raises if any rank fails."""
    store = ranks.serve()  # held while the ranks run
    where = (store.port, device, timeout_s)
    mp.spawn(_entry, args=(world, where, fn, args), nprocs=world, join=True)
