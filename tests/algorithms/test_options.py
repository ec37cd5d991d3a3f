"""Typed policy options: converted from CLI strings, range-checked up front, one clear message."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from eplb_rt import cli
from eplb_rt.algorithms import get_policy, plan, policy_names
from eplb_rt.algorithms.registry import describe
from eplb_rt.config import EplbConfig
from eplb_rt.placement import Topology


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        (
            "flashlb",
            {"width": 2.5},
            "policy 'flashlb' option 'width' must be an integer >= 0, got 2.5",
        ),
        ("flashlb", {"width": "2.5"}, "option 'width' must be an integer >= 0, got 2.5"),
        ("flashlb", {"width": -1}, "option 'width' must be an integer >= 0, got -1"),
        ("flashlb", {"width": True}, "option 'width' must be an integer >= 0, got True"),
        ("flashlb", {"depth": 0}, "option 'depth' must be an integer >= 1, got 0"),
        ("flashlb", {"z": "abc"}, "option 'z' must be a finite number >= 0, got abc"),
        ("flashlb", {"z": float("nan")}, "option 'z' must be a finite number >= 0, got nan"),
        ("flashlb", {"threshold": 0.5}, "'threshold' must be a finite number >= 1, got 0.5"),
        ("deepseek", {"hierarchical": "maybe"}, "'hierarchical' must be true or false, got maybe"),
        ("deepseek", {"hierarchical": 1}, "'hierarchical' must be true or false, got 1"),
        ("equilibrium", {"move_cost": -0.1}, "'move_cost' must be a finite number >= 0, got -0.1"),
        ("equilibrium", {"num_episodes": [3]}, "'num_episodes' must be an integer in [1, 64], got"),
        ("equilibrium", {"num_episodes": 65}, "'num_episodes' must be an integer in [1, 64], got"),
        ("deepseek", {"hierarchical": "3"}, "'hierarchical' must be true or false, got 3"),
        ("swift", {"max_swaps": -1}, "'max_swaps' must be an integer >= 0, got -1"),
        ("random", {"seed": "x"}, "policy 'random' option 'seed' must be an integer >= 0, got x"),
        ("swift", {"nope": 1}, "policy 'swift' has no option(s) ['nope']"),
        ("swift", {"max_swaps": np.bool_(True)}, "'max_swaps' must be an integer >= 0, got"),
        ("swift", {"max_swaps": "1e20"}, "'max_swaps' must be an integer >= 0 and at most 9223"),
        ("flashlb", {"depth": 2**63}, "'depth' must be an integer >= 1 and at most 9223"),
        ("flashlb", {"z": float("inf")}, "option 'z' must be a finite number >= 0, got inf"),
        ("equilibrium", {"lifetime": "-inf"}, "'lifetime' must be a finite number >= 1, or inf"),
        ("equilibrium", {"lifetime": 0.5}, "'lifetime' must be a finite number >= 1, or inf, got"),
    ],
)
def test_bad_options_name_the_policy_option_and_value(name, overrides, message):
    with pytest.raises(ValueError) as err:
        get_policy(name).make_options(overrides)
    assert message in str(err.value)
    with pytest.raises(ValueError, match=re.escape(message)):
        plan(name, np.ones((2, 4)), Topology(2, 2), options=overrides)


def test_strings_convert_to_the_option_type():
    opts = get_policy("flashlb").make_options(
        {"width": "3", "depth": "5.0", "z": " 0.5 ", "threshold": "2", "num_episodes": 2.0}
    )
    assert (opts.width, opts.depth, opts.z, opts.threshold, opts.num_episodes) == (3, 5, 0.5, 2, 2)
    assert type(opts.width) is int and type(opts.z) is float and type(opts.threshold) is float
    # Integers are read exactly, past the 2**53 a float holds.
    opts = get_policy("swift").make_options({"max_swaps": str(2**63 - 1)})
    assert opts.max_swaps == 2**63 - 1
    assert get_policy("swift").make_options({"max_swaps": "9007199254740993"}).max_swaps == (
        9007199254740993
    )
    assert get_policy("deepseek").make_options({"hierarchical": "True"}).hierarchical is True
    assert get_policy("equilibrium").make_options({"shares": "off"}).shares is False


def test_an_option_that_may_be_infinite_takes_inf_as_a_number_or_a_string():
    """``equilibrium``'s ``lifetime``: ``inf`` is as long as the load holds (the serving
    pipeline's); other float options stay finite."""
    spec = get_policy("equilibrium")
    for value in (float("inf"), np.float64("inf"), "inf", " Infinity "):
        assert spec.make_options({"lifetime": value}).lifetime == float("inf")
    field = {f.name: f for f in dataclasses.fields(spec.make_options())}["lifetime"]
    assert describe(field) == "a finite number >= 1, or inf"


def test_numpy_scalars_convert_to_the_option_type():
    """An option computed from arrays is a numpy scalar (np.float32 and np.int64 are not
    Python floats and ints)."""
    opts = get_policy("equilibrium").make_options(
        {"move_cost": np.float32(0.5), "num_episodes": np.int64(4), "shares": np.bool_(True)}
    )
    assert (opts.move_cost, opts.num_episodes, opts.shares) == (0.5, 4, True)
    assert type(opts.move_cost) is float and type(opts.num_episodes) is int
    assert type(opts.shares) is bool


def test_every_option_of_every_policy_is_typed_and_its_default_valid():
    for name in policy_names():
        spec = get_policy(name)
        defaults = spec.make_options()
        for field in dataclasses.fields(defaults):
            assert type(field.default) in (bool, int, float), (name, field.name)
            again = spec.make_options({field.name: str(field.default)})
            assert getattr(again, field.name) == field.default


def _cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_cli_plan_rejects_a_bad_option_before_reading_the_load(capsys, tmp_path):
    code, err = _cli(
        capsys,
        "plan",
        "--load",
        tmp_path / "missing.npy",  # never read: the option is checked first
        "--ranks",
        2,
        "--slots-per-rank",
        2,
        "--policy",
        "flashlb",
        "--option",
        "width=2.5",
        "--out",
        tmp_path / "p.json",
    )
    assert code == 2
    assert err.strip() == (
        "eplb-rt plan: error: policy 'flashlb' option 'width' must be an integer >= 0, got 2.5"
    )


def test_cli_simulate_rejects_a_bad_option(capsys, tmp_path):
    load = tmp_path / "load.npy"
    np.save(load, np.ones((4, 2, 4)))
    code, err = _cli(
        capsys,
        "simulate",
        "--load",
        load,
        "--ranks",
        2,
        "--slots-per-rank",
        2,
        "--policies",
        "flashlb",
        "--option",
        "flashlb.z=abc",
    )
    assert code == 2
    assert err.strip().endswith("policy 'flashlb' option 'z' must be a finite number >= 0, got abc")


def test_config_rejects_a_bad_option_at_construction():
    message = "option 'width' must be an integer >= 0, got 2.5"
    with pytest.raises(ValueError, match=re.escape(message)):
        EplbConfig(policy="flashlb", policy_options={"width": 2.5})
    assert EplbConfig(policy="flashlb", policy_options={"width": "3"}).policy_options == {
        "width": "3"
    }


def test_every_shipped_policy_but_random_plans_all_layers_at_once():
    """The docs promise it (a plan in the balancer's thread returns to Python a few times, not
    once a layer); ``random`` draws from numpy's generator, layer by layer."""
    shipped = [get_policy(name) for name in policy_names()]
    shipped = [spec for spec in shipped if spec.fn.__module__.startswith("eplb_rt.")]
    assert {spec.name for spec in shipped if spec.layers_fn is None} == {"random"}
    assert len(shipped) == 5


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("equilibrium", {}),
        ("equilibrium", {"shares": True}),
        ("flashlb", {}),
        ("flashlb", {"threshold": 1.03}),  # some layers kept, some re-planned
        ("deepseek", {}),
        ("swift", {}),
    ],
)
def test_a_policy_of_all_layers_plans_as_its_layer_function(name, options):
    """A policy with a function of all the planned layers (``layers_fn``) gives, layer by
    layer through its per-layer function, the same slots and shares."""
    from eplb_rt.algorithms.load import normalise
    from eplb_rt.algorithms.registry import Layers

    spec = get_policy(name)
    assert spec.layers_fn is not None
    rng = np.random.default_rng(7)
    load = rng.multinomial(3000, rng.dirichlet(np.ones(12) * 0.5), size=(6, 5)).astype(float)
    topo = Topology(4, 4)
    opts = spec.make_options(options)
    shares = options.get("shares", False)
    previous = plan(name, load[:3], topo, options=opts)
    placement = plan(name, load, topo, previous, opts)
    kept = (placement.phy2log == previous.phy2log).all(axis=1)
    if "threshold" in options:
        assert kept.any() and not kept.all()
    tokens = np.ascontiguousarray(load.transpose(1, 0, 2))  # six episodes of one step
    stack = Layers(
        normalise(load.sum(axis=0)),
        previous.phy2log.astype(np.int64),
        None if previous.is_uniform else previous.slot_share,
        np.arange(5),
        tokens,
        np.ones(6, dtype=np.int64),
        True,
    )
    for j in range(5):
        out = spec.fn(stack.layer(j), topo, opts)
        row, share = out if shares else (out, None)
        assert row.tolist() == placement.phy2log[j].tolist()
        if shares:
            np.testing.assert_array_equal(share, placement.slot_share[j])


def test_plan_names_a_topology_or_previous_of_another_type():
    load = np.ones((1, 8))
    with pytest.raises(TypeError, match="topology must be a Topology, got tuple"):
        plan("deepseek", load, (4, 3))
    with pytest.raises(TypeError, match=r"previous must be a Placement or None, got ndarray"):
        plan("deepseek", load, Topology(4, 3), previous=np.zeros((1, 12), dtype=np.int64))
