"""The accelerators a test may use, and the marks of a test that needs one."""

import pytest

from benchmarks.accel import ready


def cuda_ready() -> bool:
    """A GPU, and eplb_rt built with its CUDA backend."""
    return ready("cuda")


def npu_ready() -> bool:
    """An Ascend NPU (torch_npu installed), and eplb_rt built with its NPU backend."""
    return ready("npu")


NEEDS_CUDA = [
    pytest.mark.cuda,
    pytest.mark.skipif(not cuda_ready(), reason="needs eplb_rt's CUDA backend and a GPU"),
]
"""Marks of a GPU test: selected by ``-m cuda``, skipped without a GPU and the backend."""

NEEDS_NPU = [
    pytest.mark.npu,
    pytest.mark.skipif(not npu_ready(), reason="needs eplb_rt's NPU backend and an Ascend device"),
]
"""Marks of an NPU test: selected by ``-m npu``, skipped without a device and the backend."""

ACCELERATORS = [pytest.param("cuda", marks=NEEDS_CUDA), pytest.param("npu", marks=NEEDS_NPU)]
"""``device`` parameters of a test that runs on every accelerator present."""

ON_EVERY_DEVICE = ["cpu", *ACCELERATORS]
"""``device`` parameters of a test that runs on the CPU and on every accelerator present."""
