"""The ``deepseek`` policy: DeepSeek's expert-parallel load balancer (EPLB), written for eplb_rt.

Per layer, on the load summed over all steps:

1. **Replica allotment (min-max)**: every expert gets one replica; each redundant replica goes to
   the expert whose load per replica is highest. No expert gets more replicas than ranks.
2. **Packing (longest processing time)**: replicas, hottest first, go to the least-loaded rank
   that has a free slot (exactly ``S`` per rank) and does not hold that expert yet.

Hierarchical variant (DeepSeek's ``rebalance_experts_hierarchical``), when nodes and expert
groups divide evenly: groups are packed onto nodes first (balanced by load), then replicas are
allotted and packed within each node, so an expert's replicas stay on one node.

The policy ignores the previous placement: it plans from scratch (DeepSeek's behaviour).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit

from eplb_rt.algorithms.packing import lpt_place, pack_equal_groups
from eplb_rt.algorithms.registry import Layer, Layers, Options, option, register
from eplb_rt.algorithms.replicas import allot_replicas
from eplb_rt.placement import Topology


@dataclasses.dataclass(frozen=True)
class DeepSeekOptions(Options):
    """Options of the ``deepseek`` policy.

    Attributes:
        hierarchical: pack expert groups onto nodes first when the topology allows it
            (``num_nodes > 1``, ``num_groups > 1``, groups divide evenly); False always plans
            flat over all ranks.
    """

    hierarchical: bool = option(True)


# Inlined into the loop over layers, its only caller (numba compiles a called kernel once more
# into every kernel that calls it).
@njit(cache=True, nogil=True, inline="always")
def _hierarchical(load, num_ranks, slots_per_rank, num_nodes, num_groups):
    """``load [E] float64`` -> ``row [D * S] int64``, expert groups packed onto nodes first.

    Needs ``E % num_groups == 0``, ``num_groups % num_nodes == 0``, ``D % num_nodes == 0`` and
    ``S <= E / num_nodes``.
    """
    group_size = load.shape[0] // num_groups
    ranks_per_node = num_ranks // num_nodes
    slots_per_node = ranks_per_node * slots_per_rank
    node_of_group = pack_equal_groups(load.reshape(num_groups, group_size).sum(axis=1), num_nodes)
    row = np.empty(num_ranks * slots_per_rank, dtype=np.int64)
    for node in range(num_nodes):
        # Logical ids of this node's experts, by ascending group then expert id.
        ids = np.empty(load.shape[0] // num_nodes, dtype=np.int64)
        k = 0
        for g in range(num_groups):
            if node_of_group[g] == node:
                for j in range(group_size):
                    ids[k] = g * group_size + j
                    k += 1
        local = load[ids]
        counts = allot_replicas(local, slots_per_node, ranks_per_node)
        packed = lpt_place(local, counts, ranks_per_node)
        for i in range(slots_per_node):
            row[node * slots_per_node + i] = ids[packed[i]]
    return row


def uses_hierarchy(num_experts: int, topology: Topology, options: DeepSeekOptions) -> bool:
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


@njit(cache=True, nogil=True)
def _plan_layers(load, num_ranks, slots_per_rank, num_nodes, num_groups, hierarchical):  # noqa: PLR0917
    """Every layer of ``load [L, E] float64`` (C-contiguous) in one call: ``rows [L, P] int64``,
    by :func:`_hierarchical` where ``hierarchical``, else flat (min-max allotment, LPT)."""
    L = load.shape[0]
    D = num_ranks
    rows = np.empty((L, D * slots_per_rank), dtype=np.int64)
    for j in range(L):
        w = load[j]
        if hierarchical:
            rows[j] = _hierarchical(w, D, slots_per_rank, num_nodes, num_groups)
        else:
            rows[j] = lpt_place(w, allot_replicas(w, D * slots_per_rank, D), D)
    return rows


def plan_layers(
    layers: Layers, topo: Topology, options: DeepSeekOptions
) -> tuple[np.ndarray, None]:
    """Every planned layer at once, on its summed load: ``(rows [L', P] int64, None)``. One
    numba call: from the balancer's thread a plan returns to Python (a GIL hand-off) once, not
    once a layer."""
    load = np.ascontiguousarray(layers.load)
    hierarchical = uses_hierarchy(load.shape[1], topo, options)
    rows = _plan_layers(
        load, topo.num_ranks, topo.num_slots_per_rank, topo.num_nodes, topo.num_groups,
        hierarchical,
    )  # fmt: skip
    return rows, None


@register(
    "deepseek",
    DeepSeekOptions,
    "DeepSeek EPLB: min-max replica allotment, then LPT packing (hierarchical over nodes)",
    layers_fn=plan_layers,
)
def deepseek(layer: Layer, topo: Topology, options: DeepSeekOptions) -> np.ndarray:
    """One layer by DeepSeek's EPLB on the summed load (as :func:`plan_layers` plans it);
    returns ``row [P] int64``."""
    return plan_layers(Layers.of(layer), topo, options)[0][0]
