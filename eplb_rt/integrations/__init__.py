"""The serving engines' EPLB policy interfaces over eplb_rt's policies.

* :mod:`eplb_rt.integrations.vllm`: vLLM's ``AbstractEplbPolicy`` (``vllm.general_plugins``
  entry point ``eplb_rt``);
* :mod:`eplb_rt.integrations.vllm_ascend`: vllm-ascend's ``EplbPolicy`` (dynamic EPLB);
* :mod:`eplb_rt.integrations.sglang`: SGLang's ``eplb_algorithms.rebalance_experts``
  (``sglang.srt.plugins`` entry point ``eplb_rt``).

Every adapter runs the policy named by its argument, else ``EPLB_RT_POLICY``, else
``EplbConfig().policy``. None of them imports its engine at import time.
"""
