"""``eplb-rt demo``: its checks before any rank is spawned, its report and JSON from a summary
(spawning replaced by one that writes it), and one tiny real run."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from eplb_rt.cli import main
from eplb_rt.commands import demo
from eplb_rt.config import EplbConfig

TINY = ["--ranks", "2", "--layers", "1", "--tokens", "8", "--no-progress"]


@pytest.fixture
def no_spawn(monkeypatch):
    import torch.multiprocessing as mp

    monkeypatch.setattr(mp, "spawn", lambda *a, **k: pytest.fail("ranks spawned"))


def refused(capsys, argv: list[str], message: str) -> None:
    assert main(["demo", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("interval", [2, 25, 429, 430, 1284, 1285, 2000, 10**6])
def test_any_interval_gives_a_valid_config_that_checks_drift(interval):
    """The episode is a fifth of the interval, capped so that EplbConfig accepts it (episode <=
    history; 1285 and above once crashed every rank) and drift can still be checked."""
    episode = demo._episode(interval, EplbConfig.history)
    config = EplbConfig(interval=interval, episode=episode)
    assert episode == min(max(1, interval // 5), (config.history - 1) // 3)
    assert config.history >= 3 * config.episode + 1


@pytest.mark.multiprocess
def test_demo_runs_with_an_interval_longer_than_the_history(tmp_path, capsys):
    summary = tmp_path / "demo.json"
    assert main(["demo", *TINY, "--steps", "2", "--interval", "2000", "--json", str(summary)]) == 0
    assert json.loads(summary.read_text())["config"]["interval"] == 2000
    assert "plan every 2000 steps" in capsys.readouterr().out


def test_demo_refuses_json_and_plot_at_one_path(capsys, tmp_path, no_spawn):
    path = tmp_path / "demo.png"
    refused(capsys, ["--json", str(path), "--plot", str(path)], f"--plot {path}: is also --json")


def test_demo_refuses_an_empty_json_path(capsys, no_spawn):
    refused(capsys, ["--json="], "--json: empty path; expected a file")


@pytest.mark.parametrize("value", ["70000", "-1", "abc", "1.5"])
def test_demo_port_checked_before_spawning(capsys, monkeypatch, no_spawn, value):
    monkeypatch.setenv("EPLB_RT_DEMO_PORT", value)
    refused(capsys, [], "expected an integer TCP port in [0, 65535]")


def test_demo_refuses_a_port_another_process_listens_on(capsys, monkeypatch, no_spawn):
    """The ranks would meet another process's server there and wait for each other until the
    store's timeout, silently."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("EPLB_RT_DEMO_PORT", str(port))
        refused(capsys, [], f"EPLB_RT_DEMO_PORT={port}: the port cannot be used")


def _fake_spawn(monkeypatch, rebalanced: list[int], first_commit: int | None, step_ms=None):
    """Replace spawning the ranks by writing the summary of a made-up 10-step run of 3 layers
    on 2 ranks: ``rebalanced`` layers placed unlike the start per step, the runtime's
    ``first_commit_step``, and ``step_ms`` per step."""
    import torch.multiprocessing as mp

    rng = np.random.default_rng(0)
    steps = len(rebalanced)
    rebalance = {
        "epoch": 1,
        "gather_step": 2,
        "plan_time_s": 0.01,
        "layers_committed": [0, 1, 2],
        "layers_failed": [],
        "moved_experts": 4,
        "bytes_moved": 4096,
        "steps": 4,
        "done_step": first_commit,
    }
    stats = {
        "first_commit_step": first_commit,
        "rebalances": [] if first_commit is None else [rebalance],
        "num_rebalances": int(first_commit is not None),
        "skipped": [],
        "errors": [],
        "moved_experts": 4,
        "bytes_moved": 4096,
    }

    def spawn(fn, args, nprocs, join):
        opts, out = args
        loads = rng.integers(1, 100, size=(steps, 2, 3, 2)).astype(float)
        times = np.full(steps, 1.0) if step_ms is None else np.asarray(step_ms)
        result = demo._summary(
            opts, loads, np.array(rebalanced), times, stats, max_diff=0.0, checks=1
        )
        with open(out, "w") as f:
            json.dump(result, f)

    monkeypatch.setattr(mp, "spawn", spawn)


def test_demo_report_says_which_steps_served_the_starting_placement(capsys, monkeypatch, tmp_path):
    """The runtime's first_commit_step is the step the first rebalance FINISHED (its last layer
    committed): the steps before it are not all on the starting placement. Here layers take
    effect at steps 4, 5 and 6, and the rebalance is complete from step 6."""
    _fake_spawn(monkeypatch, [0, 0, 0, 0, 1, 2, 3, 3, 3, 3], first_commit=6)
    summary = tmp_path / "demo.json"
    argv = [*TINY, "--layers", "3", "--steps", "10", "--interval", "4", "--json", str(summary)]
    assert main(["demo", *argv]) == 0
    out = capsys.readouterr().out
    assert (
        "eplb_rt until its first rebalance was complete (steps 0-5: its starting placement "
        "through step 3, then its layers switching over one by one)"
    ) in out
    assert "after (steps 6-9)" in out and "before its first rebalance" not in out
    result = json.loads(summary.read_text())
    assert (result["first_rebalanced_step"], result["first_commit_step"]) == (4, 6)
    par = result["per_step"]["par"]
    assert result["par_before"] == pytest.approx(np.mean(par[:6]))
    assert result["per_step"]["layers_rebalanced"] == [0, 0, 0, 0, 1, 2, 3, 3, 3, 3]


def test_demo_report_of_a_rebalance_still_under_way(capsys, monkeypatch):
    _fake_spawn(monkeypatch, [0, 0, 0, 0, 0, 0, 0, 0, 1, 2], first_commit=None)
    assert main(["demo", *TINY, "--layers", "3", "--steps", "10", "--interval", "4"]) == 0
    out = capsys.readouterr().out
    assert "still under way at the last step: eplb_rt served steps 0-7 with its starting" in out
    assert "served every step with its starting placement" not in out


def test_demo_json_is_strict(monkeypatch, tmp_path, capsys):
    """Non-finite numbers are null in --json: JSON has no NaN or Infinity."""
    _fake_spawn(monkeypatch, [0] * 4, first_commit=None, step_ms=[np.inf, np.inf, np.inf, 1.0])
    summary = tmp_path / "demo.json"
    assert main(["demo", *TINY, "--steps", "4", "--interval", "4", "--json", str(summary)]) == 0
    capsys.readouterr()

    def refuse(token):
        raise AssertionError(f"{token} in the JSON")

    result = json.loads(summary.read_text(), parse_constant=refuse)
    assert result["step_time_ms"] is None
    assert result["per_step"]["step_ms"] == [None, None, None, 1.0]


NAN_RANK = """
import json, sys
import torch
from eplb_rt.commands import demo
from eplb_rt.models import moe

served = moe.ExpertParallelMoE.forward

def forward(self, x, bias=None):  # the EPLB model's output gets a NaN (a slot gone bad)
    y = served(self, x, bias)
    if self.runtime is not None:
        y = y.clone()
        y[0, 0] = float("nan")
    return y

moe.ExpertParallelMoE.forward = moe.ExpertParallelMoE.__call__ = forward
store = demo._rendezvous(0)
opts = dict(ranks=1, steps=2, layers=1, tokens=8, redundant=0, interval=0, policy="equilibrium",
            check_every=1, seed=0, port=store.port, no_progress=True)
demo._worker(0, opts, sys.argv[1])
"""


@pytest.mark.multiprocess
def test_a_nan_in_the_eplb_models_output_is_a_mismatch(tmp_path):
    """NaN passes a MAX all-reduce and ``max()`` (every comparison with it is false): the check
    meant to catch a broken migration said the outputs matched, with a difference of 0."""
    import os
    import subprocess
    import sys

    out = tmp_path / "nan.json"
    script = tmp_path / "nan_rank.py"
    script.write_text(NAN_RANK)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
    )
    subprocess.run([sys.executable, str(script), str(out)], check=True, env=env, timeout=300)
    result = json.loads(out.read_text())
    assert result["outputs_match"] is False and result["output_checks"] == 2
