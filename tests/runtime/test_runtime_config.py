"""EplbConfig validation and the EPLB_RT_* table."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from eplb_rt import envs
from eplb_rt.config import EplbConfig
from eplb_rt.runtime import EplbRuntime


def test_defaults_are_valid_and_frozen():
    config = EplbConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.interval = 3  # type: ignore[misc]
    assert EplbConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("policy", "no_such_policy", "unknown policy"),
        ("policy_options", {"bogus": 1}, "has no option"),
        ("policy_options", [1], "must be a dict"),
        ("interval", -1, "interval must be an integer >= 0"),
        ("interval", 2.5, "interval must be an integer"),
        ("interval", True, "interval must be an integer"),
        ("history", 1, "history must be an integer >= 2"),
        ("episode", 0, "episode must be an integer >= 1"),
        ("episode", 500, "episode .* must be <= history"),
        ("num_redundant", -2, "num_redundant"),
        ("slots_per_rank", 0, "slots_per_rank"),
        ("layers_per_step", 0, "layers_per_step"),
        ("deadline", 0, "deadline must be an integer >= 1"),
        ("deadline", 100, "deadline .* must be below interval"),
        ("link_bandwidth", -1e9, r"link_bandwidth must be in \(0.0, inf\)"),
        ("link_bandwidth", float("inf"), r"link_bandwidth must be in \(0.0, inf\)"),
        ("link_bandwidth", 10**400, r"link_bandwidth must be in \(0.0, inf\), got 1000"),
        ("token_seconds", -(10**400), r"token_seconds must be in \(0.0, inf\), got -1000"),
        ("token_seconds", float("nan"), "token_seconds must be a number"),
        ("token_seconds", 0, r"token_seconds must be in \(0.0, inf\)"),
        ("num_groups", 0, "num_groups must be an integer >= 1"),
        ("heat_source", "sender", "heat_source must be one of"),
        ("count_steps", "some", "count_steps must be one of"),
        ("initial_placement", "/nonexistent/placement.json", "no such file"),
        ("initial_placement", "/", "a folder '/' \\(expected a placement's JSON file\\)"),
        # An int is a file descriptor to os.path: 1 (stdout) "exists".
        ("initial_placement", 1, "initial_placement must be a path, got 1"),
        ("export_dir", 3, "export_dir must be a path, got 3"),
        ("export_dir", "", "export_dir must be a path or None, got ''"),
        ("interval", np.float64(10), "interval must be an integer"),
        ("history", np.bool_(True), "history must be an integer"),
        ("token_seconds", np.bool_(True), "token_seconds must be a number"),
        ("transfer_timeout_s", 0, "transfer_timeout_s"),
        # torch counts a wait in whole milliseconds: 0.0005 s would be no timeout at all
        ("transfer_timeout_s", 0.0005, r"transfer_timeout_s must be in \[0.001, 1000000000.0\]"),
        # torch takes a timedelta, which holds no infinity
        ("transfer_timeout_s", float("inf"), r"transfer_timeout_s must be in \[0.001, 1000"),
        ("num_nodes", 0, "num_nodes"),
        ("warm_up", "yes", "warm_up must be a bool"),
        ("plan_threads", 0, "plan_threads must be an integer >= 1, got 0"),
        ("plan_threads", 2.0, "plan_threads must be an integer >= 1, got 2.0"),
        ("plan_threads", True, "plan_threads must be an integer >= 1, got True"),
    ],
)
def test_invalid_field_names_the_field(field, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        EplbConfig(**{field: value})


def test_an_episode_may_span_the_whole_history():
    assert EplbConfig(history=16, episode=16).episode == 16


def test_numpy_scalars_are_stored_as_python_numbers():
    """A field computed from arrays is a numpy scalar."""
    config = EplbConfig(interval=np.int64(10), history=np.int32(64), link_bandwidth=np.float32(1e9))
    assert (config.interval, config.history, config.link_bandwidth) == (10, 64, 1e9)
    assert type(config.interval) is int and type(config.link_bandwidth) is float
    assert EplbConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    flags = EplbConfig(warm_up=np.bool_(False), plan_in_subprocess=np.True_)  # refused before
    assert (flags.warm_up, flags.plan_in_subprocess) == (False, True)
    assert type(flags.warm_up) is bool and type(flags.plan_in_subprocess) is bool


def test_policy_options_are_a_copy_of_what_was_checked():
    options = {"count_rounds": 2}
    config = EplbConfig(policy="equilibrium", policy_options=options)
    options["bogus"] = 1  # changed after the check: the config keeps what it checked
    assert config.policy_options == {"count_rounds": 2}


def test_slots_per_rank_and_num_redundant_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        EplbConfig(slots_per_rank=4, num_redundant=2)


def test_num_slots_per_rank():
    assert EplbConfig(num_redundant=4).num_slots_per_rank(12, 4) == 4
    assert EplbConfig(slots_per_rank=5).num_slots_per_rank(12, 4) == 5
    with pytest.raises(ValueError, match="do not split evenly over 5 ranks"):
        EplbConfig(num_redundant=1).num_slots_per_rank(12, 5)


@pytest.mark.parametrize(
    ("experts", "ranks", "match"),
    [(8, 0, "num_ranks must be an integer >= 1, got 0"), ("8", 2, "num_experts must be an")],
)
def test_num_slots_per_rank_names_a_size_that_is_not_a_count(experts, ranks, match):
    for config in (EplbConfig(num_redundant=3), EplbConfig(slots_per_rank=5)):
        with pytest.raises(ValueError, match=match):
            config.num_slots_per_rank(experts, ranks)


def test_interval_zero_allows_any_deadline():
    assert EplbConfig(interval=0, deadline=500).interval == 0


def test_the_default_deadline_follows_the_interval():
    assert EplbConfig().deadline is None and EplbConfig().first_deadline == 20
    assert EplbConfig(interval=10).first_deadline == 2  # a deadline of 20 steps would not fit
    assert EplbConfig(interval=2).first_deadline == 1
    assert EplbConfig(interval=10, deadline=7).first_deadline == 7
    with pytest.raises(ValueError, match=r"interval \(1\) must be >= 2 \(or 0"):
        EplbConfig(interval=1)


def test_from_dict_rejects_unknown_keys_and_non_dicts():
    with pytest.raises(ValueError, match=r"no field\(s\) \['intervall'\]"):
        EplbConfig.from_dict({"intervall": 5})
    with pytest.raises(TypeError, match="needs a dict"):
        EplbConfig.from_dict([("interval", 5)])  # type: ignore[arg-type]


def test_from_dict_round_trips_through_json(tmp_path):
    config = EplbConfig(interval=7, deadline=3, heat_source="group_list", export_dir=str(tmp_path))
    assert EplbConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_env_overrides(monkeypatch):
    monkeypatch.setenv("EPLB_RT_TRANSFER_TIMEOUT_S", "2.5")
    monkeypatch.setenv("EPLB_RT_EXPORT_DIR", "placements")
    config = EplbConfig.from_dict({}, env=True)
    assert config.transfer_timeout_s == 2.5 and config.export_dir == "placements"
    assert EplbConfig.from_dict({}).transfer_timeout_s == EplbConfig().transfer_timeout_s
    monkeypatch.setenv("EPLB_RT_POLICY_OPTIONS", "hierarchical=true,move_cost=0.02")
    config = EplbConfig.from_dict({"policy_options": {"shares": True}}, env=True)
    assert config.policy_options == {"hierarchical": "true", "move_cost": "0.02"}
    monkeypatch.setenv("EPLB_RT_POLICY_OPTIONS", "hierarchical=maybe")
    with pytest.raises(ValueError, match="'hierarchical' must be true or false, got maybe"):
        EplbConfig.from_dict({}, env=True)
    monkeypatch.setenv("EPLB_RT_POLICY_OPTIONS", "=1")
    with pytest.raises(ValueError, match=r"EPLB_RT_POLICY_OPTIONS='=1'.*KEY=VALUE"):
        EplbConfig.from_dict({}, env=True)
    monkeypatch.delenv("EPLB_RT_POLICY_OPTIONS")
    # Set but empty: unset, as the plugins read them.
    for var in ("EPLB_RT_EXPORT_DIR", "EPLB_RT_POLICY", "EPLB_RT_TRANSFER_TIMEOUT_S"):
        monkeypatch.setenv(var, " ")
    assert EplbConfig.from_dict({"export_dir": "here"}, env=True) == EplbConfig(export_dir="here")
    monkeypatch.setenv("EPLB_RT_POLICY", "no_such_policy")
    with pytest.raises(
        ValueError, match=r"unknown policy.*\(from EPLB_RT_POLICY='no_such_policy'\)"
    ):
        EplbConfig.from_dict({}, env=True)
    monkeypatch.setenv("EPLB_RT_POLICY", " flashlb ")  # as a shell line may leave it
    assert EplbConfig.from_dict({}, env=True).policy == "flashlb"
    monkeypatch.setenv("EPLB_RT_TRANSFER_TIMEOUT_S", "nan")
    with pytest.raises(ValueError, match=r"\(from EPLB_RT_TRANSFER_TIMEOUT_S='nan'\)"):
        EplbConfig.from_dict({}, env=True)
    with pytest.raises(ValueError, match=r"transfer_timeout_s.*got nan$"):  # not from there
        EplbConfig.from_dict({"transfer_timeout_s": float("nan")})
    monkeypatch.delenv("EPLB_RT_TRANSFER_TIMEOUT_S")
    # An option's error names its policy: the variable named is the one that set the option.
    monkeypatch.setenv("EPLB_RT_POLICY_OPTIONS", "width=2.5")
    with pytest.raises(ValueError, match=r"'width'.*\(from EPLB_RT_POLICY_OPTIONS='width=2.5'\)$"):
        EplbConfig.from_dict({}, env=True)
    monkeypatch.delenv("EPLB_RT_POLICY")
    monkeypatch.setenv("EPLB_RT_POLICY_OPTIONS", "num_episodes=0")
    with pytest.raises(ValueError, match=r"\(from EPLB_RT_POLICY_OPTIONS='num_episodes=0'\)$"):
        EplbConfig.from_dict({}, env=True)
    # Options for another policy than the environment's: the policy's variable is named.
    monkeypatch.delenv("EPLB_RT_POLICY_OPTIONS")
    monkeypatch.setenv("EPLB_RT_POLICY", "flashlb")
    with pytest.raises(ValueError, match=r"\(from EPLB_RT_POLICY='flashlb'\)$"):
        EplbConfig.from_dict({"policy_options": {"spread": 1.5}}, env=True)


def test_an_unset_log_level_leaves_the_applications(monkeypatch):
    """Building a runtime set the eplb_rt logger to WARNING where the variable was unset,
    overwriting the DEBUG an application had asked for."""
    import logging

    logger = logging.getLogger("eplb_rt")
    before = logger.level
    monkeypatch.delenv("EPLB_RT_LOG_LEVEL", raising=False)
    try:
        logger.setLevel(logging.DEBUG)
        EplbRuntime(EplbConfig(policy="rt_test_shift", interval=0, warm_up=False), 1, 4).shutdown()
        assert logger.level == logging.DEBUG
        monkeypatch.setenv("EPLB_RT_LOG_LEVEL", "error")
        EplbRuntime(EplbConfig(policy="rt_test_shift", interval=0, warm_up=False), 1, 4).shutdown()
        assert logger.level == logging.ERROR
    finally:
        logger.setLevel(before)


def test_the_plan_threads_variable_is_read_when_the_runtime_is_built(monkeypatch):
    """Not at the first late plan, inside a serving step: a bad value fails the build."""
    monkeypatch.setenv("EPLB_RT_PLAN_THREADS", "0")
    with pytest.raises(ValueError, match="EPLB_RT_PLAN_THREADS='0': expected a whole number"):
        EplbRuntime(EplbConfig(warm_up=False), 2, 8)
    monkeypatch.setenv("EPLB_RT_PLAN_THREADS", "3")
    with EplbRuntime(EplbConfig(warm_up=False), 2, 8) as runtime:
        assert runtime.plan_threads == 1 and runtime._most_threads == 3


def test_envs_table(monkeypatch):
    assert all(name.startswith("EPLB_RT_") for name in envs.VARIABLES)
    monkeypatch.delenv("EPLB_RT_DISABLE_REBALANCE", raising=False)
    assert envs.get("EPLB_RT_DISABLE_REBALANCE") is False
    monkeypatch.setenv("EPLB_RT_DISABLE_REBALANCE", "yes")
    assert envs.get("EPLB_RT_DISABLE_REBALANCE") is True
    monkeypatch.setenv("EPLB_RT_DISABLE_REBALANCE", "maybe")
    with pytest.raises(ValueError, match="EPLB_RT_DISABLE_REBALANCE='maybe'"):
        envs.get("EPLB_RT_DISABLE_REBALANCE")
    monkeypatch.setenv("EPLB_RT_DEMO_PORT", "x")
    with pytest.raises(ValueError, match="EPLB_RT_DEMO_PORT"):
        envs.get("EPLB_RT_DEMO_PORT")
    with pytest.raises(KeyError, match="unknown eplb_rt variable"):
        envs.get("EPLB_RT_NOPE")
    monkeypatch.setenv("EPLB_RT_LOG_LEVEL", " info")
    assert envs.get("EPLB_RT_LOG_LEVEL") == "INFO"
    monkeypatch.setenv("EPLB_RT_LOG_LEVEL", "verbose")
    with pytest.raises(ValueError, match=r"EPLB_RT_LOG_LEVEL='verbose'.*DEBUG, INFO"):
        envs.get("EPLB_RT_LOG_LEVEL")
