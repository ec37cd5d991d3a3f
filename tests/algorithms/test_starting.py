"""The layout before any heat: the flat layer against its rule written out."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.algorithms.starting import blank_layers, block_row, starting_row
from eplb_rt.placement import Placement, Topology


def _reference_starting_row(E: int, topo: Topology) -> np.ndarray:
    """The flat starting layer, written out: replicas spread evenly over the experts, each
    expert first on rank ``e * D // E``, then round by round each further replica on the free
    rank (room left, the expert absent) of least summed ``1 / replicas`` of what it holds, the
    first from the expert's own rank on ties; the trivial layout where none is free."""
    D, S = topo.num_ranks, topo.num_slots_per_rank
    counts = np.full(E, topo.num_slots // E)
    extra = topo.num_slots % E
    counts[((np.arange(extra) + 0.5) * E / max(extra, 1)).astype(np.int64)] += 1
    held = [[e for e in range(E) if e * D // E == r] for r in range(D)]
    for replica in range(1, int(counts.max())):
        for e in np.flatnonzero(counts > replica):
            free = [r for r in range(D) if len(held[r]) < S and e not in held[r]]
            if not free:
                return Placement.initial(1, E, topo).phy2log[0]
            home = e * D // E
            held[min(free, key=lambda r: ((1.0 / counts[held[r]]).sum(), (r - home) % D))].append(e)
    return np.concatenate([np.array(h, dtype=np.int64) for h in held])


@pytest.mark.parametrize("seed", range(4))
def test_starting_layer_is_its_rule(seed):
    rng = np.random.default_rng(seed)
    for _ in range(100):
        D, S = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        E = int(rng.integers(S, D * S + 1))
        topo = Topology(D, S)
        np.testing.assert_array_equal(
            starting_row(E, topo), _reference_starting_row(E, topo), err_msg=f"{topo}"
        )


def test_the_row_is_laid_out_once_and_read_only():
    topo = Topology(32, 9, num_nodes=4, num_groups=8)
    row = starting_row(256, topo)
    assert starting_row(256, topo) is row
    with pytest.raises(ValueError, match="read-only"):
        row[0] = 1
    assert np.array_equal(row, starting_row(256, Topology(32, 9, num_nodes=4, num_groups=8)))


def test_blank_layers_are_the_starting_the_trivial_and_the_block_layouts():
    topo = Topology(4, 3)
    E = 9
    start = starting_row(E, topo)
    trivial = Placement.initial(1, E, topo).phy2log[0]
    blocks = block_row(E, 4, 3)
    fitted = np.roll(start, 3)  # the same experts on other ranks: a layout a plan may choose
    rows = np.stack([start, trivial, blocks, fitted, start[::-1]])
    assert blank_layers(rows, E, topo).tolist() == [True, True, True, False, False]


def test_block_row_golden():
    # Blocks of 3, 2, 2, 2 experts; the three redundant slots go to ranks 3, 2, 1, each the
    # expert after its rank's last (rank 3's wraps to 0).
    assert block_row(9, 4, 3).tolist() == [0, 1, 2, 3, 4, 5, 5, 6, 7, 7, 8, 0]
    assert block_row(3, 4, 1).tolist() == [0, 1, 2, 1]  # an empty rank takes expert 1
    assert block_row(64, 8, 9).reshape(8, 9)[:, -1].tolist() == [8, 16, 24, 32, 40, 48, 56, 0]
    with pytest.raises(ValueError, match="read-only"):
        block_row(9, 4, 3)[0] = 1


@pytest.mark.parametrize(("E", "D", "S"), [(5, 2, 2), (2, 4, 1)])
def test_block_row_is_none_where_it_is_no_placement(E, D, S):
    # 5 experts on 4 slots; 2 experts on 4 ranks of one slot each gives rank 2 expert 2.
    assert block_row(E, D, S) is None
