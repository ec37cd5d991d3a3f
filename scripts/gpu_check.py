"""The GPU check's driver (``scripts/gpu_check.sh`` builds first, then runs this).

Runs, in this order, and writes every figure to one JSON file after each section (so a time
limit that stops it keeps what was measured):

1. ``tests``: ``pytest -m cuda`` on tests/cuda (CUDA ops, ``route()`` in a CUDA graph across a
   commit), the device path and the migration check, counts and the names of failures;
2. ``syncs``: host synchronisations on the serving thread (``tests/runtime/test_device_path.py``'s
   ``SyncCounter`` with CUDA's sync debug mode), over the reference model driven with rebalances
   (``drive``) and over migrating steps with transfers and commits;
3. ``route``: ``benchmarks/bench_cuda.py``'s table (eager / graph time, % of the measured copy
   bandwidth); ``runtime_route``: ``EplbRuntime.route`` replayed in a CUDA graph at decode size;
4. ``overlap``: ``benchmarks/bench_cuda_overlap.py``'s table (a layer's transfer on the
   executor's stream against the forward's expert work on the device timeline, and the host
   cost of a migrating step, through ``EplbRuntime`` and its executor);

then ``goals``: each goal of issue 12 with its measured value and pass/fail. Exit status: 0 when
every goal passes and every section ran, 1 otherwise, 2 without a GPU (``--cpu`` then runs the
parts that need none, for checking the driver itself).

    PYTHONPATH=$PWD python scripts/gpu_check.py --out gpu_check.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "runtime")]

GOALS = {
    "route_and_count_prefill_pct_of_copy": (">=", 70.0, "% of copy, N=262144 K=8 E=256, every row"),
    "route_and_count_decode_graph_us": ("<=", 10.0, "graph us, N=64 K=8 E=256, every row"),
    "overlap_hidden_pct": (">=", 80.0, "transfer hidden behind the forward, every shape"),
    "syncs_in_steps_without_gather": ("==", 0, "serving-thread syncs, all such steps"),
}


def run_tests(timeout_s: int, log_path: str) -> dict:
    """``pytest -m cuda`` on the GPU tests, its whole output in ``log_path``. With pytest-xdist
    the tests run in worker processes, so a test that crashes its process is reported by name
    as failed and the others still run."""
    # The GPU tests outside tests/cuda: the device path's sync counts, the migration check.
    overlap = "benchmarks/bench_cuda_overlap.py"
    paths = ["tests/cuda", "tests/runtime/test_device_path.py"]
    paths.append(f"{overlap}::test_migrated_weights_and_tables_follow_the_placement")
    workers = ["-n", "4", "-p", "no:benchmark"] if importlib.util.find_spec("xdist") else []
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "tests.xml")
        cmd = [sys.executable, "-X", "faulthandler", "-m", "pytest", "-v", "-p", "no:cacheprovider"]
        cmd += ["-m", "cuda", *workers, *paths, f"--junitxml={junit}"]
        with open(log_path, "w") as log:
            proc = subprocess.run(
                cmd, check=False, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
            )
        with open(log_path) as log:
            output = {"rc": proc.returncode, "log": log_path, "tail": log.read()[-3000:]}
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


def run_route() -> dict:
    from benchmarks import bench_cuda

    copy_gbs = bench_cuda.copy_bandwidth_gbs()
    rows = [bench_cuda.measure(*case, copy_gbs) for case in bench_cuda.CASES]
    return {"copy_gbs": copy_gbs, "rows": rows}


def run_runtime_route() -> dict:
    """Microseconds per ``EplbRuntime.route`` replayed in a CUDA graph (N=64, K=8, E=256)."""
    from benchmarks.bench_cuda import graph_us
    from eplb_rt.config import EplbConfig
    from eplb_rt.runtime import EplbRuntime

    config = EplbConfig(policy="deepseek", interval=0, history=16, episode=1, warm_up=False)
    with EplbRuntime(config, 4, 256, device="cuda") as rt:
        ids = torch.randint(256, (64, 8), device="cuda", dtype=torch.int32)
        out = torch.empty_like(ids)
        return {"N": 64, "graph us": graph_us(lambda: rt.route(1, ids, out=out))}


def run_overlap() -> dict:
    from benchmarks import bench_cuda_overlap

    return {"rows": [bench_cuda_overlap.measure(shape) for shape in bench_cuda_overlap.SHAPES]}


def evaluate(report: dict) -> list[dict]:
    """Each goal with its value (``None``: not measured) and pass/fail."""
    route = report.get("route", {}).get("rows", [])
    values = {
        # At N=16384 a call moves 0.5-1 MiB, which a launch's latency dominates on any GPU.
        "route_and_count_prefill_pct_of_copy": [r["% of copy"] for r in route if r["N"] == 262144],
        "route_and_count_decode_graph_us": [r["kernel graph us"] for r in route if r["N"] == 64],
        "overlap_hidden_pct": [r["hidden %"] for r in report.get("overlap", {}).get("rows", [])],
        "syncs_in_steps_without_gather": [
            s
            for s in (
                report.get("syncs", {}).get("syncs_in_steps_without_gather"),
                report.get("syncs", {}).get("commit_path", {}).get("syncs"),
            )
            if s is not None
        ],
    }
    checks = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "==": lambda v, t: v == t}
    goals = []
    for name, (op, target, what) in GOALS.items():
        got = values[name]
        worst = (min(got) if op == ">=" else max(got)) if got else None
        passed = None if worst is None else checks[op](worst, target)
        goals.append(
            {
                "goal": name,
                "what": what,
                "target": f"{op} {target}",
                "worst": worst,
                "values": got,
                "pass": passed,
            }
        )
    return goals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file to write")
    parser.add_argument("--cpu", action="store_true", help="no GPU: run the CPU parts only")
    parser.add_argument("--tests-timeout", type=int, default=240, help="seconds for pytest")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    if not gpu and not args.cpu:
        sys.stderr.write("gpu_check: torch sees no GPU (torch.cuda.is_available() is False); ")
        sys.stderr.write("nothing was checked\n")
        return 2
    import eplb_rt

    report: dict = {
        "device": torch.cuda.get_device_name() if gpu else "cpu (driver check only)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "build_info": eplb_rt.build_info(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "errors": {},
    }
    if gpu and not eplb_rt.build_info()["backends"]["cuda"]:
        report["errors"]["build"] = "eplb_rt._C has no CUDA backend: build with EPLB_RT_CUDA=ON"
    sections = [("syncs", lambda: run_syncs("cuda" if gpu else "cpu"))]
    if gpu and "build" not in report["errors"]:
        log_path = os.path.splitext(args.out)[0] + "_pytest.log"
        sections = [("tests", lambda: run_tests(args.tests_timeout, log_path)), *sections]
        sections += [("route", run_route), ("runtime_route", run_runtime_route)]
        sections += [("overlap", run_overlap)]
    for name, fn in sections:
        started = time.perf_counter()
        print(f"gpu_check: {name} ...", flush=True)
        try:
            report[name] = fn()
        except Exception:
            report["errors"][name] = traceback.format_exc(limit=8)
            print(report["errors"][name], file=sys.stderr)
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
        report["goals"] = evaluate(report)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1, default=str)
    for goal in report["goals"]:
        worst, target = goal["worst"], goal["target"]
        print(f"gpu_check: {goal['goal']}: worst {worst} (target {target}): {goal['pass']}")
    tests = report.get("tests", {})
    ok = not report["errors"] and all(g["pass"] for g in report["goals"])
    ok = ok and gpu and tests.get("failures", 1) == 0 and tests.get("errors", 1) == 0
    print(f"gpu_check: {'PASS' if ok else 'FAIL'}; figures in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
