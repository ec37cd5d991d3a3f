"""Fixtures: the engines' EPLB modules (see ``peers.py``) and the shipped traces' cases."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

from benchmarks import traces
from eplb_rt.algorithms import metrics
from eplb_rt.algorithms.starting import blank_layers
from eplb_rt.placement import Placement, Topology
from scripts.fetch_peers import VERSIONS
from tests.integrations.peers import open_peer

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


# Module scope: one release of an engine is imported at a time (the releases share module
# names), and each module's tests run release by release.
def _peer(name: str, version: str | None = None):
    try:
        with open_peer(name, version) as modules:
            yield modules
    except RuntimeError as err:
        pytest.skip(f"{name} {version or ''} cannot be fetched: {err}")


@pytest.fixture(scope="module", params=VERSIONS["vllm-ascend"])
def ascend(request):
    """vllm-ascend's policies, EPLB worker and expert-map utilities, once per tested release."""
    yield from _peer("vllm-ascend", request.param)


@pytest.fixture(scope="module")
def ascend_newest():
    """The newest tested vllm-ascend (its FlashLB is the one ours is compared with)."""
    yield from _peer("vllm-ascend")


@pytest.fixture(scope="module", params=VERSIONS["vllm"])
def vllm(request):
    """vLLM's EPLB policy package and plugin loader, once per tested release."""
    yield from _peer("vllm", request.param)


@pytest.fixture(scope="module", params=VERSIONS["sglang"])
def sglang(request):
    """SGLang's EPLB algorithms, expert-location loader and plugin loader, once per tested
    release; tests set attributes of ``sglang.runtime`` (what the stubbed ``runtime_context``
    getters return from 0.5.19 on)."""
    yield from _peer("sglang", request.param)


# ------------------------------------------------------------------- shipped traces, shapes
def _cases():
    """``(id, load [T, L, E], Topology)`` over the shipped traces at 8, 32 and 64 ranks."""
    ds = traces.deepseek_v3("prefill_in1024", moe_only=True)
    esft = traces.esft("law")
    gpt = traces.gptoss(traces.gptoss_subsets()[0])
    return [
        ("deepseek-v3-32x9", ds, Topology(32, 9)),
        ("deepseek-v3-64x5", ds, Topology(64, 5)),
        ("esft-8x9", esft, Topology(8, 9)),
        ("gpt-oss-8x5", gpt, Topology(8, 5)),
        ("olmoe-8x9", traces.olmoe(domain="c4"), Topology(8, 9)),
    ]


CASES = _cases()
CASE_IDS = [c[0] for c in CASES]


START_SHAPES = [(256, 32, 9), (256, 64, 5), (64, 8, 9), (9, 4, 3)]
"""``(experts, ranks, slots a rank)`` the engines' start tables are built at."""


def check_start_table(table: np.ndarray, num_experts: int, topology: Topology) -> None:
    """``table [L, P]`` (``L >= 2``), an engine's start layout, is one no load chose in every
    layer (:func:`~eplb_rt.algorithms.starting.blank_layers`: the re-plan leaves such layers
    untraded), and its second layer with two ranks' first slots swapped, a layout a plan may
    leave, is not."""
    assert blank_layers(table, num_experts, topology).all()
    fitted = table.copy()
    S = topology.num_slots_per_rank
    fitted[1, [0, S]] = fitted[1, [S, 0]]
    expected = [layer != 1 for layer in range(len(table))]
    assert blank_layers(fitted, num_experts, topology).tolist() == expected


def slot_workload(table: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Tokens per slot ``[T, L, D, S]`` that an engine records for ``table [L, D, S]`` when
    each expert's tokens ``load [T, L, E]`` are split evenly over its replicas."""
    L, D, S = table.shape
    placement = Placement(table.reshape(L, -1), load.shape[-1], D)
    return metrics.slot_load(placement, load).reshape(-1, L, D, S)


def declared_entry_points(group: str) -> dict[str, str]:
    """``name -> object reference`` of pyproject's ``group`` entry points. Python 3.10 has no
    TOML reader: there, those of the installed eplb_rt, which pip took from the same table."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            entry_points = importlib.metadata.distribution("eplb_rt").entry_points
        except importlib.metadata.PackageNotFoundError:
            pytest.skip("Python 3.10 reads the entry points of an installed eplb_rt only")
        return {ep.name: ep.value for ep in entry_points if ep.group == group}
    return tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][group]


def install_entry_points(group: str, folder: Path, monkeypatch) -> None:
    """Make ``importlib.metadata`` see a distribution declaring pyproject's ``group`` entry
    points (as ``pip install eplb_rt`` would), from ``folder`` put on ``sys.path``."""
    declared = declared_entry_points(group)
    info = folder / "eplb_rt_probe-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: eplb_rt_probe\nVersion: 0.0\n")
    lines = [f"[{group}]", *(f"{name} = {value}" for name, value in declared.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(folder))


def rank_par(phy2log: np.ndarray, load: np.ndarray, num_ranks: int) -> np.ndarray:
    """``[L]`` PAR of an engine's ``phy2log [L, P]`` map on ``load [L, E]``, each expert's tokens
    split evenly over its slots (as vLLM and SGLang serve them, two replicas on one rank
    included)."""
    L = phy2log.shape[0]
    counts = np.zeros(load.shape)
    np.add.at(counts, (np.arange(L)[:, None], phy2log), 1.0)
    slot = np.take_along_axis(load / np.maximum(counts, 1.0), phy2log, axis=1)
    ranks = slot.reshape(L, num_ranks, -1).sum(axis=2)
    return ranks.max(axis=1) / ranks.mean(axis=1)
