"""The runtime a MoE model holds: heat recording, background planning, migration, commit.

``EplbRuntime`` is the entry point; see :mod:`eplb_rt.runtime.runtime`.
"""

from eplb_rt.config import EplbConfig
from eplb_rt.runtime.runtime import EplbRuntime

__all__ = ["EplbConfig", "EplbRuntime"]
