"""Builds the AscendC host-emulation harness (tests/ascendc/*.cpp + ascendc_kernels) with g++.

The module is compiled once per source hash into ``build/ascendc_sim/<hash>/`` at the repository
root (ignored by git) and reused until a kernel, the emulation or the harness changes. Needs only
g++ (C++17) and pybind11; no CANN, no torch headers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KERNELS = REPO / "ascendc_kernels"
MODULE = "eplb_ascendc_sim"


def _sources() -> list[Path]:
    return sorted(HERE.glob("*.cpp")) + sorted(KERNELS.glob("*/*.cpp"))


def _headers() -> list[Path]:
    return [*sorted(KERNELS.glob("**/*.h")), *sorted((REPO / "csrc" / "common").glob("*.h"))]


def _command(out: Path) -> list[str]:
    import pybind11

    cxx = os.environ.get("CXX", "g++")
    includes = [
        KERNELS / "host_sim",
        KERNELS / "include",
        REPO / "csrc" / "common",
        Path(pybind11.get_include()),
        Path(sysconfig.get_paths()["include"]),
    ]
    return [
        cxx,
        "-std=c++17",
        "-O1",
        "-g0",
        "-shared",
        "-fPIC",
        "-pthread",
        "-fvisibility=hidden",
        "-Wall",
        "-Wextra",
        "-DASCENDC_HOST_SIM",
        *[f"-I{p}" for p in includes],
        *[str(s) for s in _sources()],
        "-o",
        str(out),
    ]


def _remove_stale_builds(root: Path, keep: str) -> None:
    """Drops modules built from older sources so the cache does not grow without bound."""
    if root.is_dir():
        for old in root.iterdir():
            if old.is_dir() and old.name != keep:
                shutil.rmtree(old, ignore_errors=True)


def build_sim_module():
    """Compiles (or reuses) the harness; returns the imported module."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("g++ not found: the AscendC host emulation needs a C++17 compiler")
    digest = hashlib.sha256()
    for path in _sources() + _headers():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(_command(Path("x"))).encode())
    build_dir = REPO / "build" / "ascendc_sim" / digest.hexdigest()[:16]
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = build_dir / f"{MODULE}{suffix}"
    if not target.exists():
        _remove_stale_builds(build_dir.parent, keep=build_dir.name)
        build_dir.mkdir(parents=True, exist_ok=True)
        tmp = build_dir / f"{MODULE}.tmp{os.getpid()}{suffix}"
        proc = subprocess.run(_command(tmp), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"building the AscendC emulation harness failed:\n{proc.stderr}")
        tmp.replace(target)  # atomic: a concurrent run sees either nothing or the whole module
    spec = importlib.util.spec_from_file_location(MODULE, target)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sim():
    """The harness module: one function per kernel, plus the planted-fault kernels."""
    return build_sim_module()
