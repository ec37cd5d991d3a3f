"""The migration planner: which slot receives which expert from which source slot, per layer.

Pure numpy and deterministic, so every rank computes the same plan from the same two placements
without talking to the others. The new placement comes aligned to the old one
(:func:`eplb_rt.algorithms.align.align_placement`); :func:`plan_migration` gives every slot whose
expert changed a source slot holding that expert in the old placement: the receiving rank itself
when it already holds the expert (a local copy), else a rank on the same node, else any rank.
A rank sends and receives at once, so a layer's transfer takes as long as the most experts one
rank receives or sends; an expert that one rank alone can give is sent from there whatever the
order, so those sends are counted first, then every other move takes, fewest ranks to choose
from first, the rank that sends least so far (then the lowest slot): a replica is not sent from
the rank that must also fan out an expert only it holds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eplb_rt.placement import Placement
from eplb_rt.scalars import is_integer


@dataclasses.dataclass(frozen=True)
class LayerMigration:
    """The weight moves of one layer; entry ``i`` copies the old contents of global slot
    ``src[i]`` (expert ``expert[i]``) into global slot ``dst[i]``.

    Attributes:
        layer: layer index.
        dst: ``[M] int64`` receiving slots, ascending.
        src: ``[M] int64`` source slots in the old placement.
        expert: ``[M] int64`` logical expert moved.
        slots_per_rank: ``S``, to turn global slots into ``(rank, local slot)``.
    """

    layer: int
    dst: np.ndarray
    src: np.ndarray
    expert: np.ndarray
    slots_per_rank: int

    @property
    def num_moves(self) -> int:
        return int(self.dst.size)

    @property
    def num_remote(self) -> int:
        """Moves whose source is on another rank (these cross the network)."""
        S = self.slots_per_rank
        return int((self.dst // S != self.src // S).sum())

    def received_by(self, rank: int) -> np.ndarray:
        """Indices of the entries ``rank`` receives (ascending destination slot)."""
        return np.flatnonzero(self.dst // self.slots_per_rank == rank)

    def sent_by(self, rank: int) -> np.ndarray:
        """Indices of the entries ``rank`` sends to another rank."""
        S = self.slots_per_rank
        return np.flatnonzero((self.src // S == rank) & (self.dst // S != rank))


def plan_migration(previous: Placement, new: Placement, num_nodes: int = 1) -> list[LayerMigration]:
    """Moves per layer from ``previous`` to ``new`` (aligned first, see
    :func:`eplb_rt.algorithms.align.align_placement`). Layers whose slots all keep their expert
    have no entry."""
    shape = ("num_layers", "num_experts", "num_ranks", "num_slots_per_rank")
    if any(getattr(new, name) != getattr(previous, name) for name in shape):
        raise ValueError(f"cannot migrate {previous.describe()} to {new.describe()}")
    D, S = new.num_ranks, new.num_slots_per_rank
    if not is_integer(num_nodes) or num_nodes < 1 or D % num_nodes:
        raise ValueError(
            f"num_nodes must be a positive integer dividing num_ranks ({D}), got {num_nodes!r}"
        )
    ranks_per_node = D // num_nodes
    plans = []
    for layer in np.flatnonzero((previous.phy2log != new.phy2log).any(axis=1)):
        old_row, new_row = previous.phy2log[layer], new.phy2log[layer]
        dst = np.flatnonzero(old_row != new_row)
        src = np.empty_like(dst)
        remote = []  # (ranks to choose from, move index, candidate slots)
        for i, slot in enumerate(dst):
            candidates = np.flatnonzero(old_row == new_row[slot])
            cand_rank = candidates // S
            me = slot // S
            local = candidates[cand_rank == me]
            if local.size:
                src[i] = local[0]
                continue
            same_node = cand_rank // ranks_per_node == me // ranks_per_node
            if same_node.any():
                candidates = candidates[same_node]
            remote.append((np.unique(candidates // S).size, i, candidates))
        sent = np.zeros(D, dtype=np.int64)
        for _, i, candidates in sorted(remote, key=lambda move: move[:2]):
            cand_rank = candidates // S
            best = np.lexsort((candidates, sent[cand_rank]))[0]  # least sending, lowest slot
            src[i] = candidates[best]
            sent[cand_rank[best]] += 1
        plans.append(
            LayerMigration(
                int(layer),
                dst.astype(np.int64),
                src.astype(np.int64),
                new_row[dst].astype(np.int64),
                S,
            )
        )
    return plans
