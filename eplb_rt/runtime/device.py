"""One small device abstraction: streams and events where the device has them, no-ops on CPU.

CUDA and NPU (torch_npu registers ``torch.npu`` with the same API) get a dedicated side stream
and real events, so the migration and the heat snapshot overlap with the serving stream. On the
CPU every kernel runs synchronously on the calling thread: a stream is ``None``, an event is
already complete, and waiting on one is a no-op, so the callers keep a single code path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class Event:
    """A point on a stream; on the CPU it is complete when created."""

    def __init__(self, device_event=None) -> None:
        self._event = device_event

    def query(self) -> bool:
        """True when all work recorded before the event has finished (never blocks)."""
        return True if self._event is None else bool(self._event.query())

    def synchronize(self) -> None:
        """Block the calling host thread until the event completes (background threads only)."""
        if self._event is not None:
            self._event.synchronize()


class Device:
    """Streams and events of one ``torch.device`` (``cpu``, ``cuda`` or ``npu``)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.kind = self.device.type
        if self.kind == "cpu":
            self._module = None
        else:
            module = getattr(torch, self.kind, None)
            if module is None or not hasattr(module, "Stream"):
                raise ValueError(
                    f"device type {self.kind!r} has no stream API (expected cpu, cuda or npu; "
                    "for npu import torch_npu first)"
                )
            self._module = module
            if self.device.index is None:
                self.device = torch.device(self.kind, module.current_device())

    @property
    def has_streams(self) -> bool:
        return self._module is not None

    def new_stream(self):
        """A dedicated stream (``None`` on the CPU)."""
        return None if self._module is None else self._module.Stream(device=self.device)

    def current_stream(self):
        return None if self._module is None else self._module.current_stream(self.device)

    @contextlib.contextmanager
    def on_stream(self, stream) -> Iterator[None]:
        """Run the body's kernels on ``stream`` (no-op on the CPU or for ``None``)."""
        if self._module is None or stream is None:
            yield
            return
        with self._module.stream(stream):
            yield

    def record_event(self, stream=None) -> Event:
        """An event at the current end of ``stream`` (default: the current stream)."""
        if self._module is None:
            return Event()
        event = self._module.Event()
        event.record(stream if stream is not None else self.current_stream())
        return Event(event)

    def wait_event(self, event: Event | None, stream=None) -> None:
        """Make ``stream`` (default: the current one) wait for ``event`` without blocking the
        host."""
        if self._module is None or event is None or event._event is None:
            return
        (stream if stream is not None else self.current_stream()).wait_event(event._event)

    def record_stream(self, tensor: torch.Tensor, stream) -> None:
        """Tell the caching allocator that ``tensor`` is used on ``stream`` too."""
        if self._module is not None and stream is not None and tensor.device.type == self.kind:
            tensor.record_stream(stream)

    def pinned_empty(self, shape, dtype) -> torch.Tensor:
        """A host tensor to copy device data into asynchronously (pinned where it helps)."""
        return torch.empty(shape, dtype=dtype, pin_memory=self._module is not None)
