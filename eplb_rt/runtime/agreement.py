"""What the ranks of a group agree on: the least and the greatest of each of a few integers."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def min_max(values, group) -> tuple[np.ndarray, np.ndarray]:
    """``(low [N], high [N]) int64``: the element-wise least and greatest of ``values [N]``
    (integers) over the ranks of ``group`` (``None``: this rank alone), in one all-reduce."""
    mine = np.array(values, dtype=np.int64).reshape(-1)
    if group is None:
        return mine, mine.copy()
    both = torch.from_numpy(np.concatenate([-mine, mine]))
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    n = mine.size
    return -both[:n].numpy(), both[n:].numpy()
