"""The process groups a runtime makes over its expert-parallel ranks, and their end.

Three groups, each over the runtime's ranks only and with the engine's timeout:

* ``control`` (gloo): the runtime's agreements, made first, before anything a rank may refuse
  alone (its nodes, its slots, its placement file), so that every rank learns of a refusal at
  once instead of waiting for the refusing rank in a group it never made;
* ``balancer`` (gloo): the collectives of a plan's job, renewed when they failed on some rank;
* ``migration`` (the device's backend; gloo on the CPU): the transfers, renewed after an agreed
  failed one.

A renewed group's predecessor is kept until :meth:`RuntimeGroups.release` (to the end of the
process where the runtime's ranks are not the whole world; see :attr:`RuntimeGroups.local`),
holding its communicator's buffers (NCCL/HCCL: device memory): a price paid per failure, which
should be rare.
"""

from __future__ import annotations

import datetime
import logging

import torch
import torch.distributed as dist

from eplb_rt.runtime.device import Device

log = logging.getLogger("eplb_rt.runtime")


def group_timeout(group) -> datetime.timedelta | None:
    """The timeout ``group``'s collectives run under (its host backend's, as the engine set it
    in ``init_process_group``); ``None`` (torch's default) where the backend does not say.
    Torch has no public getter: the backend's options hold it."""
    try:
        return group._get_backend(torch.device("cpu")).options._timeout
    except (AttributeError, RuntimeError, ValueError):
        return None


class RuntimeGroups:
    """The runtime's groups over ``ranks`` (global ranks of the expert-parallel group), all
    ``None`` where there is one rank or no ``torch.distributed``.

    Args:
        ranks: the global ranks, index = expert-parallel rank.
        device: the model's device (the migration group's backend, and its first collective).
        engine_group: the group the engine gave (``None``: the world), whose timeout the groups
            take (torch's own default is 30 minutes: a stuck peer would hold a step that long).
    """

    def __init__(self, ranks: list[int], device: Device, engine_group=None) -> None:
        self.ranks = ranks
        self._device = device
        distributed = dist.is_available() and dist.is_initialized()
        self.multi = distributed and len(ranks) > 1
        self._timeout = group_timeout(engine_group or dist.group.WORLD) if distributed else None
        # Groups over every rank of the world are named by a counter that never goes back, so
        # they are destroyed at release; a group over some of them is named after the names in
        # use, and a destroyed one's name (and its keys left in the store) would be taken by
        # the next group, whose ranks could then meet stale keys and wait for ever: those are
        # kept until the process ends.
        self.local = self.multi and len(ranks) < dist.get_world_size()
        self.retired: list = []  # groups a failed collective retired
        self.control = self._new("gloo") if self.multi else None
        self.balancer = self.migration = None

    def start(self) -> None:
        """The balancer's and the migration's groups, once the ranks agree on the settings."""
        if self.multi:
            self.balancer = self._new("gloo")
            self.migration = self._new_migration()

    def _new(self, backend: str | None):
        """A group of the runtime's ranks (only they take part), with the engine's timeout."""
        return dist.new_group(
            self.ranks,
            backend=backend,
            timeout=self._timeout,
            use_local_synchronization=self.local,
        )

    def _new_migration(self):
        """A group for the transfers, its communicator set up by every rank at once: NCCL and
        HCCL set it up at a group's first call, and the first transfer's batched sends and
        receives would need every rank in it, while a layer's moves may leave some rank out
        (that transfer then waited for the engine's timeout). Called where every rank is."""
        group = self._new("gloo" if self._device.kind == "cpu" else None)
        dist.all_reduce(torch.zeros(1, device=self._device.device), group=group)
        return group

    def renew_migration(self):
        """After an agreed failed transfer, on every rank at the same boundary: a new group for
        the next transfers (returned). The failed one may have left the old group unusable (gloo
        closes a pair whose receive timed out) or holding messages nobody will receive."""
        self.retired.append(self.migration)
        self.migration = self._new_migration()
        return self.migration

    def renew_balancer(self) -> None:
        """After a balancer job's collectives failed on some rank (a peer timed out: gloo then
        closes the pair for good), on every rank at the same boundary: a new group for the jobs
        gathered from now on."""
        log.warning("the balancer's collectives failed; plans go on in a new process group")
        self.retired.append(self.balancer)
        self.balancer = self._new("gloo")

    def release(self) -> None:
        """Destroy the groups (their sockets, threads and communicators) where the names of
        groups over the whole world allow it (:attr:`local` false). Every rank destroys the same
        ones, the balancer's too where its thread still waits in a collective (gloo then raises
        there): torch names a locally synchronised group after how many groups live, so ranks
        that destroyed different numbers would name the engine's next such group differently,
        and wait for each other for ever. Idempotent."""
        groups = [self.control, self.migration, self.balancer, *self.retired]
        self.control = self.migration = self.balancer = None
        self.retired = []
        if self.local or not dist.is_initialized():
            return
        for group in groups:
            if group is None:
                continue
            try:
                dist.destroy_process_group(group)
            except Exception as err:  # the engine may have torn torch.distributed down already
                log.debug("destroying a process group at shutdown failed: %r", err)
