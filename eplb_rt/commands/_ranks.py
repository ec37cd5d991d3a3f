"""Ranks started on one machine by one process (the demo, and the tests and benchmarks that run
several ranks): the parent serves their rendezvous on a port the system picks and holds it while
they run, since a port picked, closed and handed on could be taken by another process before
they start. Torch is imported when called: the command line starts without it."""

from __future__ import annotations

import datetime


def serve(port: int = 0):
    """The ranks' rendezvous, a ``TCPStore`` this process serves on ``port`` (0: one the system
    picks; ``.port`` says which); torch's ``DistNetworkError`` where the port is taken."""
    import torch.distributed as dist

    return dist.TCPStore("127.0.0.1", port, None, is_master=True, wait_for_workers=False)


def join(
    port: int,
    rank: int,
    world: int,
    backend: str = "gloo",
    timeout: datetime.timedelta | None = None,
) -> None:
    """Make this process rank ``rank`` of the ``world`` ranks whose rendezvous :func:`serve`
    holds on ``port``: ``init_process_group(backend, timeout=timeout)`` on that store, which
    waits as long as the group's own rendezvous would (a group made later waits on it)."""
    import torch.distributed as dist
    from torch.distributed.constants import default_pg_timeout

    wait = timeout or default_pg_timeout
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=wait)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
