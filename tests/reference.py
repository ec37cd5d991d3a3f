"""Plain-torch references of the ops in ``torch.ops.eplb_rt`` (vectorised; slow but obvious).

Each function has the signature and the in-place effect of its wrapper in ``eplb_rt.ops``; the
tests compare the kernels with these exactly. The replica rule is the one of
``csrc/common/replica_rule.h``: unsigned 32-bit arithmetic done in int64 and masked, float32
cumulative shares summed in the same order (torch.cumsum would accumulate in float64 on the CPU).
"""

from __future__ import annotations

import torch

TOKEN_STRIDE = 40503
CHOICE_STRIDE = 25033
PERIOD_BITS = 16
PERIOD = 1 << PERIOD_BITS
_MASK32 = 0xFFFFFFFF


def position_code(
    step: int, num_tokens: int, num_choices: int, code_offset: int = 0
) -> torch.Tensor:
    """``[N, K]`` int64 codes in ``[0, 2^16)`` of every pair of a batch at device step ``step``,
    shifted by ``code_offset``."""
    n = torch.arange(num_tokens, dtype=torch.int64)
    k = torch.arange(num_choices, dtype=torch.int64)
    global_pos = ((step & _MASK32) * (num_tokens & _MASK32) + n) & _MASK32
    code = global_pos[:, None] * TOKEN_STRIDE + k[None, :] * CHOICE_STRIDE + code_offset
    return code & (PERIOD - 1)


def choose_replica(
    code: torch.Tensor, cnt: torch.Tensor, share_rows: torch.Tensor | None
) -> torch.Tensor:
    """Replica index (int64, shape of ``code``) of each pair.

    code: int64 codes; cnt: int64 replica counts of each pair's expert (same shape);
    share_rows: ``[..., R]`` float32 share rows of each pair's expert, or None (uniform).
    """
    if share_rows is None:
        return (code * cnt) >> PERIOD_BITS
    num_replicas = share_rows.shape[-1]
    cum = torch.zeros(share_rows.shape[:-1], dtype=torch.float32)
    picked = cnt - 1
    decided = torch.zeros(code.shape, dtype=torch.bool)
    u = code.to(torch.float32)
    for r in range(num_replicas - 1):  # loop over replicas (R is small), not over tokens
        cum = cum + share_rows[..., r]
        hit = (u < cum * float(PERIOD)) & (r < cnt - 1) & ~decided
        picked = torch.where(hit, r, picked)
        decided |= hit
    return picked


def route_and_count(
    topk_ids: torch.Tensor,
    log2phy: torch.Tensor,
    logcnt: torch.Tensor,
    heat: torch.Tensor,
    step: torch.Tensor,
    *,
    replica_share: torch.Tensor | None = None,
    code_offset: int = 0,
) -> torch.Tensor:
    """Reference of ``eplb_rt.ops.route_and_count``: returns phy_ids, adds into ``heat`` in place.

    topk_ids ``[N, K]`` int32|int64 (-1 padding), log2phy ``[E, R]`` int32, logcnt ``[E]`` int32,
    heat ``[H, P]`` int32, step one int64 element, replica_share ``[E, R]`` float32 or None.
    Inputs are assumed valid.
    """
    num_tokens, num_choices = topk_ids.shape
    step_value = int(step.reshape(()).item())
    ids = topk_ids.to(torch.int64)
    used = ids >= 0
    expert = ids.clamp(min=0)
    code = position_code(step_value, num_tokens, num_choices, code_offset)
    cnt = logcnt.to(torch.int64)[expert]
    shares = None if replica_share is None else replica_share[expert]
    replica = choose_replica(code, cnt, shares)
    phy = log2phy.to(torch.int64)[expert, replica.clamp(0, log2phy.shape[1] - 1)]
    phy = torch.where(used, phy, -1)
    row = step_value % heat.shape[0]
    counts = torch.bincount(phy[used], minlength=heat.shape[1])
    heat[row] += counts.to(torch.int32)
    return phy.to(topk_ids.dtype)


def count_from_group_list(
    group_list: torch.Tensor,
    heat: torch.Tensor,
    step: torch.Tensor,
    slot_offset: int,
    cumulative: bool = False,
) -> None:
    """Reference of ``eplb_rt.ops.count_from_group_list`` (in place on ``heat``)."""
    counts = group_list.to(torch.int64)
    if cumulative and counts.numel() > 0:
        counts = torch.diff(counts, prepend=counts.new_zeros(1))
    row = int(step.reshape(()).item()) % heat.shape[0]
    heat[row, slot_offset : slot_offset + counts.numel()] += counts.to(torch.int32)


def update_expert_weights_(
    weights: list[torch.Tensor], staged: list[torch.Tensor], slots: torch.Tensor
) -> None:
    """Reference of ``eplb_rt.ops.update_expert_weights_``."""
    for w, s in zip(weights, staged, strict=True):
        w[slots.to(torch.int64)] = s


def update_expert_map_(
    log2phy: torch.Tensor,
    logcnt: torch.Tensor,
    new_log2phy: torch.Tensor,
    new_logcnt: torch.Tensor,
    *,
    num_slots: int | None = None,
    replica_share: torch.Tensor | None = None,
    new_replica_share: torch.Tensor | None = None,
    expert_map: torch.Tensor | None = None,
    new_expert_map: torch.Tensor | None = None,
) -> None:
    """Reference of ``eplb_rt.ops.update_expert_map_`` (inputs assumed valid: ``num_slots``
    bounds the slots only in the op's checks)."""
    log2phy.copy_(new_log2phy)
    logcnt.copy_(new_logcnt)
    if replica_share is not None:
        replica_share.copy_(new_replica_share)
    if expert_map is not None:
        expert_map.copy_(new_expert_map)
