"""The registry of balancing policies, checked against by the config and the CLI.

A policy is a pure function ``(load [T, L, E] float64, previous Placement | None, Topology,
options) -> Placement``: deterministic, no torch, no global state. Each registers here with the
dataclass of its options and one line of description.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from eplb_rt.algorithms.load import check_load
from eplb_rt.placement import Placement, Topology

PolicyFn = Callable[[np.ndarray, "Placement | None", Topology, Any], Placement]


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """A registered policy: its function, its options dataclass and a one-line summary."""

    name: str
    fn: PolicyFn
    options: type
    summary: str
    warm_up: Callable[[], None] | None = None

    def make_options(self, overrides: dict | None = None) -> Any:
        """Default options with ``overrides`` applied; unknown keys are an error."""
        overrides = dict(overrides or {})
        known = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"policy {self.name!r} has no option(s) {unknown}; known: {sorted(known)}"
            )
        return self.options(**overrides)


_REGISTRY: dict[str, PolicySpec] = {}


def register(name: str, options: type, summary: str, warm_up: Callable[[], None] | None = None):
    """Decorator adding a policy function to the registry under ``name``."""

    def wrap(fn: PolicyFn) -> PolicyFn:
        if name in _REGISTRY:
            raise ValueError(f"policy {name!r} is already registered")
        _REGISTRY[name] = PolicySpec(name, fn, options, summary, warm_up)
        return fn

    return wrap


def policy_names() -> list[str]:
    """Registered policy names, sorted."""
    return sorted(_REGISTRY)


def get_policy(name: str) -> PolicySpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {policy_names()}") from None


def plan(
    name: str,
    load: np.ndarray,
    topology: Topology,
    previous: Placement | None = None,
    options: Any = None,
) -> Placement:
    """Run policy ``name`` on ``load`` (``[L, E]`` or ``[T, L, E]``) and return its placement.

    ``options`` is the policy's options object, a dict of overrides, or ``None`` for defaults.
    """
    spec = get_policy(name)
    arr = check_load(load)
    topology.check_experts(arr.shape[2])
    if previous is not None and (
        previous.num_layers != arr.shape[1]
        or previous.num_experts != arr.shape[2]
        or previous.num_ranks != topology.num_ranks
        or previous.num_slots_per_rank != topology.num_slots_per_rank
    ):
        raise ValueError(
            f"previous placement ({previous.describe()}) does not match load {arr.shape[1:]} on "
            f"{topology.num_ranks} ranks x {topology.num_slots_per_rank} slots"
        )
    if options is None or isinstance(options, dict):
        options = spec.make_options(options)
    return spec.fn(arr, previous, topology, options)


def warm_up(names: list[str] | None = None) -> None:
    """Compile every numba kernel of the given policies (all by default) ahead of first use."""
    for name in names or policy_names():
        spec = get_policy(name)
        if spec.warm_up is not None:
            spec.warm_up()
