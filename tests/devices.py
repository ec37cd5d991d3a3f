"""The accelerators a test may use, and the marks of a test that needs one."""

import pytest
import torch

import eplb_rt


def cuda_ready() -> bool:
    """A GPU, and eplb_rt built with its CUDA backend."""
    return torch.cuda.is_available() and bool(eplb_rt.build_info()["backends"]["cuda"])


NEEDS_CUDA = [
    pytest.mark.cuda,
    pytest.mark.skipif(not cuda_ready(), reason="needs eplb_rt's CUDA backend and a GPU"),
]
"""Marks of a GPU test: selected by ``-m cuda``, skipped without a GPU and the backend."""

CPU_AND_CUDA = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]
"""``device`` parameters of a test that runs on the CPU and, where there is one, a GPU."""
