"""eplb_rt: expert-parallel load balancing for Mixture-of-Experts inference.

Importing the package is cheap and torch-free; ``eplb_rt.ops`` (the kernels) and
``eplb_rt.runtime`` load torch when first used.
"""

from eplb_rt.placement import Placement, Topology

__version__ = "0.1.0"
__all__ = ["Placement", "Topology", "__version__", "build_info"]


def build_info() -> dict:
    """What the compiled extension ``eplb_rt._C`` contains: backends, torch version, flags."""
    import torch  # noqa: F401  (the extension links against torch's libraries)

    from eplb_rt import _C

    return dict(_C.build_info())
