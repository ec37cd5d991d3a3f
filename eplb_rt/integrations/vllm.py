"""vLLM: an ``AbstractEplbPolicy`` that runs an eplb_rt policy, and the plugin that selects it.

vLLM (0.13 to 0.34) looks its EPLB policy up in ``vllm.distributed.eplb.policy.EPLB_POLICIES``
(on its main branch ``vllm.backends.distributed.eplb.policy``; both are tried) by
``--eplb-config '{"policy": "default"}'`` (the only value its config accepts) and calls the
class's ``rebalance_experts`` on the host. The ``vllm.general_plugins`` entry point ``eplb_rt``
(:func:`register`), which vLLM runs in every process, puts :class:`EplbRtPolicy` under that key
when ``EPLB_RT_POLICY`` names an eplb_rt policy; unset, vLLM is left as it is. Inside
vllm-ascend (a vLLM platform plugin) the same entry point also selects eplb_rt there (see
:mod:`eplb_rt.integrations.vllm_ascend`).

Up to vLLM 0.18 a policy returns three maps (``phy2log``, ``log2phy``, ``logcnt``) on the load's
device; from 0.19 only ``phy2log``, on the host. :func:`register` reads which from the return
annotation of vLLM's ``AbstractEplbPolicy.rebalance_experts``. vLLM 0.12 and older have no
policy registry: there only vllm-ascend's EPLB can be replaced.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import typing

import numpy as np

from eplb_rt.integrations._common import (
    as_numpy,
    check_counts,
    engine_topology,
    plugin_policy,
    policy_name,
    replan,
)

WHERE = "eplb_rt vLLM policy"
log = logging.getLogger("eplb_rt.integrations")


class EplbRtPolicy:
    """vLLM's EPLB policy interface (a class with a class-method ``rebalance_experts``).

    ``policy`` / ``options`` name the eplb_rt policy and its option overrides; ``None`` means
    ``EPLB_RT_POLICY`` or ``EplbConfig().policy``. Make one with :func:`policy_class`.
    """

    policy: str | None = None
    options: dict | None = None
    returns_maps: bool = False  # vLLM <= 0.18: (phy2log, log2phy, logcnt) on the load's device

    @classmethod
    def rebalance_experts(  # noqa: PLR0917 (vLLM's signature)
        cls,
        weight,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_ranks: int,
        old_global_expert_indices=None,
    ):
        """``weight [L, E]`` tokens per logical expert -> ``phy2log [L, num_replicas]`` int64.

        With :attr:`returns_maps`, vLLM 0.13-0.18's triple instead: ``phy2log``, ``log2phy
        [L, E, num_replicas - E + 1]`` (slots of each expert, ``-1`` padded) and ``logcnt
        [L, E]``, all int64 on ``weight``'s device.

        ``old_global_expert_indices`` is the ``[L, num_replicas]`` ``phy2log`` in force: experts
        that stay on a rank keep their slot, and a layer is re-placed only when that lowers its
        PAR on ``weight``. vLLM passes a table of another width, or with ``-1`` slots, while it
        changes the number of ranks; nothing can be kept then and the layers are planned anew
        (a table of other layers is an error).
        Ranks that ``num_nodes`` does not divide are planned flat, as vLLM's own policy does.
        """
        import torch

        load = as_numpy(weight, "weight [layers, experts]", (2,), WHERE, load=True)
        load = load.astype(np.float64)
        check_counts(WHERE, num_replicas=num_replicas, num_ranks=num_ranks)
        if num_replicas % num_ranks:
            raise ValueError(
                f"{WHERE}: num_replicas ({num_replicas}) must be a positive multiple of "
                f"num_ranks ({num_ranks})"
            )
        previous = None
        if old_global_expert_indices is not None:
            old = as_numpy(old_global_expert_indices, "old_global_expert_indices", (2,), WHERE)
            if old.shape[0] != load.shape[0]:  # no change of ranks explains other layers
                raise ValueError(
                    f"{WHERE}: old_global_expert_indices has {old.shape[0]} layers, weight "
                    f"{load.shape[0]}"
                )
            # -1 marks a slot of a rank being added or removed; any other id must be an expert.
            bad = (old < -1) | (old >= load.shape[1])
            if bad.any():
                layer, slot = np.argwhere(bad)[0]
                raise ValueError(
                    f"{WHERE}: old_global_expert_indices[{layer}, {slot}] = {old[layer, slot]}, "
                    f"expected an expert id in [0, {load.shape[1]}) or -1 (elastic EP)"
                )
            if old.shape[1] == num_replicas and (old >= 0).all():
                previous = old
        topology = engine_topology(
            WHERE, num_ranks, num_replicas // num_ranks, num_nodes, num_groups
        )
        placement, _ = replan(
            WHERE,
            load[None],
            topology,
            previous,
            policy=policy_name(cls.policy),
            options=cls.options,
            table_name="old_global_expert_indices",
        )
        if not cls.returns_maps:
            return torch.from_numpy(placement.phy2log.astype(np.int64))
        width = num_replicas - placement.num_experts + 1  # as vLLM's own policy returns
        maps = (placement.phy2log, placement.log2phy(width), placement.logcnt)
        device = getattr(weight, "device", "cpu")
        return tuple(torch.from_numpy(m.astype(np.int64)).to(device) for m in maps)


def policy_class(
    policy: str | None = None,
    options: dict | None = None,
    *,
    returns_maps: bool | None = None,
    abstract: type | None = None,
) -> type[EplbRtPolicy]:
    """A subclass of :class:`EplbRtPolicy` bound to ``policy`` and ``options`` (both checked now);
    ``returns_maps`` for vLLM 0.13-0.18 (see :meth:`EplbRtPolicy.rebalance_experts`). With
    ``abstract`` (vLLM's ``AbstractEplbPolicy``) it is a subclass of that too, for engine code
    that checks what its policy is. ``None`` (both): as the vLLM that imports here wants
    (:func:`returns_maps` of its ``AbstractEplbPolicy``); without vLLM, ``phy2log`` alone and no
    vLLM base."""
    name = policy_name(policy, options)
    if returns_maps is None:
        if abstract is None:
            try:
                abstract = policy_registry().AbstractEplbPolicy
            except (ImportError, AttributeError):
                pass
        returns_maps = abstract is not None and _wants_maps(abstract)
    attrs = {"policy": name, "options": options, "returns_maps": returns_maps}
    bases = (EplbRtPolicy,) if abstract is None else (EplbRtPolicy, abstract)
    return type(f"EplbRt_{name}", bases, attrs)


def returns_maps(abstract: type) -> bool:
    """Whether vLLM's ``AbstractEplbPolicy`` (``abstract``) wants the three maps back: its
    ``rebalance_experts`` is annotated ``-> tuple[...]`` up to vLLM 0.18, ``-> Tensor`` after."""
    returned = inspect.signature(abstract.rebalance_experts).return_annotation
    if isinstance(returned, str):  # postponed annotations
        return returned.replace(" ", "").lower().startswith(("tuple[", "typing.tuple["))
    return typing.get_origin(returned) is tuple


_wants_maps = returns_maps  # the name policy_class's argument does not hide


REGISTRY_MODULES = ("vllm.backends.distributed.eplb.policy", "vllm.distributed.eplb.policy")
"""Where vLLM keeps its EPLB policy registry: its main branch moves it to the first (leaving a
forwarding module at the second for a while); every release so far has only the second."""


def policy_registry():
    """vLLM's EPLB policy module (``EPLB_POLICIES``, ``AbstractEplbPolicy``); ``ImportError``
    naming the modules tried when neither imports."""
    errors = []
    for module in REGISTRY_MODULES:
        try:
            return importlib.import_module(module)
        except ImportError as err:
            errors.append(f"{module}: {err}")
    raise ImportError("; ".join(errors))


def register() -> None:
    """The ``vllm.general_plugins`` entry point: with ``EPLB_RT_POLICY`` set, vLLM's EPLB
    (and vllm-ascend's dynamic EPLB, when installed) plan with that eplb_rt policy and the
    options in ``EPLB_RT_POLICY_OPTIONS``."""
    chosen = plugin_policy()
    if chosen is None:
        return
    name, options = chosen
    has_ascend = importlib.util.find_spec("vllm_ascend") is not None
    try:
        vllm_policy = policy_registry()
    except ImportError as err:
        if not has_ascend:
            raise RuntimeError(
                f"EPLB_RT_POLICY={name} needs vLLM's EPLB policy registry "
                f"(EPLB_POLICIES, vLLM >= 0.13), which this vLLM lacks ({err}); "
                "upgrade vLLM or unset EPLB_RT_POLICY"
            ) from None
        log.warning("vLLM has no EPLB policy registry (%s); only vllm-ascend's is replaced", err)
    else:
        abstract = vllm_policy.AbstractEplbPolicy
        vllm_policy.EPLB_POLICIES["default"] = policy_class(
            name, options, returns_maps=returns_maps(abstract), abstract=abstract
        )
    if not has_ascend:
        return
    from eplb_rt.integrations import vllm_ascend

    try:  # vLLM runs plugins unguarded: a broken vllm-ascend must not stop vLLM from starting
        vllm_ascend.install(name, options)
    except ImportError as err:
        log.warning("vllm-ascend's EPLB policies cannot be imported (%s); it keeps its own", err)
