"""Typed wrappers over the kernels ``torch.ops.eplb_rt.*`` (CPU always; CUDA/NPU when built).

The wrappers are thin on purpose (a decode-size call costs about 10 µs): the kernels check every
argument themselves, before writing anything, and raise ``RuntimeError`` naming the argument,
what was expected and what they got. What an op writes may not share memory with what it reads,
nor with another tensor it writes (``route_and_count`` may write ``phy_ids`` over ``topk_ids``
itself, and a table may be refreshed from itself). As torch's own in-place ops, a call bumps the
version of each tensor it writes (a backward that saved one refuses to run), and refuses to
write a tensor that requires grad while grad mode is on (call the ops under ``torch.no_grad()``
or ``torch.inference_mode()``, as engines serve). Importing this module loads ``eplb_rt._C``,
which registers the ops with the dispatcher.

The replica rule of :func:`route_and_count` (which replica of an expert a routed pair gets,
from its position only, deterministically and graph-safe) is defined and explained once, in
``csrc/common/replica_rule.h``; ``tests/reference.py`` holds its Python reference.

Under ``torch.compile`` with the Inductor backend and dynamic shapes (torch 2.13), a tensor an
op writes that is a view of a compiled function's argument at a symbolic offset (``ring[:,
layer, :]`` with ``ring`` and ``layer`` passed in) is written at offset 0: ``route_and_count``
and ``count_from_group_list`` then count into layer 0, and weights that are views of one
buffer reach ``update_expert_weights_`` overlapping (refused). Inductor mishandles any mutating
custom op so. ``EplbRuntime`` is not affected (its ring and tables are module constants to the
compiler, and it commits eagerly); compiled callers keep such tensors constants, or mark them
static (``torch._dynamo.mark_static(ring)``), or pass views that are not offsets of an argument.
"""

from __future__ import annotations

import torch

from eplb_rt import _load_extension

_load_extension()  # registers torch.ops.eplb_rt

__all__ = [
    "check_device",
    "count_from_group_list",
    "route_and_count",
    "update_expert_map_",
    "update_expert_weights_",
]

_route_and_count = torch.ops.eplb_rt.route_and_count.default
_count_from_group_list = torch.ops.eplb_rt.count_from_group_list.default
_update_expert_weights = torch.ops.eplb_rt.update_expert_weights_.default
_update_expert_map = torch.ops.eplb_rt.update_expert_map_.default

_checked_devices: set[torch.device] = set()

NPU_BASE_FORMATS = {0: "NCHW", 2: "ND"}
"""torch_npu storage formats that hold a tensor row-major in its own shape: each slot's weights
are then one block of bytes, which the transfers send and ``update_expert_weights_`` copies.
vllm-ascend casts MoE weights to FRACTAL_NZ (29), whose storage is tiled and padded."""


def npu_format(tensor: torch.Tensor) -> int | None:
    """torch_npu's storage format of ``tensor`` (2: ND), or ``None`` off the NPU."""
    if tensor.device.type != "npu":
        return None
    import torch_npu  # registered the npu device, so it is importable here

    return int(torch_npu.get_npu_format(tensor))


def check_npu_layout(tensor: torch.Tensor, what: str) -> None:
    """ValueError naming ``what`` where ``tensor`` is on the NPU in a format other than
    :data:`NPU_BASE_FORMATS` (its slots are not blocks of bytes)."""
    storage = npu_format(tensor)
    if storage is not None and storage not in NPU_BASE_FORMATS:
        raise ValueError(
            f"{what} is stored in NPU format {storage}, expected a base format "
            f"{NPU_BASE_FORMATS} (slots are moved as their bytes): register or pass it before "
            "torch_npu.npu_format_cast to FRACTAL_NZ (29), or cast it back with "
            "torch_npu.npu_format_cast(tensor, 2)"
        )


def check_device(device: torch.device | str) -> None:
    """First-use check of a device backend: ``route_and_count`` there must equal the CPU op.

    The ops run it once per accelerator device, on their first call with tensors there (it
    synchronises once; call it yourself before capturing a graph or compiling: compiled code
    cannot run it and skips it). It catches a kernel library that loads but does nothing, e.g.
    AscendC kernels built for another SoC, and counts that cores lose when they add into one
    heat row at once: after a few pairs by hand, a batch of 512 pairs (int32 ids, uneven shares,
    an odd number of slots, the heat a layer of a ring) spans many cores or blocks.

    Raises:
        RuntimeError: the device's results differ, naming the device, the case and what the
            build says.
    """
    device = torch.device(device)
    if device.index is None and device.type not in ("cpu", "meta"):
        # As a tensor's device reads, so that _first_use finds it checked ("cuda" -> "cuda:0").
        device = torch.device(device.type, getattr(torch, device.type).current_device())
    for name, (ids, *tables), ring, layer in _check_cases():
        got = []
        for dev in (torch.device("cpu"), device):
            heat = ring.to(dev, copy=True)  # each run its own ring, also on the CPU
            phy = torch.full(ids.shape, -7, dtype=ids.dtype, device=dev)
            step = torch.tensor([3], device=dev)
            _route_and_count(ids.to(dev), *(t.to(dev) for t in tables), heat[:, layer], step, phy)
            got.append(torch.cat([phy.flatten().long(), heat[1, layer].long()]).cpu())
        if not torch.equal(*got):
            from eplb_rt import build_info

            differ = int((got[0] != got[1]).sum())
            raise RuntimeError(
                f"eplb_rt: the {device} kernels fail their first-use check ({name}): "
                f"route_and_count gave phy_ids + heat row {got[1].tolist()[:24]}..., the CPU op "
                f"{got[0].tolist()[:24]}... ({differ} of {got[0].numel()} values differ). This "
                f"build: {build_info()}; rebuild eplb_rt on this machine (NPU: for the device's "
                "SoC)."
            )
    _checked_devices.add(device)


def _check_cases() -> list[tuple[str, list[torch.Tensor], torch.Tensor, int]]:
    """The check's cases: ``(name, [topk_ids, log2phy, logcnt, replica_share], ring [H, L, P]
    int32, layer)``, on the CPU, the same in every process."""
    by_hand = [
        torch.tensor([[0, 2], [1, -1], [2, 0], [0, 1], [2, 2]]),  # topk_ids
        torch.tensor([[0, 3], [1, -1], [4, 2]], dtype=torch.int32),  # log2phy
        torch.tensor([2, 1, 2], dtype=torch.int32),  # logcnt
        torch.tensor([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]]),  # replica_share
    ]
    # 37 experts of 3 replicas on 111 slots, their shares uneven; 64 tokens of top-8, padded.
    gen = torch.Generator().manual_seed(0)
    experts, replicas = 37, 3
    slots = torch.randperm(experts * replicas, generator=gen, dtype=torch.int32)
    share = torch.rand((experts, replicas), generator=gen) + 0.1
    share = share / share.sum(dim=1, keepdim=True)
    many = [
        torch.randint(-1, experts, (64, 8), generator=gen, dtype=torch.int32),
        slots.reshape(experts, replicas),
        torch.full((experts,), replicas, dtype=torch.int32),
        share.float(),
    ]
    return [
        ("a few pairs", by_hand, torch.zeros((2, 1, 5), dtype=torch.int32), 0),
        ("512 pairs over many cores", many, torch.zeros((2, 3, 111), dtype=torch.int32), 1),
    ]


def _device(value: object, op: str, name: str) -> torch.device:
    """The device of ``value``, the op's argument ``name``, which the wrapper reads before the
    op runs: a ``TypeError`` naming it where it is not a tensor (the op itself names any other
    argument of the wrong type)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(value).__name__}")
    return value.device


def _first_use(device: torch.device) -> None:
    # The cheapest test first (a decode step runs this once per op call). Traced, the check
    # would be a graph break and a sync (with fake tensors, an error).
    if device.type in ("cpu", "meta") or torch.compiler.is_compiling():
        return
    if device not in _checked_devices:
        check_device(device)


def route_and_count(
    topk_ids: torch.Tensor,
    log2phy: torch.Tensor,
    logcnt: torch.Tensor,
    heat: torch.Tensor,
    step: torch.Tensor,
    *,
    replica_share: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    code_offset: int = 0,
) -> torch.Tensor:
    """Route one layer's top-k choices to expert replicas and count them into ``heat``.

    Args:
        topk_ids: ``[N, K]`` int32 or int64, contiguous: logical expert ids, ``-1`` = padding.
        log2phy: ``[E, R]`` int32, contiguous: slots of each expert, ``-1`` padded (``R <=
            65536``: the replica rule splits an expert over at most 2^16 replicas).
        logcnt: ``[E]`` int32, contiguous: replicas per expert, in ``[1, R]`` for every expert
            used.
        heat: ``[H, P]`` int32 with unit stride in the last dimension and rows that do not
            overlap (typically ``heat_ring[:, layer, :]`` of the ``[H, L, P]`` ring; compiled
            with Inductor and dynamic shapes, see the module docstring); row ``step mod H``
            gets ``+1`` per routed pair at its slot. Padding is never counted.
        step: one-element int64 tensor on the device: the step counter (not advanced here).
        replica_share: ``[E, R]`` float32, contiguous, or None (uniform split): each
            replica's share.
        out: ``[N, K]`` contiguous buffer of ``topk_ids``' dtype for the result (the op's
            ``phy_ids``, as its errors name it), or None to allocate one.
        code_offset: in ``[0, 2^16)``, added to every pair's position code (the rule in
            ``csrc/common/replica_rule.h``): ranks whose batches each start at token 0
            (data-parallel attention) take ``rank * 2^16 // num_ranks`` so that their first
            tokens do not all pick the same replica (``EplbRuntime.route`` does with
            ``EplbConfig.rank_local_tokens``); ranks that route the same tokens keep 0.

    Returns:
        ``phy_ids`` ``[N, K]``, the dtype of ``topk_ids``: the physical id (slot) of each pair,
        ``-1`` where ``topk_ids`` is ``-1``. The replica follows the rule in
        ``csrc/common/replica_rule.h``.

    Raises:
        TypeError: ``topk_ids`` is not a tensor (an argument of another type is the op's
            ``RuntimeError`` naming it).
        RuntimeError: a dtype, shape or device mismatch; on the CPU also an id below ``-1`` or
            ``>= E``, or a used expert whose ``logcnt`` is not in ``[1, R]``, whose first
            ``logcnt`` slots are not in ``[0, P)`` or, with ``replica_share``, whose shares
            over those slots are not finite, ``>= 0`` and summing to 1 within 1e-4. Nothing is
            written then. (Device backends check metadata only: they never synchronise; a pair
            of a bad id, count or slot gets phy id ``-1`` and is not counted, the rest of the
            batch is; shares they take as given.)
    """
    _first_use(_device(topk_ids, "route_and_count", "topk_ids"))
    if out is None:
        out = torch.empty_like(topk_ids)
    _route_and_count(topk_ids, log2phy, logcnt, replica_share, heat, step, out, code_offset)
    return out


def count_from_group_list(
    group_list: torch.Tensor,
    heat: torch.Tensor,
    step: torch.Tensor,
    slot_offset: int,
    cumulative: bool = False,
) -> None:
    """Add a dispatch kernel's per-local-slot token counts into ``heat[step mod H]``.

    Args:
        group_list: ``[S_local]`` int32 or int64, contiguous: tokens received by each local
            slot, or with ``cumulative=True`` their inclusive prefix sums (``count_i = gl[i] -
            gl[i - 1]``).
        heat: ``[H, P]`` int32, unit stride in the last dimension; ``heat[row, slot_offset + i]
            += count_i`` (a view of a ring compiled with Inductor and dynamic shapes: see the
            module docstring).
        step: one-element int64 tensor: the step counter.
        slot_offset: first physical slot of this rank (``rank * S``); ``slot_offset + S_local
            <= P``.
        cumulative: whether ``group_list`` holds prefix sums.

    Raises:
        TypeError: ``heat`` is not a tensor.
        RuntimeError: out-of-range ``slot_offset``, dtype/shape/device mismatch, heat rows that
            overlap, and on the CPU a count outside ``[0, 2**31)`` (device backends check
            metadata only: they never synchronise; they add a negative count as 0 and a larger
            one as ``2**31 - 1``).
    """
    _first_use(_device(heat, "count_from_group_list", "heat"))
    _count_from_group_list(group_list, heat, step, slot_offset, cumulative)


def update_expert_weights_(
    weights: list[torch.Tensor], staged: list[torch.Tensor], slots: torch.Tensor
) -> None:
    """Copy staged experts into slots of one layer's weight tensors, in place.

    ``weights[t][slots[i]] = staged[t][i]`` for every tensor ``t`` (w13, w2, scales, biases...).

    Args:
        weights: tensors ``[S, ...]``, contiguous, any dtype (int8 and float scales included),
            all with the same ``S`` (local slots).
        staged: as many tensors ``[M, ...]``, contiguous, with the trailing shape, dtype and
            device of the matching weight.
        slots: ``[M]`` int64 (int32 accepted): unique local slots in ``[0, S)``; ``M`` may be 0.

    Raises:
        RuntimeError: mismatched lists, shapes, dtypes or devices, and on the CPU a slot out of
            range or twice (device backends check metadata only: they skip a slot out of range,
            and of rows given one slot copy the last).
        ValueError: on the NPU, a tensor stored in a format other than ND or NCHW (FRACTAL_NZ:
            its slots are not blocks of bytes, and the copy would move the wrong ones); this
            wrapper checks it, not the op under ``torch.ops.eplb_rt``.

    Compiled with Inductor and dynamic shapes, weights that are views of one argument are
    refused: see the module docstring.
    """
    _first_use(_device(slots, "update_expert_weights_", "slots"))
    for name, tensors in (("weights", weights), ("staged", staged)):
        for index, tensor in enumerate(tensors):  # (off the NPU a device check: once a commit)
            check_npu_layout(tensor, f"update_expert_weights_: {name}[{index}]")
    _update_expert_weights(weights, staged, slots)


def update_expert_map_(
    log2phy: torch.Tensor,
    logcnt: torch.Tensor,
    new_log2phy: torch.Tensor,
    new_logcnt: torch.Tensor,
    *,
    num_slots: int,
    replica_share: torch.Tensor | None = None,
    new_replica_share: torch.Tensor | None = None,
    expert_map: torch.Tensor | None = None,
    new_expert_map: torch.Tensor | None = None,
) -> None:
    """Overwrite one layer's routing tables in place (same storage: captured graphs stay valid).

    The new tables are on the device of ``log2phy`` or all in host memory. From host memory
    (pinned, for a copy that does not block) every backend checks their values first and copies
    them asynchronously on the current stream: keep them unchanged until the stream has passed.
    Tables already on a device are copied unchecked (reading them would synchronise).

    Args:
        log2phy, new_log2phy: ``[E, R]`` int32; each new row holds ``new_logcnt[e]`` slots in
            ``[0, num_slots)`` then ``-1``.
        logcnt, new_logcnt: ``[E]`` int32, new values in ``[1, R]``.
        num_slots: ``P``, the number of physical slots.
        replica_share, new_replica_share: ``[E, R]`` float32 (every entry finite and ``>= 0``,
            padding too; each expert's shares over its ``logcnt`` replicas summing to 1 within
            1e-4), both or neither.
        expert_map, new_expert_map: ``[E]`` int32, this rank's local slot of each expert or
            ``-1``, no slot given to two experts; both or neither. (The op knows ``P``, not a
            rank's ``S`` slots: new local slots are checked against ``P``.)

    Raises:
        RuntimeError: a bad value (in host memory), a dtype/shape/device mismatch or an unmatched
            pair; nothing is written then.
    """
    _update_expert_map(
        log2phy,
        logcnt,
        replica_share,
        expert_map,
        new_log2phy,
        new_logcnt,
        new_replica_share,
        new_expert_map,
        num_slots,
    )
