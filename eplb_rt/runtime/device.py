"""One small device abstraction: streams and events where the device has them, no-ops on CPU.

CUDA and NPU (torch_npu registers ``torch.npu`` with the same API) get a dedicated side stream
and real events, so the migration and the heat snapshot overlap with the serving stream. On the
CPU every kernel runs synchronously on the calling thread: a stream is ``None``, an event is
already complete, and waiting on one is a no-op, so the callers keep a single code path.
:class:`HostStaging` is the one way the serving thread sends host data to the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
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
            # A CPU tensor's device reads "cpu" whatever index it was made with ("cpu:0").
            self.device = torch.device("cpu")
            self._module = None
        else:
            module = getattr(torch, self.kind, None)
            if module is None or not hasattr(module, "Stream"):
                raise ValueError(
                    f"device type {self.kind!r} has no stream API (expected cpu, cuda or npu; "
                    "for npu import torch_npu first)"
                )
            available = getattr(module, "is_available", None)
            if available is not None and not available():
                # Before current_device(), whose failure (an AssertionError on a build without
                # the backend) names neither the argument nor the device asked for.
                raise ValueError(
                    f"device {str(device)!r}: torch.{self.kind}.is_available() is False here "
                    f"(torch {torch.__version__}); expected a device this process can use"
                )
            self._module = module
            if self.device.index is None:
                self.device = torch.device(self.kind, module.current_device())

    @property
    def has_streams(self) -> bool:
        return self._module is not None

    def make_current(self) -> None:
        """Make this device the calling thread's current one. A new thread's current device is
        device 0: its first event wait would set up a context there (hundreds of MiB on
        device 0 from every rank's process that serves on another device)."""
        if self._module is not None:
            self._module.set_device(self.device)

    def new_stream(self):
        """A dedicated stream (``None`` on the CPU)."""
        return None if self._module is None else self._module.Stream(device=self.device)

    def is_capturing(self) -> bool:
        """True while the current stream is being captured into a graph (CUDA or ACL)."""
        capturing = getattr(self._module, "is_current_stream_capturing", None)
        return bool(capturing()) if capturing is not None else False

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


_DTYPES = {np.dtype(np.int32): torch.int32, np.dtype(np.float32): torch.float32}


def _padded(words: int) -> int:
    return -(-words // 8) * 8


class HostStaging:
    """Uploads of small host arrays that never block the host.

    An upload packs up to ``sizes`` 32-bit words per array into one pinned buffer (each array
    starting on 32 bytes, as vector loads and AscendC's DataCopy like it) and sends it with one
    ``non_blocking`` copy on the current stream. The pair of buffers is reused only once the
    event recorded behind its readers has completed (:meth:`Event.query`, never a wait), so the
    host never rewrites memory a copy still reads; while all pairs are busy another is made. On
    the CPU the host buffer is the device buffer.
    """

    def __init__(self, device: Device, sizes: Sequence[int]) -> None:
        self._device = device
        self._numel = sum(_padded(n) for n in sizes)
        self._pool = [self._new()]  # [host, its numpy view, device buffer, Event | None]

    @contextlib.contextmanager
    def upload(self, arrays: Sequence[np.ndarray]) -> Iterator[list[torch.Tensor]]:
        """Device views of ``arrays`` (int32 or float32, shapes kept), valid inside the ``with``
        body; the body's kernels must read them on the current stream."""
        if any(a.dtype not in _DTYPES for a in arrays):
            got = [str(a.dtype) for a in arrays]
            raise TypeError(f"HostStaging uploads int32 or float32 arrays, got dtypes {got}")
        if (total := sum(_padded(a.size) for a in arrays)) > self._numel:
            raise ValueError(f"an upload of {total} words exceeds the staging size {self._numel}")
        # Taken out of the pool while in use, put back with the event behind its readers.
        free = [i for i, e in enumerate(self._pool) if e[3] is None or e[3].query()]
        entry = self._pool.pop(free[0]) if free else self._new()
        host, packed, buffer, _ = entry
        views, start = [], 0
        for a in arrays:
            packed[start : start + a.size] = np.ascontiguousarray(a).reshape(-1).view(np.int32)
            view = buffer[start : start + a.size].view(_DTYPES[a.dtype])
            views.append(view.view(a.shape))
            start += _padded(a.size)
        if buffer is not host:
            buffer[:start].copy_(host[:start], non_blocking=True)
        try:
            yield views
        finally:
            entry[3] = self._device.record_event()
            self._pool.append(entry)

    @property
    def device_bytes(self) -> int:
        """Bytes of the device buffers (on the CPU the host buffers, which are the device's)."""
        return sum(e[2].nbytes for e in self._pool)

    def _new(self) -> list:
        dev = self._device
        host = torch.empty(self._numel, dtype=torch.int32, pin_memory=dev.has_streams)
        buffer = torch.empty_like(host, device=dev.device) if dev.has_streams else host
        return [host, host.numpy(), buffer, None]
