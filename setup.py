"""Thin driver of CMake (CMakeLists.txt is the single source of truth of the build).

    pip install --no-build-isolation .            # or -e . for an editable install
    python setup.py build_ext --inplace           # build eplb_rt/_C*.so in the source tree

The CMake build folder is kept in build/ (per build type and Python), so a second install does
not recompile an unchanged csrc/; delete build/ for a clean build.

Environment: EPLB_RT_CUDA, EPLB_RT_NPU = AUTO|ON|OFF (passed to CMake), CMAKE_BUILD_TYPE
(default Release), MAX_JOBS (parallel compile jobs), CMAKE_ARGS (extra arguments).
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PASSED_THROUGH = ("EPLB_RT_CUDA", "EPLB_RT_NPU")


class CMakeExtension(Extension):
    """An extension whose sources CMake knows; setuptools compiles nothing itself."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configures and builds with CMake, placing the module where setuptools expects it."""

    def build_extension(self, ext: Extension) -> None:
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_type = "Debug" if self.debug else os.environ.get("CMAKE_BUILD_TYPE", "Release")
        # A kept folder, not build_temp (new for each pip build): a second install reuses CMake's
        # cache and Ninja's record, so only what changed in csrc/ is compiled again.
        build_dir = ROOT / "build" / f"cmake-{build_type.lower()}-{sys.implementation.cache_tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build_dir / 'lib'}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
        ]
        args += [f"-D{name}={os.environ[name]}" for name in PASSED_THROUGH if name in os.environ]
        if shutil.which("ninja") and not os.environ.get("CMAKE_GENERATOR"):
            args.append("-GNinja")
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        # Configure only when the arguments changed; the build re-runs CMake itself when a
        # CMakeLists.txt or cmake/ file changed.
        stamp = build_dir / "configure-args.txt"
        configured = (build_dir / "CMakeCache.txt").is_file() and stamp.is_file()
        if not configured or stamp.read_text() != "\n".join(args):
            subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
            stamp.write_text("\n".join(args))
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_dir, check=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_dir / "lib" / target.name, target)


setup(ext_modules=[CMakeExtension("eplb_rt._C")], cmdclass={"build_ext": CMakeBuild})
