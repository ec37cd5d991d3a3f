"""eplb_rt: expert-parallel load balancing for Mixture-of-Experts inference.

Importing the package is cheap and torch-free; ``eplb_rt.ops`` (the kernels) and
``eplb_rt.runtime`` load torch when first used.
"""

from eplb_rt.placement import Placement, Topology

__version__ = "0.1.0"
__all__ = ["Placement", "Topology", "__version__", "build_info"]


def _load_extension():
    """Imports ``eplb_rt._C`` (registering ``torch.ops.eplb_rt``) and returns it.

    torch, and torch_npu where it is installed, are imported first: the extension links against
    their libraries and an NPU build of it needs ``libtorch_npu.so`` already loaded.
    """
    import importlib.util

    import torch  # noqa: F401

    npu_error = None
    if importlib.util.find_spec("torch_npu") is not None:
        try:
            import torch_npu  # noqa: F401
        except (ImportError, OSError, RuntimeError) as exc:  # torch_npu without CANN
            npu_error = exc
    try:
        from eplb_rt import _C
    except ImportError as exc:
        if npu_error is not None and "torch_npu" in str(exc):
            raise ImportError(
                f"eplb_rt was built with NPU kernels but torch_npu fails to import: {npu_error}"
            ) from exc
        raise
    return _C


def build_info() -> dict:
    """What the compiled extension ``eplb_rt._C`` contains: backends, torch version, flags, and
    ``npu_soc``, the SOC_VERSION the NPU kernels were compiled for (None without them)."""
    return dict(_load_extension().build_info())
