"""Balancing policies, metrics and bounds: numpy/numba only, never torch.

Importing this package registers every policy; see :mod:`eplb_rt.algorithms.registry`.
"""

from eplb_rt.algorithms.kernel_cache import install

# Before any kernel is decorated: numba picks a kernel's cache folder when it is decorated.
install()

# One import per policy module: importing it registers the policy.
from eplb_rt.algorithms import (  # noqa: E402
    deepseek,  # noqa: F401
    equilibrium,  # noqa: F401
    flashlb,  # noqa: F401
    random_baseline,  # noqa: F401
    swift,  # noqa: F401
)
from eplb_rt.algorithms.registry import (  # noqa: E402
    get_policy,
    plan,
    policy_names,
    register,
    warm_up,
)

__all__ = ["get_policy", "plan", "policy_names", "register", "warm_up"]
