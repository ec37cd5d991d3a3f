"""build_info() reports what the extension was built with; CMake picks the NPU SoC and links the
kernel library as it should."""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import eplb_rt


def test_build_info_reports_backends_and_versions():
    info = eplb_rt.build_info()
    assert info["version"] == eplb_rt.__version__
    assert info["torch_version"] == torch.__version__
    assert info["backends"]["cpu"] is True
    assert isinstance(info["backends"]["cuda"], bool)
    assert isinstance(info["backends"]["npu"], bool)
    assert info["build_type"]
    assert info["compiler"]
    assert isinstance(info["cxx_flags"], str)


def test_ops_are_registered():
    import eplb_rt.ops  # noqa: F401  (loads the library)

    for name in (
        "route_and_count",
        "count_from_group_list",
        "update_expert_weights_",
        "update_expert_map_",
    ):
        assert hasattr(torch.ops.eplb_rt, name)


def test_build_info_reports_the_npu_soc_of_the_build():
    info = eplb_rt.build_info()
    if info["backends"]["npu"]:
        assert info["npu_soc"].startswith("Ascend")
    else:
        assert info["npu_soc"] is None


# ---- SOC_VERSION detection and the NPU build's shape (CMake, no CANN needed) ----

REPO = Path(__file__).resolve().parents[1]
needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")

NPU_SMI_TABLE = """\
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     {name:<20}| OK            | 95.2        36                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3337 / 65536         |
+===========================+===============+====================================================+
"""


def fake_npu_smi(folder: Path, name: str) -> dict:
    """A PATH whose npu-smi prints a device table naming the SoC `name`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "npu-smi"
    script.write_text("#!/bin/sh\ncat <<'EOF'\n" + NPU_SMI_TABLE.format(name=name) + "EOF\n")
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def detect_soc(tmp_path: Path, env: dict, *defines: str) -> str:
    probe = tmp_path / "probe.cmake"
    probe.write_text(
        f'include("{(REPO / "cmake" / "soc.cmake").as_posix()}")\n'
        "eplb_rt_detect_soc(soc source)\n"
        'eplb_rt_soc_known("${soc}" known)\n'
        'message("RESULT ${soc}|${source}|${known}")\n'
    )
    proc = subprocess.run(
        ["cmake", *defines, "-P", str(probe)], capture_output=True, text=True, env=env, check=True
    )
    return proc.stderr.split("RESULT ", 1)[1].strip()


@needs_cmake
def test_soc_comes_from_npu_smi(tmp_path):
    env = fake_npu_smi(tmp_path / "bin", "910B3")
    env.pop("SOC_VERSION", None)
    assert detect_soc(tmp_path, env) == "Ascend910B3|npu-smi|TRUE"


@needs_cmake
def test_soc_override_beats_environment_beats_npu_smi(tmp_path):
    env = fake_npu_smi(tmp_path / "bin", "910B3") | {"SOC_VERSION": "Ascend910B4"}
    assert detect_soc(tmp_path, env) == "Ascend910B4|environment SOC_VERSION|TRUE"
    assert detect_soc(tmp_path, env, "-DSOC_VERSION=Ascend910_9391") == (
        "Ascend910_9391|-DSOC_VERSION|TRUE"
    )


@needs_cmake
def test_soc_comes_from_torch_npu_before_npu_smi(tmp_path):
    """Where torch_npu is installed, CMake asks it for CANN's name of the SoC: npu-smi names an
    A3 part Ascend910, which is no family's (nor is its result taken when torch_npu fails)."""
    env = fake_npu_smi(tmp_path / "bin", "Ascend910")
    env.pop("SOC_VERSION", None)
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho Ascend910_9392\n")
    python.chmod(0o755)
    npu = (f"-DPython_EXECUTABLE={python}", f"-DEPLB_RT_TORCH_NPU_DIR={tmp_path}")
    assert detect_soc(tmp_path, env, *npu) == "Ascend910_9392|torch_npu|TRUE"
    assert detect_soc(tmp_path, env, npu[0]) == "Ascend910|npu-smi|FALSE"  # no torch_npu
    python.write_text("#!/bin/sh\necho 'no NPU' >&2\nexit 1\n")
    assert detect_soc(tmp_path, env, *npu) == "Ascend910|npu-smi|FALSE"


@needs_cmake
def test_soc_default_and_unknown_family(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SOC_VERSION"}
    env["PATH"] = "/usr/bin:/bin"  # no npu-smi
    assert detect_soc(tmp_path, env).startswith("Ascend910B1|default")
    assert detect_soc(tmp_path, env, "-DSOC_VERSION=Ascend310B1").endswith("|FALSE")
    assert detect_soc(tmp_path, env, "-DSOC_VERSION=Ascend310P3").endswith("|FALSE")
    # The older training parts: a family's prefix, but no part number after it.
    assert detect_soc(tmp_path, env, "-DSOC_VERSION=Ascend910B").endswith("|FALSE")
    assert detect_soc(tmp_path, env, "-DSOC_VERSION=Ascend910B2C").endswith("|TRUE")


STAND_IN_ASCENDC = """\
# Stand-in for CANN's ascendc.cmake: records what ascendc_library() is asked to build.
function(ascendc_library name type)
  file(WRITE "${CMAKE_BINARY_DIR}/ascendc_library.txt" "${type};${ARGN}")
  add_library(${name} SHARED IMPORTED GLOBAL)
  set_target_properties(${name} PROPERTIES IMPORTED_LOCATION "${CMAKE_BINARY_DIR}/libstandin.so")
endfunction()
function(ascendc_include_directories name)
endfunction()
"""


@needs_cmake
def test_npu_cmake_builds_a_shared_kernel_library_found_through_rpath(tmp_path):
    """cmake/npu.cmake against a stand-in CANN tree and torch_npu: the kernels (device sources
    only) go into a SHARED ascendc_library, _C gets the launchers, rpath $ORIGIN (the
    extension is built with its install rpath) and the SoC npu-smi reports."""
    cann = tmp_path / "cann"
    (cann / "compiler/tikcpp/ascendc_kernel_cmake").mkdir(parents=True)
    (cann / "compiler/tikcpp/ascendc_kernel_cmake/ascendc.cmake").write_text(STAND_IN_ASCENDC)
    (cann / "lib64").mkdir()
    (cann / "lib64/libascendcl.so").write_bytes(b"")
    (cann / "include/acl").mkdir(parents=True)
    (cann / "include/acl/acl.h").write_text("")
    torch_npu = tmp_path / "torch_npu"
    (torch_npu / "lib").mkdir(parents=True)
    (torch_npu / "lib/libtorch_npu.so").write_bytes(b"")
    project = tmp_path / "probe"
    project.mkdir()
    (project / "probe.cpp").write_text("int probe() { return 0; }\n")
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.22)\n"
        "project(probe LANGUAGES CXX)\n"
        "add_library(_C SHARED probe.cpp)\n"
        "set(EPLB_RT_NPU ON)\n"
        f'include("{(REPO / "cmake" / "npu.cmake").as_posix()}")\n'
        "get_target_property(rpath _C INSTALL_RPATH)\n"
        "get_target_property(sources _C SOURCES)\n"
        "get_target_property(defs _C COMPILE_DEFINITIONS)\n"
        'message(STATUS "PROBE ${EPLB_RT_NPU_BUILT}|${rpath}|${defs}|${sources}")\n'
    )
    env = fake_npu_smi(tmp_path / "bin", "910B2") | {"ASCEND_HOME_PATH": str(cann)}
    env.pop("SOC_VERSION", None)
    proc = subprocess.run(
        [
            "cmake",
            "-S",
            str(project),
            "-B",
            str(tmp_path / "build"),
            f"-DEPLB_RT_TORCH_NPU_DIR={torch_npu}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built, rpath, defs, sources = proc.stdout.split("PROBE ", 1)[1].splitlines()[0].split("|")
    assert (built, rpath) == ("ON", "$ORIGIN")
    assert 'EPLB_RT_SOC_VERSION="Ascend910B2"' in defs and "EPLB_RT_WITH_NPU" in defs
    assert "ascendc_kernels/launch/launchers.cpp" in sources
    kind, *kernels = (tmp_path / "build" / "ascendc_library.txt").read_text().split(";")
    assert kind == "SHARED"
    assert sorted(Path(k).parent.name for k in kernels) == [
        "count_from_group_list",
        "route_and_count",
        "update_expert_map",
        "update_expert_weights",
    ]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf not found")
def test_the_extension_names_no_folder_of_the_build_machine_but_its_torch_in_place():
    """Its RUNPATH held the site-packages of the torch it was built against: in a wheel, the
    build's virtual environment or an isolated build's folder that pip deletes. Now the folder
    next to it, and built in place (an editable install, in the source tree) the torch it was
    built against; either way it loads before torch is imported."""
    import eplb_rt._C

    dynamic = subprocess.run(
        ["readelf", "-d", eplb_rt._C.__file__], capture_output=True, text=True, check=True
    ).stdout
    paths = [
        p
        for line in dynamic.splitlines()
        if "(RUNPATH)" in line or "(RPATH)" in line
        for p in line.split("[", 1)[1].rstrip("]").split(":")
    ]
    here = os.path.join(os.path.dirname(torch.__file__), "lib")
    in_place = Path(eplb_rt._C.__file__).resolve().parent == REPO / "eplb_rt"
    assert paths[0] == "$ORIGIN/../torch/lib", paths
    for path in paths[1:]:
        assert path == "$ORIGIN" or (in_place and os.path.samefile(path, here)), paths
    alone = subprocess.run(
        [sys.executable, "-c", "import eplb_rt._C, sys; print('torch' in sys.modules)"],
        capture_output=True, text=True, check=False, cwd=REPO.parent,
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr


# ---- the C++ compiler must link libstdc++ as a shared library (cmake/libstdcxx.cmake) ----


def check_libstdcxx(tmp_path: Path, compiler: str, compiler_id: str = "GNU"):
    probe = tmp_path / "libstdcxx.cmake"
    probe.write_text(
        f'include("{(REPO / "cmake" / "libstdcxx.cmake").as_posix()}")\n'
        f'eplb_rt_check_shared_libstdcxx("{compiler}" "{compiler_id}")\n'
        'message("RESULT accepted")\n'
    )
    return subprocess.run(["cmake", "-P", str(probe)], check=False, capture_output=True, text=True)


def static_only_gxx(folder: Path) -> Path:
    """A g++ that, like a GCC shipping only libstdc++.a, finds no libstdc++.so."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "g++"
    script.write_text(
        '#!/bin/sh\ncase "$1" in -print-file-name=*) echo "${1#-print-file-name=}";; '
        '*) exec g++ "$@";; esac\n'
    )
    script.chmod(0o755)
    return script


@needs_cmake
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
def test_a_compiler_with_a_shared_libstdcxx_is_accepted(tmp_path):
    proc = check_libstdcxx(tmp_path, shutil.which("g++"))
    assert proc.returncode == 0, proc.stderr
    assert "RESULT accepted" in proc.stderr


@needs_cmake
def test_a_compiler_with_only_a_static_libstdcxx_is_refused_by_name(tmp_path):
    compiler = static_only_gxx(tmp_path / "bin")
    proc = check_libstdcxx(tmp_path, str(compiler))
    assert proc.returncode != 0
    assert "RESULT accepted" not in proc.stderr
    message = " ".join(proc.stderr.split())
    assert f"The C++ compiler {compiler} has no shared libstdc++" in message
    assert "gives 'libstdc++.so'" in message and "CXX=/usr/bin/g++" in message
    # Other compilers are not asked.
    assert check_libstdcxx(tmp_path, str(compiler), "Clang").returncode == 0


# ---- torch is found through its package, not through its CMake config ----
STAND_IN_TORCH_CONFIG = """\
message(FATAL_ERROR "Your installed Caffe2 version uses CUDA but I cannot find the CUDA libraries.")
"""


@needs_cmake
@pytest.mark.skipif(shutil.which("ninja") is None, reason="ninja not found")
def test_the_build_does_not_need_torchs_cmake_config(tmp_path):
    """A CUDA build of torch (plain PyPI's default) ships a CMake config that stops any project
    on a machine without a CUDA toolkit, even a CPU-only build: the project configures with that
    config in the way (a stand-in found first), and links torch from the package's lib folder."""
    config = tmp_path / "torch_config"
    config.mkdir()
    (config / "TorchConfig.cmake").write_text(STAND_IN_TORCH_CONFIG)
    build = tmp_path / "build"
    proc = subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(build), "-G", "Ninja",
         f"-DPython_EXECUTABLE={sys.executable}", f"-DTorch_DIR={config}",
         "-DEPLB_RT_CUDA=OFF", "-DEPLB_RT_NPU=OFF"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ninja = (build / "build.ninja").read_text()
    lib = Path(torch.__file__).parent / "lib"
    for name in ("libtorch.so", "libtorch_cpu.so", "libc10.so"):
        assert str(lib / name) in ninja, name


# ---- the C++ standard follows the torch found ----
STAND_IN_TORCH = """\
__version__ = {version!r}


class version:
    cuda = None


class _C:
    _GLIBCXX_USE_CXX11_ABI = {abi!r}
"""


@needs_cmake
@pytest.mark.skipif(shutil.which("ninja") is None, reason="ninja not found")
@pytest.mark.parametrize(
    ("version", "standard"),
    [("2.10.0", "c++17"), ("2.13.0+cpu", "c++17"), ("2.14.0+cu130", "c++20")],
)
def test_the_cxx_standard_is_that_of_torchs_headers(tmp_path, version, standard):
    """An engine's environment brings its own torch; torch 2.14's headers need C++20. A
    stand-in torch package of each version (this torch's headers and libraries) is configured
    for and the compile commands are read."""
    real = Path(torch.__file__).parent
    package = tmp_path / "site" / "torch"
    package.mkdir(parents=True)
    abi = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    (package / "__init__.py").write_text(STAND_IN_TORCH.format(version=version, abi=abi))
    for folder in ("include", "lib"):
        (package / folder).symlink_to(real / folder)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={tmp_path / "site"} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    build = tmp_path / "build"
    proc = subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(build), "-G", "Ninja",
         f"-DPython_EXECUTABLE={python}", "-DEPLB_RT_CUDA=OFF", "-DEPLB_RT_NPU=OFF"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    commands = (build / "compile_commands.json").read_text()
    assert commands.count("-std=c++") == commands.count(f"-std={standard}") > 0


def test_the_sdist_holds_what_its_build_needs(tmp_path):
    """Without MANIFEST.in the sdist held the Python package alone: a wheel built from it (as
    `python -m build` and a source install do) failed at once, CMake finding no CMakeLists.txt."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)],
        cwd=repo, check=True, capture_output=True,
    )  # fmt: skip
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    tracked = subprocess.run(
        ["git", "ls-files", "CMakeLists.txt", "requirements-build.txt", "LICENSE", "csrc",
         "cmake", "ascendc_kernels"],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    if not tracked:
        pytest.skip("not a git checkout")
    assert set(tracked) <= names, sorted(set(tracked) - names)
    assert not any(name.startswith(("tests/", "build/")) or name.endswith(".so") for name in names)


def test_the_package_pins_the_torch_release_it_is_built_against():
    """The extension uses torch's C++ ABI, which changes between releases: the installed
    package's metadata names the release it was compiled against (any build of it), and plotting
    is an extra, not a dependency of serving."""
    from importlib.metadata import requires

    release = torch.__version__.split("+")[0]
    needs = requires("eplb_rt") or []
    plain = [r for r in needs if "extra ==" not in r]
    assert f"torch=={release}" in plain, needs
    assert not any(r.startswith("matplotlib") for r in plain), needs
    assert any(r.startswith("matplotlib") and 'extra == "plot"' in r for r in needs), needs
