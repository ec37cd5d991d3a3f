"""Hierarchical placement for every policy: expert groups packed onto nodes, nodes planned alone.

DeepSeek-V3 routes a token to experts of at most 4 of its 8 groups. With each group's experts on
one node, a token's dispatch crosses to at most 4 nodes, and an expert's replicas share its
node. A topology asks for this with ``num_nodes > 1`` and ``num_groups > 1`` that divide evenly
(experts into groups, groups over nodes, and at most ``E / num_nodes`` slots a rank), and every
policy does it when its ``hierarchical`` option is on (``deepseek``'s default, as vLLM's and
SGLang's DeepSeek EPLB when the groups spread evenly over the nodes). It costs balance: a
node's load is that of the groups it holds, which no placement within the node can change.

Per layer:

1. **Groups onto nodes.** ``num_groups / num_nodes`` groups a node, balanced by their summed load
   (LPT, as DeepSeek's EPLB), then, but for ``deepseek``, by swaps of two groups that balance
   every episode (:func:`pack_groups`). With a placement in force, the nodes are relabelled to
   keep the most of its slots (Hungarian), so a packing that did not change moves nothing.
2. **Each node on its own.** The node's experts (its groups', ``E / num_nodes``) on its ranks
   (``D / num_nodes``) are one sub-problem for the policy, with the slots in force where they
   hold the node's experts, each at least once, and no other (a placement of the node); else
   the node is planned afresh. All sub-problems of all layers go to the policy in one call.
3. **Moves that pay.** When the placement in force already keeps every group on one node but
   the load packs the groups differently, a new packing moves whole groups between nodes. For a
   policy that prices moves (``move_cost``), the groups are also kept where they are and the
   nodes planned with the slots in force; the layer takes the cheaper of the two on the summed
   load, priced as ``equilibrium`` prices its candidates (:mod:`eplb_rt.algorithms.keeping`:
   moves that pay before the next plan, by the slowest rank's transfers with
   ``slowest_rank``), the new packing only within ``max_moved_fraction`` of the slots, and
   keeps its slots in force where neither costs less. For a policy that does not, the new
   packing is taken only where it lowers the summed load's PAR below the plan with the groups
   kept, whose nodes the policy gates as it gates a flat layer (``flashlb``'s threshold).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from eplb_rt.algorithms.align import align_rows, max_assignment
from eplb_rt.algorithms.keeping import cheaper, layer_costs, no_dearer
from eplb_rt.algorithms.load import normalise
from eplb_rt.algorithms.packing import pack_equal_groups, swap_items
from eplb_rt.placement import Topology, even_shares

if TYPE_CHECKING:  # the registry calls this module: its classes come in as arguments
    from eplb_rt.algorithms.registry import Layers

Run = Callable[["Layers", Topology, Any], "tuple[np.ndarray, np.ndarray | None]"]
"""A policy on stacked layers: ``(Layers, Topology, options) -> (rows, shares or None)``."""


def applies(num_experts: int, topology: Topology, options: Any) -> bool:
    """Whether ``num_experts`` experts on ``topology`` are placed hierarchically."""
    return bool(
        getattr(options, "hierarchical", False)
        and topology.num_groups > 1
        and why_flat(num_experts, topology) is None
    )


def nodes_to_align(num_experts: int, topology: Topology, options: Any) -> int:
    """The nodes a new placement's ranks are relabelled within when aligned to the one in force
    (:func:`~eplb_rt.algorithms.align.align_placement`): ``num_nodes`` where it is hierarchical,
    so its groups stay on their nodes; else 1 (any rank for any)."""
    return topology.num_nodes if applies(num_experts, topology, options) else 1


def why_flat(num_experts: int, topology: Topology) -> str | None:
    """Why groups asked for (``num_groups > 1``) cannot be placed hierarchically on
    ``topology``; ``None`` when they can (or none are asked for)."""
    groups, nodes, slots = topology.num_groups, topology.num_nodes, topology.num_slots_per_rank
    if groups == 1:
        return None
    if num_experts % groups:
        return f"{num_experts} experts do not split into {groups} equal groups"
    if nodes == 1:
        return "all ranks are on one node"
    if groups % nodes:
        return f"{groups} groups do not spread evenly over {nodes} nodes"
    if slots > num_experts // nodes:
        return f"{slots} slots per rank > {num_experts // nodes} experts per node"
    return None


def pack_groups(layers: Layers, topology: Topology, on_episodes: bool) -> np.ndarray:
    """``[L, G] int64``: the node of each group of ``layers``, ``G / N`` groups a node.

    LPT on the groups' summed load (DeepSeek's EPLB); with ``on_episodes``, then swaps of two
    groups between nodes while they lower the sum over the episodes of the heaviest node's load
    (:func:`~eplb_rt.algorithms.packing.swap_items`). A node's load is fixed by its groups, so
    this packing bounds the layer's balance: LPT's greedy packing of a few large groups is often
    a swap away from a better one, and a packing balanced on every episode holds for a new mix of
    them (DeepSeek-V3 on 2 nodes, BENCHMARKS.md section 2).
    """
    L, K, E = layers.episodes.shape
    G, N = topology.num_groups, topology.num_nodes
    sums = layers.load.reshape(L, G, E // G).sum(axis=2)
    packs = np.stack([pack_equal_groups(s, N) for s in sums])
    if on_episodes:
        episodes = layers.episodes.reshape(L, K, G, E // G).sum(axis=3)
        for j in range(L):
            swap_items(packs[j], episodes[j], N, G * G)
    return packs


def groups_in_force(previous: np.ndarray, topology: Topology, num_experts: int) -> np.ndarray:
    """``[L, G] int64``: the node each group's experts sit on in ``previous [L, P]``, or a row
    of -1 where a group spans nodes or a node holds another number of groups than ``G / N``."""
    L, P = previous.shape
    G, N = topology.num_groups, topology.num_nodes
    node = np.broadcast_to(np.arange(P) // (P // N), (L, P))
    group = previous // (num_experts // G)
    seen = np.zeros((L, G, N), dtype=bool)
    seen[np.arange(L)[:, None], group, node] = True
    one = seen.sum(axis=2) == 1
    out = np.where(one, seen.argmax(axis=2), -1)
    even = (np.stack([(out == n).sum(axis=1) for n in range(N)], axis=1) == G // N).all(axis=1)
    out[~(one.all(axis=1) & even)] = -1
    return out


def spread_layers(
    previous: np.ndarray, num_experts: int, topology: Topology, options: Any
) -> np.ndarray:
    """``[L] bool``: the layers of ``previous [L, P]`` whose expert groups are not each on one
    node, where the placement is hierarchical (:func:`applies`; all ``False`` where not). A plan
    puts their groups on nodes whatever it costs: what that buys, dispatch within fewer nodes, is
    not in the PAR a gate prices."""
    if not applies(num_experts, topology, options):
        return np.zeros(previous.shape[0], dtype=bool)
    return (groups_in_force(previous, topology, num_experts) < 0).any(axis=1)


def keep_nodes(
    node_of_group: np.ndarray, previous: np.ndarray, topology: Topology, num_experts: int
) -> np.ndarray:
    """``node_of_group [L, G]`` with each layer's nodes relabelled to keep the most slots of
    ``previous [L, P]`` on the node they are on (a permutation of nodes changes no balance)."""
    L, P = previous.shape
    G, N = topology.num_groups, topology.num_nodes
    out = np.empty_like(node_of_group)
    old_node = np.arange(P) // (P // N)
    for j in range(L):
        # kept[new, old]: slots on old node whose expert's group the packing puts on new.
        new_node = node_of_group[j, previous[j] // (num_experts // G)]
        kept = np.zeros((N, N))
        np.add.at(kept, (new_node, old_node), 1.0)
        out[j] = max_assignment(kept)[node_of_group[j]]
    return out


def expert_ids(node_of_group: np.ndarray, num_experts: int, num_nodes: int) -> np.ndarray:
    """``[L, N, E / N] int64``: each node's experts, by group then expert id."""
    L, G = node_of_group.shape
    N = num_nodes
    size = num_experts // G
    groups = np.argsort(node_of_group, axis=1, kind="stable").reshape(L, N, G // N)
    return (groups[..., None] * size + np.arange(size)).reshape(L, N, num_experts // N)


@dataclasses.dataclass(frozen=True)
class Split:
    """The ``L * N`` node sub-problems of ``L`` layers (row ``j * N + n``: layer ``j``, node
    ``n``). ``layers``: their :class:`Layers`, previous slots given where ``known``; ``ids [L *
    N, E / N]``: each sub-problem's experts (its local expert ``i`` is ``ids[:, i]``)."""

    layers: Layers
    ids: np.ndarray
    known: np.ndarray


def split(batch: Layers, topology: Topology, ids: np.ndarray) -> Split:
    """``batch``'s layers cut into node sub-problems with experts ``ids [L, N, E / N]``."""
    L, N, M = ids.shape
    P = topology.num_slots
    layer = np.repeat(np.arange(L), N)
    flat = ids.reshape(L * N, M)
    tokens = np.take_along_axis(batch.tokens[layer], flat[:, None, :], axis=2)
    load = normalise(np.take_along_axis(batch.load[layer], flat, axis=1))
    previous = share = None
    known = np.zeros(L * N, dtype=bool)
    if batch.previous is not None:
        local = np.full((L * N, batch.load.shape[1]), -1, dtype=np.int64)
        np.put_along_axis(local, flat, np.arange(M)[None, :], axis=1)
        slots = batch.previous.reshape(L * N, P // N)
        previous = np.take_along_axis(local, slots, axis=1)
        # Known: the node's slots hold its experts only, and each of them at least once (a
        # placement of the node on its own).
        held = np.zeros((L * N, M + 1), dtype=bool)
        held[np.arange(L * N)[:, None], np.where(previous >= 0, previous, M)] = True
        known = held[:, :M].all(axis=1) & ~held[:, M]
        previous = np.where(previous >= 0, previous, 0)  # rows not known: never passed on
        if batch.previous_share is not None:
            share = batch.previous_share.reshape(L * N, P // N)
    sub = type(batch)(load, previous, share, batch.index[layer], tokens, batch.steps, batch.counts)
    return Split(sub, flat, known)


def solve(parts: Split, topology: Topology, options: Any, run: Run):
    """Every sub-problem planned (those with known previous slots in one call, the others in
    another) and put back together: ``(rows [L, P] int64, shares [L, P] or None)``."""
    N = topology.num_nodes
    node = Topology(topology.num_ranks // N, topology.num_slots_per_rank)
    total, M = parts.ids.shape
    local = np.empty((total, topology.num_slots // N), dtype=np.int64)
    shares = None
    for with_previous in (True, False):
        mask = parts.known if with_previous else ~parts.known
        if not mask.any():
            continue
        rows, got = run(parts.layers.take(mask, with_previous), node, options)
        local[mask] = rows
        if got is not None:
            if shares is None:
                shares = np.full(local.shape, np.nan)
            shares[mask] = got
    if shares is not None and np.isnan(shares).any():
        # One part has shares and the other none: that one splits each expert evenly.
        even = np.isnan(shares).any(axis=1)
        shares[even] = even_shares(local[even], M)
    rows = np.take_along_axis(parts.ids, local, axis=1).reshape(-1, topology.num_slots)
    return rows, None if shares is None else shares.reshape(rows.shape)


def plan(batch: Layers, topology: Topology, options: Any, run: Run):
    """``batch``'s layers placed hierarchically by the policy ``run``: ``(rows [L, P] int64,
    shares [L, P] or None)``, as the module's docstring says; with a placement in force, each
    layer's ranks relabelled within their nodes to keep the most of its slots."""
    E, N = batch.load.shape[1], topology.num_nodes

    def placed(layers: Layers, node_of_group: np.ndarray):
        parts = split(layers, topology, expert_ids(node_of_group, E, N))
        return solve(parts, topology, options, run)

    def aligned(planned: tuple, previous: np.ndarray):
        rows, shares = planned
        return align_rows(rows, previous, topology.num_ranks, E, shares, num_nodes=N)

    fresh = pack_groups(batch, topology, options.groups_on_episodes)
    if batch.previous is None:
        return placed(batch, fresh)
    fresh = keep_nodes(fresh, batch.previous, topology, E)
    rows, shares = aligned(placed(batch, fresh), batch.previous)
    priced = hasattr(options, "move_cost")
    if priced and shares is None:
        rows = _nodes_that_pay(rows, batch, topology, options)
    held = groups_in_force(batch.previous, topology, E)
    grouped = (held >= 0).all(axis=1)
    # Layers whose groups would change node: also plan them with the groups where they are,
    # each node then gated by the policy as a flat layer is, and take the cheaper (unpriced:
    # a new packing only where it lowers the PAR).
    moved = np.flatnonzero(grouped & (held != fresh).any(axis=1))
    if moved.size:
        sub = batch.take(moved)
        kept = aligned(placed(sub, held[moved]), sub.previous)
        rows, shares = cheaper(
            batch, moved, (rows, shares), kept, topology=topology, options=options
        )
    if not priced:  # the policy's own gate ruled each node with slots in force
        return rows, shares
    # And none dearer than keeping its slots, as in a flat plan (the nodes price their moves
    # against their own PAR, shares too, and a new packing is compared with the groups kept).
    whole = np.flatnonzero(grouped)
    if whole.size:
        share = None if batch.previous_share is None else batch.previous_share[whole]
        rows, shares = cheaper(
            batch, whole, (rows, shares), (batch.previous[whole], share),
            topology=topology, options=options,
        )  # fmt: skip
    # Layers whose groups are not on one node each (a flat placement in force): the plan puts
    # them there, whatever the price of the moves (placing groups on nodes is what the option
    # asks for, and what it buys, dispatch within fewer nodes, is not in the PAR), unless that
    # moves more than the budget: then the layer keeps its slots.
    loose = np.flatnonzero(~grouped)
    if loose.size:
        previous = batch.previous[loose]
        prev_shares = None if batch.previous_share is None else batch.previous_share[loose]
        other = (previous, prev_shares)
        rows, shares = cheaper(
            batch, loose, (rows, shares), other, topology=topology, options=options, price=False
        )
    return rows, shares


def _nodes_that_pay(rows: np.ndarray, batch: Layers, topology: Topology, options: Any):
    """``rows [L, P]`` with each node's slots set back to the previous ones where that does not
    raise the layer's cost (:func:`~eplb_rt.algorithms.keeping.no_dearer`). Each node is
    planned on its own and prices its moves against its own PAR, so a node that is not the
    layer's peak may buy moves the layer does not gain from. A node goes back only where it
    holds the same experts as before (its groups did not change node), so every expert keeps
    its replicas."""
    D, N, P = topology.num_ranks, topology.num_nodes, topology.num_slots
    width = P // N
    out = rows.copy()
    for j in range(rows.shape[0]):
        prev, which = batch.previous[j], np.array([j])
        if batch.load[j].sum() <= 0:
            continue

        def cost(row, which=which):
            return layer_costs(row[None], None, batch, which, num_ranks=D, options=options)

        best = cost(out[j])
        for n in range(N):
            part = slice(n * width, (n + 1) * width)
            same = np.array_equal(np.unique(out[j, part]), np.unique(prev[part]))
            if not same or np.array_equal(out[j, part], prev[part]):
                continue
            trial = out[j].copy()
            trial[part] = prev[part]
            trial_cost = cost(trial)
            if no_dearer(trial_cost, best)[0]:
                out[j], best = trial, trial_cost
    return out
