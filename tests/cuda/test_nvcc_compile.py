"""The CUDA backend compiles on a machine with nvcc and no GPU (nothing runs here).

* every torch-free kernel source in csrc/cuda/ compiles with ``nvcc -c`` for sm_80 and sm_90 with
  warnings as errors, and once more with the device-side asserts of debug builds;
* the prefill geometry sweep (benchmarks/cuda/route_geometry.cu) links against the kernel source;
* cmake/cuda.cmake configures and builds those objects with its own flags;
* the launcher header compiles as plain host C++ (g++, no nvcc), and so does the torch launcher
  ``ops_cuda.cpp`` against torch's headers (syntax only: a CPU build of torch has no libc10_cuda to
  link against).
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CUDA_DIR = REPO / "csrc" / "cuda"
KERNEL_SOURCES = sorted(CUDA_DIR.glob("*.cu"))
ARCHS = ("80", "90")

NVCC = shutil.which("nvcc")
GXX = shutil.which("g++")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH")
needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ not found on PATH")

NVCC_FLAGS = [
    "-std=c++17",
    "-O3",
    "-lineinfo",
    "--fmad=false",
    "-Werror",
    "all-warnings",
    "-Xcompiler",
    "-Wall,-Wextra,-Werror",
    *(f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS),
]


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=600)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )


def cuda_include_dir() -> Path | None:
    """The CUDA toolkit's include folder (cuda_runtime_api.h), for host-only compiles."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if NVCC is not None:
        candidates.append(str(Path(NVCC).resolve().parents[1]))
    for root in filter(None, candidates):
        include = Path(root) / "include"
        if (include / "cuda_runtime_api.h").is_file():
            return include
    return None


def test_cmake_lists_every_cuda_source():
    """cmake/cuda.cmake builds exactly the sources of csrc/cuda/ (a new file is not forgotten)."""
    text = (REPO / "cmake" / "cuda.cmake").read_text()
    listed = set(re.findall(r"csrc/cuda/([\w.]+\.(?:cu|cpp))", text))
    on_disk = {p.name for p in CUDA_DIR.iterdir() if p.suffix in {".cu", ".cpp"}}
    assert listed == on_disk


@needs_nvcc
@pytest.mark.parametrize("source", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernel_compiles_for_sm80_and_sm90(source: Path, tmp_path: Path):
    result = run([NVCC, *NVCC_FLAGS, "-c", str(source), "-o", str(tmp_path / "kernel.o")])
    assert_ok(result)
    assert (tmp_path / "kernel.o").stat().st_size > 0


@needs_nvcc
def test_route_and_count_compiles_with_device_asserts(tmp_path: Path):
    source = CUDA_DIR / "route_and_count.cu"
    flags = [*NVCC_FLAGS, "-DEPLB_RT_CUDA_DEVICE_ASSERT"]
    assert_ok(run([NVCC, *flags, "-c", str(source), "-o", str(tmp_path / "kernel.o")]))


@needs_nvcc
def test_route_geometry_bench_builds(tmp_path: Path):
    """The sweep includes route_and_count.cu itself: a change of its launch code keeps it whole."""
    source = REPO / "benchmarks" / "cuda" / "route_geometry.cu"
    binary = tmp_path / "route_geometry"
    assert_ok(run([NVCC, *NVCC_FLAGS, str(source), "-o", str(binary)]))
    assert binary.stat().st_size > 0


@needs_nvcc
@pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("ninja") is None, reason="needs cmake and ninja"
)
def test_cuda_cmake_builds_the_kernel_objects(tmp_path: Path):
    """A probe project with a target ``_C`` includes cmake/cuda.cmake and builds the .cu objects
    (ops_cuda.cpp and the link need a CUDA build of torch, so they are left out here)."""
    cmake_file = (REPO / "cmake" / "cuda.cmake").as_posix()
    (tmp_path / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.22)\n"
        "project(probe LANGUAGES CXX)\n"
        "add_library(_C SHARED)\n"
        f'include("{cmake_file}")\n'
    )
    build = tmp_path / "build"
    env_free_of_torch_archs = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}
    configure = subprocess.run(
        ["cmake", "-S", str(tmp_path), "-B", str(build), "-G", "Ninja",
         f"-DCMAKE_CUDA_COMPILER={NVCC}", "-DEPLB_RT_C10_CUDA_LIBRARY=c10_cuda"],
        capture_output=True, text=True, check=False, env=env_free_of_torch_archs, timeout=600,
    )  # fmt: skip
    assert_ok(configure)
    assert "CUDA backend ON" in configure.stdout
    assert "architectures 80;90" in configure.stdout
    targets = run(["ninja", "-t", "targets", "all"], cwd=build)
    assert_ok(targets)
    objects = sorted(line.split(":")[0] for line in targets.stdout.splitlines() if ".cu.o:" in line)
    assert len(objects) == len(KERNEL_SOURCES)
    commands = run(["ninja", "-t", "commands", *objects], cwd=build)
    assert "--fmad=false" in commands.stdout
    assert "use_fast_math" not in commands.stdout
    assert_ok(run(["ninja", *objects], cwd=build))


@needs_gxx
def test_launchers_header_compiles_as_host_cpp(tmp_path: Path):
    include = cuda_include_dir()
    if include is None:
        pytest.skip("CUDA toolkit headers not found")
    probe = tmp_path / "probe.cpp"
    probe.write_text(
        '#include "launchers.h"\n'
        "int main() {\n"
        "  eplb_rt::cuda::RouteAndCountParams params{};\n"
        "  eplb_rt::cuda::TableCopy tables[eplb_rt::cuda::kNumMapTables] = {};\n"
        "  (void)params; (void)tables;\n"
        "  return 0;\n"
        "}\n"
    )
    flags = ["-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror"]
    assert_ok(run([GXX, *flags, f"-I{CUDA_DIR}", f"-isystem{include}", str(probe)]))


@needs_gxx
def test_torch_launcher_compiles_as_host_cpp(tmp_path: Path):
    from torch.utils.cpp_extension import include_paths

    include = cuda_include_dir()
    torch_includes = [Path(p) for p in include_paths()]
    if include is None or not (torch_includes[0] / "c10" / "cuda" / "CUDAStream.h").is_file():
        pytest.skip("needs the CUDA toolkit headers and torch's c10/cuda headers")
    # A CPU build of torch ships the c10/cuda headers but not this one, which CMake generates when
    # torch is built with CUDA; an empty stand-in is enough for a syntax check.
    stub = tmp_path / "stub"
    if not (torch_includes[0] / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").is_file():
        (stub / "c10" / "cuda" / "impl").mkdir(parents=True)
        (stub / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").write_text("#pragma once\n")
    includes = [f"-isystem{p}" for p in (stub, *torch_includes, include)]
    # csrc/ as CMake gives it to _C: the launcher includes the shared checks, "common/checks.h".
    includes.append(f"-I{REPO / 'csrc'}")
    flags = ["-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-Werror"]
    assert_ok(run([GXX, *flags, *includes, str(CUDA_DIR / "ops_cuda.cpp")]))
