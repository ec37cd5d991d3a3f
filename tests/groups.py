"""The check every hierarchical placement must pass: each expert group on one node."""

from __future__ import annotations

import numpy as np


def group_nodes(phy2log, num_nodes: int, group_size: int) -> np.ndarray:
    """``[L, G] int64``: the node each group of ``group_size`` consecutive experts sits on, for
    ``phy2log [L, P]`` (or ``[P]``) with its slots split evenly over ``num_nodes`` in order;
    asserts that every group sits on one node."""
    table = np.atleast_2d(np.asarray(phy2log))
    num_slots = table.shape[1]
    node = np.arange(num_slots) // (num_slots // num_nodes)
    num_groups = int(table.max()) // group_size + 1
    out = np.empty((table.shape[0], num_groups), dtype=np.int64)
    for layer, row in enumerate(table):
        for group in range(num_groups):
            on = set(node[row // group_size == group].tolist())
            assert len(on) == 1, f"layer {layer}: group {group} spans nodes {sorted(on)}"
            out[layer, group] = on.pop()
    return out
