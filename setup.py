"""Thin driver of CMake (CMakeLists.txt is the single source of truth of the build).

    pip install --no-build-isolation .            # or -e . for an editable install
    python setup.py build_ext --inplace           # build eplb_rt/_C*.so in the source tree

The CMake build folder is kept in build/ (per build type and Python), so a second install does
not recompile an unchanged csrc/; delete build/ for a clean build.

After the extension, the policies' numba kernels are compiled into the package's kernel cache
(eplb_rt/_kernels, by ``eplb-rt policies --warm-up``), so that no process compiles them at its
first plan; an up-to-date cache is loaded, not compiled again. It needs numba in the build
environment (``--no-build-isolation``); without it the kernels compile at first use.

Environment: EPLB_RT_CUDA, EPLB_RT_NPU = AUTO|ON|OFF (passed to CMake), CMAKE_BUILD_TYPE
(default Release), MAX_JOBS (parallel compile jobs), CMAKE_ARGS (extra arguments),
EPLB_RT_KERNEL_CACHE=0 (no kernel cache).
"""

import importlib.metadata
import importlib.util
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
OFF = ("0", "false", "no", "off", "")  # as eplb_rt.envs reads a flag


class CMakeExtension(Extension):
    """An extension whose sources CMake knows; setuptools compiles nothing itself."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configures and builds with CMake, placing the module where setuptools expects it, then
    fills the kernel cache of the package it built."""

    def run(self) -> None:
        # build_ext builds with inplace False (into build_lib, then copies into the source tree
        # when in place): this run and build_extension read this instead.
        self.in_place = self.inplace
        super().run()
        if os.environ.get("EPLB_RT_KERNEL_CACHE", "1").strip().lower() in OFF:
            return
        # In place (and editable): the source tree is the package; otherwise build_lib, which
        # build_py has filled and the wheel is made from.
        tree = ROOT if self.in_place else Path(self.build_lib).resolve()
        fill_kernel_cache(tree)
        if not self.in_place:  # a copy no process uses: its index locks are no part of a wheel
            for lock in (tree / "eplb_rt" / "_kernels").rglob("*.nbi.lock"):
                lock.unlink()

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
            # In place, the extension is in the source tree, not next to torch in site-packages.
            f"-DEPLB_RT_RPATH_TORCH={'ON' if self.in_place else 'OFF'}",
        ]
        args += [f"-D{name}={os.environ[name]}" for name in PASSED_THROUGH if name in os.environ]
        if shutil.which("ninja") and not os.environ.get("CMAKE_GENERATOR"):
            args.append("-GNinja")
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        # Configure only when the arguments or the tools changed; the build re-runs CMake itself
        # when a CMakeLists.txt or cmake/ file changed. A change of tools starts from a fresh
        # cache: it holds their paths (an isolated build's live in a folder pip deletes after
        # it) and the torch the extension was configured against.
        stamp = build_dir / "configure-args.txt"
        configured = (build_dir / "CMakeCache.txt").is_file() and stamp.is_file()
        wanted = "\n".join([*args, *toolchain()])
        if not configured or stamp.read_text() != wanted:
            (build_dir / "CMakeCache.txt").unlink(missing_ok=True)
            shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
            subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
            stamp.write_text(wanted)
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_dir, check=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_dir / "lib" / target.name, target)
        # The NPU build's AscendC kernel library goes next to the extension, which finds it
        # through its rpath $ORIGIN.
        for kernels in (build_dir / "lib").glob("libeplb_ascendc_kernels*.so*"):
            shutil.copy2(kernels, target.parent / kernels.name)


def toolchain() -> list[str]:
    """What a configured CMake cache depends on besides its arguments: the cmake and ninja it
    ran, and the torch it found (its folder and version), found without importing torch."""
    spec = importlib.util.find_spec("torch")
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    where = spec.origin if spec is not None and spec.origin else ""
    return [shutil.which("cmake") or "", shutil.which("ninja") or "", where, version]


def requirements() -> list[str]:
    """The package's dependencies, with torch pinned to the release the extension is compiled
    against: its C++ ABI changes between releases, and an extension built for one fails to load
    (undefined symbols) with another. The pin names the release, not the build (``2.13.0``
    accepts ``2.13.0+cpu`` and the CUDA builds). numba stays loose: an engine pins its own, and
    with another numba the shipped kernel cache misses and the kernels compile at first use."""
    try:
        release = importlib.metadata.version("torch").split("+")[0]
    except importlib.metadata.PackageNotFoundError:  # metadata only: no extension is built
        release = ""
    torch = f"torch=={release}" if release else "torch"
    return [torch, "numpy>=1.24", "numba>=0.61", "scipy>=1.11", "tqdm"]


def fill_kernel_cache(tree: Path) -> None:
    """Runs ``eplb-rt policies --warm-up`` on the package in ``tree`` (its numba kernels are
    cached in ``tree/eplb_rt/_kernels``). A failure is a warning: the kernels then compile at
    first use."""
    if not (tree / "eplb_rt" / "__init__.py").is_file():
        print(f"eplb_rt: no package in {tree}; kernel cache not filled", file=sys.stderr)
        return
    # flush: the child writes to the same stdout.
    print(f"eplb_rt: filling the numba kernel cache in {tree / 'eplb_rt' / '_kernels'}", flush=True)
    # The tree first on the path (cwd for -m), so its eplb_rt is the one that runs.
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "eplb_rt.cli", "policies", "--warm-up", "--portable"],
        check=False,
        cwd=tree,
        env=dict(os.environ, PYTHONPATH=path),
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-3:])
        print(
            f"warning: kernel cache not filled (kernels compile at first use):\n{tail}",
            file=sys.stderr,
        )


setup(
    install_requires=requirements(),
    ext_modules=[CMakeExtension("eplb_rt._C")],
    cmdclass={"build_ext": CMakeBuild},
)
