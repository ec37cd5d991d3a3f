"""Balancing policies, metrics and bounds: numpy/numba only, never torch.

Importing this package registers every policy; see :mod:`eplb_rt.algorithms.registry`.
"""

# One import per policy module: importing it registers the policy.
from eplb_rt.algorithms import (
    deepseek,  # noqa: F401
    equilibrium,  # noqa: F401
    flashlb,  # noqa: F401
    random_baseline,  # noqa: F401
    swift,  # noqa: F401
)
from eplb_rt.algorithms.registry import get_policy, plan, policy_names, register, warm_up

__all__ = ["get_policy", "plan", "policy_names", "register", "warm_up"]
