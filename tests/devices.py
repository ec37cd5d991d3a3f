"""The accelerators a test may use, and the marks of a test that needs one."""

import pytest

from benchmarks.accel import ready

NEEDS_CUDA = [
    pytest.mark.cuda,
    pytest.mark.skipif(not ready("cuda"), reason="needs eplb_rt's CUDA backend and a GPU"),
]
"""Marks of a GPU test: selected by ``-m cuda``, skipped without a GPU and the backend."""

NEEDS_NPU = [
    pytest.mark.npu,
    pytest.mark.skipif(not ready("npu"), reason="needs eplb_rt's NPU backend and an Ascend device"),
]
"""Marks of an NPU test: selected by ``-m npu``, skipped without a device and the backend."""

ACCELERATORS = [pytest.param("cuda", marks=NEEDS_CUDA), pytest.param("npu", marks=NEEDS_NPU)]
"""``device`` parameters of a test that runs on every accelerator present."""

ON_EVERY_DEVICE = ["cpu", *ACCELERATORS]
"""``device`` parameters of a test that runs on the CPU and on every accelerator present."""
