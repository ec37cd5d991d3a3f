"""The layout before any heat, one layer of it: where the runtime and ``simulate`` start
(:func:`eplb_rt.planning.starting_placement`); with the layouts the engines start from, what
the re-plan's move trades leave as the walk found it (:func:`blank_layers`,
:func:`eplb_rt.algorithms.equilibrium.plan_layers`): no load chose their slots, so no slot of
them is worth putting back.

The engines' own start layouts, read in their released code: slot ``p`` holds expert ``p mod
E`` in vLLM (``EplbState``), SGLang (``--init-expert-location trivial``) and vllm-ascend from
0.30 (without shared experts in the table); vllm-ascend up to 0.23 lays experts out in blocks
(:func:`block_row`).

Arrays as in :mod:`eplb_rt.algorithms.packing`: ``row [P] int64``, the expert of each slot,
ranks in blocks of ``S = P // D``.
"""

from __future__ import annotations

import functools

import numpy as np

from eplb_rt.algorithms.hierarchy import why_flat
from eplb_rt.placement import Placement, Topology


@functools.lru_cache(maxsize=16)
def starting_row(num_experts: int, topology: Topology) -> np.ndarray:
    """``[P] int64``, read-only (kept for the next call: every re-plan compares its layers with
    it, and at 32x9 it takes milliseconds to lay out): the contiguous layout (expert ``e`` on
    rank ``e * D // E``) plus the redundant replicas, given to experts spread over all ranks and
    put on the ranks that hold least, so the ranks carry loads as even as the min-max replica
    counts allow when experts are equally loaded (the same load where ``D * S`` is a multiple of
    ``E``, and at the shapes of DeepSeek-V3 on 32x9 or 64x5).

    Where ``topology`` asks for expert groups on nodes and they fit (:func:`~eplb_rt.algorithms.
    hierarchy.why_flat`), each node is laid out so on its own: the contiguous layout already
    keeps each group on one node, and the node's redundant slots go to its own experts. A
    hierarchical plan then starts with its groups on nodes, as it keeps them, instead of moving
    every layer's groups at once (more than a move budget allows, which left such layers as
    they were, plan after plan). ``num_experts`` must fit ``topology``
    (:meth:`~eplb_rt.placement.Topology.check_experts`)."""
    N = topology.num_nodes
    if topology.num_groups > 1 and why_flat(num_experts, topology) is None:
        node = Topology(topology.num_ranks // N, topology.num_slots_per_rank)
        M = num_experts // N
        local = _flat_row(M, node)
        row = np.concatenate([local + n * M for n in range(N)])
    else:
        row = _flat_row(num_experts, topology)
    row.setflags(write=False)
    return row


def blank_layers(rows: np.ndarray, num_experts: int, topology: Topology) -> np.ndarray:
    """``[L] bool``: which layers of ``rows [L, P]`` are a layout no load chose: this module's
    :func:`starting_row`, the trivial one most engines start from (slot ``p`` holds expert ``p
    mod E``, :meth:`~eplb_rt.placement.Placement.initial`) or vllm-ascend's older
    :func:`block_row`."""
    trivial = Placement.initial(1, num_experts, topology).phy2log[0]
    layouts = [starting_row(num_experts, topology), trivial]
    blocks = block_row(num_experts, topology.num_ranks, topology.num_slots_per_rank)
    if blocks is not None:
        layouts.append(blocks)
    return np.any([(rows == layout).all(axis=1) for layout in layouts], axis=0)


@functools.lru_cache(maxsize=16)
def block_row(num_experts: int, num_ranks: int, num_slots_per_rank: int) -> np.ndarray | None:
    """``[P] int64``, read-only: the layout vllm-ascend up to 0.23 starts from (its
    ``generate_global_placement``), or ``None`` where that is not a placement of ``num_experts``
    on ``num_ranks x num_slots_per_rank``. Each rank holds a block of consecutive experts (the
    first ``E mod D`` ranks one more), then redundant replica ``i`` goes to rank ``D - 1 - (i mod
    D)``: the expert after the last one that rank holds (mod ``E``), or expert ``(i mod D) + 1``
    on a rank that holds none."""
    D, S, E = num_ranks, num_slots_per_rank, num_experts
    sizes = np.full(D, E // D)
    sizes[: E % D] += 1
    first = np.cumsum(sizes) - sizes
    held = [list(range(f, f + n)) for f, n in zip(first.tolist(), sizes.tolist(), strict=True)]
    for i in range(max(D * S - E, 0)):
        rank = held[D - 1 - i % D]
        rank.append((rank[-1] + 1) % E if rank else i % D + 1)
    row = np.array([e for rank in held for e in rank], dtype=np.int64)
    fits = all(len(rank) == S for rank in held) and row.max() < E
    if not fits or np.bincount(row, minlength=E).min() == 0:
        return None
    row.setflags(write=False)
    return row


def _flat_row(num_experts: int, topology: Topology) -> np.ndarray:
    """:func:`starting_row` on a flat ``topology``; :meth:`Placement.initial`'s row where the
    redundant replicas find no free rank."""
    D, S, E = topology.num_ranks, topology.num_slots_per_rank, num_experts
    counts = np.full(E, topology.num_slots // E)
    extra = topology.num_slots % E
    counts[((np.arange(extra) + 0.5) * E / max(extra, 1)).astype(np.int64)] += 1
    held = [[] for _ in range(D)]
    for e in range(E):
        held[e * D // E].append(e)
    weight = 1.0 / counts
    # Per rank: its slots taken, its experts, and the summed weight of what it holds (summed
    # afresh as it grows, in the order held, so that ties fall as they always did); a replica
    # then costs a pass over the ranks' arrays, not a sum per rank (8,000 ranks took a minute).
    fill = np.array([len(h) for h in held])
    holds = np.zeros((D, E), dtype=bool)
    holds[np.arange(E) * D // E, np.arange(E)] = True
    rank_weight = np.array([weight[h].sum() for h in held])
    # One replica per expert per round, so no expert takes the last free ranks of another.
    for extra_round in range(1, int(counts.max())):
        for e in np.flatnonzero(counts > extra_round):
            free = np.flatnonzero((fill < S) & ~holds[:, e])
            if not free.size:
                return Placement.initial(1, E, topology).phy2log[0].astype(np.int64)
            # The least weight, then the first rank from the expert's own.
            lightest = free[rank_weight[free] == rank_weight[free].min()]
            rank = int(lightest[np.argmin((lightest - e * D // E) % D)])
            held[rank].append(int(e))
            fill[rank] += 1
            holds[rank, e] = True
            rank_weight[rank] = weight[held[rank]].sum()
    return np.concatenate([np.array(h) for h in held]).astype(np.int64)
