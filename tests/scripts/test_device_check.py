"""The device check's driver without an accelerator: its CPU run, its verdicts on reports of a
GPU and an NPU, and what it says when the device is absent."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import device_check

STEPS = Path(__file__).resolve().parents[2] / "scripts" / "device_check_steps.sh"


def _report(rows, syncs=0, runtime_route=2.0):
    report = {
        "ops": {"rows": rows},
        "syncs": {"syncs_in_steps_without_gather": syncs, "commit_path": {"syncs": 0}},
        "errors": {},
    }
    if runtime_route is None:
        report["errors"]["runtime_route"] = "RuntimeError: capture failed"
    else:
        report["runtime_route"] = {"graph us": runtime_route}
    return report


def _route(n, graph_us, pct=80.0, note=""):
    return {"op": "route_and_count", "N": n, "graph us": graph_us, "% of copy": pct, "note": note}


def _verdicts(device, report):
    return {g["goal"]: g["pass"] for g in device_check.evaluate(device, report)}


def test_an_npu_passes_only_when_every_op_and_route_were_captured():
    captured = [_route(64, 3.0), {"op": "update_expert_map_", "graph us": 1.0, "note": ""}]
    assert _verdicts("npu", _report(captured)) == {
        "syncs_in_steps_without_gather": True,
        "cases_failed": True,
        "ops_not_captured": True,
        "runtime_route_captured": True,
    }
    failed = [_route(64, None, note="graph capture failed: RuntimeError: 507015"), *captured[1:]]
    verdicts = _verdicts("npu", _report(failed, syncs=2, runtime_route=None))
    assert verdicts == {
        "syncs_in_steps_without_gather": False,
        "cases_failed": True,
        "ops_not_captured": False,
        "runtime_route_captured": False,
    }
    del failed[0]
    report = _report(failed)
    del report["runtime_route"]  # the section did not run
    assert _verdicts("npu", report)["runtime_route_captured"] is None


def test_a_gpu_row_without_a_graph_time_fails_its_bound():
    rows = [_route(64, 2.0), _route(64, None), _route(262144, 5.0, pct=75.0)]
    goals = {g["goal"]: g for g in device_check.evaluate("cuda", _report(rows))}
    decode = goals["route_and_count_decode_graph_us"]
    assert decode["worst"] == 2.0 and decode["pass"] is False
    assert goals["route_and_count_prefill_pct_of_copy"]["pass"] is True
    assert goals["overlap_hidden_pct"]["pass"] is None


@pytest.mark.parametrize("into_folder", [False, True], ids=["file", "folder"])
def test_the_driver_runs_its_cpu_parts(tmp_path, into_folder):
    # A folder (a lent device machine's $OUT, the one thing that comes back) takes the default
    # name; it raised IsADirectoryError after the first section.
    out = tmp_path if into_folder else tmp_path / "check.json"
    # Not a device run: exit status 1, with every CPU section's figures written.
    assert device_check.main(["--device", "cpu", "--out", str(out)]) == 1
    written = tmp_path / ("device_check.json" if into_folder else "check.json")
    report = json.loads(written.read_text())
    assert report["errors"] == {}
    assert report["syncs"]["syncs_in_steps_without_gather"] == 0
    assert report["syncs"]["commit_path"]["syncs"] == 0
    assert {r["op"] for r in report["ops"]["rows"]} >= {"route_and_count", "update_expert_map_"}
    assert [r["shape"] for r in report["overlap"]["rows"]] == ["cpu_check"]
    assert [g["pass"] for g in report["goals"]] == [True, True]


def test_the_report_is_on_record_before_the_first_section(tmp_path, monkeypatch):
    """A first section that never returns (a kernel that hangs on a new device, the run then
    killed by its deadline) still leaves the run's set-up on record, CANN's folder included."""
    out = tmp_path / "check.json"
    seen = {}

    def first(device):
        seen.update(json.loads(out.read_text()))
        raise RuntimeError("stands for a section that never returns")

    monkeypatch.setattr(device_check, "run_ops", first)
    for later in ("run_overlap", "run_syncs"):
        monkeypatch.setattr(device_check, later, lambda device: {})
    (tmp_path / "8.2.RC1").mkdir()
    (tmp_path / "latest").symlink_to(tmp_path / "8.2.RC1")
    monkeypatch.setenv("ASCEND_HOME_PATH", str(tmp_path / "latest"))
    assert device_check.main(["--device", "cpu", "--out", str(out)]) == 1
    assert seen["started"] and "ops" not in seen and seen["errors"] == {}
    assert seen["cann"] == str((tmp_path / "8.2.RC1").resolve())
    assert "stands for a section" in json.loads(out.read_text())["errors"]["ops"]


def test_a_case_that_raises_is_a_row_and_the_others_are_kept(tmp_path, monkeypatch):
    # One wrong kernel late in the table used to lose every row of it, the passing ones too.
    from benchmarks import bench_device_ops

    build = bench_device_ops.map_case

    def wrong_from_host(source, device, **kw):
        case = build(source, device, **kw)
        if source != "host":
            return case

        def check():
            raise AssertionError("update_expert_map_ from host: differs")

        return dataclasses.replace(case, check=check)

    monkeypatch.setattr(bench_device_ops, "map_case", wrong_from_host)
    out = tmp_path / "check.json"
    assert device_check.main(["--device", "cpu", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    failed = [r for r in report["ops"]["rows"] if "error" in r]
    assert [r["size"] for r in failed] == ["update_expert_map_ host"]
    assert "differs" in failed[0]["error"]
    assert sum(r["op"] == "route_and_count" for r in report["ops"]["rows"]) >= 2
    goals = {g["goal"]: g for g in report["goals"]}
    assert goals["cases_failed"]["pass"] is False and goals["cases_failed"]["worst"] == 1


def _passed(goals, missed=()):
    return {
        "errors": {},
        "tests": {"failures": 0, "errors": 0},
        "goals": [{"goal": g, "pass": g not in missed} for g in goals],
    }


def test_missed_speed_goals_alone_have_their_own_exit_status():
    goals = list(device_check.GOALS["cuda"])
    assert device_check.exit_status("cuda", _passed(goals)) == 0
    assert device_check.exit_status("cuda", _passed(goals, {"overlap_hidden_pct"})) == 4
    broken = _passed(goals, {"overlap_hidden_pct", "syncs_in_steps_without_gather"})
    assert device_check.exit_status("cuda", broken) == 1
    failing = _passed(goals) | {"tests": {"failures": 1, "errors": 0}}
    assert device_check.exit_status("cuda", failing) == 1


def test_a_terminated_driver_takes_its_test_run_with_it(tmp_path):
    # On the caller's time limit the driver is terminated; pytest, in its own process group,
    # must not go on holding the device into a rerun.
    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    driver = (
        "import sys; from scripts import device_check; "
        f"device_check.run_in_group([sys.executable, '-c', {child!r}], open(os.devnull, 'w'), 120)"
    )
    root = Path(device_check.ROOT)
    proc = subprocess.Popen([sys.executable, "-c", "import os; " + driver], cwd=root)
    for _ in range(200):  # up to 20 s for the grandchild to start
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    proc.terminate()
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    for _ in range(100):
        if not _alive(grandchild):
            break
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_a_driver_terminated_while_its_test_run_starts_takes_it_along(monkeypatch):
    """The termination lands before ``Popen`` has returned: the handler has nothing to kill yet,
    and the run is killed as soon as it has started."""
    real_popen = subprocess.Popen
    runs = []

    def popen_then_terminated(*args, **kwargs):
        runs.append(real_popen(*args, **kwargs))
        os.kill(os.getpid(), signal.SIGTERM)  # handled before this returns
        return runs[-1]

    def unexpected(signum, frame):
        raise AssertionError("SIGTERM reached the caller's handler, not run_in_group's")

    monkeypatch.setattr(device_check.subprocess, "Popen", popen_then_terminated)
    before = signal.signal(signal.SIGTERM, unexpected)
    try:
        with pytest.raises(SystemExit) as stopped:
            device_check.run_in_group(
                [sys.executable, "-c", "import time; time.sleep(60)"], None, 120
            )
        assert signal.getsignal(signal.SIGTERM) is unexpected  # the caller's, restored
    finally:
        signal.signal(signal.SIGTERM, before)
        for run in runs:
            if run.poll() is None:
                run.kill()
    assert stopped.value.code == 128 + signal.SIGTERM
    assert runs[0].wait(timeout=30) == -signal.SIGKILL


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_an_absent_device_is_named_and_nothing_runs(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert device_check.main(["--device", "npu", "--out", str(out)]) == 2
    assert "npu backend" in capsys.readouterr().err
    assert not out.exists()


def _steps(tmp_path, *args, out=None, budget=None):
    """What ``device_check_steps.sh`` (sourced as the device scripts source it) sets."""
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "DEVICE_CHECK_S")}
    env |= {"PYTHON": sys.executable, **({"OUT": str(out)} if out else {})}
    env |= {"DEVICE_CHECK_S": str(budget)} if budget else {}
    script = f'NAME=x; source "{STEPS}" "$@"; echo "$RESULT|$LOGS|$(left 240)"'
    done = subprocess.run(
        ["bash", "-c", script, "steps", *args], env=env, capture_output=True, text=True,
        cwd=tmp_path, check=True,
    )  # fmt: skip
    return done.stdout.strip().split("|")


def test_the_device_scripts_write_where_the_results_come_back(tmp_path):
    """On a lent device machine only ``$OUT`` comes back: the JSON and its logs go there."""
    folder, file = tmp_path / "out", tmp_path / "elsewhere" / "r.json"
    folder.mkdir()
    assert _steps(tmp_path, out=folder)[:2] == [f"{folder}/x.json", str(folder)]
    assert _steps(tmp_path, str(folder))[0] == f"{folder}/x.json"
    assert _steps(tmp_path, str(file), out=folder)[:2] == [str(file), str(file.parent)]
    assert _steps(tmp_path)[0] == "build/x.json"


def test_every_step_ends_before_the_one_deadline(tmp_path):
    assert int(_steps(tmp_path)[2]) == 240
    assert 1 <= int(_steps(tmp_path, budget=30)[2]) <= 30
