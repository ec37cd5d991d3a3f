"""``swift``: SwiftBalancer -- keep the primaries, re-fill the redundant slots, a few swaps.

Few experts move per cycle:

1. **Primaries stay**: each expert's first slot in the previous placement (or initial layout).
2. **Redundant slots re-filled** for min-max-replica counts on the current load, hottest per
   replica first, to the least-loaded rank with a free slot; a redundant slot whose expert still
   needs a replica keeps it.
3. **Capped swaps**: at most ``max_swaps``, each lowering PAR by more than ``min_gain``.
4. **No harm**: a layer keeps its previous slots unless the new ones lower its PAR by more than
   ``min_gain`` (where the no-duplicate rule blocked a replica, re-filled counts can be worse
   than those in force, which the capped swaps cannot mend).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.local_search import swap_search
from eplb_rt.algorithms.metrics import row_par
from eplb_rt.algorithms.packing import counts_from_row, stable_order
from eplb_rt.algorithms.registry import Layer, Layers, Options, option, register
from eplb_rt.algorithms.replicas import allot_replicas
from eplb_rt.placement import Placement, Topology


@dataclasses.dataclass(frozen=True)
class SwiftOptions(Options):
    """Options of the ``swift`` policy.

    Attributes:
        max_swaps: pairwise swaps per layer and cycle (each moves two slots). Placed
            hierarchically, each node is planned as a layer of its own
            (:mod:`~eplb_rt.algorithms.hierarchy`): up to this many swaps a node.
        min_gain: a swap must lower the layer's PAR (the node's, placed hierarchically) by at
            least this much.
    """

    max_swaps: int = option(4, low=0)
    min_gain: float = option(0.002, low=0)


# Inlined into the loop over layers, its only caller (numba compiles a called kernel once more
# into every kernel that calls it).
@kernel(inline=True)
def refill(prev_row, w, counts, num_ranks, num_slots_per_rank):
    """Keep each expert's first slot, re-fill the others for ``counts``; returns the new row."""
    E = w.shape[0]
    D = num_ranks
    S = num_slots_per_rank
    P = prev_row.shape[0]
    row = np.full(P, -1, dtype=np.int64)
    seen = np.zeros(E, dtype=np.bool_)
    holds = np.zeros((D, E), dtype=np.bool_)
    need = counts - 1
    loads = np.zeros(D)
    # First pass: each expert's first slot; second: redundant slots whose expert needs more.
    for redundant in (False, True):
        for p in range(P):
            e = prev_row[p]
            if row[p] >= 0 or (need[e] == 0 or holds[p // S, e] if redundant else seen[e]):
                continue
            need[e] -= redundant
            seen[e] = holds[p // S, e] = True
            row[p] = e
            loads[p // S] += w[e] / counts[e]
    order = stable_order(-(w / counts))
    for e in order:
        while need[e] > 0:
            best = -1
            for p in range(P):
                r = p // S
                if row[p] < 0 and not holds[r, e] and (best < 0 or loads[r] < loads[best // S]):
                    best = p
            if best < 0:
                break
            row[best] = e
            holds[best // S, e] = True
            loads[best // S] += w[e] / counts[e]
            need[e] -= 1
    # Slots left empty (the no-duplicate rule blocked a replica): the hottest expert per replica
    # the rank does not hold yet takes them.
    for p in range(P):
        if row[p] < 0:
            r = p // S
            for e in order:
                if not holds[r, e] and counts[e] < D:
                    row[p] = e
                    holds[r, e] = True
                    break
    return row


@kernel
def _plan_layers(load, prev, num_ranks, num_slots_per_rank, max_swaps, min_gain):  # noqa: PLR0917
    """Every layer of ``load [L, E] float64`` (C-contiguous, each layer summing 1 or 0) from
    ``prev [L, P] int64`` in one call: ``rows [L, P] int64``. ``min_gain`` is in PAR."""
    L, E = load.shape
    D = num_ranks
    rows = np.empty((L, D * num_slots_per_rank), dtype=np.int64)
    for j in range(L):
        w = load[j]
        W = w.reshape((1, E))
        counts = allot_replicas(w, D * num_slots_per_rank, D)
        row = refill(prev[j], w, counts, D, num_slots_per_rank)
        total = w.sum()
        if total > 0 and max_swaps:
            # swap_search's gain is in load units: PAR times the mean rank load
            swap_search(
                row,
                W,
                counts_from_row(row, E),
                D,
                max_swaps,
                0.0,
                min_gain * total / D,
                0.0,
            )
        gained = False
        if total > 0:
            gained = row_par(prev[j], W, D) - row_par(row, W, D) > min_gain
        rows[j] = row if gained else prev[j]
    return rows


def plan_layers(layers: Layers, topo: Topology, opts: SwiftOptions) -> tuple[np.ndarray, None]:
    """Every planned layer at once, on its summed load: ``(rows [L', P] int64, None)``, in one
    numba call (from the balancer's thread, one return to Python a plan)."""
    load = np.ascontiguousarray(layers.load)
    prev = layers.previous
    if prev is None:
        # No placement in force: the primaries come from the initial layout.
        initial = Placement.initial(1, load.shape[1], topo).phy2log.astype(np.int64)
        prev = np.repeat(initial, load.shape[0], axis=0)
    D, S = topo.num_ranks, topo.num_slots_per_rank
    return _plan_layers(load, prev, D, S, opts.max_swaps, opts.min_gain), None


@register(
    "swift",
    SwiftOptions,
    "SwiftBalancer: keep primaries, re-fill redundant slots, a few capped swaps (few moves)",
    layers_fn=plan_layers,
)
def swift(layer: Layer, topo: Topology, opts: SwiftOptions) -> np.ndarray:
    """One layer on the summed load (as :func:`plan_layers` plans it); returns ``row [P]
    int64`` (uniform shares)."""
    return plan_layers(Layers.of(layer), topo, opts)[0][0]
