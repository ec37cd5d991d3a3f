"""``EplbConfig``: every setting of the runtime, validated once, frozen.

Build it directly, or with :meth:`EplbConfig.from_dict` from a parsed JSON/YAML mapping (unknown
keys are an error). Settings that depend on the model's shapes (slots fit the experts, the initial
placement matches the layers) are checked when :class:`eplb_rt.runtime.EplbRuntime` is built.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from eplb_rt import envs
from eplb_rt.planning import LINK_BANDWIDTH, TOKEN_SECONDS
from eplb_rt.scalars import as_float, check_count, is_bool, is_real

HEAT_SOURCES = ("topk", "group_list")
COUNT_STEPS = ("all", "prefill", "decode")


@dataclasses.dataclass(frozen=True)
class EplbConfig:
    """Settings of the expert-parallel load balancer runtime.

    Attributes:
        policy: registered policy that plans placements (``eplb-rt policies`` lists them).
        policy_options: overrides of the policy's options dataclass (unknown keys are an error).
        interval: steps between two heat gathers (plans), 0 or >= 2; 0 never rebalances (static
            placement: nothing is warmed up or planned, and no planning child is started).
        history: ``H``, steps of per-step heat kept in the ring buffer; a plan reads the
            ``H - 1`` latest closed steps (the step in progress holds the last row), and expects
            the placement it commits to serve as many, or as long as the load holds where they
            show it holding (:func:`eplb_rt.planning.decide`'s ``lifetime``).
        episode: steps compared against the earlier history for drift: every ``episode`` steps
            a plan starts early when those steps are less balanced than the steps before
            them by more than noise and the gate's threshold; ``<= history``. Drift needs
            ``history >= 3 * episode + 1`` (the latest episode and two before it; the runtime
            warns where it cannot be checked, and plans start on the interval only).
        num_redundant: redundant slots ``P - E`` in all; ``E + num_redundant`` must be a multiple
            of the number of ranks. Exclusive with ``slots_per_rank``.
        slots_per_rank: ``S``, expert slots on each rank; ``None`` derives it from
            ``num_redundant``.
        layers_per_step: layers migrated (transferred, then committed) per step.
        deadline: steps after the gather by which the plan must be ready on every rank; a late
            plan is skipped (logged), never waited for. ``1 <= deadline < interval``. ``None``
            (the default) adapts it: ``interval // 5`` steps (at least 1), doubled after each
            plan not ready in time, up to ``interval - 1``, so a plan slower than that many
            serving steps (many ranks, a busy host) is given the steps it takes instead of being
            skipped every time (:attr:`first_deadline`).
        link_bandwidth: bytes per second a rank receives migrated weights at (default: a
            400 Gb/s RDMA NIC per device, 50e9).
        token_seconds: seconds one token spends in one expert, until the runtime has measured
            its own steps (default 2.5e-7: a DeepSeek-V3 expert, 88 MFLOP, at 350 TFLOP/s).
            With these and the registered weights' bytes, a layer is re-deployed only when the
            compute it saves before the next plan (over one ``interval``, a probe's plan too)
            exceeds its migration time (:mod:`eplb_rt.planning`).
        heat_source: ``"topk"`` (sender side, counted by ``route``; summed over the ranks,
            or one rank's where they route the same tokens: ``rank_local_tokens``) or
            ``"group_list"`` (receiver side, counted by ``record``; all-gathered).
        rank_local_tokens: each rank routes its own tokens (data-parallel attention, dispatched
            by all-to-all): the ranks then shift the replica rule by ``rank * 2^16 //
            num_ranks`` (``ops.route_and_count``'s ``code_offset``), so that their first tokens,
            each counted from 0, do not all pick the same replica of an expert in every step.
            Leave it ``False`` where the ranks route the same tokens and each computes the pairs
            of its own slots (tensor-parallel attention, a combine by all-reduce): they must
            then pick the same replicas, and each rank's ``"topk"`` heat holds every token, so
            the plan reads one rank's (their sum where the ranks' counts differ, with a warning
            that this flag is off).
        count_steps: which steps feed the heat: ``"all"``, ``"prefill"`` or ``"decode"``
            (``step(is_prefill=...)`` says which one just ran). With ``"group_list"`` heat a
            rank's counts hold every rank's tokens, so a step counts only where every rank's
            batch does (mixed phases count nothing). A step that counts nothing is priced as a
            step without load: a better placement saves nothing on it.
        initial_placement: JSON file (vllm-ascend expert_map format) with the placement to start
            from; with ``interval=0`` this is static EPLB.
        export_dir: directory that receives the starting placement as
            ``placement_00000.json`` and every committed one as ``placement_<epoch>.json``
            (the epoch zero-padded to five digits); ``None`` exports nothing.
        transfer_timeout_s: seconds a layer's weight transfer may take before its commit is
            cancelled on every rank (gloo, on the CPU; on CUDA/NPU the transfer's wait is the
            serving stream's, and the backend's own watchdog bounds a peer that hangs); at
            least 0.001, at most 1e9 (a timedelta holds no infinity).
        num_nodes: nodes the ranks are spread over (ranks are node-major); hierarchical policies
            pack expert groups onto nodes and migration prefers a source on the receiver's node.
        num_groups: expert groups for hierarchical placement (DeepSeek-V3: 8); 1 is flat.
        warm_up: load the policy's numba kernels in the background thread at start (from the
            package's kernel cache; compiled there when the cache does not hold them), where the
            runtime rebalances.
        plan_in_subprocess: run the policy in a child process (spawned once, at start) instead of
            the balancer thread, so the policy's Python parts never hold the serving thread's
            GIL; costs one process and pickling the load and the placement per plan. The policy
            must be registered by importing ``eplb_rt.algorithms``.
        plan_threads: threads rank 0 plans the layers on, side by side (the same plan for any
            number of them). ``None`` (the default) adapts them: one, doubled after each plan not
            ready by its deadline (as an adapting deadline is), up to ``EPLB_RT_PLAN_THREADS``
            or the cores rank 0's process may run on less one, for its serving thread, at most
            4 (:func:`eplb_rt.planning.default_threads`); until a plan is late, no thread
            beside the balancer's plans.
    """

    policy: str = "equilibrium"
    policy_options: dict = dataclasses.field(default_factory=dict)
    interval: int = 100
    history: int = 256
    episode: int = 16
    num_redundant: int = 0
    slots_per_rank: int | None = None
    layers_per_step: int = 1
    deadline: int | None = None
    link_bandwidth: float = LINK_BANDWIDTH
    token_seconds: float = TOKEN_SECONDS
    heat_source: str = "topk"
    rank_local_tokens: bool = False
    count_steps: str = "all"
    initial_placement: str | None = None
    export_dir: str | None = None
    transfer_timeout_s: float = 60.0
    num_nodes: int = 1
    num_groups: int = 1
    warm_up: bool = True
    plan_in_subprocess: bool = False
    plan_threads: int | None = None

    def __post_init__(self) -> None:
        from eplb_rt.algorithms import get_policy

        try:
            get_policy(self.policy)
        except ValueError as err:
            raise ValueError(f"EplbConfig.policy: {err}") from None
        if not isinstance(self.policy_options, dict):
            raise TypeError(
                f"EplbConfig.policy_options must be a dict, got "
                f"{type(self.policy_options).__name__}"
            )
        # A copy: the caller's dict changed later would bypass this check.
        object.__setattr__(self, "policy_options", dict(self.policy_options))
        self.options  # noqa: B018 (made now: unknown option keys and bad values raise)
        _check_int(self, "interval", 0)
        _check_int(self, "history", 2)
        _check_int(self, "episode", 1)
        if self.episode > self.history:
            raise ValueError(
                f"EplbConfig.episode ({self.episode}) must be <= history "
                f"({self.history}); lower episode or raise history"
            )
        _check_int(self, "num_redundant", 0)
        if self.slots_per_rank is not None:
            _check_int(self, "slots_per_rank", 1)
            if self.num_redundant:
                raise ValueError("EplbConfig: give slots_per_rank or num_redundant, not both")
        _check_int(self, "layers_per_step", 1)
        if self.deadline is not None:
            _check_int(self, "deadline", 1)
        if self.interval and self.first_deadline >= self.interval:
            if self.deadline is None:
                raise ValueError(
                    f"EplbConfig.interval ({self.interval}) must be >= 2 (or 0: never "
                    "rebalance) to leave a plan a step between its gather and its deadline"
                )
            raise ValueError(
                f"EplbConfig.deadline ({self.deadline}) must be below interval "
                f"({self.interval}) so one plan is decided before the next gather"
            )
        for name in ("link_bandwidth", "token_seconds"):
            _check_float(self, name, 0.0, math.inf, open_low=True, open_high=True)
        if self.heat_source not in HEAT_SOURCES:
            raise ValueError(
                f"EplbConfig.heat_source must be one of {HEAT_SOURCES}, got {self.heat_source!r}"
            )
        if self.count_steps not in COUNT_STEPS:
            raise ValueError(
                f"EplbConfig.count_steps must be one of {COUNT_STEPS}, got {self.count_steps!r}"
            )
        # Paths only: os.path takes an int as a file descriptor (1 "exists": stdout).
        for name in ("initial_placement", "export_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"EplbConfig.{name} must be a path, got {value!r}")
            if value is not None and not os.fspath(value).strip():
                raise ValueError(f"EplbConfig.{name} must be a path or None, got {value!r}")
        if self.initial_placement is not None and not os.path.isfile(self.initial_placement):
            what = "a folder" if os.path.isdir(self.initial_placement) else "no such file"
            raise ValueError(
                f"EplbConfig.initial_placement: {what} {self.initial_placement!r} (expected a "
                "placement's JSON file)"
            )
        # At least a millisecond: torch counts a wait's timeout in whole milliseconds, and 0
        # there means no timeout at all. At most about 31 years: torch takes a timedelta, which
        # holds no infinity.
        _check_float(self, "transfer_timeout_s", 1e-3, 1e9)
        _check_int(self, "num_nodes", 1)
        _check_int(self, "num_groups", 1)
        if self.plan_threads is not None:
            _check_int(self, "plan_threads", 1)
        for name in ("warm_up", "plan_in_subprocess", "rank_local_tokens"):
            value = getattr(self, name)
            if not is_bool(value):
                raise TypeError(f"EplbConfig.{name} must be a bool, got {value!r}")
            object.__setattr__(self, name, bool(value))  # numpy's bool stored as Python's

    @property
    def options(self) -> Any:
        """``policy_options`` as the policy reads them: its options object, each value converted
        and checked (``0.5`` and ``np.float64(0.5)`` are one setting). Made when read, from the
        dict the balancer plans with."""
        from eplb_rt.algorithms import get_policy

        return get_policy(self.policy).make_options(self.policy_options)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, env: bool = False) -> EplbConfig:
        """A config from a mapping of field names; unknown keys raise ``ValueError``.

        With ``env=True``, the ``EPLB_RT_*`` variables of :mod:`eplb_rt.envs` that mirror a field
        (policy, policy_options, export_dir, transfer_timeout_s) override the mapping.
        """
        if not isinstance(values, dict):
            raise TypeError(f"EplbConfig.from_dict needs a dict, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"EplbConfig has no field(s) {unknown}; known: {sorted(known)}")
        merged = dict(values)
        given = {}  # field -> the variable its value came from
        if env:
            for field, var in (
                ("policy", "EPLB_RT_POLICY"),
                ("policy_options", "EPLB_RT_POLICY_OPTIONS"),
                ("export_dir", "EPLB_RT_EXPORT_DIR"),
                ("transfer_timeout_s", "EPLB_RT_TRANSFER_TIMEOUT_S"),
            ):
                value = envs.get(var)
                if value is not None:
                    merged[field], given[field] = value, var
        try:
            return cls(**merged)
        except ValueError as err:
            # A value from the environment: say which variable, the fix is there.
            named = [f"{v}={envs.text(v)!r}" for v in cls._refused_from_env(merged, given)]
            if named:
                raise ValueError(f"{err} (from {', '.join(named)})") from None
            raise

    @classmethod
    def _refused_from_env(cls, merged: dict[str, Any], given: dict[str, str]) -> list[str]:
        """The variables of ``given`` (field -> variable) whose values the config refuses: each
        added in turn to the values not from the environment, which must make a config alone
        (else the environment is not what is refused). Tried, not read from the error's text:
        an option's error names its policy, whichever variable set the option."""
        values = {f: v for f, v in merged.items() if f not in given}
        try:
            cls(**values)
        except (ValueError, TypeError):
            return []
        refused = []
        for field, var in given.items():
            trial = {**values, field: merged[field]}
            try:
                cls(**trial)
            except (ValueError, TypeError):
                refused.append(var)
            else:
                values = trial
        return refused

    @property
    def first_deadline(self) -> int:
        """The first plan's deadline in steps: ``deadline``, or where it adapts (``None``)
        ``interval // 5``, at least 1."""
        return self.deadline if self.deadline is not None else max(1, self.interval // 5)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def num_slots_per_rank(self, num_experts: int, num_ranks: int) -> int:
        """``S`` for a model of ``num_experts`` experts on ``num_ranks`` ranks, or raise."""
        check_count("num_experts", num_experts)
        check_count("num_ranks", num_ranks)
        if self.slots_per_rank is not None:
            return self.slots_per_rank
        total = num_experts + self.num_redundant
        if total % num_ranks:
            raise ValueError(
                f"{num_experts} experts + {self.num_redundant} redundant = {total} slots do not "
                f"split evenly over {num_ranks} ranks; set num_redundant so that the sum is a "
                f"multiple of {num_ranks}"
            )
        return total // num_ranks


def _check_int(config: EplbConfig, name: str, low: int) -> None:
    """Check field ``name`` is an integer ``>= low`` and store it as a Python int (a numpy
    integer, as computed from arrays, is one too)."""
    object.__setattr__(config, name, check_count(f"EplbConfig.{name}", getattr(config, name), low))


def _check_float(
    config: EplbConfig,
    name: str,
    low: float,
    high: float,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """Check field ``name`` is a number in the interval and store it as a Python float."""
    value = getattr(config, name)
    number = as_float(value) if is_real(value) else math.nan
    if math.isnan(number):
        raise ValueError(f"EplbConfig.{name} must be a number, got {value!r}")
    too_low = number <= low if open_low else number < low
    too_high = number >= high if open_high else number > high
    if too_low or too_high:
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        raise ValueError(f"EplbConfig.{name} must be in {lo}{low}, {high}{hi}, got {value!r}")
    object.__setattr__(config, name, float(value))
