"""The migration executor: transfers a layer's moved expert weights into staging buffers on a
dedicated stream, then commits them in place at a step boundary.

Shape of every asynchronous step (DeepEP's): :meth:`MigrationExecutor.start` takes the
``previous_event`` it must follow and returns a :class:`Transfer` holding the communication works
and the event that marks the end of its copies. At the step boundary the serving thread calls
:meth:`MigrationExecutor.finish` (bounded wait, local success flag), the ranks agree (see
``EplbRuntime``), and :meth:`MigrationExecutor.commit` makes the serving stream wait on the
event, then runs ``update_expert_weights_`` on the layer's registered tensors.

A slot moves as bytes: each registered tensor is seen as ``uint8 [S, B]`` rows over its own
memory (:func:`slot_rows`), so any dtype moves over any backend (NCCL and HCCL refuse some:
``float8_e8m0fnu`` scales of MXFP8/MXFP4 weights), and a layout whose slots are each one block of
memory moves as well as a contiguous one (a column-major scale tensor, rows padded for TMA).

Staging buffers are allocated per lane (``layers_per_step`` lanes) for each distinct set of
rows' byte widths, when the weights are registered (at model load, before an engine sizes its
KV cache from the memory left; out of memory there is a clear error, not a transfer failing on
one rank): ``lanes x S x`` a slot's bytes, usually one set for the whole model. Every transfer
reuses them (freed only when no registered layer has their widths any more, which a layer in
flight always has; so the caching allocator needs no ``record_stream``).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import time
import zlib

import numpy as np
import torch
import torch.distributed as dist

from eplb_rt import ops
from eplb_rt.runtime.device import Device, Event
from eplb_rt.runtime.migration import LayerMigration

# Tags of one transfer: entry i of tensor t gets tag base + i * T + t; bases advance per transfer
# so that a late message of a failed transfer never matches a later one.
_TAG_SPAN = 1 << 20


@dataclasses.dataclass
class Transfer:
    """One layer's transfer in flight on this rank.

    Attributes:
        migration: the layer's moves (identical on every rank).
        slots: ``[M] int32`` local slots this rank receives into (host; uploaded at commit).
        staged: per registered tensor, ``uint8 [M, B]`` rows of the staging buffers.
        works: communication handles to wait on.
        event: end of the local copies on the migration stream.
        started: ``time.perf_counter()`` at start.
        error: a failure found at start (the layer is cancelled at the boundary).
        counts: what it moves, by :attr:`MigrationExecutor.counters`' keys (added there once
            it has finished on this rank).
    """

    migration: LayerMigration
    slots: np.ndarray
    staged: list[torch.Tensor]
    works: list
    event: Event
    started: float
    error: str | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)


def slot_rows(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``uint8 [S, B]``, contiguous: slot ``i`` of ``tensor [S, ...]`` as the bytes of its block
    of memory (a view: writing a row rewrites the slot).

    Each slot must be one block, the next slot's starting where it ends or later: a contiguous
    tensor, a contiguous slice of a larger one, or slots laid out in any order inside (column-
    major) and padded up to the next (TMA-aligned scales). The padding moves with the slot.
    """
    S, esize = tensor.shape[0], tensor.element_size()
    dims = zip(tensor.shape[1:], tensor.stride()[1:], strict=True)
    inner = sorted((st, n) for n, st in dims if n > 1)
    span = 1 + sum((n - 1) * st for st, n in inner)  # elements from a slot's first to its last
    dense = all(st2 >= st1 * n1 for (st1, n1), (st2, _) in itertools.pairwise(inner))
    step = tensor.stride(0) if S > 1 else span
    if tensor.numel() == 0:
        step = 0
    elif not (dense and step >= span):
        raise ValueError(
            f"weight {name!r} (shape {tuple(tensor.shape)}, strides {tuple(tensor.stride())}) "
            "does not hold each slot as one block of memory: a slot moves as its bytes, so its "
            "elements must not interleave with another slot's"
        )
    elif tensor.storage_offset() + S * step > tensor.untyped_storage().nbytes() // esize:
        step = span  # the last slot's padding lies outside the storage: rows without padding
        if tensor.stride(0) != span:
            raise ValueError(
                f"weight {name!r} (shape {tuple(tensor.shape)}, strides "
                f"{tuple(tensor.stride())}) pads its slots but its storage ends before the last "
                "slot's padding; register the tensor that holds the padding"
            )
    # Detached: the transfers and the commit write the slots without autograd (weights that
    # require grad included).
    return tensor.detach().as_strided((S, step), (step, 1)).view(torch.uint8)


class MigrationExecutor:
    """Moves expert weights of registered layers between the ranks of ``group``.

    Args:
        device: the model's device.
        rank: this rank's index in the expert-parallel group (``0`` without distribution).
        ranks: global ranks of the group, index = expert-parallel rank.
        group: process group for the point-to-point transfers (``None``: single process).
        lanes: layers in flight at once (``EplbConfig.layers_per_step``).
        timeout_s: seconds a layer's transfer may take from when it is posted (gloo; on
            CUDA/NPU the serving stream waits for it instead).
    """

    def __init__(
        self,
        device: Device,
        *,
        rank: int,
        ranks: list[int],
        group,
        lanes: int,
        timeout_s: float,
    ) -> None:
        self.device = device
        self.rank = rank
        self.ranks = ranks
        self.group = group
        self.lanes = lanes
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.stream = device.new_stream()
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        # Per layer, its tensors' byte rows (slot_rows) and each slot's row; per set of rows'
        # widths and lane, the staging buffers and their rows. Made once (tensors are rewritten
        # in place, never reallocated), so that a transfer indexes lists, not slices tensors.
        self._rows: dict[int, list[torch.Tensor]] = {}
        self._slot_views: dict[int, list[tuple[torch.Tensor, ...]]] = {}
        self._staging: dict[tuple, list[tuple[list[torch.Tensor], list]]] = {}
        self._transfers = 0
        self.counters = {"slots_sent": 0, "slots_received": 0, "slots_copied": 0, "bytes_sent": 0}
        """Slots this rank sent, received from other ranks and copied locally (and the bytes
        sent), since start, in the transfers that finished on this rank."""
        self.signature = 0
        """Checksum of the registered layers' :meth:`describe` (names, slot shapes, dtypes,
        slot strides, bytes a slot): the ranks compare it before a migration, which would
        exchange mismatched buffers otherwise."""

    # ------------------------------------------------------------------ registration
    def register(
        self, layer: int, tensors: dict[str, torch.Tensor], num_slots_per_rank: int
    ) -> None:
        """Take ``tensors`` (each ``[S, ...]`` with each slot one block of memory, :func:`
        slot_rows`; on the device, named by a ``str``) as layer's weights. They are kept in the
        order of their names: the ranks pair a layer's tensors by position, and each rank's dict
        may list them in its own order."""
        if not isinstance(tensors, dict) or not tensors:
            raise ValueError("register_weights needs a non-empty dict {name: [S, ...] tensor}")
        for name in tensors:
            if not isinstance(name, str) or not name:
                raise TypeError(f"weight names must be non-empty str, got {name!r}")
        tensors = dict(sorted(tensors.items()))
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"weight {name!r} must be a tensor, got {type(tensor).__name__}")
            if tensor.device != self.device.device:
                raise ValueError(
                    f"weight {name!r} is on {tensor.device}, expected {self.device.device}"
                )
            if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_nested:
                # A slot moves as the bytes of its block of memory: a sparse or nested tensor
                # has no such block, and a quantized one keeps its scales outside its bytes.
                if tensor.is_quantized:
                    kind = "quantized"
                    advice = "; register its integer values (int_repr()) as a plain tensor"
                else:
                    kind, advice = ("nested" if tensor.is_nested else str(tensor.layout)), ""
                raise ValueError(
                    f"weight {name!r} is a {kind} tensor, expected a dense (torch.strided) "
                    f"one{advice}"
                )
            if tensor.dim() < 1 or tensor.shape[0] != num_slots_per_rank:
                raise ValueError(
                    f"weight {name!r} has shape {tuple(tensor.shape)}, expected "
                    f"[{num_slots_per_rank}, ...] (one row per local slot)"
                )
            ops.check_npu_layout(tensor, f"weight {name!r}")
        rows = [self._byte_rows(name, tensor, tensors) for name, tensor in tensors.items()]
        self._check_apart(layer, tensors, rows)
        try:
            self._staging_for(0, rows)  # allocates every lane's buffers
        except RuntimeError as err:  # out of device memory
            need = self.lanes * sum(r.numel() for r in rows)
            raise RuntimeError(
                f"register_weights: staging buffers for layer {layer} ({self.lanes} lane(s), "
                f"{need / 2**20:.1f} MiB) could not be allocated ({err}); free memory or lower "
                "EplbConfig.layers_per_step"
            ) from None
        self.weights[layer] = tensors
        self._rows[layer] = rows
        self._slot_views[layer] = [r.unbind(0) for r in rows]
        # Buffers of widths no layer has any more (a layer registered again, quantised) go.
        widths = {_widths(r) for r in self._rows.values()}
        for key in [k for k in self._staging if k not in widths]:
            del self._staging[key]
        # The bytes of a slot mean the same on every rank only with the same dtypes and layout.
        self.signature = zlib.crc32(
            repr(sorted((index, self.describe(index)) for index in self.weights)).encode()
        )

    def describe(self, layer: int) -> str:
        """``layer``'s registered tensors as the ranks must agree on them, so that a slot's
        bytes mean the same on every rank and fill the same row: each one's name, slot shape,
        dtype, slot strides (``-`` for a dimension of size 1, whose stride places nothing) and
        bytes a slot (its padding included: a transfer moves the whole row); ``"none"`` without
        weights."""
        named = self.weights.get(layer)
        if not named:
            return "none"
        return ", ".join(
            f"{name} {tuple(t.shape[1:])} {str(t.dtype).removeprefix('torch.')} "
            f"strides {_slot_strides(t)} {rows.shape[1]} bytes"
            for (name, t), rows in zip(named.items(), self._rows[layer], strict=True)
        )

    @staticmethod
    def _byte_rows(name: str, tensor: torch.Tensor, tensors: dict[str, torch.Tensor]):
        """:func:`slot_rows` of ``tensor``; where they cannot be had and another of
        ``tensors`` spans the same memory (the halves of a fused tensor), the error says so."""
        try:
            return slot_rows(name, tensor)
        except ValueError as err:
            start, end = _extent(tensor)
            views = [
                other
                for other, t in tensors.items()
                if other != name and _extent(t)[0] < end and start < _extent(t)[1]
            ]
            if not views:
                raise
            raise ValueError(
                f"{err}. {name!r} and {', '.join(map(repr, views))} are views of one tensor: "
                "register that tensor once, under one name"
            ) from None

    def _check_apart(
        self, layer: int, tensors: dict[str, torch.Tensor], rows: list[torch.Tensor]
    ) -> None:
        """Raise where two of ``tensors`` (their byte ``rows``), or one of them and another
        layer's weights, share memory: a commit that rewrites one would rewrite the other's
        slots behind its tables."""
        labelled = [(f"{name!r}", r) for name, r in zip(tensors, rows, strict=True)]
        labelled += [
            (f"{name!r} of layer {i}", r)
            for i, named in self.weights.items()
            if i != layer
            for name, r in zip(named, self._rows[i], strict=True)
        ]
        spans = sorted((r.data_ptr(), r.data_ptr() + r.numel(), label) for label, r in labelled)
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            if start < end:
                raise ValueError(
                    f"register_weights: layer {layer}'s weights share memory ({a} and {b}); "
                    "each weight tensor must own its slots' rows"
                )

    def slot_bytes(self, layer: int) -> int:
        """Bytes of one slot of ``layer`` over all its registered tensors."""
        return sum(r.shape[1] for r in self._rows.get(layer, []))

    @property
    def staging_bytes(self) -> int:
        """Device bytes the staging buffers hold, every lane's."""
        return sum(b.numel() for lanes in self._staging.values() for bufs, _ in lanes for b in bufs)

    def _staging_for(self, lane: int, rows: list[torch.Tensor]):
        """``lane``'s staging buffers for a layer of byte ``rows`` (:func:`slot_rows`), and
        their rows (allocated for every lane at the first layer of those rows' widths)."""
        key = _widths(rows)
        if key not in self._staging:
            lanes = [[torch.empty_like(r) for r in rows] for _ in range(self.lanes)]
            self._staging[key] = [(bufs, [b.unbind(0) for b in bufs]) for bufs in lanes]
        return self._staging[key][lane]

    # ------------------------------------------------------------------ transfer
    def start(
        self, migration: LayerMigration, lane: int, previous_event: Event | None = None
    ) -> Transfer:
        """Post this rank's sends and receives of ``migration`` on the migration stream.

        Receives go into the staging buffers of ``lane``; sources on this rank are copied
        locally. Returns at once; the transfer completes in the background.
        """
        layer = migration.layer
        S = migration.slots_per_rank
        rows = self._rows.get(layer, [])
        slot_views = self._slot_views.get(layer, [])
        T = len(rows)
        recv = migration.received_by(self.rank)
        send = migration.sent_by(self.rank)
        self._transfers += 1
        tag_base = (self._transfers % 1000) * _TAG_SPAN
        staging, staging_rows = self._staging_for(lane, rows) if rows else ([], [])
        staged = [buf[: recv.size] for buf in staging]
        slots = (migration.dst[recv] % S).astype(np.int32)
        src_of, dst_of = migration.src.tolist(), migration.dst.tolist()
        started = time.perf_counter()
        serving_done = self.device.record_event()
        works: list = []
        error, counts = None, {}
        with self.device.on_stream(self.stream):
            self.device.wait_event(previous_event, self.stream)
            self.device.wait_event(serving_done, self.stream)
            p2p, local_dst, local_src = [], [], []
            remote = 0
            try:
                for row, i in enumerate(recv.tolist()):
                    src_rank, src_slot = divmod(src_of[i], S)
                    remote += src_rank != self.rank
                    for t in range(T):
                        if src_rank == self.rank:
                            local_dst.append(staging_rows[t][row])
                            local_src.append(slot_views[t][src_slot])
                        else:
                            p2p.append(
                                dist.P2POp(
                                    dist.irecv,
                                    staging_rows[t][row],
                                    self.ranks[src_rank],
                                    group=self.group,
                                    tag=tag_base + i * T + t,
                                )
                            )
                if local_dst:
                    # One call for every local copy (on a GPU one kernel: all are bytes).
                    torch._foreach_copy_(local_dst, local_src, non_blocking=True)
                for i in send.tolist():
                    dst_rank, src_slot = dst_of[i] // S, src_of[i] % S
                    for t in range(T):
                        p2p.append(
                            dist.P2POp(
                                dist.isend,
                                slot_views[t][src_slot],
                                self.ranks[dst_rank],
                                group=self.group,
                                tag=tag_base + i * T + t,
                            )
                        )
                if p2p:
                    works = dist.batch_isend_irecv(p2p) or []
                if T:  # without registered weights only the tables change: nothing moved
                    counts = {
                        "slots_received": remote,
                        "slots_copied": int(recv.size) - remote,
                        "slots_sent": int(send.size),
                        "bytes_sent": int(send.size) * self.slot_bytes(layer),
                    }
            except Exception as err:
                error = f"layer {layer}: posting the transfer failed: {err!r}"
            event = self.device.record_event(self.stream)
        return Transfer(migration, slots, staged, works, event, started, error, counts)

    def finish(self, transfer: Transfer) -> str | None:
        """Wait for ``transfer`` (bounded on the CPU); ``None`` on success, else the error."""
        if transfer.error is not None:
            return transfer.error
        # NCCL/HCCL: wait() makes the serving stream wait (sends included, so a commit cannot
        # overwrite a slot still sending); with a timeout it would block the host instead.
        # gloo: one work per message, each waited on for what is left of the layer's time since
        # it was posted (a fresh timeout each would let a slow peer hold the serving thread for
        # as many timeouts as messages).
        end = transfer.started + self.timeout.total_seconds()
        try:
            for work in transfer.works:
                if self.device.has_streams:
                    done = work.wait()
                else:
                    # At least a moment: a work that has completed answers at once.
                    left = max(end - time.perf_counter(), 1e-3)
                    done = work.wait(datetime.timedelta(seconds=left))
                if not done:
                    return self._timed_out(transfer)
        except Exception as err:
            if not self.device.has_streams and time.perf_counter() >= end:  # gloo's timeout
                return f"{self._timed_out(transfer)} ({err!r})"
            return f"layer {transfer.migration.layer}: transfer failed: {err!r}"
        for key, value in transfer.counts.items():
            self.counters[key] += value
        return None

    def _timed_out(self, transfer: Transfer) -> str:
        seconds = self.timeout.total_seconds()
        return f"layer {transfer.migration.layer}: transfer timed out ({seconds:g} s since posted)"

    def commit(self, transfer: Transfer, slots: torch.Tensor) -> None:
        """Copy the staged weights into ``slots`` (``transfer.slots`` on the device) in place."""
        rows = self._rows.get(transfer.migration.layer, [])
        if not rows or transfer.slots.size == 0:
            return
        self.device.wait_event(transfer.event)
        ops.update_expert_weights_(rows, transfer.staged, slots)


def _slot_strides(tensor: torch.Tensor) -> str:
    """The strides of a slot of ``tensor [S, ...]`` as a tuple prints them, ``-`` for a
    dimension of size 1 and for every one of an empty tensor (such a stride places nothing)."""
    dims = zip(tensor.shape[1:], tensor.stride()[1:], strict=True)
    empty = tensor.numel() == 0
    named = ["-" if size == 1 or empty else str(stride) for size, stride in dims]
    return f"({', '.join(named)}{',' if len(named) == 1 else ''})"


def _extent(tensor: torch.Tensor) -> tuple[int, int]:
    """The addresses ``[start, end)`` of ``tensor``'s elements, from its first to its last."""
    start = tensor.data_ptr()
    if tensor.numel() == 0:
        return start, start
    last = sum((n - 1) * st for n, st in zip(tensor.shape, tensor.stride(), strict=True))
    return start, start + (last + 1) * tensor.element_size()


def _widths(rows: list[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """The staging key of a layer's byte rows: each tensor's slots and bytes per slot."""
    return tuple(tuple(r.shape) for r in rows)
