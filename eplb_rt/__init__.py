"""eplb_rt: expert-parallel load balancing for Mixture-of-Experts inference.

Importing the package is cheap and torch-free; ``eplb_rt.ops`` (the kernels) and
``eplb_rt.runtime`` load torch when first used.
"""

from eplb_rt.placement import Placement, Topology

__version__ = "0.1.0"
__all__ = ["Placement", "Topology", "__version__", "build_info"]


def _load_extension():
    """Imports ``eplb_rt._C`` (registering ``torch.ops.eplb_rt``) and returns it. torch, and
    torch_npu where installed, come first: an NPU build links ``libtorch_npu.so``."""
    import importlib.util

    import torch  # noqa: F401

    if importlib.util.find_spec("torch_npu") is not None:
        import torch_npu  # noqa: F401

    from eplb_rt import _C

    return _C


def build_info() -> dict:
    """What the compiled extension ``eplb_rt._C`` contains: backends, torch version, flags, and
    ``npu_soc``, the SOC_VERSION the NPU kernels were compiled for (None without them)."""
    return dict(_load_extension().build_info())
