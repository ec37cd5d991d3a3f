"""Timing on an accelerator, one interface for a GPU (``torch.cuda``) and an Ascend NPU
(``torch.npu``, registered by ``torch_npu`` with the same API).

:class:`Accel` times a callable by device events (back to back, or captured in a graph and
replayed) and measures the device's copy bandwidth. ``Accel("cpu")`` times on the host clock and
has no graphs: it runs a device benchmark's own code on a machine without an accelerator (its
figures are not device figures; the CPU ops are timed by ``bench_ops.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from types import ModuleType

import torch

import eplb_rt

DEVICES = ("cuda", "npu")
"""The accelerators eplb_rt has kernels for."""


def device_module(device: str) -> ModuleType | None:
    """``torch.cuda`` or ``torch.npu`` when that device is present, else None (for ``npu``
    ``torch_npu`` is imported first: it registers the device)."""
    if device == "npu":
        if importlib.util.find_spec("torch_npu") is None:
            return None
        import torch_npu  # noqa: F401

    module = getattr(torch, device, None)
    return module if module is not None and module.is_available() else None


def missing(device: str) -> str | None:
    """Why eplb_rt's kernels cannot run on ``device`` here, or None when they can."""
    if device == "cpu":
        return None
    if device not in DEVICES:
        return f"unknown device {device!r}: expected one of {', '.join(('cpu', *DEVICES))}"
    if not eplb_rt.build_info()["backends"][device]:
        flag = "EPLB_RT_CUDA" if device == "cuda" else "EPLB_RT_NPU"
        return f"eplb_rt was built without its {device} backend (rebuild with {flag}=ON)"
    if device_module(device) is None:
        return f"torch sees no {device} device" + (" (is torch_npu installed?)" * (device == "npu"))
    return None


def ready(device: str) -> bool:
    """True when ``device`` is present and eplb_rt has its backend."""
    return missing(device) is None


def present() -> str | None:
    """The first accelerator of :data:`DEVICES` that is :func:`ready`, or None."""
    return next((d for d in DEVICES if ready(d)), None)


def choose(device: str | None) -> tuple[str | None, str | None]:
    """``(device, None)`` when ``device`` (None: the accelerator present) can be used, else
    ``(None, why not)``."""
    device = device or present()
    if device is None:
        return None, "no accelerator: " + "; ".join(missing(d) for d in DEVICES)
    reason = missing(device)
    return (None, reason) if reason else (device, None)


def parse_with_device(parser: argparse.ArgumentParser, argv: list[str] | None):
    """A device tool's command line: ``parser`` gains ``--device``; returns ``(args, device)``,
    the device None after printing why it cannot be used (the tool then exits with status 2)."""
    parser.add_argument("--device", help="cuda, npu or cpu (default: the accelerator present)")
    args = parser.parse_args(argv)
    device, reason = choose(args.device)
    if device is None:
        print(f"{parser.prog}: {reason}", file=sys.stderr)
    return args, device


class HostEvent:
    """An event on the host clock, for the CPU (no streams: its work is done when a call
    returns), with a device event's methods (``elapsed_time`` in milliseconds)."""

    def __init__(self) -> None:
        self.at = 0.0

    def record(self, stream=None) -> None:
        self.at = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: HostEvent) -> float:
        return (end.at - self.at) * 1e3


class Accel:
    """Streams, events and graphs of one device type (``cuda``, ``npu``, or ``cpu``)."""

    def __init__(self, device: str, module: ModuleType | None = None) -> None:
        """``module``: the device's torch module; by default :func:`device_module`'s (raises
        ``RuntimeError`` saying why when the device cannot be used)."""
        if module is None and device != "cpu":
            reason = missing(device)
            if reason is not None:
                raise RuntimeError(reason)
            module = device_module(device)
        self.device = device
        self.module = module
        self._hold = None  # (matrix, ms per product) of hold() where there is no sleep kernel

    @property
    def has_graphs(self) -> bool:
        return self._graph_class() is not None

    def name(self) -> str:
        if self.module is None:
            return "cpu (host clock, no graphs)"
        return str(self.module.get_device_name())

    def synchronize(self) -> None:
        if self.module is not None:
            self.module.synchronize()

    def event(self):
        """A timing event: the device's, or a :class:`HostEvent` on the CPU."""
        return HostEvent() if self.module is None else self.module.Event(enable_timing=True)

    def current_stream(self):
        """The current stream (None on the CPU)."""
        return None if self.module is None else self.module.current_stream()

    def on_stream(self, stream):
        """A context that queues the body's kernels on ``stream`` (nothing on the CPU)."""
        return contextlib.nullcontext() if self.module is None else self.module.stream(stream)

    def hold(self, ms: float = 5.0) -> None:
        """Keep the current stream busy for about ``ms`` milliseconds, so that what the host
        queues next starts on the device only after all of it is queued (a device timeline
        without the host's gaps). CUDA has a sleep kernel; elsewhere a chain of matrix products
        sized by one timed product; nothing on the CPU."""
        if self.module is None:
            return
        if self.device == "cuda":
            self.module._sleep(int(ms * 1e6))  # cycles: ~1 ms per 1e6 at 1-2 GHz
            return
        if self._hold is None:
            a = torch.ones((4096, 4096), dtype=torch.float16, device=self.device)
            self._hold = (a, max(self.elapsed_us(lambda: a @ a, 3) * 1e-3, 1e-3))
        a, product_ms = self._hold
        for _ in range(max(1, round(ms / product_ms))):
            torch.mm(a, a)  # the product itself is the wait

    def elapsed_us(self, fn, iters: int, stream=None) -> float:
        """Mean microseconds per call of ``fn()`` over ``iters`` calls back to back: events
        around them on ``stream`` (default: the current one; the host clock on the CPU)."""
        stream = stream or self.current_stream()
        start, end = self.event(), self.event()
        start.record(stream)
        for _ in range(iters):
            fn()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) * 1000.0 / iters

    def capture(self, fn, launches: int = 1):
        """``launches`` calls of ``fn()`` captured in one graph, after one warm-up call on a side
        stream (lazy initialisation stays out of the graph); returns the graph's replay. On the
        CPU, a function that makes the calls (there replaying is calling).

        Raises ``RuntimeError`` where the device has no graphs; a failed capture raises what the
        device raised (on an NPU, whether a kernel can be captured is itself a finding)."""
        if self.module is None:

            def calls():
                for _ in range(launches):
                    fn()

            return calls
        graph_class = self._graph_class()
        if graph_class is None:
            raise RuntimeError(f"torch.{self.device} has no graph class")
        side = self.module.Stream()
        side.wait_stream(self.module.current_stream())
        with self.module.stream(side):
            fn()
        self.module.current_stream().wait_stream(side)
        graph = graph_class()
        with self.module.graph(graph):
            for _ in range(launches):
                fn()
        return graph.replay

    def graph_us(self, fn, launches: int = 50, replays: int = 20) -> float:
        """Microseconds per ``fn()`` when ``launches`` calls are captured in one graph
        (:meth:`capture`) and the graph is replayed ``replays`` times: the device time a captured
        step pays per call. Raises ``RuntimeError`` on the CPU (no graphs)."""
        if not self.has_graphs:
            raise RuntimeError(f"{self.device} has no graphs")
        replay = self.capture(fn, launches)
        replay()
        return self.elapsed_us(replay, replays) / launches

    def copy_bandwidth_gbs(self, num_bytes: int = 1 << 30) -> float:
        """Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second)."""
        src = torch.empty(num_bytes, dtype=torch.uint8, device=self.device)
        dst = torch.empty_like(src)
        dst.copy_(src)
        return 2 * num_bytes / (self.elapsed_us(lambda: dst.copy_(src), 10) * 1e-6) / 1e9

    def _graph_class(self):
        if self.module is None:
            return None
        return getattr(self.module, "CUDAGraph", None) or getattr(self.module, "NPUGraph", None)
