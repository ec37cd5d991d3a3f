"""``eplb-rt doctor``: each check on this environment, and each fault it reports when planted."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from eplb_rt.cli import main
from eplb_rt.commands import doctor
from eplb_rt.integrations import ENGINES

sys_scripts = pytest.importorskip("scripts.fetch_peers")


def _checks(capsys, tmp_path, *extra) -> tuple[int, dict]:
    out = tmp_path / "doctor.json"
    code = main(["doctor", "--no-kernels", "--json", str(out), *extra])
    text = capsys.readouterr().out
    checks = {c["name"]: c for c in json.loads(out.read_text())}
    for c in checks.values():  # the printed report holds every line of the file
        assert c["detail"] in text and c["status"] in text
    return code, checks


def test_this_environment_passes(capsys, tmp_path, monkeypatch):
    for name in ("EPLB_RT_POLICY", "EPLB_RT_POLICY_OPTIONS"):
        monkeypatch.delenv(name, raising=False)
    code, checks = _checks(capsys, tmp_path)
    assert code == 0
    assert list(checks) == ["extension", "devices", "vllm", "vllm-ascend", "sglang", "settings"]
    assert all(c["status"] != "FAIL" for c in checks.values()), checks
    assert "built against torch" in checks["extension"]["detail"]
    assert "keep their own EPLB policy" in checks["settings"]["detail"]


def test_the_kernel_cache_is_checked_in_a_child_process(monkeypatch):
    from eplb_rt.algorithms import kernel_cache

    monkeypatch.delenv("EPLB_RT_KERNEL_CACHE", raising=False)  # the shipped cache in use
    check = doctor._kernels()
    assert check.name == "kernels" and check.status in ("ok", "warn"), check
    if check.status == "warn":  # kernels edited since the cache was filled: compiled and saved
        assert "compiled" in check.detail and "run eplb-rt doctor again" in check.fix
        folder = kernel_cache.PACKAGE_ROOT / kernel_cache.CACHE_FOLDER
        if not os.access(folder, os.W_OK):
            pytest.skip(f"{folder} is read-only: compiled kernels are not saved there")
        check = doctor._kernels()  # as its fix says: now they load
    # The shipped cache (the build fills it) loads: nothing compiled.
    assert check.status == "ok" and "load from the cache" in check.detail, check


def test_the_kernel_check_says_when_the_shipped_cache_is_off(monkeypatch):
    monkeypatch.setenv("EPLB_RT_KERNEL_CACHE", "0")
    check = doctor._kernels()
    assert check.status == "warn" and check.detail.startswith("EPLB_RT_KERNEL_CACHE=0")
    assert check.fix == "unset EPLB_RT_KERNEL_CACHE"


def test_a_bad_kernel_cache_flag_is_reported_by_doctor_not_raised_at_import(tmp_path):
    """The cache is installed when ``eplb_rt.algorithms`` is imported, before any command runs."""
    env = dict(os.environ, EPLB_RT_KERNEL_CACHE="maybe")
    done = subprocess.run(
        [sys.executable, "-m", "eplb_rt.cli", "doctor", "--no-kernels"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "FAIL  settings     environment variable EPLB_RT_KERNEL_CACHE='maybe'" in done.stdout
    assert "Traceback" not in done.stderr and "taken as unset" in done.stderr


def test_another_torch_release_than_the_builds_fails(capsys, tmp_path, monkeypatch):
    import eplb_rt

    info = eplb_rt.build_info()
    monkeypatch.setattr(eplb_rt, "build_info", lambda: {**info, "torch_version": "2.12.1+cpu"})
    code, checks = _checks(capsys, tmp_path)
    assert code == 1 and checks["extension"]["status"] == "FAIL"
    assert "rebuild eplb_rt against this torch" in checks["extension"]["fix"]


def test_a_gpu_without_cuda_kernels_fails(capsys, tmp_path, monkeypatch):
    import torch

    import eplb_rt

    info = eplb_rt.build_info()
    monkeypatch.setattr(
        eplb_rt, "build_info", lambda: {**info, "backends": {**info["backends"], "cuda": False}}
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    code, checks = _checks(capsys, tmp_path)
    assert code == 1
    assert checks["devices"]["detail"].startswith("8 CUDA device(s) visible, but eplb_rt was built")
    assert "EPLB_RT_CUDA=ON" in checks["devices"]["fix"]


def test_torch_npu_without_cann_fails_before_the_extension_is_loaded(capsys, tmp_path, monkeypatch):
    """eplb_rt imports torch_npu before its extension: without CANN that import breaks torch,
    and the report says why instead of asking for a rebuild."""
    monkeypatch.setattr(doctor, "_importable", lambda module: module == "torch_npu")
    for name in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
        monkeypatch.delenv(name, raising=False)
    code, checks = _checks(capsys, tmp_path)
    assert code == 1 and checks["extension"]["status"] == "FAIL" and "devices" not in checks
    assert "breaks import torch" in checks["extension"]["detail"]
    assert "set_env.sh" in checks["extension"]["fix"]


@pytest.mark.parametrize(
    ("version", "registered", "status", "said"),
    [
        ("0.20.0", True, "ok", "0.20.0 (tested 0.13.0 to 0.34.0); plugin registered"),
        ("0.34.0+cu130", True, "ok", "0.34.0+cu130 (tested 0.13.0 to 0.34.0)"),
        ("0.35.0", True, "warn", "newer than tested"),
        ("0.12.0", True, "warn", "not tested"),
        ("0.20.0", False, "FAIL", "entry point is not installed here"),
    ],
)
def test_an_installed_engine_is_checked(monkeypatch, version, registered, status, said):
    monkeypatch.delenv("EPLB_RT_POLICY", raising=False)
    monkeypatch.setattr(doctor, "_version", lambda dist: version if dist == "vllm" else None)
    monkeypatch.setattr(doctor, "_registered", lambda group: registered)
    check = doctor._engine("vllm")
    assert check.status == status and said in check.detail, check
    assert doctor._engine("sglang").detail == "not installed"


@pytest.mark.parametrize(("dist", "version"), [("vllm", "0.12.0"), ("sglang", "0.5.10")])
def test_a_release_that_cannot_select_the_policy_fails_where_it_is_asked_for(
    monkeypatch, dist, version
):
    """vLLM before 0.13 has no policy registry and SGLang before 0.5.11 no plugin loader:
    with EPLB_RT_POLICY set, eplb_rt's policy would not run there."""
    monkeypatch.setattr(doctor, "_version", lambda name: version if name == dist else None)
    monkeypatch.setattr(doctor, "_registered", lambda group: True)
    monkeypatch.setenv("EPLB_RT_POLICY", "equilibrium")
    check = doctor._engine(dist)
    assert check.status == "FAIL" and "selects no eplb_rt policy there" in check.detail, check
    assert check.fix.startswith(f"upgrade {dist} to {ENGINES[dist].tested[0]} or newer")
    monkeypatch.delenv("EPLB_RT_POLICY")
    assert doctor._engine(dist).status == "warn"


def test_an_old_vllm_beside_vllm_ascend_or_a_pre_release_of_the_oldest_is_not_failed(monkeypatch):
    """vLLM before 0.13 beside vllm-ascend: its dynamic EPLB takes the policy (the plugin
    warns, not fails); 0.13.0rc1 is the oldest tested release's candidate."""
    monkeypatch.setattr(doctor, "_registered", lambda group: True)
    monkeypatch.setenv("EPLB_RT_POLICY", "equilibrium")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name: object() if name == "vllm_ascend" else find_spec(name),
    )
    monkeypatch.setattr(doctor, "_version", lambda name: "0.12.0" if name == "vllm" else None)
    assert doctor._engine("vllm").status == "warn"
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(doctor, "_version", lambda name: "0.13.0rc1" if name == "vllm" else None)
    assert doctor._engine("vllm").status == "warn"


def test_engines_not_installed_need_no_packaging(monkeypatch):
    """packaging is not a dependency of eplb_rt (the engines bring it): without an engine the
    check must not import it."""
    monkeypatch.setitem(sys.modules, "packaging", None)
    monkeypatch.setitem(sys.modules, "packaging.version", None)
    monkeypatch.setattr(doctor, "_version", lambda dist: None)
    assert [doctor._engine(dist).detail for dist in ENGINES] == ["not installed"] * len(ENGINES)


def test_the_plugins_are_in_their_groups_where_eplb_rt_is_installed():
    for engine in ENGINES.values():
        assert doctor._registered(engine.entry_points), engine
    assert not doctor._registered("no.such.group")
    assert importlib.metadata.version("eplb_rt")


def test_the_tested_releases_are_the_ones_the_peer_tests_fetch():
    from packaging.version import Version

    for dist, engine in ENGINES.items():
        fetched = sorted(sys_scripts.VERSIONS[dist], key=Version)
        assert engine.tested == (fetched[0], fetched[-1]), dist


@pytest.mark.parametrize(
    "case",
    [
        ({"EPLB_RT_POLICY": "flashlb"}, "ok", "eplb_rt's 'flashlb'"),
        ({"EPLB_RT_POLICY": "nope"}, "FAIL", "unknown policy 'nope'"),
        ({"EPLB_RT_POLICY_OPTIONS": "num_episodes=0"}, "FAIL", "EPLB_RT_POLICY_OPTIONS="),
        ({"EPLB_RT_KERNEL_CACHE": "maybe"}, "FAIL", "EPLB_RT_KERNEL_CACHE='maybe'"),
        ({"EPLB_RT_EXPORT_DIR": "{tmp}/a-file/loads"}, "FAIL", "cannot make the folder"),
        ({"EPLB_RT_EXPORT_DIR": "{tmp}/loads/deeper"}, "ok", "EPLB_RT_POLICY unset"),
    ],
)
def test_settings_the_plugins_read(capsys, tmp_path, monkeypatch, case):
    env, status, said = case
    for suffix in ("POLICY", "POLICY_OPTIONS", "KERNEL_CACHE", "EXPORT_DIR"):
        monkeypatch.delenv(f"EPLB_RT_{suffix}", raising=False)
    (tmp_path / "a-file").write_text("")  # a folder cannot be made below a file
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    code, checks = _checks(capsys, tmp_path)
    assert code == (status == "FAIL")
    assert checks["settings"]["status"] == status and said in checks["settings"]["detail"]
    assert not (tmp_path / "loads").exists()  # a check makes nothing
