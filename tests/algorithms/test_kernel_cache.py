"""The numba kernel cache shipped in the package (eplb_rt.algorithms.kernel_cache).

The subprocess tests start fresh interpreters with ``NUMBA_CACHE_DIR`` pointed at an empty
folder, as a user's process would start, and read numba's per-kernel cache statistics.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from numba import njit
from numba.core.registry import CPUDispatcher

from benchmarks.bench_policies import another_cpu
from eplb_rt import envs
from eplb_rt.algorithms import kernel_cache, plan
from eplb_rt.config import EplbConfig
from eplb_rt.placement import Topology

X86 = platform.machine() in {"x86_64", "AMD64"}


def numpy_simd_targets() -> list[str]:
    """The SIMD targets NumPy may dispatch to (its ``NPY_DISABLE_CPU_FEATURES`` names)."""
    core = getattr(np, "_core", None) or np.core  # numpy 1.x: np.core
    return list(core._multiarray_umath.__cpu_dispatch__)


ROOT = Path(__file__).resolve().parents[2]
DEFAULT = EplbConfig().policy

# Prints {"hits": n, "misses": n, "paths": [...]} over every kernel of the modules named in
# argv[1] (a comma-separated list of prefixes), after the code of argv[2] has run.
STATS = """
import json, sys
from numba.core.registry import CPUDispatcher
exec(sys.argv[2])
kernels = {id(v): v for name, mod in list(sys.modules.items())
           if name.startswith(tuple(sys.argv[1].split(","))) for v in vars(mod).values()
           if isinstance(v, CPUDispatcher)}.values()
print(json.dumps({
    "hits": sum(sum(k.stats.cache_hits.values()) for k in kernels),
    "misses": sum(sum(k.stats.cache_misses.values()) for k in kernels),
    "paths": sorted({k.stats.cache_path for k in kernels
                     if k.stats.cache_hits or k.stats.cache_misses}),
}))
"""


def run_fresh(modules: str, code: str, numba_cache: Path, pythonpath: Path = ROOT, **env) -> dict:
    """Runs ``code`` in a fresh interpreter (``numba_cache``, made empty when missing, as its
    ``NUMBA_CACHE_DIR``) and returns the cache statistics of ``modules``."""
    numba_cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(numba_cache), PYTHONPATH=str(pythonpath), **env)
    done = subprocess.run(
        [sys.executable, "-c", STATS, modules, textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def kernels_of_the_package() -> list[CPUDispatcher]:
    return list(
        {
            id(v): v
            for name, mod in list(sys.modules.items())
            if name.startswith("eplb_rt.")
            for v in vars(mod).values()
            if isinstance(v, CPUDispatcher)
        }.values()
    )


def test_source_stamp_follows_the_contents_of_the_folder(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("X = 1\n")
    b.write_text("Y = 2\n")
    first = kernel_cache.source_stamp(a)
    assert kernel_cache.source_stamp(b) == first  # one stamp for the whole folder
    os.utime(a, ns=(1, 1))  # what pip does to mtimes: no change in content, no new stamp
    (tmp_path / "notes.txt").write_text("not a source")
    assert kernel_cache.source_stamp(a) == first
    b.write_text("Y = 3\n")  # a sibling's edit (a kernel may inline b's kernels)
    assert kernel_cache.source_stamp(a) != first


def test_moved_numba_internals_warn_once_and_leave_numba_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("EPLB_RT_KERNEL_CACHE", raising=False)  # off, it would not look for them
    monkeypatch.setattr(kernel_cache, "_numba_internals", lambda: None)
    monkeypatch.setattr(kernel_cache, "_warned", False)
    with pytest.warns(RuntimeWarning, match="numba's default caching"):
        assert kernel_cache.install(tmp_path / "a") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernel_cache.install(tmp_path / "b") is False
    assert tmp_path / "a" not in kernel_cache._installed


def test_off_by_environment(tmp_path, monkeypatch):
    from numba.core.caching import CacheImpl

    before = list(CacheImpl._locator_classes)
    monkeypatch.setenv("EPLB_RT_KERNEL_CACHE", "0")
    assert kernel_cache.install(tmp_path) is False
    assert CacheImpl._locator_classes == before


@pytest.mark.skipif(not envs.get("EPLB_RT_KERNEL_CACHE"), reason="EPLB_RT_KERNEL_CACHE=0")
def test_every_kernel_caches_in_the_package_releases_the_gil_and_divides_as_numpy():
    # All three come from eplb_rt.algorithms.jit.kernel; under Python's error model a kernel's
    # divisions keep the reference counts of its array arguments (nearly half the move walks' time).
    kernels = kernels_of_the_package()
    assert kernels, "no numba kernel found in eplb_rt"
    cache_root = kernel_cache.PACKAGE_ROOT / kernel_cache.CACHE_FOLDER
    for kernel in kernels:
        name = kernel.py_func.__qualname__
        assert kernel.targetoptions.get("nogil"), f"{name} holds the GIL"
        assert kernel.targetoptions.get("error_model") == "numpy", f"{name}: not a jit.kernel"
        assert kernel.stats.cache_path is not None, f"{name} is not cached (cache=True)"
        assert Path(kernel.stats.cache_path).is_relative_to(cache_root), kernel.stats.cache_path


@pytest.mark.slow
@pytest.mark.parametrize("cpu", ["this CPU", "another CPU"])
def test_fresh_process_plans_and_replans_without_compiling(tmp_path, cpu):
    """An empty NUMBA_CACHE_DIR: the default policy's first plan, first re-plan through the
    pipeline and a re-plan checked out of sample load every kernel from the package, also on a
    CPU the build did not compile for (the portable entries)."""
    # Brings the package's cache up to date (a load when setup.py filled it).
    fill = f"from eplb_rt.algorithms import warm_up; warm_up([{DEFAULT!r}])"
    run_fresh("eplb_rt.", fill, tmp_path / "fill")
    env = {}
    if cpu == "another CPU":
        run_fresh("eplb_rt.", fill, tmp_path / "fill", **kernel_cache.portable_env())
        env = {"NUMBA_CPU_NAME": another_cpu()}
    user_cache = tmp_path / "user"
    stats = run_fresh(
        "eplb_rt.",
        f"""
        import numpy as np
        from eplb_rt import planning
        from eplb_rt.algorithms import plan
        from eplb_rt.placement import Topology
        load = np.random.default_rng(1).pareto(1.5, size=(6, 3, 37)) * 100
        first = plan({DEFAULT!r}, load, Topology(8, 5))
        planning.decide(load[::-1].astype(np.float32), first, Topology(8, 5), {DEFAULT!r}, None,
                        cost=planning.CostModel(), horizon=50)
        # A window of a few counts a step: its re-plan is checked on halves of the window.
        shares = load.sum(0) / load.sum(0).sum(-1, keepdims=True)
        rng = np.random.default_rng(2)
        window = np.stack([[rng.multinomial(300, p) for p in shares] for _ in range(16)])
        plan({DEFAULT!r}, window, Topology(8, 5), previous=first)
        """,
        user_cache,
        **env,
    )
    assert stats["misses"] == 0 and stats["hits"] > 0, stats
    cache_root = kernel_cache.PACKAGE_ROOT / kernel_cache.CACHE_FOLDER
    assert all(Path(p).is_relative_to(cache_root) for p in stats["paths"]), stats["paths"]
    assert not any(user_cache.iterdir()), "the user's NUMBA_CACHE_DIR was written"


@pytest.mark.slow
def test_every_rank_plans_the_same_table_on_any_cpu(tmp_path):
    """Each rank of an engine (vLLM, vllm-ascend) runs the policy itself on the same gathered
    load, so the tables must agree to the bit. A rank on another CPU model, running the
    portable kernels, plans, re-plans and plans on many episodes exactly as this CPU does,
    also where NumPy's BLAS takes other kernels there: the decompositions of distinct
    workloads' episodes (``unseen``) and ``flashlb``'s covariances are plain loops too, the
    same to the last bit, and no order of ties follows NumPy's SIMD kernels."""
    fill = f"from eplb_rt.algorithms import warm_up; warm_up([{DEFAULT!r}, 'flashlb'])"
    run_fresh("eplb_rt.", fill, tmp_path / "fill", **kernel_cache.portable_env())
    another = {"NUMBA_CPU_NAME": another_cpu()}
    if X86:
        another["OPENBLAS_CORETYPE"] = "Prescott"  # SSE3 kernels: other sums than AVX2's
    # NumPy's own SIMD kernels off too: its default argsort orders ties otherwise without them.
    another["NPY_DISABLE_CPU_FEATURES"] = " ".join(numpy_simd_targets())
    tables = {}
    for cpu, env in [("this", {}), ("another", another)]:
        out = tmp_path / f"{cpu}.npz"
        code = f"""
        import numpy as np
        import torch
        from benchmarks import traces
        from eplb_rt.algorithms import plan
        from eplb_rt.algorithms.episode_rows import unseen_signal
        from eplb_rt.algorithms.load import normalise
        from eplb_rt.integrations.vllm import policy_class
        from eplb_rt.placement import Topology
        load = np.concatenate([traces.deepseek_v3(w, moe_only=True)
                               for w in traces.DEEPSEEK_V3_WORKLOADS])
        first = plan({DEFAULT!r}, load[:3], Topology(64, 5))
        replan = policy_class({DEFAULT!r}).rebalance_experts(
            torch.tensor(load[3]), 320, 1, 1, 64, torch.tensor(first.phy2log.astype(np.int64)))
        esft = plan({DEFAULT!r}, traces.esft("law")[:40], Topology(8, 9))
        # Distinct workloads without noise: the unseen axes, made of the decompositions' bits
        W = normalise(load[:3, 10])
        unseen = unseen_signal(W, 0.0)[0]
        # flashlb: covariances (BLAS in the original), experts of equal score (four of each)
        flash = plan("flashlb", np.repeat(load[:3, :, :64], 4, axis=2), Topology(64, 5))
        np.savez({str(out)!r}, first=first.phy2log, replan=replan.numpy(), esft=esft.phy2log,
                 unseen=unseen, flashlb=flash.phy2log)
        """
        stats = run_fresh("eplb_rt.", code, tmp_path / f"user-{cpu}", **env)
        assert stats["misses"] == 0, stats  # each loaded its own kind of kernel, none compiled
        tables[cpu] = dict(np.load(out))
    for name, table in tables["this"].items():
        np.testing.assert_array_equal(tables["another"][name], table, err_msg=name)
    assert (tables["this"]["replan"] != tables["this"]["first"]).any()
    assert tables["this"]["unseen"].shape[0] > 0


TOY_KERNEL = """
from numba import njit
from toy.consts import SCALE

@njit(cache=True, nogil=True)
def scaled_sum(x):
    return x.sum() * SCALE
"""

TOY_CALL = """
import numpy as np
from pathlib import Path
from eplb_rt.algorithms import kernel_cache
root = Path({root!r})
kernel_cache.install(root / "toy", Path({cache!r}))
from toy.kernel import scaled_sum
assert scaled_sum(np.arange(4.0)) == 6.0 * {scale}
"""


def make_toy(tmp_path: Path) -> tuple[Path, str]:
    """The toy package in ``tmp_path`` (``SCALE`` 2.0); returns its folder and the
    ``PYTHONPATH`` that imports it and eplb_rt."""
    toy = tmp_path / "toy"
    toy.mkdir()
    (toy / "__init__.py").write_text("")
    (toy / "kernel.py").write_text(TOY_KERNEL)
    (toy / "consts.py").write_text("SCALE = 2.0\n")
    return toy, os.pathsep.join([str(tmp_path), str(ROOT)])


@pytest.mark.slow
def test_toy_package_hits_and_is_invalidated_by_an_edit(tmp_path):
    """A package of its own: cached in the given folder, found again, invalidated by an edit of
    a sibling source (not by its mtime), and numba's own cache when the folder is unusable."""
    toy, path = make_toy(tmp_path)
    cache = tmp_path / "shipped"

    def call(scale: float, cache_root: Path = cache) -> dict:
        code = TOY_CALL.format(root=str(tmp_path), cache=str(cache_root), scale=scale)
        return run_fresh("toy.", code, tmp_path / "user", pythonpath=path)

    assert call(2.0) == {"hits": 0, "misses": 1, "paths": [str(cache)]}
    assert call(2.0)["hits"] == 1
    os.utime(toy / "kernel.py", ns=(10**9, 10**9))
    assert call(2.0)["hits"] == 1
    (toy / "consts.py").write_text("SCALE = 3.0\n")  # the kernel froze SCALE: must recompile
    assert call(3.0) == {"hits": 0, "misses": 1, "paths": [str(cache)]}
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a folder under a file cannot be made: numba's locators take over
    stats = call(3.0, blocked / "kernels")
    assert stats["misses"] == 1
    assert Path(stats["paths"][0]).is_relative_to(tmp_path / "user"), stats


@pytest.mark.slow
def test_prune_deletes_the_entries_of_edited_sources_and_keeps_the_fresh(tmp_path):
    """numba names a kernel's index after its line and never deletes one: every edit of the
    sources left a set of files behind (118 MiB in a tree set up over many updates). Pruned:
    the stale index with its data and lock, a data file no index names, a lock whose index is
    gone; kept: the fresh index, its data, its lock, and an index of another numba version."""
    toy, path = make_toy(tmp_path)
    cache = tmp_path / "shipped"

    def call(scale: float) -> dict:
        code = TOY_CALL.format(root=str(tmp_path), cache=str(cache), scale=scale)
        return run_fresh("toy.", code, tmp_path / "user", pythonpath=path)

    assert call(2.0)["misses"] == 1
    old = {p.name for p in cache.rglob("*") if p.is_file()}
    (toy / "kernel.py").write_text("# moved down a line\n" + TOY_KERNEL)
    (toy / "consts.py").write_text("SCALE = 3.0\n")
    assert call(3.0)["misses"] == 1
    files = {p.name: p for p in cache.rglob("*") if p.is_file()}
    new = set(files) - old
    assert len(new) == 3 and any(n.endswith(".1.nbc") for n in new), sorted(files)
    index = next(files[n] for n in new if n.endswith(".nbi"))
    folder = index.parent
    orphan = folder / index.name.replace(".nbi", ".7.nbc")
    orphan.write_bytes(b"x")
    lone_lock = folder / "kernel.gone-3.py311.nbi.lock"
    lone_lock.touch()
    other = folder / index.name.replace("-", "-9", 1)  # another numba's index, this stamp
    with open(index, "rb") as f:
        version, rest = pickle.load(f), f.read()
    with open(other, "wb") as f:
        pickle.dump("0.0.0", f)
        f.write(rest)
    other_data = folder / other.name.replace(".nbi", ".1.nbc")
    other_data.write_bytes(b"x")
    assert version != "0.0.0"

    removed, freed = kernel_cache.prune(toy, cache)

    left = {p.name for p in cache.rglob("*") if p.is_file()}
    kept = {other.name, f"{other.name}.lock", other_data.name}  # the lock: pruned under it
    assert left == new | kept, (sorted(left), sorted(new))
    assert removed == len(old) + 2 and freed > 0, (removed, freed)
    assert call(3.0) == {"hits": 1, "misses": 0, "paths": [str(cache)]}
    assert kernel_cache.prune(toy, cache) == (0, 0)


@pytest.mark.skipif(kernel_cache.fcntl is None, reason="flock locks")
def test_a_lock_deleted_under_its_holder_is_not_held_twice(tmp_path):
    """prune deletes a stale index's lock file while it holds it: a process that waited on the
    file then held a lock no other process would meet, and a second one took the same index's
    lock at the same time. After the flock the file is checked to be the one at the path."""
    fcntl = kernel_cache.fcntl
    index = tmp_path / "kernel.f-3.py311.nbi"
    lock = tmp_path / "kernel.f-3.py311.nbi.lock"
    first = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(first, fcntl.LOCK_EX)
    held, release = threading.Event(), threading.Event()

    def waiter() -> None:
        with kernel_cache._index_lock(index):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)  # the waiter opens the file and waits in flock (or opens the next one)
    lock.unlink()  # as prune does, then lets go
    os.close(first)
    assert held.wait(30)
    probe = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)
        release.set()
        thread.join(30)


@pytest.mark.skipif(kernel_cache.fcntl is None, reason="flock locks")
def test_a_file_system_without_flock_saves_without_a_lock(tmp_path, monkeypatch):
    """flock refused (ENOLCK, some network file systems): no lock, as numba does alone; a
    retry there would loop for ever."""

    def refuse(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(kernel_cache.fcntl, "flock", refuse)
    with kernel_cache._index_lock(tmp_path / "kernel.f-3.py311.nbi"):
        pass


# A process that compiles the toy kernel for its own dtype, with numba's read of the kernel's
# index slowed down: all racers go at once, and without a lock each would read the index before
# any other wrote its entry back.
RACER = """
import os, time
import numpy as np
from pathlib import Path
from numba.core import caching
from eplb_rt.algorithms import kernel_cache
read = caching.IndexDataCacheFile._load_index
def slow_read(self):
    index = read(self)
    time.sleep(0.5)
    return index
caching.IndexDataCacheFile._load_index = slow_read
root = Path({root!r})
kernel_cache.install(root / "toy", Path({cache!r}))
from toy.kernel import scaled_sum
gate = Path({gate!r})
(gate / {dtype!r}).touch()
while len(os.listdir(gate)) < {racers}:
    time.sleep(0.01)
assert scaled_sum(np.arange(4, dtype=np.{dtype})) == 12.0
"""


@pytest.mark.slow
def test_processes_compiling_at_once_keep_every_entry(tmp_path):
    """Four processes compile one kernel for four dtypes at the same moment: every entry is
    kept and each loads its own code (numba's own saves, without the lock, keep one of the
    four and name all their data files alike)."""
    _, path = make_toy(tmp_path)
    cache, gate = tmp_path / "shipped", tmp_path / "gate"
    gate.mkdir()
    dtypes = ("float64", "float32", "int64", "int32")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "user"), PYTHONPATH=path)
    code = [
        RACER.format(root=str(tmp_path), cache=str(cache), gate=str(gate), dtype=d, racers=4)
        for d in dtypes
    ]
    racers = [
        subprocess.Popen([sys.executable, "-c", c], env=env, stderr=subprocess.PIPE, text=True)
        for c in code
    ]
    for racer in racers:
        _, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err
    calls = "".join(f"assert scaled_sum(np.arange(4, dtype=np.{d})) == 12.0\n" for d in dtypes)
    code = TOY_CALL.format(root=str(tmp_path), cache=str(cache), scale=2.0) + calls
    stats = run_fresh("toy.", code, tmp_path / "user", pythonpath=path)
    assert stats == {"hits": 4, "misses": 0, "paths": [str(cache)]}
    assert len(list(cache.rglob("*.nbc"))) == 4


@pytest.mark.slow
@pytest.mark.skipif(not X86, reason="names x86-64 CPUs")
def test_a_cpu_the_build_did_not_compile_for_loads_the_portable_entry(tmp_path):
    """Built on one CPU, served on another: the toy kernel compiled for the build's CPU and for
    the portable one is loaded on a third CPU (no compile), and compiled where neither exists."""
    _, path = make_toy(tmp_path)
    cache = tmp_path / "shipped"
    code = TOY_CALL.format(root=str(tmp_path), cache=str(cache), scale=2.0)

    def call(cpu: str | None) -> dict:
        """The toy kernel's cache statistics in a process on ``cpu`` (None: this one)."""
        env = {} if cpu is None else {"NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": ""}
        return run_fresh("toy.", code, tmp_path / "user", pythonpath=path, **env)

    assert call(None)["misses"] == 1  # the build: this CPU ...
    assert call("nehalem")["misses"] == 1  # (another CPU, before any portable entry: compiles)
    assert call(kernel_cache.PORTABLE_CPU)["misses"] == 1  # ... and the portable one
    assert call(kernel_cache.PORTABLE_CPU) == {"hits": 1, "misses": 0, "paths": [str(cache)]}
    assert call(None)["hits"] == 1  # the build's CPU keeps its own entry
    assert call("x86-64-v2") == {"hits": 1, "misses": 0, "paths": [str(cache)]}
    assert not any((tmp_path / "user").iterdir())


@pytest.mark.slow
def test_a_read_only_install_loads_the_shipped_entries_from_a_copy(tmp_path):
    """Installed by another user, the shipped folder is read-only: the entries load from a
    copy in the user's cache, made once, and nothing is written to the shipped folder."""
    _, path = make_toy(tmp_path)
    shipped, xdg = tmp_path / "shipped", tmp_path / "xdg"
    code = TOY_CALL.format(root=str(tmp_path), cache=str(shipped), scale=2.0)
    assert run_fresh("toy.", code, tmp_path / "user", pythonpath=path)["misses"] == 1  # the build
    before = sorted(p.name for p in shipped.rglob("*"))
    # Tests run as root, who may write anywhere: the shipped folder is declared read-only.
    read_only = f"""
from pathlib import Path
from eplb_rt.algorithms import kernel_cache
writable = kernel_cache._writable
kernel_cache._writable = lambda folder: folder != Path({str(shipped)!r}) and writable(folder)
"""
    for _ in range(2):
        stats = run_fresh(
            "toy.", read_only + code, tmp_path / "user", pythonpath=path, XDG_CACHE_HOME=str(xdg)
        )
        (copy,) = (xdg / "eplb_rt").iterdir()
        assert stats == {"hits": 1, "misses": 0, "paths": [str(copy)]}
    assert sorted(p.name for p in shipped.rglob("*")) == before
    assert not any((tmp_path / "user").iterdir())


def test_a_read_only_cache_without_a_home_folder_is_used_as_it_is(tmp_path, monkeypatch):
    """No user cache to copy into (no HOME, no XDG_CACHE_HOME): the shipped folder is returned
    and numba's own locators decide, as before; importing never fails on it."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "k.nbi").write_bytes(b"")

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(kernel_cache, "_writable", lambda folder: folder != shipped)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert kernel_cache.writable_root(shipped) == shipped
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    copy = kernel_cache.writable_root(shipped)
    assert copy.parent == tmp_path / "xdg" / "eplb_rt" and (copy / "k.nbi").is_file()
    assert kernel_cache.writable_root(shipped) == copy


def main_thread_coverage(work, window: float = 0.1) -> float:
    """Runs ``work`` in a thread; the fraction of its wall time in which the main thread ran
    Python at least once every ``window`` seconds (near 1 when ``work`` releases the GIL)."""
    ticks = []
    thread = threading.Thread(target=work)
    start = time.perf_counter()
    thread.start()
    while thread.is_alive():
        ticks.append(time.perf_counter())
    end = time.perf_counter()
    gaps = np.diff([start, *ticks, end])
    return float(gaps[gaps <= window].sum() / (end - start))


@njit(nogil=False)
def _hold_the_gil(n):
    total = 0.0
    for i in range(n):
        total += math.sin(i)
    return total


@pytest.mark.slow
def test_main_thread_runs_while_the_default_policy_plans():
    """The kernels loaded from the package cache release the GIL, as the balancer thread needs:
    a GIL-holding kernel of the same length, in the same conditions, is the control."""
    load = np.random.default_rng(0).pareto(1.2, size=(16, 1, 512)) * 100
    topo = Topology(32, 20)
    plan(DEFAULT, load[:, :, :64], Topology(8, 10))  # loads the kernels
    start = time.perf_counter()
    planned = main_thread_coverage(lambda: plan(DEFAULT, load, topo))
    seconds = time.perf_counter() - start
    _hold_the_gil(10)
    clock = time.perf_counter()
    _hold_the_gil(10**6)
    n = int(10**6 * seconds / max(time.perf_counter() - clock, 1e-6))
    held = main_thread_coverage(lambda: _hold_the_gil(n))
    assert held < 0.3, f"the control did not block the main thread ({held:.2f})"
    assert planned > 0.7, f"main thread ran {planned:.0%} of the plan's time (control {held:.0%})"


def test_a_flag_that_is_not_one_warns_once_and_counts_as_unset(monkeypatch, tmp_path):
    """Installed at import: a bad value must not stop every command (``eplb-rt doctor`` names
    it). Its warning has its own once-flag: numba's internals changing too still says so."""
    monkeypatch.setenv("EPLB_RT_KERNEL_CACHE", "maybe")
    monkeypatch.setattr(kernel_cache, "_installed", {})
    monkeypatch.setattr(kernel_cache, "_warned", False)
    monkeypatch.setattr(kernel_cache, "_warned_flag", False)
    monkeypatch.setattr(kernel_cache, "_numba_internals", lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kernel_cache.install(tmp_path / "a") is False  # as unset: on, then no internals
        assert kernel_cache.install(tmp_path / "b") is False
    said = [str(w.message) for w in caught]
    assert sum("EPLB_RT_KERNEL_CACHE='maybe'" in s and "taken as unset" in s for s in said) == 1
    assert sum("numba's cache internals" in s for s in said) == 1
