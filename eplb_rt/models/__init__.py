"""Reference models that use the runtime's hooks (and the same models without EPLB)."""

from eplb_rt.models.moe import ExpertParallelMoE, MoEConfig, expert_weights

__all__ = ["ExpertParallelMoE", "MoEConfig", "expert_weights"]
