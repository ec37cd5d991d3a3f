"""The emulation tests' expectations (ascendc_expected.py) agree with tests/reference.py.

The kernel tests compare against ascendc_expected; this ties them to the project-wide reference
of the ops (written by the ops backend) on random cases. Skipped while tests/reference.py is not
in the tree.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ascendc_expected as expected
import numpy as np
import pytest
import torch

REFERENCE = Path(__file__).resolve().parents[1] / "reference.py"


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.exists():
        pytest.skip("tests/reference.py is not in the tree yet")
    spec = importlib.util.spec_from_file_location("eplb_rt_tests_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shares", [False, True])
def test_route_and_count_expectation_matches_reference(reference, seed, shares):
    rng = np.random.default_rng(seed)
    e, r = int(rng.integers(1, 20)), int(rng.integers(1, 5))
    p = int(rng.integers(e, e * r + 1))
    log2phy, logcnt = expected.random_tables(rng, e, p, r)
    share = None
    if shares:
        share = rng.random(log2phy.shape).astype(np.float32)
        share /= share.sum(axis=1, keepdims=True, dtype=np.float32)
    topk = rng.integers(-1, e, size=(int(rng.integers(0, 60)), int(rng.integers(1, 6))))
    step = int(rng.integers(0, 2**36))
    heat = np.zeros((3, p), dtype=np.int32)
    want_phy = expected.route_and_count(topk, log2phy, logcnt, share, heat, step=step)

    ref_heat = torch.zeros((3, p), dtype=torch.int32)
    ref_phy = reference.route_and_count(
        torch.from_numpy(topk),
        torch.from_numpy(log2phy),
        torch.from_numpy(logcnt),
        ref_heat,
        torch.tensor([step], dtype=torch.int64),
        replica_share=None if share is None else torch.from_numpy(share),
    )
    np.testing.assert_array_equal(want_phy, ref_phy.numpy())
    np.testing.assert_array_equal(heat, ref_heat.numpy())


@pytest.mark.parametrize("cumulative", [False, True])
def test_count_from_group_list_expectation_matches_reference(reference, cumulative):
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 30, size=11)
    group_list = np.cumsum(counts) if cumulative else counts
    heat = np.zeros((2, 15), dtype=np.int32)
    expected.count_from_group_list(group_list, heat, 5, 3, cumulative)
    ref_heat = torch.zeros((2, 15), dtype=torch.int32)
    reference.count_from_group_list(
        torch.from_numpy(group_list), ref_heat, torch.tensor([5]), 3, cumulative
    )
    np.testing.assert_array_equal(heat, ref_heat.numpy())
