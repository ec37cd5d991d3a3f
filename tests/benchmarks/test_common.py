"""The helpers the benchmark scripts share (``benchmarks/common.py``)."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from benchmarks import common
from eplb_rt import Topology
from eplb_rt.sim import simulate as sim


def test_mean_se_is_the_mean_and_its_standard_error():
    mean, se = common.mean_se([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert se == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1) / math.sqrt(3))
    assert math.isnan(common.mean_se([5.0])[1])


def test_at_least_names_what_was_expected():
    parse = common.at_least(2)
    assert parse("3") == 3
    for text, expected in (("1", ">= 2"), ("two", "an integer")):
        with pytest.raises(argparse.ArgumentTypeError, match=expected):
            parse(text)


def test_a_replay_without_load_to_score_is_refused():
    load = np.zeros((3, 1, 6))
    load[0, 0] = [9, 1, 1, 1, 1, 1]  # only the first step, which no window scores, has load
    workload = sim.Workload(load, ("a", "b", "c"))
    with pytest.raises(ValueError, match="equilibrium's replay has no throughput"):
        common.replay(workload, Topology(2, 4), ["equilibrium"], interval=1)
