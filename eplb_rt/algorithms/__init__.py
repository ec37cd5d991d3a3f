"""Balancing policies, metrics and bounds: numpy/numba only, never torch.

Importing this package registers every policy; see :mod:`eplb_rt.algorithms.registry`.
"""

# One import per policy module: importing it registers the policy.
from eplb_rt.algorithms import default  # noqa: F401
from eplb_rt.algorithms.registry import get_policy, plan, policy_names, register, warm_up

# One import per policy module: importing registers the policy.
from eplb_rt.algorithms import equilibrium, flashlb  # noqa: F401  isort: skip

__all__ = ["get_policy", "plan", "policy_names", "register", "warm_up"]
