"""The serving engines' EPLB policy interfaces over eplb_rt's policies.

* :mod:`eplb_rt.integrations.vllm`: vLLM's ``AbstractEplbPolicy`` (``vllm.general_plugins``
  entry point ``eplb_rt``);
* :mod:`eplb_rt.integrations.vllm_ascend`: vllm-ascend's ``EplbPolicy`` (dynamic EPLB);
* :mod:`eplb_rt.integrations.sglang`: SGLang's ``eplb_algorithms.rebalance_experts``
  (``sglang.srt.plugins`` entry point ``eplb_rt``).

Every adapter runs the policy named by its argument, else ``EPLB_RT_POLICY``, else
``EplbConfig().policy``. None of them imports its engine at import time.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Engine:
    """A serving engine eplb_rt plugs into: the entry-point group that loads eplb_rt's plugin,
    the oldest and newest releases the tests run against (``scripts/fetch_peers.py``) and,
    where releases older than the oldest lack what selects eplb_rt's policy, what they lack
    and the module that, installed, runs the policy there all the same."""

    entry_points: str
    tested: tuple[str, str]
    older_lack: str | None = None
    unless: str | None = None


ENGINES = {
    "vllm": Engine(
        "vllm.general_plugins",
        ("0.13.0", "0.34.0"),
        "no EPLB policy registry (EPLB_RT_POLICY then stops vLLM's start-up)",
        "vllm_ascend",  # its dynamic EPLB takes the policy (integrations.vllm.register)
    ),
    # vLLM's entry point also runs inside vllm-ascend (a vLLM platform plugin).
    "vllm-ascend": Engine("vllm.general_plugins", ("0.13.0", "0.30.0rc2")),
    "sglang": Engine(
        "sglang.srt.plugins",
        ("0.5.11", "0.5.23"),
        "no plugin loader (nothing selects eplb_rt's algorithm)",
    ),
}
"""Engines by distribution name."""
