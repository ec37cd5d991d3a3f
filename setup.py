"""Thin driver of CMake (CMakeLists.txt is the single source of truth of the build).

    pip install --no-build-isolation .            # or -e . for an editable install
    python setup.py build_ext --inplace           # build eplb_rt/_C*.so in the source tree

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
        ext_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_type = "Debug" if self.debug else os.environ.get("CMAKE_BUILD_TYPE", "Release")
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ext_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
        ]
        args += [f"-D{name}={os.environ[name]}" for name in PASSED_THROUGH if name in os.environ]
        if shutil.which("ninja") and not os.environ.get("CMAKE_GENERATOR"):
            args.append("-GNinja")
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_dir, check=True)


setup(ext_modules=[CMakeExtension("eplb_rt._C")], cmdclass={"build_ext": CMakeBuild})
