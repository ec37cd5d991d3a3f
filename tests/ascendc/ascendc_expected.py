"""Numpy front of ``tests/reference.py`` for the AscendC tests, and random routing tables.

The expectations are the project's one Python reference of the ops (and of the replica rule);
this module only converts: inputs are numpy arrays, heat (possibly a strided view of a ring) is
updated in place, as the ops do.
"""

from __future__ import annotations

import numpy as np
import torch

from tests import reference


def route_and_count(
    topk_ids, log2phy, logcnt, replica_share, heat, *, step: int, code_offset: int = 0
) -> np.ndarray:
    """phy_ids [N, K] (dtype of topk_ids, -1 for padding); adds the counts into heat[step % H]."""
    phy = reference.route_and_count(
        torch.from_numpy(topk_ids),
        torch.from_numpy(log2phy),
        torch.from_numpy(logcnt),
        torch.from_numpy(heat),  # shares heat's memory, so the counts land in the numpy array
        torch.tensor([step], dtype=torch.int64),
        replica_share=None if replica_share is None else torch.from_numpy(replica_share),
        code_offset=code_offset,
    )
    return phy.numpy()


def count_from_group_list(group_list, heat, step: int, slot_offset: int, cumulative: bool) -> None:
    reference.count_from_group_list(
        torch.from_numpy(group_list),
        torch.from_numpy(heat),
        torch.tensor([step], dtype=torch.int64),
        slot_offset,
        cumulative,
    )


def update_expert_weights_(weights, staged, slots) -> None:
    reference.update_expert_weights_(
        [torch.from_numpy(w) for w in weights],
        [torch.from_numpy(s) for s in staged],
        torch.from_numpy(slots),
    )


def random_tables(rng, num_experts: int, num_slots: int, max_replicas: int):
    """log2phy [E, R] int32 (-1 padded), logcnt [E] int32 with every slot used exactly once."""
    assert num_experts <= num_slots <= num_experts * max_replicas
    logcnt = np.ones(num_experts, dtype=np.int32)
    for _ in range(num_slots - num_experts):
        choices = np.flatnonzero(logcnt < max_replicas)
        logcnt[rng.choice(choices)] += 1
    slots = rng.permutation(num_slots).astype(np.int32)
    log2phy = np.full((num_experts, max_replicas), -1, dtype=np.int32)
    pos = 0
    for e in range(num_experts):
        log2phy[e, : logcnt[e]] = slots[pos : pos + logcnt[e]]
        pos += logcnt[e]
    return log2phy, logcnt


def random_shares(rng, log2phy, logcnt):
    """``[E, R] float32``: each expert's random split over its ``logcnt`` replicas (each share
    at least a little above 0), zeros on the padding."""
    share = np.zeros(log2phy.shape, dtype=np.float32)
    for e, cnt in enumerate(logcnt):
        w = rng.random(cnt).astype(np.float32) + np.float32(0.05)
        share[e, :cnt] = w / w.sum(dtype=np.float32)
    return share
