"""The heat recorder: the ``[H, L, P]`` int32 ring of per-step token counts and the device step
counter that picks the ring row.

The kernels (``route_and_count``, ``count_from_group_list``) add into row ``step mod H``; the
counter is a one-element int64 tensor on the device, so the kernels stay graph-capture safe.
:meth:`HeatRecorder.advance` moves to the next step with device ops only (no host sync): it bumps
the counter and zeroes the row the next step writes into. The host keeps its own copy of the
step number and, per ring row, the placement the row was counted under and whether the row is
closed, so that a snapshot turns into logical load ``[T, L, E]`` exactly. A step that does not
count (another phase, a warm-up or padding forward) has its row zeroed when it closes: the ranks
keep the same rows, so their snapshots reduce element by element, and a row that no rank
counted sums to zero: a step without load, as the planning pipeline reads it.
"""

from __future__ import annotations

import numpy as np
import torch

from eplb_rt import ops
from eplb_rt.runtime.device import Device, Event


class HeatRecorder:
    """Ring buffer of heat for ``num_layers`` layers and ``num_slots`` slots.

    Args:
        history: ``H`` rows (steps) kept.
        num_layers: ``L``.
        num_slots: ``P``.
        device: where the ring and the counter live.
        route_counts: whether :meth:`route` counts into the ring (sender-side heat). With
            receiver-side heat it still routes, but counts into a scratch ring nobody reads,
            so a model may use ``route`` and ``record`` together without counting twice.
        code_offset: this rank's shift of the replica rule's position codes
            (:func:`eplb_rt.ops.route_and_count`).
    """

    def __init__(
        self,
        history: int,
        num_layers: int,
        num_slots: int,
        device: Device,
        *,
        route_counts: bool = True,
        code_offset: int = 0,
    ) -> None:
        self.device = device
        self.code_offset = code_offset
        self.history = history
        self.heat = torch.zeros(
            (history, num_layers, num_slots), dtype=torch.int32, device=device.device
        )
        self.step_counter = torch.zeros(1, dtype=torch.int64, device=device.device)
        self._scratch = (
            None
            if route_counts
            else torch.zeros((history, num_slots), dtype=torch.int32, device=device.device)
        )
        self.host_step = 0
        # Per ring row: the phy2log it was counted under, whether its step has closed, and
        # whether this rank counts it (advance's ``counts``).
        self._row_phy2log = np.zeros((history, num_layers, num_slots), dtype=np.int32)
        # Per ring row, the placement array last copied into it: a placement's phy2log is
        # read-only and replaced (never rewritten) at a commit, so a row that holds it already
        # needs no copy (60 KB of host memory a step, for DeepSeek-V3).
        self._row_source: list[np.ndarray | None] = [None] * history
        self._row_closed = np.zeros(history, dtype=bool)
        self._row_counts = np.zeros(history, dtype=bool)
        self._snapshot_stream = device.new_stream()
        # The ring is never reallocated: each layer's view is made once, not in every route.
        self._layer_heat = [self.heat[:, layer, :] for layer in range(num_layers)]
        self._snapshot_done: Event | None = None

    @property
    def sender_side(self) -> bool:
        """Whether :meth:`route` counts into the ring (else :meth:`record` does: receiver side)."""
        return self._scratch is None

    def layer_heat(self, layer: int) -> torch.Tensor:
        """``[H, P]`` view of one layer (row stride ``L * P``), what the kernels write."""
        return self._layer_heat[layer]

    def route(
        self,
        layer: int,
        topk_ids: torch.Tensor,
        log2phy: torch.Tensor,
        logcnt: torch.Tensor,
        *,
        replica_share: torch.Tensor | None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Physical ids for ``topk_ids`` and their counts added to this step's row (one op)."""
        return ops.route_and_count(
            topk_ids,
            log2phy,
            logcnt,
            self.layer_heat(layer) if self._scratch is None else self._scratch,
            self.step_counter,
            replica_share=replica_share,
            out=out,
            code_offset=self.code_offset,
        )

    def record(
        self, layer: int, group_list: torch.Tensor, slot_offset: int, cumulative: bool
    ) -> None:
        """Add a dispatch kernel's per-local-slot counts to this step's row."""
        ops.count_from_group_list(
            group_list,
            self.layer_heat(layer),
            self.step_counter,
            slot_offset,
            cumulative=cumulative,
        )

    def advance(self, phy2log: np.ndarray, counts: bool) -> None:
        """Close the current step and open the next one, without a host synchronisation.

        ``phy2log`` ``[L, P]`` is the placement the closed step was routed under; ``counts``
        says whether this rank's tokens of the closed step feed the policy (see
        ``EplbConfig.count_steps``). Sender-side, a row not counted is zeroed: it holds this
        rank's tokens alone. Receiver-side, a row holds the tokens every rank sent here, so a
        rank's flag cannot pick its own out: the row is kept with the flag (:meth:`snapshot`),
        and the step counts nothing unless every rank counted it.
        """
        row = self.host_step % self.history
        if self._row_source[row] is not phy2log:
            self._row_phy2log[row] = phy2log
            frozen = not phy2log.flags.writeable and phy2log.flags.owndata
            self._row_source[row] = phy2log if frozen else None
        self._row_closed[row] = True
        self._row_counts[row] = counts
        self.host_step += 1
        # A snapshot still copying on its side stream must not see a row zeroed under it.
        self.device.wait_event(self._snapshot_done)
        if not counts and self.sender_side:
            self.heat[row].zero_()
        self.step_counter.add_(1)
        # The next row by the host's count (the device counter's value): indexed by the device
        # counter, torch_npu's index_fill_ reads the index to the host on CANN builds without
        # its aclnn kernel, a synchronisation in every step.
        row = self.host_step % self.history
        self.heat[row].zero_()
        if self._scratch is not None:  # keeps the scratch counts far from int32 overflow
            self._scratch[row].zero_()
        self._row_closed[row] = False

    @property
    def device_bytes(self) -> int:
        """Bytes of the ring, the scratch ring (receiver-side heat) and the step counter."""
        tensors = (self.heat, self.step_counter, self._scratch)
        return sum(t.nbytes for t in tensors if t is not None)

    def snapshot(self) -> tuple[torch.Tensor, Event, np.ndarray, np.ndarray, np.ndarray]:
        """Copy the ring to the host without stalling the serving stream.

        Returns ``(host [H, L, P] int32, event, row_phy2log [T, L, P], rows [T], counts [T]
        bool)``: ``rows`` are the closed ring rows, oldest first (the same on every rank),
        ``counts`` whether this rank counts each (:meth:`advance`); the copy is valid once
        ``event`` completes (the background thread synchronises on it).
        """
        host = torch.empty(self.heat.shape, dtype=torch.int32, pin_memory=self.device.has_streams)
        serving_done = self.device.record_event()
        self.device.wait_event(serving_done, self._snapshot_stream)
        with self.device.on_stream(self._snapshot_stream):
            host.copy_(self.heat, non_blocking=self.device.has_streams)
            done = self.device.record_event(self._snapshot_stream)
        self._snapshot_done = done
        order = (np.arange(self.history) + self.host_step + 1) % self.history
        rows = order[self._row_closed[order]]
        return host, done, self._row_phy2log[rows].copy(), rows, self._row_counts[rows].copy()
