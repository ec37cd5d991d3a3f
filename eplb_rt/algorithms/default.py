"""The ``default`` policy: DeepSeek's expert-parallel load balancer (EPLB), written for eplb_rt.

Per layer, on the load summed over all steps:

1. **Replica allotment (min-max)**: every expert gets one replica; each redundant replica goes to
   the expert whose load per replica is highest. No expert gets more replicas than ranks.
2. **Packing (longest processing time)**: replicas, hottest first, go to the least-loaded rank
   that has a free slot (exactly ``S`` per rank) and does not hold that expert yet.

Hierarchical variant (DeepSeek's ``rebalance_experts_hierarchical``), used when the topology has
several nodes and several expert groups that divide evenly: expert groups are first packed onto
nodes (equal number of groups per node, balanced by load), then replicas are allotted and packed
within each node, so an expert's replicas stay on one node. When the groups do not divide, or a
node would have fewer experts than slots per rank, the flat variant runs instead.

The policy ignores ``previous``: it plans from scratch (DeepSeek's behaviour).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit

from eplb_rt.algorithms._packing import (
    allot_replicas,
    expand_replicas,
    pack_distinct,
    pack_equal_groups,
)
from eplb_rt.algorithms.load import check_load
from eplb_rt.algorithms.registry import register
from eplb_rt.placement import Placement, Topology


@dataclasses.dataclass(frozen=True)
class DefaultOptions:
    """Options of the ``default`` policy.

    Attributes:
        hierarchical: pack expert groups onto nodes first when the topology allows it
            (``num_nodes > 1``, ``num_groups > 1``, groups divide evenly); False always plans
            flat over all ranks.
    """

    hierarchical: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.hierarchical, bool):
            raise ValueError(f"hierarchical must be true or false, got {self.hierarchical!r}")


@njit(cache=True, nogil=True)
def _flat_layer(load: np.ndarray, num_ranks: int, slots_per_rank: int) -> np.ndarray:
    """``load [E] float64`` -> ``phy2log [D * S] int64`` of one layer over all ranks."""
    counts = allot_replicas(load, num_ranks * slots_per_rank, num_ranks)
    experts, weights = expand_replicas(load, counts)
    return pack_distinct(experts, weights, load.shape[0], num_ranks, slots_per_rank).reshape(-1)


@njit(cache=True, nogil=True)
def _hierarchical_layer(
    load: np.ndarray, num_ranks: int, slots_per_rank: int, num_nodes: int, num_groups: int
) -> np.ndarray:
    """``load [E] float64`` -> ``phy2log [D * S] int64``, expert groups packed onto nodes first.

    Needs ``E % num_groups == 0``, ``num_groups % num_nodes == 0``, ``D % num_nodes == 0`` and
    ``S <= E / num_nodes``.
    """
    num_experts = load.shape[0]
    group_size = num_experts // num_groups
    experts_per_node = num_experts // num_nodes
    ranks_per_node = num_ranks // num_nodes
    slots_per_node = ranks_per_node * slots_per_rank
    group_load = load.reshape(num_groups, group_size).sum(axis=1)
    node_of_group = pack_equal_groups(group_load, num_nodes)
    phy2log = np.empty(num_ranks * slots_per_rank, dtype=np.int64)
    for node in range(num_nodes):
        # Logical ids of this node's experts, by ascending group then expert id.
        local_ids = np.empty(experts_per_node, dtype=np.int64)
        k = 0
        for g in range(num_groups):
            if node_of_group[g] == node:
                for j in range(group_size):
                    local_ids[k] = g * group_size + j
                    k += 1
        local_load = load[local_ids]
        counts = allot_replicas(local_load, slots_per_node, ranks_per_node)
        experts, weights = expand_replicas(local_load, counts)
        grid = pack_distinct(experts, weights, experts_per_node, ranks_per_node, slots_per_rank)
        base = node * slots_per_node
        flat = grid.reshape(-1)
        for i in range(slots_per_node):
            phy2log[base + i] = local_ids[flat[i]]
    return phy2log


@njit(cache=True, nogil=True)
def _plan_layers(  # noqa: PLR0917  (numba kernels take positional arguments)
    load: np.ndarray,
    num_ranks: int,
    slots_per_rank: int,
    num_nodes: int,
    num_groups: int,
    hierarchical: bool,
) -> np.ndarray:
    """``load [L, E] float64`` -> ``phy2log [L, D * S] int64`` for every layer."""
    num_layers = load.shape[0]
    out = np.empty((num_layers, num_ranks * slots_per_rank), dtype=np.int64)
    for layer in range(num_layers):
        row = np.ascontiguousarray(load[layer])
        if hierarchical:
            out[layer] = _hierarchical_layer(row, num_ranks, slots_per_rank, num_nodes, num_groups)
        else:
            out[layer] = _flat_layer(row, num_ranks, slots_per_rank)
    return out


def uses_hierarchy(num_experts: int, topology: Topology, options: DefaultOptions) -> bool:
    """Whether the hierarchical variant applies to ``num_experts`` experts on ``topology``."""
    nodes, groups = topology.num_nodes, topology.num_groups
    return (
        options.hierarchical
        and nodes > 1
        and groups > 1
        and num_experts % groups == 0
        and groups % nodes == 0
        and topology.num_slots_per_rank <= num_experts // nodes
    )


def warm_up() -> None:
    """Compile the numba kernels of both variants (seconds on first use, cached on disk)."""
    load = np.arange(1.0, 9.0).reshape(1, 8)
    _plan_layers(load, 4, 3, 1, 1, False)
    _plan_layers(load, 4, 2, 2, 4, True)


@register(
    "default",
    DefaultOptions,
    "DeepSeek EPLB: min-max replica allotment, then LPT packing (hierarchical over nodes)",
    warm_up=warm_up,
)
def rebalance(
    load: np.ndarray, previous: Placement | None, topology: Topology, options: DefaultOptions
) -> Placement:
    """Plan every layer with DeepSeek's EPLB.

    Args:
        load: ``[T, L, E] float64`` tokens per expert per step (validated by the registry);
            summed over ``T``.
        previous: ignored; the default policy plans from scratch.
        topology: ranks, slots per rank, nodes and expert groups.
        options: :class:`DefaultOptions`.

    Returns:
        A uniform-share :class:`Placement` of ``L`` layers on ``D x S`` slots.
    """
    del previous
    agg = np.ascontiguousarray(check_load(load).sum(axis=0))
    num_experts = agg.shape[1]
    topology.check_experts(num_experts)
    phy2log = _plan_layers(
        agg,
        topology.num_ranks,
        topology.num_slots_per_rank,
        topology.num_nodes,
        topology.num_groups,
        uses_hierarchy(num_experts, topology, options),
    )
    return Placement(phy2log, num_experts, topology.num_ranks)
