"""vllm-ascend: an ``EplbPolicy`` for its dynamic EPLB that runs an eplb_rt policy.

vllm-ascend (0.13 to 0.30) builds its policy with ``PolicyFactory.generate_policy(type)``
(``(type, config)`` up to 0.13) in the EPLB worker and calls ``rebalance_experts(
current_expert_table, expert_workload)``; the worker then rejects, layer by layer, a table that
loses an expert, puts two replicas of one expert on a rank, or moves an expert between slots of
one rank. :func:`install` (run by the ``vllm.general_plugins`` entry point when
``EPLB_RT_POLICY`` is set) makes the factory return :class:`EplbRtAscendPolicy` whatever the
type says. There a bad input is logged and the table in force returned unchanged: an exception
would end vllm-ascend's EPLB process, and the engine would wait for its next plan for ever.

Under model runner v2 (``VLLM_USE_V2_MODEL_RUNNER=1``) vllm-ascend 0.30 runs vLLM's EPLB
instead, with a policy that its own ``create_eplb_policy(name, stair_config)`` builds (``"stair"``
by default, or vLLM's ``DefaultEplbPolicy`` imported directly): vLLM's registry, where
:mod:`eplb_rt.integrations.vllm` puts eplb_rt, is not asked. :func:`install` makes that factory
build eplb_rt's vLLM policy (:func:`eplb_rt.integrations.vllm.policy_class`) for every name too.

Offline, each load the policy is given is also written to ``EPLB_RT_EXPORT_DIR`` (when set) as
``load-<pid>-<n>.npy`` (``[T, L, E]`` tokens per logical expert; every rank sees the same
gathered load, so one rank's files are enough), which ``eplb-rt plan --load`` reads.
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np

from eplb_rt import envs, formats
from eplb_rt.algorithms import warm_up
from eplb_rt.algorithms.load import heat_to_load
from eplb_rt.integrations._common import (
    as_numpy,
    check_nodes_and_groups,
    engine_topology,
    policy_name,
    replan,
)

WHERE = "eplb_rt vllm-ascend policy"
log = logging.getLogger("eplb_rt.integrations")


def _unchanged(table) -> object:
    """The table in force as a plan returns one (``[L, D, S] int32`` on the host), or as given
    where it is not such a table (the input that failed)."""
    try:
        arr = as_numpy(table, "current_expert_table", (3,), WHERE)
    except ValueError:
        return table
    return arr.astype(np.int32) if np.issubdtype(arr.dtype, np.integer) else table


class EplbRtAscendPolicy:
    """vllm-ascend's ``EplbPolicy`` interface over eplb_rt policy ``policy``.

    Args:
        policy: eplb_rt policy name; ``None``: ``EPLB_RT_POLICY`` or ``EplbConfig().policy``.
        options: overrides of the policy's options.
        num_experts: logical experts ``E``; ``None``: the largest id in the table + 1.
        num_nodes, num_groups: as in :class:`eplb_rt.placement.Topology` (ranks that
            ``num_nodes`` does not divide are planned flat).
        export_dir: where loads are written (see the module); ``None``: ``EPLB_RT_EXPORT_DIR``.
        keep_on_error: log a bad input and return the table unchanged instead of raising.
    """

    def __init__(
        self,
        policy: str | None = None,
        options: dict | None = None,
        *,
        num_experts: int | None = None,
        num_nodes: int = 1,
        num_groups: int = 1,
        export_dir: str | None = None,
        keep_on_error: bool = False,
    ) -> None:
        check_nodes_and_groups(WHERE, num_nodes, num_groups)
        self.policy = policy_name(policy, options)
        self.options = options
        self.num_experts = num_experts
        self.num_nodes = num_nodes
        self.num_groups = num_groups
        self.export_dir = export_dir if export_dir is not None else envs.get("EPLB_RT_EXPORT_DIR")
        if self.export_dir:  # a folder that cannot be made is a set-up error: said at the start
            formats.make_folder(self.export_dir, f"{WHERE}: export_dir (EPLB_RT_EXPORT_DIR)")
        self.keep_on_error = keep_on_error
        self._exported = 0  # a plain int: vllm-ascend may pickle the policy into its EPLB process
        warm_up([self.policy])

    def rebalance_experts(self, current_expert_table, expert_workload):
        """Plan from the table in force and the tokens each of its slots received.

        Args:
            current_expert_table: ``[L, D, S]`` ints, expert held by each local slot.
            expert_workload: ``[L, D, S]`` or ``[T, L, D, S]`` (multi-stage) tokens per slot.

        Returns:
            ``(changed, priority, new_deployment)``: ``changed`` is True when a layer changed,
            ``priority`` the changed layer ids ``[k] int64``, largest PAR gain first (a layer
            whose groups go back onto nodes, planned ``hierarchical``, whatever it gains),
            ``new_deployment`` the ``[L, D, S] int32`` table (unchanged layers as they were).
        """
        try:
            return self._rebalance(current_expert_table, expert_workload)
        except (ValueError, TypeError) as err:
            if not self.keep_on_error:
                raise
            log.error("%s; the table in force is kept", err)
            return False, np.zeros(0, dtype=np.int64), _unchanged(current_expert_table)

    def _rebalance(self, current_expert_table, expert_workload):
        table = as_numpy(current_expert_table, "current_expert_table [L, D, S]", (3,), WHERE)
        work = as_numpy(expert_workload, "expert_workload [(T,) L, D, S]", (3, 4), WHERE, load=True)
        work = work[None] if work.ndim == 3 else work
        if work.shape[1:] != table.shape:
            raise ValueError(
                f"{WHERE}: expert_workload has shape {work.shape}, expected "
                f"[(T,) {', '.join(map(str, table.shape))}] like current_expert_table"
            )
        if not np.issubdtype(table.dtype, np.integer):
            raise ValueError(f"{WHERE}: current_expert_table must hold ints, got {table.dtype}")
        # Without num_experts, the ids bound it: no more experts than a layer's slots.
        bound = self.num_experts or table[0].size
        bad = (table < 0) | (table >= bound)
        if bad.any():
            layer, rank, slot = (int(i) for i in np.argwhere(bad)[0])
            given = "" if self.num_experts else f", no more experts than a layer's {bound} slots"
            raise ValueError(
                f"{WHERE}: current_expert_table holds expert {table[layer, rank, slot]} at layer "
                f"{layer}, rank {rank}, slot {slot}; expected ids in [0, {bound}){given}"
            )
        num_experts = self.num_experts or int(table.max()) + 1
        L, D, S = table.shape
        load = heat_to_load(work.reshape(-1, L, D * S), table.reshape(L, -1), num_experts)
        topology = engine_topology(WHERE, D, S, self.num_nodes, self.num_groups)
        placement, gain = replan(
            WHERE,
            load,
            topology,
            table.reshape(L, -1),
            policy=self.policy,
            options=self.options,
            table_name="current_expert_table",
            # A layer with an expert twice on a rank is planned afresh, not slot by slot from
            # the table, and vllm-ascend's worker refuses a plan that moves an expert within a
            # rank: it threw out every plan of such a layer, cycle after cycle.
            refuse_doubled=(
                "eplb_rt does not plan from such a table in a way vllm-ascend's worker accepts "
                "(it maps an expert to one slot per rank)"
            ),
        )
        if self.export_dir:
            self._export(load)
        # Layers whose groups the table spreads over nodes change whatever they gain (replan).
        changed = np.flatnonzero((placement.phy2log != table.reshape(L, -1)).any(axis=1))
        priority = changed[np.argsort(-gain[changed], kind="stable")].astype(np.int64)
        return bool(priority.size), priority, placement.by_rank().copy()

    def _export(self, load: np.ndarray) -> None:
        """``load`` written to the export folder. A failed write (a full disk, the folder gone)
        is logged: it must not cost the plan, nor end vllm-ascend's EPLB process."""
        name = f"load-{os.getpid()}-{self._exported:04d}.npy"
        path = os.path.join(self.export_dir, name)
        try:
            os.makedirs(self.export_dir, exist_ok=True)
            formats.write_load(load, path)
        except OSError as err:
            log.error("%s: cannot write %s (%s); the plan stands", WHERE, path, err)
            return
        self._exported += 1


def install(policy: str | None = None, options: dict | None = None) -> None:
    """Make vllm-ascend build eplb_rt's policy ``policy`` (with ``options``): its dynamic EPLB's
    ``PolicyFactory`` an :class:`EplbRtAscendPolicy` for every type, and from 0.30 the factory
    of the policy vLLM's EPLB runs under model runner v2 eplb_rt's vLLM policy for every name.

    Raises ``ImportError`` when vllm-ascend has neither factory, ``ValueError`` for an unknown
    policy or options that are not its own (now, not when vllm-ascend builds its EPLB worker)."""
    name = policy_name(policy, options)
    missing = []
    try:
        from vllm_ascend.eplb.core.policy.policy_factory import PolicyFactory
    except ImportError as err:
        missing.append(str(err))
    else:

        def generate_policy(policy_type: int, config: object = None) -> EplbRtAscendPolicy:
            # ``config`` (vllm-ascend <= 0.13's DynamicConfig) holds nothing a plan needs
            return EplbRtAscendPolicy(name, options, keep_on_error=True)

        PolicyFactory.generate_policy = staticmethod(generate_policy)
    try:
        from vllm_ascend.distributed.eplb.policy import factory
    except ImportError as err:  # before 0.30: model runner v2 has no EPLB of its own
        missing.append(str(err))
    else:
        _install_runner_v2(factory, name, options)
    if len(missing) == 2:
        raise ImportError("; ".join(missing))


def _install_runner_v2(factory, name: str, options: dict | None) -> None:
    """``factory.create_eplb_policy(name, stair_config)`` builds eplb_rt's vLLM policy."""
    from eplb_rt.integrations import vllm

    abstract = getattr(factory, "AbstractEplbPolicy", None)
    if abstract is None:
        abstract = vllm.policy_registry().AbstractEplbPolicy
    chosen = vllm.policy_class(
        name, options, returns_maps=vllm.returns_maps(abstract), abstract=abstract
    )

    def create_eplb_policy(policy: str, stair_config: object = None):
        # every name, "stair" (the default there) included: EPLB_RT_POLICY asked for eplb_rt
        return chosen()

    factory.create_eplb_policy = create_eplb_policy
    # vllm-ascend's model runner imports the function by name: rebind it there if it came first
    runner = sys.modules.get("vllm_ascend.worker.v2.eplb")
    if runner is not None and hasattr(runner, "create_eplb_policy"):
        runner.create_eplb_policy = create_eplb_policy
