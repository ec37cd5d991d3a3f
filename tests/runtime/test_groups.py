"""``RuntimeGroups``: the runtime's process groups, renewed after failures and released at the end.
(The runtime's own use of them: ``test_runtime_multiprocess.py``, ``test_runtime_agreement.py``.)"""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
from _dist import spawn

from eplb_rt.runtime.device import Device
from eplb_rt.runtime.groups import RuntimeGroups, group_timeout


def _all(groups: RuntimeGroups) -> list:
    return [groups.control, groups.balancer, groups.migration]


def test_one_process_makes_no_group_and_releases_nothing():
    groups = RuntimeGroups([0], Device("cpu"))
    groups.start()
    assert not groups.multi and not groups.local
    assert _all(groups) == [None, None, None]
    groups.release()
    groups.release()
    assert _all(groups) == [None, None, None] and groups.retired == []


def _lifecycle(rank: int, world: int) -> None:
    groups = RuntimeGroups(list(range(world)), Device("cpu"))
    assert groups.multi and not groups.local
    assert groups.control is not None and groups.balancer is None and groups.migration is None
    groups.start()
    made = _all(groups)
    assert len({id(g) for g in made}) == 3
    for group in made:  # each one works, over every rank, with the engine's timeout
        t = torch.ones(1)
        dist.all_reduce(t, group=group)
        assert t.item() == world
        assert group_timeout(group) == datetime.timedelta(seconds=23)
    old = groups.migration
    new = groups.renew_migration()
    assert new is groups.migration and new is not old and groups.retired == [old]
    groups.renew_balancer()
    renewed = groups.balancer
    assert renewed is not made[1] and groups.retired == [old, made[1]]
    destroyed = []
    destroy = dist.destroy_process_group
    dist.destroy_process_group = lambda group=None: destroyed.append(group)
    try:
        groups.release()
        groups.release()  # idempotent
    finally:
        dist.destroy_process_group = destroy
    assert _all(groups) == [None, None, None] and groups.retired == []
    assert sorted(map(id, destroyed)) == sorted(map(id, [*made, new, renewed]))


@pytest.mark.multiprocess
def test_groups_over_the_whole_world_are_made_renewed_and_destroyed():
    spawn(_lifecycle, 2, timeout_s=23)


def _part_of_the_world(rank: int, world: int) -> None:
    ranks = [0, 1] if rank < 2 else [2]
    groups = RuntimeGroups(ranks, Device("cpu"))
    assert groups.local is (rank < 2)
    groups.start()
    if rank < 2:
        t = torch.ones(1)
        dist.all_reduce(t, group=groups.migration)
        assert t.item() == 2
    destroyed = []
    destroy = dist.destroy_process_group
    dist.destroy_process_group = lambda group=None: destroyed.append(group)
    try:
        groups.release()
    finally:
        dist.destroy_process_group = destroy
    # Named after the names in use, a destroyed group's name would be taken by the next one:
    # kept to the end of the process.
    assert destroyed == [] and _all(groups) == [None, None, None]


@pytest.mark.multiprocess
def test_groups_over_part_of_the_world_are_kept():
    spawn(_part_of_the_world, 3)
