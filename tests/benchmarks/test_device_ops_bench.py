"""The device benchmark's own code, without an accelerator: its timing on a stand-in device whose
clock the kernels advance (events, graph capture and replay, a capture that fails), and its cases
run on the CPU (each op checked against its reference before it is timed)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from benchmarks import bench_device_ops as bench
from benchmarks.accel import Accel, missing, present


class StandInDevice:
    """The parts of ``torch.cuda`` / ``torch.npu`` that :class:`Accel` uses, on a clock in
    milliseconds that each kernel advances by its cost; a graph records the kernels launched
    while it captures and launches them again on replay."""

    def __init__(self, capture_error: str | None = None) -> None:
        self.clock = 0.0
        self.graphs: list = []
        self._capturing = None
        self._capture_error = capture_error
        device = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                self.at = None

            def record(self, stream=None) -> None:
                self.at = device.clock

            def synchronize(self) -> None:
                pass

            def elapsed_time(self, end) -> float:
                return end.at - self.at

        class Stream:
            def wait_stream(self, other) -> None:
                pass

        class NPUGraph:
            def __init__(self) -> None:
                self.kernels: list[float] = []
                device.graphs.append(self)

            def replay(self) -> None:
                for cost in self.kernels:
                    device.launch(cost)

        self.Event, self.Stream, self.NPUGraph = Event, Stream, NPUGraph

    def launch(self, cost_ms: float) -> None:
        if self._capturing is not None:
            self._capturing.kernels.append(cost_ms)
        else:
            self.clock += cost_ms

    def current_stream(self):
        return self.Stream()

    @contextlib.contextmanager
    def stream(self, stream):
        yield

    @contextlib.contextmanager
    def graph(self, graph):
        if self._capture_error:
            raise RuntimeError(self._capture_error)
        self._capturing = graph
        try:
            yield
        finally:
            self._capturing = None

    def synchronize(self) -> None:
        pass

    def get_device_name(self) -> str:
        return "stand-in NPU"


def test_events_time_a_call_and_a_graph_its_captured_launches():
    device = StandInDevice()
    acc = Accel("npu", device)
    assert acc.has_graphs and acc.name() == "stand-in NPU"
    assert acc.elapsed_us(lambda: device.launch(0.004), 25) == pytest.approx(4.0)
    assert acc.graph_us(lambda: device.launch(0.002), launches=7, replays=3) == pytest.approx(2.0)
    # One graph, holding the launches only: the warm-up ran before the capture.
    assert [len(g.kernels) for g in device.graphs] == [7]


def test_a_row_of_a_case_and_a_capture_that_fails():
    device = StandInDevice()
    case = bench.Case(
        "an_op",
        "tiny",
        run=lambda: device.launch(0.002),
        plain=lambda: device.launch(0.010),
        check=lambda: None,
        moved_bytes=4000,
        info={"N": 3},
    )
    row = bench.measure(case, Accel("npu", device), copy_gbs=4.0)
    assert row["N"] == 3 and row["note"] == ""
    assert row["eager us"] == pytest.approx(2.0)
    assert row["graph us"] == pytest.approx(2.0)
    assert row["reference us"] == pytest.approx(10.0)
    assert row["speed-up"] == pytest.approx(5.0)
    assert row["GB/s"] == pytest.approx(2.0)  # 4000 bytes in 2 us
    assert row["% of copy"] == pytest.approx(50.0)

    failing = StandInDevice(capture_error="the kernel is not capturable")
    case = bench.Case("an_op", "tiny", lambda: failing.launch(0.002), lambda: None, lambda: None)
    row = bench.measure(case, Accel("npu", failing), copy_gbs=None)
    assert row["graph us"] is None and row["eager us"] == pytest.approx(2.0)
    assert row["note"] == "graph capture failed: RuntimeError: the kernel is not capturable"


def test_every_op_is_checked_and_timed_on_the_cpu():
    result = bench.run("cpu", quick=True)
    rows = result["rows"]
    assert {r["op"] for r in rows} == {
        "route_and_count",
        "count_from_group_list",
        "update_expert_map_",
        "update_expert_weights_",
    }
    assert len(rows) == len(bench.specs("cpu", quick=True))
    for row in rows:
        assert row["eager us"] > 0 and row["reference us"] > 0, row
        assert row["graph us"] is None and row["note"], row
    assert {r["N"] for r in rows if r["op"] == "route_and_count"} == {64, 4096}
    assert all(r["GB/s"] > 0 for r in rows if r["op"] == "update_expert_weights_")
    assert "| route_and_count | decode int32 uniform |" in bench.table(rows)


def _wrong_route(topk_ids, log2phy, logcnt, heat, step, *, replica_share=None, out=None):
    out = torch.zeros_like(topk_ids) if out is None else out.zero_()
    return out  # every pair on slot 0, nothing counted


@pytest.mark.parametrize(
    ("op", "wrong"),
    [
        ("route_and_count", _wrong_route),
        ("count_from_group_list", lambda *args, **kwargs: None),
        ("update_expert_map_", lambda *args, **kwargs: None),
        ("update_expert_weights_", lambda *args, **kwargs: None),
    ],
)
def test_a_wrong_kernel_is_caught_before_it_is_timed(monkeypatch, op, wrong):
    monkeypatch.setattr(bench.ops, op, wrong)
    name, build = next((n, b) for n, b in bench.specs("cpu", quick=True) if n.startswith(op))
    case = build()
    timed = []
    monkeypatch.setattr(Accel, "elapsed_us", lambda *args, **kwargs: timed.append(1) or 1.0)
    with pytest.raises(AssertionError, match=f"^{op}.*differs from the reference"):
        bench.measure(case, Accel("cpu"), copy_gbs=None)
    assert not timed, name


def test_main_says_why_there_is_nothing_to_time(capsys):
    if present() is not None:
        pytest.skip("an accelerator is present")
    assert bench.main([]) == 2
    err = capsys.readouterr().err
    assert "no accelerator" in err and "cuda" in err and "npu" in err
    assert bench.main(["--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert missing("cpu") is None
    with pytest.raises(RuntimeError, match="npu"):
        Accel("npu")


def test_an_op_name_that_matches_no_case_is_refused():
    with pytest.raises(ValueError, match=r"--ops bogus: no such case; the ops are count_from"):
        bench.specs("cpu", True, ("bogus",))
    assert bench.specs("cpu", True, ("count_from_group_list",))
