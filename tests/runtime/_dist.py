"""Run a function on several ranks (spawned processes) for the multiprocess tests: gloo on the
CPU; on an accelerator one device per rank, gloo for CPU tensors and the device's own backend
(NCCL, HCCL) for device tensors, as a serving engine sets it up."""

from __future__ import annotations

import datetime
import os
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DEVICE_BACKENDS = {"cuda": "nccl", "npu": "hccl"}


def _entry(rank: int, world: int, where: tuple[int, str, float | None], fn, args) -> None:
    """One rank: ``where`` is the rendezvous port, the device type and the collectives' timeout
    in seconds (``None``: torch's default; ``mp.spawn`` passes arguments by position)."""
    import _policies  # noqa: F401  (registers the rt_test_* policies; imports torch_npu if any)

    port, device, timeout_s = where
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    backend = "gloo"
    if device != "cpu":
        getattr(torch, device).set_device(rank)
        backend = f"cpu:gloo,{device}:{DEVICE_BACKENDS[device]}"
    timeout = None if timeout_s is None else datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
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
    where = (_free_port(), device, timeout_s)
    mp.spawn(_entry, args=(world, where, fn, args), nprocs=world, join=True)
