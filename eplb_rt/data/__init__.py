"""Data shipped with the package: the default workload of ``eplb-rt demo``.

``esft_vanilla_lite/``: per-request expert token counts of DeepSeek ESFT-vanilla-lite on four
tasks (MIT, see the folder's README.md and LICENSE.md).
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
ESFT_DIR = DATA_DIR / "esft_vanilla_lite"
ESFT_TASKS = ("intent", "law", "summary", "translation")
ESFT_LAYERS = 26  # MoE layers of ESFT-vanilla-lite (DeepSeek-V2-Lite)
ESFT_EXPERTS = 64  # routed experts per layer
ESFT_TOP_K = 6  # experts per token
