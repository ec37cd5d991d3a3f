"""Plain numpy expectations of the four ops, and random routing tables, for the AscendC tests.

Stand-in for ``tests/reference.py`` (written by the ops backend) until it lands on main; the
replica rule is the one of ``csrc/common/replica_rule.h``. Inputs are numpy arrays; heat is
updated in place, like the ops do.
"""

from __future__ import annotations

import numpy as np

TOKEN_STRIDE = np.uint32(40503)
CHOICE_STRIDE = np.uint32(25033)


def position_codes(step: int, num_tokens: int, top_k: int) -> np.ndarray:
    """[N, K] uint32 16-bit codes of every pair at device step ``step``."""
    n = np.arange(num_tokens, dtype=np.uint64)
    glob = ((np.uint64(step % 2**32) * np.uint64(num_tokens % 2**32) + n) % 2**32).astype(np.uint32)
    k = np.arange(top_k, dtype=np.uint32)
    with np.errstate(over="ignore"):
        code = glob[:, None] * TOKEN_STRIDE + k[None, :] * CHOICE_STRIDE
    return code & np.uint32(0xFFFF)


def weighted_replica(code: int, share_row: np.ndarray, cnt: int) -> int:
    """The float32 cumulative-share rule, summed in order exactly as the kernels do."""
    u = np.float32(code)
    cum = np.float32(0.0)
    for r in range(cnt - 1):
        cum = np.float32(cum + share_row[r])
        if u < np.float32(cum * np.float32(65536.0)):
            return r
    return cnt - 1


def route_and_count(topk_ids, log2phy, logcnt, replica_share, heat, *, step: int) -> np.ndarray:
    """Returns phy_ids [N, K] (dtype of topk_ids, -1 for padding) and adds counts to heat[row]."""
    num_tokens, top_k = topk_ids.shape
    codes = position_codes(step, num_tokens, top_k)
    phy = np.full(topk_ids.shape, -1, dtype=topk_ids.dtype)
    row = step % heat.shape[0]
    for n in range(num_tokens):
        for k in range(top_k):
            e = int(topk_ids[n, k])
            if e < 0:
                continue
            cnt = int(logcnt[e])
            code = int(codes[n, k])
            if replica_share is None:
                r = (code * cnt) >> 16
            else:
                r = weighted_replica(code, replica_share[e], cnt)
            p = int(log2phy[e, r])
            phy[n, k] = p
            heat[row, p] += 1
    return phy


def count_from_group_list(group_list, heat, step: int, slot_offset: int, cumulative: bool) -> None:
    counts = group_list.astype(np.int64)
    if cumulative:
        counts = np.diff(counts, prepend=0)
    row = step % heat.shape[0]
    heat[row, slot_offset : slot_offset + counts.size] += counts.astype(heat.dtype)


def update_expert_weights_(weights, staged, slots) -> None:
    for w, s in zip(weights, staged, strict=True):
        w[slots] = s


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
