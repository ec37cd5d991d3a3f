"""The ``deepseek`` policy: DeepSeek's expert-parallel load balancer (EPLB), written for eplb_rt.

Per layer, on the load summed over all steps:

1. **Replica allotment (min-max)**: every expert gets one replica; each redundant replica goes to
   the expert whose load per replica is highest. No expert gets more replicas than ranks.
2. **Packing (longest processing time)**: replicas, hottest first, go to the least-loaded rank
   that has a free slot (exactly ``S`` per rank) and does not hold that expert yet.

Hierarchical variant (DeepSeek's ``rebalance_experts_hierarchical``), when nodes and expert
groups divide evenly: groups are packed onto nodes first (balanced by load), then replicas are
allotted and packed within each node, so an expert's replicas stay on one node. The registry
does this for every policy (:mod:`eplb_rt.algorithms.hierarchy`).

The policy ignores the previous placement: it plans from scratch (DeepSeek's behaviour).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.packing import lpt_place
from eplb_rt.algorithms.registry import Layer, Layers, Options, option, register
from eplb_rt.algorithms.replicas import allot_replicas
from eplb_rt.placement import Topology


@dataclasses.dataclass(frozen=True)
class DeepSeekOptions(Options):
    """Options of the ``deepseek`` policy.

    Attributes:
        hierarchical: as every policy's (:class:`~eplb_rt.algorithms.registry.Options`), on by
            default here: DeepSeek's EPLB packs groups onto nodes whenever the topology allows.
    """

    hierarchical: bool = option(True)
    groups_on_episodes: ClassVar[bool] = False  # groups packed as DeepSeek's EPLB packs them


@kernel
def _plan_layers(load, num_ranks, slots_per_rank):
    """Every layer of ``load [L, E] float64`` (C-contiguous) in one call: ``rows [L, P] int64``
    by min-max allotment and LPT."""
    L = load.shape[0]
    D = num_ranks
    rows = np.empty((L, D * slots_per_rank), dtype=np.int64)
    for j in range(L):
        w = load[j]
        rows[j] = lpt_place(w, allot_replicas(w, D * slots_per_rank, D), D)
    return rows


def plan_layers(
    layers: Layers, topo: Topology, options: DeepSeekOptions
) -> tuple[np.ndarray, None]:
    """Every planned layer at once, on its summed load: ``(rows [L', P] int64, None)``. One
    numba call: from the balancer's thread a plan returns to Python (a GIL hand-off) once, not
    once a layer."""
    load = np.ascontiguousarray(layers.load)
    return _plan_layers(load, topo.num_ranks, topo.num_slots_per_rank), None


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
