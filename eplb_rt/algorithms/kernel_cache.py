"""Numba's disk cache of eplb_rt's kernels, kept inside the installed package.

numba compiles an ``@njit(cache=True)`` kernel on its first call in a process unless its disk
cache holds a fresh entry; the compile of the default policy costs tens of seconds of CPU. The
build (``setup.py``, through ``eplb-rt policies --warm-up``) therefore fills a cache that ships
with the package, in ``eplb_rt/_kernels/<subpackage>/``, and :func:`install` makes numba look
there first for every kernel whose source file lies in the package.

numba picks one cache locator per kernel when the kernel is decorated, trying the classes of
``CacheImpl._locator_classes`` in order (``NUMBA_CACHE_DIR`` first, then ``__pycache__``, then a
user-wide folder). The locator registered here goes first so that a user's empty or foreign
``NUMBA_CACHE_DIR`` does not hide the shipped entries; it declines (and numba's own locators
take over) for files outside the package, or when the cache folder is not writable (numba
saves every compile through the same locator, so a read-only folder cannot be used). A package
installed by another user (root in a container image, served by an unprivileged user) has a
read-only cache folder: :func:`install` then uses a copy of it in the user's cache
(:func:`writable_root`), so the shipped entries still load. It must be
installed before any kernel module is imported: ``eplb_rt.algorithms`` does it first thing.

An entry is valid for one source stamp, one numba version, one Python and one CPU (numba's
index key holds the target machine). A package is mostly built on one machine and served on
others (a container image built in CI), so the build also compiles every kernel for
:data:`PORTABLE_CPU`, code that any CPU of the architecture runs (:func:`portable_env`), and a
kernel that finds no entry for its own CPU loads that one instead of compiling: tens of seconds
of CPU at the first plan, and the GIL held through most of it. Kernels numba has no entry for at
all compile at first use, for the CPU they run on, and save next to the shipped entries when they
can. ``EPLB_RT_KERNEL_CACHE=0`` turns the shipped cache off (numba's own caching then applies);
``NUMBA_CACHE_LOCATOR_CLASSES``, numba's own override of the locator list, also bypasses it.
The package's entries are saved under an exclusive lock on the kernel's index and loaded under a
shared one (:func:`_locked`), so processes that compile at once keep every entry. numba never
deletes an entry: an edit of the sources leaves the old ones behind (a kernel's index is named
after its line), so the warm-up ends with :func:`prune`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path

from eplb_rt import envs

try:
    import fcntl
except ImportError:  # not on Windows: entries are then saved without a lock, as numba does
    fcntl = None

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CACHE_FOLDER = "_kernels"

PORTABLE_CPU = "generic"
"""LLVM's name for the architecture's baseline CPU (x86-64: SSE2; AArch64: ARMv8-A)."""

_installed: dict[Path, type] = {}  # package root -> its locator class
_warned = False
_warned_flag = False


def portable_env() -> dict[str, str]:
    """The environment under which numba compiles for :data:`PORTABLE_CPU` (no extra ISA
    features), so that the entries it saves run on any CPU of the architecture."""
    return {"NUMBA_CPU_NAME": PORTABLE_CPU, "NUMBA_CPU_FEATURES": ""}


@functools.lru_cache(maxsize=64)
def _hash_files(files: tuple[tuple[str, int, int], ...]) -> str:
    """sha256 over the contents of ``files`` (path, mtime_ns, size); the stat fields only key
    the memo, so a file rewritten while the process runs is hashed again."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        with open(path, "rb") as f:
            data = f.read()
        digest.update(f"{os.path.basename(path)}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def source_stamp(py_file: str | os.PathLike) -> str:
    """The freshness stamp of the kernels in ``py_file``: a content hash of every ``.py`` file of
    its folder.

    Contents, not mtimes: pip does not keep mtimes, and a build and a later edit can share one.
    The folder, not the file: a kernel's compiled code inlines the kernels it calls and the
    constants it reads from sibling modules, and numba tracks neither, so an edit of any sibling
    must invalidate it.
    """
    folder = Path(py_file).resolve().parent
    files = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.endswith(".py") and entry.is_file():
            st = entry.stat()
            files.append((entry.path, st.st_mtime_ns, st.st_size))
    return _hash_files(tuple(files))


def _writable(folder: Path) -> bool:
    """Whether this process can create files in ``folder`` and in each folder below it."""
    try:
        for path in (folder, *(p for p in folder.rglob("*") if p.is_dir())):
            tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def user_cache_root() -> Path:
    """Where copies of read-only shipped caches go: ``$XDG_CACHE_HOME/eplb_rt`` (default
    ``~/.cache/eplb_rt``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "eplb_rt"


def writable_root(shipped: Path) -> Path:
    """``shipped``, or where it cannot be written, a copy of it in :func:`user_cache_root`
    named by its contents, made once (renamed into place whole, so processes that start
    together do not see a partial copy): a read-only install still loads the shipped entries
    and saves what it compiles. ``shipped`` again where no copy can be made (numba's own
    locators then take over, as before)."""
    if not shipped.is_dir() or _writable(shipped):
        return shipped
    try:
        files = sorted(p for p in shipped.rglob("*") if p.is_file())
        stats = [(p.relative_to(shipped), p.stat()) for p in files]
        listing = "\n".join(f"{name}\0{st.st_size}\0{st.st_mtime_ns}" for name, st in stats)
        copy = user_cache_root() / f"kernels-{hashlib.sha256(listing.encode()).hexdigest()[:16]}"
        if not copy.is_dir():
            copy.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=copy.parent, prefix=f"{copy.name}."))
            try:
                shutil.copytree(shipped, staging, dirs_exist_ok=True)
                os.rename(staging, copy)
            except OSError:  # another process renamed its copy first, or the copy failed
                shutil.rmtree(staging, ignore_errors=True)
        return copy if _writable(copy) else shipped
    except (OSError, RuntimeError):  # RuntimeError: no home folder to put the copy in
        return shipped


def _numba_internals():
    """``(CacheImpl, _CacheLocator, Cache)`` from ``numba.core.caching``, or ``None`` where the
    first two moved; ``Cache`` is ``None`` where its loading and saving are not as
    :func:`_load_portable` and :func:`_locked` expect (the shipped entries for this CPU still
    load)."""
    try:
        from numba.core import caching
    except ImportError:
        return None
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    base = getattr(caching, "_CacheLocator", None)
    if (
        impl is None
        or base is None
        or not isinstance(getattr(impl, "_locator_classes", None), list)
    ):
        return None
    cache = getattr(caching, "Cache", None)
    if not all(hasattr(cache, name) for name in ("_load_overload", "_save_overload", "_index_key")):
        cache = None
    return impl, base, cache


def _ours(cache) -> bool:
    """Whether numba's ``cache`` of one kernel is located by a package :func:`install` set up."""
    return isinstance(cache._impl.locator, tuple(_installed.values()))


def _load_portable(load):
    """``Cache._load_overload`` that, for a kernel of an installed package with no entry for
    this CPU, loads the entry compiled for :data:`PORTABLE_CPU` (same signature, same code)."""

    @functools.wraps(load)
    def load_overload(self, sig, target_context):
        data = load(self, sig, target_context)
        if data is not None or not _ours(self):
            return data
        sig_key, machine, code = self._index_key(sig, target_context.codegen())
        if machine[1:] == (PORTABLE_CPU, ""):
            return None  # this process compiles for the portable CPU itself
        data = self._cache_file.load((sig_key, (machine[0], PORTABLE_CPU, ""), code))
        return None if data is None else self._impl.rebuild(target_context, data)

    load_overload.portable = True
    return load_overload


def _locked(method, exclusive: bool):
    """``Cache._load_overload`` or ``_save_overload`` under a lock on the kernel's index, for a
    kernel of an installed package: shared to load, exclusive to save.

    numba saves an entry by reading the kernel's index, naming a data file after the entries it
    found, and writing both back, with no lock. Processes that compile one kernel for different
    signatures or CPUs at once (ranks starting together after an upgrade; nodes of different CPUs
    on one shared install) then drop each other's entries, or write two entries' data under one
    name, so that a later process loads one kernel's code for the other's key. Under the lock the
    saves follow one another, and a load never sees an index entry before its data.
    """

    @functools.wraps(method)
    def run(self, *args):
        index = getattr(getattr(self, "_cache_file", None), "_index_path", None)
        if index is None or not _ours(self):
            return method(self, *args)
        with _index_lock(index, exclusive):
            return method(self, *args)

    return run


@contextlib.contextmanager
def _index_lock(index: str | os.PathLike, exclusive: bool = True):
    """The lock on ``index``'s entries, held for the ``with`` block: ``flock`` on the file
    ``<index>.lock``, exclusive or shared. :func:`prune` deletes a lock file while it holds it,
    so a process that waited on it holds a file no other process will open: after ``flock`` the
    file is checked to be the one at the path, and opened again where it is not. No lock where
    ``fcntl`` or the file cannot be had (numba's own behaviour)."""
    path = f"{index}.lock"
    fd = None
    while fcntl is not None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:  # a file system without flock
            os.close(fd)
            fd = None
            break
        held = os.fstat(fd)
        try:
            there = os.stat(path)
        except FileNotFoundError:  # deleted while this process waited
            there = None
        if there is not None and (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino):
            break
        os.close(fd)
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # and with it the lock


def _locator_class(base: type, package_root: Path, cache_root: Path) -> type:
    """A numba cache locator for the source files under ``package_root``, storing in
    ``cache_root/<folder of the file relative to package_root>``."""

    class PackageCacheLocator(base):
        """Locates the cache of a kernel of ``package_root`` in ``cache_root``."""

        def __init__(self, py_func, py_file: str, subfolder: Path) -> None:
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = str(cache_root / subfolder)

        def get_cache_path(self) -> str:
            return self._cache_path

        def get_source_stamp(self) -> str:
            return source_stamp(self._py_file)

        def get_disambiguator(self) -> str:
            return str(self._lineno)

        @classmethod
        def from_function(cls, py_func, py_file: str):
            try:
                relative = Path(py_file).resolve().relative_to(package_root)
            except (OSError, ValueError):
                return None  # not ours: numba's next locator decides
            self = cls(py_func, py_file, relative.parent)
            try:
                self.ensure_cache_path()  # creates the folder and checks it is writable
            except OSError:
                return None
            return self

    PackageCacheLocator.__qualname__ = f"PackageCacheLocator[{package_root.name}]"
    return PackageCacheLocator


def installed(package_root: Path = PACKAGE_ROOT) -> bool:
    """Whether :func:`install` put the kernel cache of ``package_root`` in place."""
    return Path(package_root).resolve() in _installed


def install(package_root: Path = PACKAGE_ROOT, cache_root: Path | None = None) -> bool:
    """Make numba cache the kernels of ``package_root`` in ``cache_root`` (default
    ``package_root/_kernels``) ahead of its own locators. Call it before the kernel modules are
    imported; calling it again for the same root does nothing.

    Returns whether the locator is in place. Off when ``EPLB_RT_KERNEL_CACHE=0`` (a value that
    is not a flag warns once and counts as unset); when numba's internals are not as expected
    it warns once and leaves numba's default caching.
    """
    package_root = Path(package_root).resolve()
    if package_root in _installed:
        return True
    global _warned, _warned_flag  # noqa: PLW0603  (each warning once per process)
    try:
        wanted = envs.get("EPLB_RT_KERNEL_CACHE")
    except ValueError as err:
        # Installed on import: raising would stop every command, `eplb-rt doctor` too, whose
        # settings check names the variable.
        wanted = envs.VARIABLES["EPLB_RT_KERNEL_CACHE"].default
        if not _warned_flag:
            _warned_flag = True
            warnings.warn(f"eplb_rt: {err}; taken as unset", RuntimeWarning, stacklevel=2)
    if not wanted:
        return False
    internals = _numba_internals()
    if internals is None:
        if not _warned:
            _warned = True
            warnings.warn(
                "eplb_rt: numba's cache internals (numba.core.caching.CacheImpl._locator_classes)"
                " are not as expected; the shipped kernel cache is not used and kernels compile "
                "on first use (numba's default caching)",
                RuntimeWarning,
                stacklevel=2,
            )
        return False
    impl, base, cache = internals
    cache_root = package_root / CACHE_FOLDER if cache_root is None else Path(cache_root)
    locator = _locator_class(base, package_root, writable_root(cache_root.resolve()))
    impl._locator_classes.insert(0, locator)
    _installed[package_root] = locator
    if cache is not None and not getattr(cache._load_overload, "portable", False):
        cache._load_overload = _locked(_load_portable(cache._load_overload), exclusive=False)
        cache._save_overload = _locked(cache._save_overload, exclusive=True)
    return True


def prune(package_root: Path = PACKAGE_ROOT, cache_root: Path | None = None) -> tuple[int, int]:
    """Delete the files of the kernel cache of ``package_root`` (in ``cache_root``, default
    ``package_root/_kernels``) that no process can load again: each index saved for sources
    since edited (its stamp is not :func:`source_stamp` of its folder now, or its module is
    gone) with its data files and lock, data files no index names, and locks of indexes gone.
    An index of another numba version with the sources' stamp is kept, data and all (that
    version's to judge). Every file goes under its index's exclusive lock, as :func:`_locked`
    saves. Returns ``(files removed, bytes freed)``; nothing where the folder cannot be
    written."""
    package_root = Path(package_root).resolve()
    cache_root = package_root / CACHE_FOLDER if cache_root is None else Path(cache_root)
    if not cache_root.is_dir() or not _writable(cache_root):
        return 0, 0
    removed = freed = 0
    for folder in (cache_root, *sorted(p for p in cache_root.rglob("*") if p.is_dir())):
        sources = package_root / folder.relative_to(cache_root)
        n, size = _prune_folder(folder, sources)
        removed, freed = removed + n, freed + size
    return removed, freed


def _prune_folder(folder: Path, sources: Path) -> tuple[int, int]:
    """:func:`prune` of one cache ``folder``, whose kernels' modules are in ``sources``."""
    modules = sorted(sources.glob("*.py")) if sources.is_dir() else []
    stamp = source_stamp(modules[0]) if modules else None
    # Every index some file of the folder belongs to, with its data files (``<base>.<n>.nbc``).
    # A file saved after this listing is left alone: only what is listed can be deleted.
    data: dict[Path, list[Path]] = {}
    for path in folder.iterdir():
        base, _, number = path.name.removesuffix(".nbc").rpartition(".")
        if path.name.endswith(".nbc") and number.isdigit():
            data.setdefault(folder / f"{base}.nbi", []).append(path)
        elif path.name.endswith((".nbi", ".nbi.lock")):
            data.setdefault(folder / path.name.removesuffix(".lock"), [])
    removed = freed = 0
    for index, files in sorted(data.items()):
        module = sources / f"{index.name.split('.', 1)[0]}.py"
        with _index_lock(index):  # no save under way: the index is as it stays
            fresh, names = _read_index(index, stamp) if module.is_file() else (False, [])
            stale = [p for p in files if not (fresh and (names is None or p.name in names))]
            if not fresh:  # its lock too: a process waiting on it opens the path again
                stale += [index, Path(f"{index}.lock")]
            for path in stale:
                n, size = _unlink(path)
                removed, freed = removed + n, freed + size
    return removed, freed


def _read_index(index: Path, stamp: str | None) -> tuple[bool, list[str] | None]:
    """``(fresh, names)``: whether numba's index file ``index`` was saved for the sources'
    ``stamp``, and the data files it names (``None`` for another numba version's index, kept
    whole: its entries are that version's to judge)."""
    import numba

    try:
        with open(index, "rb") as f:
            version = pickle.load(f)
            saved_stamp, overloads = pickle.loads(f.read())
    except FileNotFoundError:
        return False, []
    except Exception:  # another numba's pickle that this one cannot read
        return True, None
    if saved_stamp != stamp:
        return False, []
    return True, (list(overloads.values()) if version == numba.__version__ else None)


def _unlink(path: Path) -> tuple[int, int]:
    """Delete ``path``: ``(1, its size in bytes)``, ``(0, 0)`` where it was gone."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0, 0
    return 1, size
