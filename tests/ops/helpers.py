"""Random inputs for the op tests: routing tables, heat rings and top-k ids of any size."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Tables:
    """One layer's routing tables: log2phy [E, R] int32, logcnt [E] int32, share [E, R] float32."""

    log2phy: torch.Tensor
    logcnt: torch.Tensor
    replica_share: torch.Tensor


def random_tables(num_experts: int, num_slots: int, max_replicas: int, seed: int) -> Tables:
    """Each expert gets 1..R slots in [0, P), random shares. Where P >= E, no slot holds two
    replicas (a placement's tables: the counts cut down to fit); else an expert's are distinct."""
    gen = torch.Generator().manual_seed(seed)
    logcnt = torch.randint(1, max_replicas + 1, (num_experts,), generator=gen, dtype=torch.int32)
    logcnt = logcnt.clamp(max=num_slots)
    apart = num_slots >= num_experts
    if apart:
        spare = num_slots - num_experts  # slots past one per expert
        for e in range(num_experts):
            logcnt[e] = 1 + min(int(logcnt[e]) - 1, spare)
            spare -= int(logcnt[e]) - 1
        free = torch.randperm(num_slots, generator=gen).to(torch.int32)
    log2phy = torch.full((num_experts, max_replicas), -1, dtype=torch.int32)
    share = torch.zeros((num_experts, max_replicas), dtype=torch.float32)
    used = 0
    for e in range(num_experts):
        c = int(logcnt[e])
        if apart:
            log2phy[e, :c] = free[used : used + c]
            used += c
        else:
            log2phy[e, :c] = torch.randperm(num_slots, generator=gen)[:c].to(torch.int32)
        w = torch.rand(c, generator=gen) + 0.05
        share[e, :c] = w / w.sum()
    return Tables(log2phy, logcnt, share)


def random_expert_map(num_experts: int, num_slots: int, seed: int) -> torch.Tensor:
    """``[E] int32``: a rank's local slot of each expert, distinct, about a third absent (-1)."""
    gen = torch.Generator().manual_seed(seed)
    slots = torch.randperm(max(num_slots, num_experts), generator=gen)[:num_experts]
    absent = (torch.rand(num_experts, generator=gen) < 1 / 3) | (slots >= num_slots)
    return torch.where(absent, -1, slots).to(torch.int32)


def realistic_tables(num_experts: int, num_slots: int, seed: int) -> Tables:
    """A placement-like table: every slot used once, the P - E redundant slots given to random
    experts (some get 2-3 replicas), non-uniform shares."""
    gen = torch.Generator().manual_seed(seed)
    owner = torch.cat(
        [
            torch.arange(num_experts),
            torch.randint(0, num_experts, (num_slots - num_experts,), generator=gen),
        ]
    )
    owner = owner[torch.randperm(num_slots, generator=gen)]
    logcnt = torch.bincount(owner, minlength=num_experts).to(torch.int32)
    max_replicas = int(logcnt.max())
    log2phy = torch.full((num_experts, max_replicas), -1, dtype=torch.int32)
    share = torch.zeros((num_experts, max_replicas), dtype=torch.float32)
    for e in range(num_experts):
        slots = torch.nonzero(owner == e).flatten()
        log2phy[e, : slots.numel()] = slots.to(torch.int32)
        w = torch.rand(slots.numel(), generator=gen) + 0.1
        share[e, : slots.numel()] = w / w.sum()
    return Tables(log2phy, logcnt, share)


def random_ids(
    num_tokens: int,
    top_k: int,
    num_experts: int,
    dtype: torch.dtype,
    *,
    seed: int,
    padding: float = 0.2,
) -> torch.Tensor:
    """[N, K] ids in [0, E) with about ``padding`` of them -1."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, max(num_experts, 1), (num_tokens, top_k), generator=gen)
    pad = torch.rand((num_tokens, top_k), generator=gen) < padding
    return torch.where(pad, -1, ids).to(dtype)


def heat_ring_view(num_rows: int, num_layers: int, num_slots: int, layer: int, seed: int):
    """(ring [H, L, P] int32 with random counts, its strided view ring[:, layer, :])."""
    gen = torch.Generator().manual_seed(seed)
    ring = torch.randint(0, 100, (num_rows, num_layers, num_slots), generator=gen)
    ring = ring.to(torch.int32)
    return ring, ring[:, layer, :]
