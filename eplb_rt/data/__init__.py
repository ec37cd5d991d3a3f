"""Data shipped with the package: the default workload of ``eplb-rt demo``.

``esft_vanilla_lite/``: per-request expert token counts of DeepSeek ESFT-vanilla-lite on four
tasks (MIT, see the folder's README.md and LICENSE.md).
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
ESFT_DIR = DATA_DIR / "esft_vanilla_lite"
ESFT_TASKS = ("intent", "law", "summary", "translation")
