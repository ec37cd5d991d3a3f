"""The registry of balancing policies, checked against by the config and the CLI.

A policy is a pure function of one layer, ``(Layer, Topology, options) -> row [P] int64`` (or
``(row, share [P])`` for non-uniform replica shares): deterministic, no torch, no global state.
The registry owns the rest: checking the load and the previous placement, cutting the history
into episodes, the loop over layers and building the :class:`Placement`. A policy may also give
a function of all the planned layers at once (:class:`Layers`), which the registry then calls
instead of the loop: run from the balancer's thread, one call for every layer returns to Python
(a GIL hand-off the serving thread can wait for) once instead of once a layer. On a topology
with nodes and expert groups, a policy whose ``hierarchical`` option is on plans each node as a
layer of its own (:mod:`eplb_rt.algorithms.hierarchy`). Since no layer's plan depends on
another's, :func:`plan` may split the layers over threads (the kernels release the GIL): the
same placement for any number of them. Each policy registers
with an options dataclass (a subclass of :class:`Options`, every field made with
:func:`option`, so values are converted and range-checked before any work starts).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np

from eplb_rt.algorithms import hierarchy, metrics, prices
from eplb_rt.algorithms.load import (
    check_load,
    cut_episodes,
    episode_steps,
    normalise,
    whole_numbers,
)
from eplb_rt.placement import Placement, Topology, even_shares
from eplb_rt.scalars import check_count, is_bool, is_real


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer as a policy sees it.

    Attributes:
        episodes: ``[K, E] float64``, the history cut into ``K`` episodes, each scaled to sum 1.
        load: ``[E] float64``, the whole history summed, scaled to sum 1 (zero stays zero).
        previous: ``[P] int64`` expert of each slot in the placement in force, or ``None``.
        previous_share: ``[P] float64`` its shares, ``None`` when uniform or no previous.
        index: the layer's index.
        tokens: ``[K, E] float64``, the episodes before scaling (tokens per expert), for a
            policy whose statistics weigh episodes by their volume (``flashlb``, as FlashLB).
        steps: ``[K] int64``, steps summed into each episode.
        counts: whether the load is whole token counts (then ``tokens`` has a known sampling
            noise; shares or scaled loads do not).
    """

    episodes: np.ndarray
    load: np.ndarray
    previous: np.ndarray | None
    previous_share: np.ndarray | None
    index: int
    tokens: np.ndarray
    steps: np.ndarray
    counts: bool = False


LayerFn = Callable[[Layer, Topology, Any], "np.ndarray | tuple[np.ndarray, np.ndarray | None]"]


@dataclasses.dataclass(frozen=True)
class Layers:
    """The layers of one plan, stacked: each array's first axis is the layer (``L'`` of them),
    each layer's block contiguous; the fields are :class:`Layer`'s.

    Attributes:
        load: ``[L', E] float64``; previous: ``[L', P] int64`` or ``None``; previous_share:
        ``[L', P] float64`` or ``None``; index: ``[L'] int64``, the layers' indices; tokens:
        ``[L', K, E] float64``; steps: ``[K] int64``; counts: whether the load is whole token
        counts. ``episodes`` is derived from ``tokens``.
    """

    load: np.ndarray
    previous: np.ndarray | None
    previous_share: np.ndarray | None
    index: np.ndarray
    tokens: np.ndarray
    steps: np.ndarray
    counts: bool = False

    @functools.cached_property
    def episodes(self) -> np.ndarray:
        """``[L', K, E] float64``: ``tokens`` with each episode scaled to sum 1, made when first
        read. (The default policy's fresh plan scales a layer at a time and never reads it: a
        second array of the load's size costs its fresh pages, about a millisecond per 2 MB on
        a virtual machine.)"""
        return normalise(self.tokens)

    def layer(self, j: int) -> Layer:
        """The ``j``-th layer of the stack."""
        return Layer(
            self.episodes[j],
            self.load[j],
            None if self.previous is None else self.previous[j],
            None if self.previous_share is None else self.previous_share[j],
            int(self.index[j]),
            self.tokens[j],
            self.steps,
            self.counts,
        )

    def take(self, which: np.ndarray, with_previous: bool = True) -> Layers:
        """The layers ``which`` (a mask or indices), with or without their previous slots."""
        keep = with_previous and self.previous is not None
        share = self.previous_share
        return Layers(
            self.load[which], self.previous[which] if keep else None,
            share[which] if keep and share is not None else None, self.index[which],
            self.tokens[which], self.steps, self.counts,
        )  # fmt: skip

    def of_episodes(self, which: np.ndarray) -> Layers:
        """The same layers with only the episodes ``which`` (indices): the load is their sum."""
        tokens = np.ascontiguousarray(self.tokens[:, which])
        return dataclasses.replace(
            self,
            load=normalise(tokens.sum(axis=1)),
            tokens=tokens,
            steps=self.steps[which],
        )

    @classmethod
    def of(cls, layer: Layer) -> Layers:
        """A stack of the one ``layer``."""
        return cls(
            layer.load[None],
            None if layer.previous is None else layer.previous[None],
            None if layer.previous_share is None else layer.previous_share[None],
            np.array([layer.index]),
            layer.tokens[None],
            layer.steps,
            layer.counts,
        )


LayersFn = Callable[[Layers, Topology, Any], "tuple[np.ndarray, np.ndarray | None]"]
"""``(Layers, Topology, options) -> (rows [L', P] int64, shares [L', P] | None)``."""

_INT64_MAX = 2**63 - 1

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def option(
    default: bool | int | float,
    low: float | None = None,
    high: float | None = None,
    *,
    infinite: bool = False,
):
    """A policy option of the default's type (bool, int or float), within ``[low, high]``;
    a float option that is ``infinite`` also takes ``inf``."""
    metadata = {"low": low, "high": high, "infinite": infinite}
    return dataclasses.field(default=default, metadata=metadata)


def describe(field: dataclasses.Field) -> str:
    """What an option takes, e.g. ``an integer >= 1``."""
    kind, low, high = type(field.default), field.metadata.get("low"), field.metadata.get("high")
    what = {bool: "true or false", int: "an integer", float: "a finite number"}[kind]
    if kind is not bool and low is not None:
        what += f" in [{low:g}, {high:g}]" if high is not None else f" >= {low:g}"
    if field.metadata.get("infinite"):
        what += ", or inf"
    return what


def _convert(policy: str, field: dataclasses.Field, value: Any) -> Any:
    """``value`` (a Python value or a CLI string) as ``field``'s type, or a ``ValueError``."""
    name, kind = field.name, type(field.default)
    low, high = field.metadata.get("low"), field.metadata.get("high")
    got = value if isinstance(value, str) else repr(value)
    if len(got) > 40:  # a 400-digit int
        got = f"{got[:20]}... ({len(got)} characters)"
    bad = ValueError(f"policy {policy!r} option {name!r} must be {describe(field)}, got {got}")
    if isinstance(value, str):
        text = value.strip().lower()
        if kind is bool and text in _TRUE + _FALSE:
            return text in _TRUE
        try:
            value = float(text)
        except ValueError:
            raise bad from None
        if kind is int and value.is_integer():
            # "9007199254740993" is exact as an int, not as a float
            try:
                value = int(text)
            except ValueError:  # "5.0", "1e3": the float is the number written
                pass
    if kind is bool and is_bool(value):
        return bool(value)
    try:
        number = is_real(value) and (
            math.isfinite(value) or (field.metadata.get("infinite") and value == math.inf)
        )  # numpy scalars too
    except OverflowError:  # an int beyond the float range: bounded as an int below
        number = kind is int
    if kind is bool or not number or (kind is int and value % 1):
        raise bad
    value = kind(value)
    if kind is int and abs(value) > _INT64_MAX:  # the kernels take integers as int64
        raise ValueError(
            f"policy {policy!r} option {name!r} must be {describe(field)} and at most "
            f"{_INT64_MAX}, got {got}"
        )
    if (low is not None and value < low) or (high is not None and value > high):
        raise bad
    return value


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of the policies' options: every field is converted and checked when built.

    Attributes:
        hierarchical: on a topology with nodes and expert groups that divide evenly, pack the
            groups onto nodes and plan each node on its own (:mod:`~eplb_rt.algorithms.
            hierarchy`): each group's tokens stay within its node, at the price of balance
            (the nodes' loads are fixed by the groups they hold); False plans flat over all
            ranks. Every policy has it; off unless a policy's own default says otherwise.
    """

    policy: ClassVar[str] = "?"
    groups_on_episodes: ClassVar[bool] = True
    """With ``hierarchical``: the groups' packing onto nodes is improved on the episodes
    (:func:`~eplb_rt.algorithms.hierarchy.pack_groups`), not left as LPT on their summed load."""
    hierarchical: bool = option(False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _convert(self.policy, f, getattr(self, f.name)))


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """A registered policy: its per-layer function, options class, summary, the option sets
    :func:`warm_up` runs it with (each compiles the numba kernels that path uses) and, if it
    has one, its function of all the planned layers at once (it plans as ``fn`` would)."""

    name: str
    fn: LayerFn
    options: type
    summary: str
    warm_up_options: tuple[dict, ...] = ()
    layers_fn: LayersFn | None = None

    @property
    def option_names(self) -> frozenset[str]:
        """The names of the policy's options."""
        return frozenset(f.name for f in dataclasses.fields(self.options))

    def make_options(self, overrides: dict | None = None) -> Any:
        """Default options with ``overrides`` (values or CLI strings) applied and checked."""
        overrides = dict(overrides or {})
        known = self.option_names
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"policy {self.name!r} has no option(s) {unknown}; known: {sorted(known)}"
            )
        return self.options(**overrides)


_REGISTRY: dict[str, PolicySpec] = {}


def register(
    name: str,
    options: type,
    summary: str,
    warm_up_options: tuple[dict, ...] = ({},),
    layers_fn: LayersFn | None = None,
) -> Callable[[LayerFn], LayerFn]:
    """Decorator adding a per-layer policy function to the registry under ``name`` (and its
    function of all the planned layers at once, ``layers_fn``, which :func:`plan` then uses)."""

    def wrap(fn: LayerFn) -> LayerFn:
        if name in _REGISTRY:
            raise ValueError(f"policy {name!r} is already registered")
        options.policy = name
        _REGISTRY[name] = PolicySpec(name, fn, options, summary, warm_up_options, layers_fn)
        return fn

    return wrap


def policy_names() -> list[str]:
    """Registered policy names, sorted."""
    return sorted(_REGISTRY)


def get_policy(name: str) -> PolicySpec:
    """The registered policy ``name``; raises ``ValueError`` naming the choices if none is."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown policy {name!r}; choose one of {policy_names()}")
    return _REGISTRY[name]


def plan(
    name: str,
    load: np.ndarray,
    topology: Topology,
    previous: Placement | None = None,
    options: Any = None,
    *,
    layers: np.ndarray | None = None,
    threads: int = 1,
) -> Placement:
    """Run policy ``name`` on ``load`` (``[L, E]`` or ``[T, L, E]``) and return its placement.

    ``options`` is the policy's options object, a dict of overrides, or ``None`` for defaults.
    ``layers [L] bool``: the layers to plan; the others keep ``previous``'s slots and shares
    (``None``: every layer); with ``previous``, a layer without load is not planned either. A
    policy plans each layer on its own, so a planned layer's slots do not depend on which others
    are planned, and ``threads`` (at least 1) plan the layers side by side, every
    ``threads``-th layer in one: the same placement, bit for bit, for any number of them.
    Everything is checked before the policy runs.
    """
    threads = check_count("threads", threads)
    spec = get_policy(name)
    if not isinstance(topology, Topology):
        raise TypeError(f"topology must be a Topology, got {type(topology).__name__}")
    if previous is not None and not isinstance(previous, Placement):
        raise TypeError(f"previous must be a Placement or None, got {type(previous).__name__}")
    if not isinstance(options, spec.options):
        if options is not None and not isinstance(options, dict):
            raise ValueError(
                f"options of policy {name!r} must be a dict or {spec.options.__name__}, "
                f"got {type(options).__name__}"
            )
        options = spec.make_options(options)
    arr = check_load(load)
    _, L, E = arr.shape
    topology.check_experts(E)
    if previous is not None and (
        (previous.num_layers, previous.num_experts) != (L, E)
        or previous.num_ranks != topology.num_ranks
        or previous.num_slots_per_rank != topology.num_slots_per_rank
    ):
        raise ValueError(
            f"previous placement ({previous.describe()}) does not match load {arr.shape[1:]} on "
            f"{topology.num_ranks} ranks x {topology.num_slots_per_rank} slots"
        )
    if layers is not None:
        layers = np.asarray(layers)
        if layers.shape != (L,) or layers.dtype != np.bool_:
            raise ValueError(
                f"layers must be a [{L}] bool mask of the layers to plan, got "
                f"{layers.dtype} {layers.shape}"
            )
        if previous is None and not layers.all():
            raise ValueError("layers left unplanned keep the previous placement: give previous")
    busy_layers = arr.any(axis=(0, 2))
    if previous is not None and not busy_layers.all():
        # A layer without load says nothing about where its experts should go: it keeps its
        # slots (flashlb, smoothing every expert by one token, moved some).
        layers = busy_layers if layers is None else layers & busy_layers
    rows = np.empty((L, topology.num_slots), dtype=np.int64)
    shares = np.empty((L, topology.num_slots))
    weighted = False
    planned = np.arange(L)
    if layers is not None and not layers.all():
        kept = ~layers
        rows[kept] = previous.phy2log[kept]
        shares[kept] = previous.slot_share[kept]
        weighted = not previous.is_uniform
        planned = np.flatnonzero(layers)
        if planned.size == 0:  # nothing to plan: every layer keeps its slots and shares
            return Placement(rows, E, topology.num_ranks, shares if weighted else None)
    # Token counts are whole numbers; anything else (shares, scaled loads) has no known noise.
    counts = whole_numbers(arr)
    # A step without load in any layer (an idle step, a padding forward) says nothing about the
    # load; as an episode of its own it would read as a draw of no tokens, pure noise. (Every
    # layer, not the planned ones: a layer's plan does not depend on which others are planned.)
    busy = arr.reshape(arr.shape[0], -1).any(axis=1)
    if busy.any() and not busy.all():
        arr = arr[busy]
    sub = arr if planned.size == L else arr[:, planned]
    num_episodes = getattr(options, "num_episodes", 1)
    # Layer-major ([L, K, E]): each layer's episodes are one contiguous block, taken without a
    # copy per layer.
    tokens = cut_episodes(sub, num_episodes)
    steps = episode_steps(arr.shape[0], num_episodes)
    summed = normalise(sub.sum(axis=0))
    batch = Layers(
        summed,
        None if previous is None else previous.phy2log[planned].astype(np.int64),
        None if previous is None or previous.is_uniform else previous.slot_share[planned],
        planned,
        tokens,
        steps,
        counts,
    )
    run = functools.partial(_plan_batch, spec)
    if hierarchy.applies(E, topology, options):
        run = functools.partial(hierarchy.plan, run=run)
    rows[planned], planned_shares = _side_by_side(run, batch, topology, options, threads)
    previous_shares = previous is not None and not previous.is_uniform
    if planned_shares is not None:
        shares[planned] = planned_shares
    elif weighted or previous_shares:
        # Layers given no shares split evenly, except those whose slots the policy kept: they
        # keep their shares too (the layer in force, not a worse one on the same slots).
        shares[planned] = even_shares(rows[planned], E)
        if previous_shares:
            same = (rows[planned] == previous.phy2log[planned]).all(axis=1)
            shares[planned[same]] = previous.slot_share[planned[same]]
            weighted |= bool(same.any())
    weighted |= planned_shares is not None
    return Placement(rows, E, topology.num_ranks, shares if weighted else None)


class _Helpers(threading.local):
    """What the threads that planned beside this one spent (:func:`_side_by_side`), in CPU
    seconds: ``cpu``, all of them; ``beyond``, per split plan, how far the busiest one ran past
    this thread's own share (the plan's wait for them, had they all had a core)."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.beyond = 0.0


_HELPERS = _Helpers()


def helpers_cpu() -> tuple[float, float]:
    """``(cpu, beyond)`` of the threads that planned beside the calling thread, summed over its
    plans so far (:class:`_Helpers`). The balancer subtracts them from the process's CPU and
    adds the busiest's excess to its own, so that a plan on several threads is judged as one
    thread's would be: what the others ran is not what kept the plan waiting."""
    return _HELPERS.cpu, _HELPERS.beyond


def _side_by_side(
    run: hierarchy.Run, batch: Layers, topology: Topology, options: Any, threads: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """``run`` on ``batch``'s layers split over ``threads`` (no more than the layers): layer
    ``j`` goes to part ``j % threads``, which spreads the deep layers and the shallow ones alike.
    The calling thread plans the first part, so a plan that waits for the GIL still shows in
    that thread's CPU time (the balancer measures it, with :func:`helpers_cpu`). ``(rows,
    shares)`` as ``run`` gives them; a part without shares next to one with them splits evenly,
    as :func:`_plan_batch` does."""
    L = batch.load.shape[0]
    threads = min(threads, L)
    if threads == 1:
        return run(batch, topology, options)
    parts = [np.arange(i, L, threads) for i in range(threads)]

    def timed(part: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray | None], float]:
        start = time.thread_time()
        return run(batch.take(part), topology, options), time.thread_time() - start

    with ThreadPoolExecutor(threads - 1, thread_name_prefix="eplb_rt-plan") as pool:
        futures = [pool.submit(timed, part) for part in parts[1:]]
        mine, own = timed(parts[0])
        helped = [future.result() for future in futures]
    spent = [seconds for _, seconds in helped]
    _HELPERS.cpu += sum(spent)
    _HELPERS.beyond += max(0.0, max(spent) - own)
    planned = [mine] + [out for out, _ in helped]
    rows = np.empty((L, topology.num_slots), dtype=np.int64)
    shares = None
    if any(part_shares is not None for _, part_shares in planned):
        shares = np.empty((L, topology.num_slots))
    for part, (part_rows, part_shares) in zip(parts, planned, strict=True):
        rows[part] = part_rows
        if shares is not None:
            even = part_shares is None
            shares[part] = even_shares(part_rows, batch.load.shape[1]) if even else part_shares
    return rows, shares


def _plan_batch(spec: PolicySpec, batch: Layers, topology: Topology, options: Any):
    """``spec``'s policy on every layer of ``batch``: ``(rows [L', P] int64, shares [L', P] or
    None)``; layers the per-layer function gives no shares split evenly when others have some."""
    if spec.layers_fn is not None:
        return spec.layers_fn(batch, topology, options)
    L, P = batch.load.shape[0], topology.num_slots
    rows = np.empty((L, P), dtype=np.int64)
    shares = np.full((L, P), np.nan)
    for j in range(L):
        out = spec.fn(batch.layer(j), topology, options)
        rows[j], share = out if isinstance(out, tuple) else (out, None)
        if share is not None:
            shares[j] = share
    even = np.isnan(shares).any(axis=1)
    if even.all():
        return rows, None
    shares[even] = even_shares(rows[even], batch.load.shape[1])
    return rows, shares


def warm_up(names: list[str] | None = None) -> None:
    """Compile every numba kernel of the given policies (all by default) ahead of first use,
    flat and hierarchical (4 groups of 2 experts on 2 nodes), on token counts, on a load that
    is not counts (no sampling noise: distinct workloads, as a policy sees them), and on a
    window of counts whose steps differ by sampling noise only, re-planned from a plan that
    does not fit it (the re-plan a policy may check on halves of the window); and the rank loads
    and transfers by which the planning pipeline judges a plan
    (:func:`~eplb_rt.algorithms.metrics.rank_load`,
    :func:`~eplb_rt.algorithms.prices.most_received_layers`), so that they ship compiled with
    the policies."""
    grouped = {"hierarchical": True}
    counts = np.arange(1.0, 1 + 3 * 2 * 9).reshape(3, 2, 9)
    cases = (
        (Topology(4, 3), counts, {}),
        (Topology(4, 3), counts**1.5, {}),
        (Topology(4, 3, 2, 4), np.arange(1.0, 1 + 3 * 2 * 8).reshape(3, 2, 8), grouped),
    )
    shares = np.stack([np.arange(9.0, 0.0, -1.0), np.arange(1.0, 10.0)]) / 45.0
    rng = np.random.default_rng(0)
    window = np.stack([[rng.multinomial(40, p) for p in shares] for _ in range(4)]).astype(float)
    for name in names or policy_names():
        spec = get_policy(name)
        for topo, load, extra in cases:
            if extra and "hierarchical" not in spec.option_names:
                continue  # a policy registered without the base options
            for options in spec.warm_up_options:
                merged = {**options, **extra}
                first = plan(name, load, topo, options=merged)
                plan(name, load[::-1], topo, previous=first, options=merged)
        for options in spec.warm_up_options:
            unfit = plan(name, window[:, ::-1], Topology(4, 3), options=options)  # layers swapped
            plan(name, window, Topology(4, 3), previous=unfit, options=options)
    layout = np.tile(np.r_[np.arange(9), 0, 1, 2], (2, 1))  # 4 ranks x 3 slots, 9 experts
    metrics.rank_load(Placement(layout, 9, 4), counts)
    prices.most_received_layers(layout, layout[:, ::-1].copy(), 4)
    frozen = counts.copy()  # a caller's read-only load (a view of a frozen buffer) types apart
    frozen.setflags(write=False)
    metrics.rank_load(Placement(layout, 9, 4), frozen)
