"""The device check's driver: what needs a GPU or an Ascend NPU, in one run
(``scripts/gpu_check.sh`` and ``scripts/npu_check.sh`` build first, then run this).

Runs, in this order (the open goals' measurements first: a device session is short), and
writes every figure to one JSON file after each section (so a time limit that stops it keeps what
was measured):

1. ``ops``: ``benchmarks/bench_device_ops.py``'s table of the four ops (each checked against the
   reference first; eager / graph time, % of the measured copy bandwidth, and whether the graph
   capture worked);
2. ``overlap``: ``benchmarks/bench_overlap.py``'s table (a layer's transfer on the executor's
   stream against the forward's expert work on the device timeline, and the host cost of a
   migrating step, through ``EplbRuntime`` and its executor);
3. ``syncs``: host synchronisations on the serving thread (``tests/runtime/test_device_path.py``'s
   ``SyncCounter``), over the reference model driven with rebalances (``drive``) and over
   migrating steps with transfers and commits;
4. ``runtime_route``: ``EplbRuntime.route`` replayed in a device graph at decode size;
5. ``tests``: ``pytest -m <device>`` on the device's tests (a minute per test at most, where
   pytest-timeout is installed), counts and the names of failures: the ops (``tests/cuda`` on a
   GPU, ``tests/ascendc`` on an NPU), ``route()`` captured in a device graph and replayed across
   a commit (``tests/runtime/test_route_graph.py``), the device path's sync counts and the
   weights and tables a migration leaves;

then ``goals``: each goal with its measured value and pass/fail (on a GPU those of issues 7 and 12;
on an NPU the device path's: no sync, every op and ``route()`` captured; a case of the ops or
overlap tables that raised is a row with its error, and fails ``cases_failed``). Exit status: 0
when every goal passes and every section ran, 4 when only speed goals were missed (every check
passed), 1 otherwise, 2 when the device is absent or eplb_rt lacks its backend. ``--device cpu``
runs the parts that need no accelerator (the sync counts, the ops and overlap tables at small
sizes), to check the driver itself.

    PYTHONPATH=$PWD python scripts/device_check.py --out gpu_check.json               # a GPU
    PYTHONPATH=$PWD python scripts/device_check.py --out "$OUT"                       # a folder
    PYTHONPATH=$PWD python scripts/device_check.py --device npu --out npu_check.json  # an NPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "runtime")]

SYNC_GOAL = {
    "syncs_in_steps_without_gather": ("==", 0, "serving-thread syncs, all such steps"),
    "cases_failed": ("==", 0, "cases of the ops and overlap tables that raised"),
}
CAPTURE_GOAL = {
    "ops_not_captured": ("==", 0, "cases of the four ops whose graph capture failed"),
    "runtime_route_captured": ("==", True, "EplbRuntime.route replayed in a device graph"),
}
GOALS = {
    "cuda": {
        "route_and_count_prefill_pct_of_copy": (
            ">=",
            70.0,
            "% of copy, N=262144 K=8 E=256, every row",
        ),
        "route_and_count_decode_graph_us": ("<=", 10.0, "graph us, N=64 K=8 E=256, every row"),
        "route_and_count_decode_speedup": (
            ">=",
            1.0,
            "x the plain-torch reference, eager, N=64 K=8 E=256, every row",
        ),
        "overlap_hidden_pct": (">=", 80.0, "transfer hidden behind the forward, every shape"),
        **SYNC_GOAL,
    },
    # A first contact: what must hold for serving (no sync, graph-safe), not a speed yet.
    "npu": {**SYNC_GOAL, **CAPTURE_GOAL},
    "cpu": SYNC_GOAL,
}
"""Per device: goal -> (comparison, target, what the value covers)."""

SPEED_GOALS = frozenset(
    {
        "route_and_count_prefill_pct_of_copy",
        "route_and_count_decode_graph_us",
        "route_and_count_decode_speedup",
        "overlap_hidden_pct",
    }
)
"""Goals on speed, not correctness: missed alone, the exit status says so apart (4)."""

TESTS = {"cuda": ["tests/cuda"], "npu": ["tests/ascendc"]}
"""Per device, its tests besides the device-generic ones of tests/runtime."""


def run_tests(device: str, timeout_s: float, log_path: str) -> dict:
    """``pytest -m <device>`` on the device's tests, its whole output in ``log_path``. With
    pytest-xdist the tests run in worker processes, so a test that crashes its process is
    reported by name as failed and the others still run. Stopped after ``timeout_s``, or when
    this process is terminated (the caller's time limit): pytest and its workers go too."""
    paths = [*TESTS[device], "tests/runtime/test_route_graph.py"]
    paths.append("tests/runtime/test_device_path.py")
    workers = ["-n", "4", "-p", "no:benchmark"] if importlib.util.find_spec("xdist") else []
    # A test that hangs is failed by name after a minute, not the whole run after timeout_s.
    per_test = ["--timeout=60"] if importlib.util.find_spec("pytest_timeout") else []
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "tests.xml")
        cmd = [sys.executable, "-X", "faulthandler", "-m", "pytest", "-v", "-p", "no:cacheprovider"]
        cmd += ["-m", device, *workers, *per_test, *paths, f"--junitxml={junit}"]
        with open(log_path, "w") as log:
            rc = run_in_group(cmd, log, timeout_s)
        with open(log_path) as log:
            output = {"rc": rc, "log": log_path, "tail": log.read()[-3000:]}
        if not os.path.exists(junit):
            return output
        suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {**counts, "failed": failed, **output}


def run_in_group(cmd: list[str], log, timeout_s: float) -> int | str:
    """Run ``cmd`` in its own process group, output to the file ``log``: its exit status, or
    ``"timeout"`` after ``timeout_s``. On the time limit, or when this process is terminated (the
    caller's limit), the whole group is killed: pytest's workers hold the GPU, and left running
    they would hold it into a rerun."""
    started: list[subprocess.Popen] = []
    terminated: list[int] = []

    def stop(signum, frame):
        # Before the command has started (Popen may be forking it), it is killed right after.
        terminated.append(signum)
        if started:
            os.killpg(started[0].pid, signal.SIGKILL)
            raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, stop)
    try:
        started.append(
            subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        proc = started[0]
        if terminated:
            os.killpg(proc.pid, signal.SIGKILL)
            raise SystemExit(128 + terminated[0])
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout"
    finally:
        signal.signal(signal.SIGTERM, before)
        if terminated and not started:  # Popen failed after the termination: still ended
            raise SystemExit(128 + terminated[0])


def run_syncs(device: str) -> dict:
    import _policies  # noqa: F401  (registers rt_test_shift)
    import test_device_path as tdp

    result = tdp.drive(device)
    plain = [n for n, g in zip(result["syncs"], result["gather"], strict=True) if not g]
    gather = [n for n, g in zip(result["syncs"], result["gather"], strict=True) if g]
    out = {
        "steps": len(result["syncs"]),
        "gather_steps": len(gather),
        "syncs_in_steps_without_gather": sum(plain),
        "max_syncs_in_a_gather_step": max(gather, default=0),
        "gather_bound": tdp.GATHER_SYNC_BOUND,
        "where": sorted({w for found in result["where"] for w in found})[:20],
        "rebalances": result["rebalances"],
        "errors": result["errors"],
    }
    out["commit_path"] = tdp.commit_path_syncs(device)
    return out


def run_ops(device: str) -> dict:
    from benchmarks import bench_device_ops

    return bench_device_ops.run(device, quick=device == "cpu")


def run_runtime_route(device: str) -> dict:
    """Microseconds per ``EplbRuntime.route`` replayed in a device graph (N=64, K=8, E=256)."""
    from benchmarks.accel import Accel
    from eplb_rt.config import EplbConfig
    from eplb_rt.runtime import EplbRuntime

    config = EplbConfig(policy="deepseek", interval=0, history=16, episode=1, warm_up=False)
    with EplbRuntime(config, 4, 256, device=device) as rt:
        ids = torch.randint(256, (64, 8), device=device, dtype=torch.int32)
        out = torch.empty_like(ids)
        return {"N": 64, "graph us": Accel(device).graph_us(lambda: rt.route(1, ids, out=out))}


def run_overlap(device: str) -> dict:
    from benchmarks import bench_overlap

    shapes = bench_overlap.SHAPES
    if device == "cpu":  # the code path only: no streams, nothing overlaps
        shapes = [bench_overlap.Shape("cpu_check", tokens=32, moved=2, hidden=64, ffn=32)]
    rows = []
    for shape in shapes:
        # A shape that fails is a row saying so: the other shapes' figures are kept.
        try:
            rows.append(bench_overlap.measure(shape, device))
        except Exception as err:
            rows.append({"shape": shape.name, "error": f"{type(err).__name__}: {err}"[:300]})
    return {"rows": rows}


def evaluate(device: str, report: dict) -> list[dict]:
    """Each goal of ``device`` with its value (``None``: not measured) and pass/fail."""
    every = report.get("ops", {}).get("rows", [])
    rows = [r for r in every if "error" not in r]
    overlap = report.get("overlap", {}).get("rows", [])
    route = [r for r in rows if r["op"] == "route_and_count"]
    syncs = report.get("syncs", {})
    runtime_route = report.get("runtime_route", {}).get("graph us")  # None: not captured
    values = {
        # At N=16384 a call moves 0.5-1 MiB, which a launch's latency dominates on any GPU.
        "route_and_count_prefill_pct_of_copy": [r["% of copy"] for r in route if r["N"] == 262144],
        "route_and_count_decode_graph_us": [r["graph us"] for r in route if r["N"] == 64],
        "route_and_count_decode_speedup": [r.get("speed-up") for r in route if r["N"] == 64],
        "overlap_hidden_pct": [r.get("hidden %") for r in overlap],
        "cases_failed": (
            [sum("error" in r for r in every + overlap)] if "ops" in report or overlap else []
        ),
        "syncs_in_steps_without_gather": [
            s
            for s in (
                syncs.get("syncs_in_steps_without_gather"),
                syncs.get("commit_path", {}).get("syncs"),
            )
            if s is not None
        ],
        "ops_not_captured": [sum("capture failed" in r["note"] for r in rows)] if rows else [],
        "runtime_route_captured": (
            [runtime_route is not None]
            if "runtime_route" in report or "runtime_route" in report.get("errors", {})
            else []
        ),
    }
    checks = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "==": lambda v, t: v == t}
    goals = []
    for name, (op, target, what) in GOALS[device].items():
        got = [v for v in values[name] if v is not None]
        # A missing value (a graph that failed) fails a bound on the value.
        missing = len(got) < len(values[name])
        worst = (min(got) if op == ">=" else max(got)) if got else None
        passed = None if worst is None else checks[op](worst, target) and not missing
        goals.append(
            {
                "goal": name,
                "what": what,
                "target": f"{op} {target}",
                "worst": worst,
                "values": values[name],
                "pass": passed,
            }
        )
    return goals


def main(argv: list[str] | None = None) -> int:
    from benchmarks.accel import parse_with_device

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="device_check.json", help="the JSON file to write (or a folder for it)"
    )
    parser.add_argument("--tests-timeout", type=int, default=240, help="seconds for pytest")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="seconds this run may take in all (the caller's limit): pytest gets what is left "
        "of it, less 15 s to write the report",
    )
    args, device = parse_with_device(parser, argv)
    if device is None:
        return 2
    if os.path.isdir(args.out):
        args.out = os.path.join(args.out, "device_check.json")
    import eplb_rt
    from benchmarks.accel import Accel

    deadline = None if args.deadline_s is None else time.monotonic() + args.deadline_s

    def tests_timeout() -> float:
        if deadline is None:
            return args.tests_timeout
        return max(10.0, min(args.tests_timeout, deadline - time.monotonic() - 15.0))

    report: dict = {
        "device": Accel(device).name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "torch_npu": getattr(sys.modules.get("torch_npu"), "__version__", None),
        # CANN's toolkit folder, links resolved: its release is in the path (".../8.2.RC1").
        "cann": cann_home(),
        "build_info": eplb_rt.build_info(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "errors": {},
    }
    # The open goals' measurements first (the op's bandwidth, the overlap): a device session is
    # short, and the tests are checks that a rerun can repeat.
    sections = [("ops", lambda: run_ops(device)), ("overlap", lambda: run_overlap(device))]
    sections.append(("syncs", lambda: run_syncs(device)))
    if device != "cpu":
        log_path = os.path.splitext(args.out)[0] + "_pytest.log"
        sections.append(("runtime_route", lambda: run_runtime_route(device)))
        sections.append(("tests", lambda: run_tests(device, tests_timeout(), log_path)))

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1, default=str)

    save()  # a first section that hangs still leaves the run's set-up on record
    for name, fn in sections:
        started = time.perf_counter()
        print(f"device_check: {name} ...", flush=True)
        try:
            report[name] = fn()
        except Exception:
            report["errors"][name] = traceback.format_exc(limit=8)
            print(report["errors"][name], file=sys.stderr)
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
        report["goals"] = evaluate(device, report)
        save()
    for goal in report["goals"]:
        worst, target = goal["worst"], goal["target"]
        print(f"device_check: {goal['goal']}: worst {worst} (target {target}): {goal['pass']}")
    status = exit_status(device, report)
    verdict = {0: "PASS", 4: "SLOW (every check passed)"}.get(status, "FAIL")
    print(f"device_check: {verdict}; figures in {args.out}")
    return status


def cann_home() -> str | None:
    """CANN's toolkit folder (``ASCEND_HOME_PATH``, else ``ASCEND_TOOLKIT_HOME``) with its
    links resolved, or None where neither is set."""
    home = os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME")
    return os.path.realpath(home) if home else None


def exit_status(device: str, report: dict) -> int:
    """0: every section ran and every goal passed; 4: every check passed, a speed goal
    (:data:`SPEED_GOALS`) did not; 1: a section, a test or another goal failed (or not a device
    run)."""
    tests = report.get("tests", {})
    correct = not report["errors"] and device != "cpu"
    correct = correct and tests.get("failures", 1) == 0 and tests.get("errors", 1) == 0
    correct = correct and all(g["pass"] for g in report["goals"] if g["goal"] not in SPEED_GOALS)
    fast = all(g["pass"] for g in report["goals"] if g["goal"] in SPEED_GOALS)
    return 0 if correct and fast else 4 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
