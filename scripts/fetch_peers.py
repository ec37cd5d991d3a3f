"""Fetch the serving engines' releases and unpack their EPLB modules into a cache.

    python scripts/fetch_peers.py [vllm vllm-ascend sglang | NAME==VERSION ...]
    python scripts/fetch_peers.py --newer [vllm vllm-ascend sglang]   # releases not tested yet

Each wheel is fetched with ``pip download --no-deps`` (a pinned version, x86_64, CPython 3.11)
into ``.cache/peers/`` (ignored by git); a release published as a source archive alone (as
vllm-ascend's release candidates since 0.27) is fetched from the index's JSON page instead and
checked against its sha256, since ``pip download`` would build it. Only the EPLB modules the tests
and ``benchmarks/bench_peers.py`` import are unpacked, into ``.cache/peers/<name>-<version>/``,
and the archive is deleted. :data:`VERSIONS` lists the releases the integration tests run against:
the newest (what the benchmarks compare with) and, per engine, the oldest release of each
interface the adapters speak. Nothing is installed and no engine code enters the repository. Tests
import those modules with small stubs of the engines' runtime imports and skip, with the reason,
when a release cannot be had (no index, no network).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from packaging.version import InvalidVersion, Version

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "peers"
DEFAULT_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"

# name -> members of the wheel to unpack (folders end with "/")
PEERS = {
    "vllm": ("vllm/distributed/eplb/policy/", "vllm/plugins/__init__.py"),
    "vllm-ascend": ("vllm_ascend/eplb/",),
    "sglang": ("sglang/srt/eplb/", "sglang/srt/plugins/__init__.py"),
}
# name -> members only some releases have, unpacked where present: vllm-ascend's factory of the
# policy that vLLM's EPLB runs under model runner v2 (from 0.30); vLLM's EPLB state, whose start
# layout the tests read (not imported: its runtime imports are the whole engine)
OPTIONAL = {
    "vllm-ascend": ("vllm_ascend/distributed/eplb/policy/",),
    "vllm": ("vllm/distributed/eplb/eplb_state.py",),
}
# name -> releases tested, newest first: the newest and the oldest of each interface. vLLM: a
# policy registry since 0.13; up to 0.18 a policy returns three maps (0.13 without the table in
# force), from 0.19 phy2log alone. vllm-ascend: up to 0.13 its factory takes (type, config), by
# 0.23 the type alone (0.23.0.post1 is the newest stable release). SGLang: plugins since
# 0.5.11; up to 0.5.18 the expert-location code takes the server arguments, from 0.5.19 a
# runtime context.
VERSIONS = {
    "vllm": ("0.34.0", "0.18.1", "0.13.0"),
    "vllm-ascend": ("0.30.0rc2", "0.23.0.post1", "0.13.0"),
    "sglang": ("0.5.23", "0.5.11"),
}
PIP_TARGET = [
    "--only-binary",
    ":all:",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    "--abi",
    "abi3",
    "--abi",
    "none",
    "--platform",
    "manylinux_2_34_x86_64",
    "--platform",
    "manylinux_2_31_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_24_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
]


def fetch(name: str, version: str | None = None, timeout_s: float = 900) -> Path:
    """The folder to put on ``sys.path`` for peer ``name`` at ``version`` (default: the newest
    of :data:`VERSIONS`); raises ``RuntimeError`` saying why when neither its wheel nor its
    source archive can be had, or when they lack the expected modules."""
    members, optional = PEERS[name], OPTIONAL.get(name, ())
    version = version or VERSIONS[name][0]
    root = CACHE / f"{name}-{version}"
    done = root / ".complete"  # holds the members unpacked: a changed list unpacks again
    if done.exists() and done.read_text() == repr((members, optional)):
        return root
    archives = CACHE / "downloads"
    archives.mkdir(parents=True, exist_ok=True)
    try:
        wheel = _download_wheel(name, version, archives, timeout_s)
    except RuntimeError as no_wheel:
        try:
            source = _download_source(name, version, archives, timeout_s)
        except RuntimeError as no_source:
            raise RuntimeError(f"{no_wheel}; {no_source}") from None
        _unpack_source(source, members, optional, root)
    else:
        _unpack_wheel(wheel, members, optional, root)
    done.write_text(repr((members, optional)))
    return root


def _download_wheel(name: str, version: str, folder: Path, timeout_s: float) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--pre",
        "-d",
        str(folder),
        *PIP_TARGET,
        f"{name}=={version}",
    ]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"pip download {name}=={version} took over {timeout_s:.0f} s") from None
    found = sorted(folder.glob(f"{_stem(name)}-{version}-*.whl"))
    if run.returncode or not found:
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"cannot download {name}=={version}: {tail[0]}")
    return found[0]


def _download_source(name: str, version: str, folder: Path, timeout_s: float) -> Path:
    """``<stem>-<version>.tar.gz`` from the index's JSON page, its sha256 checked."""
    filename = f"{_stem(name)}-{version}.tar.gz"
    try:
        url, page = _index_page(name, timeout_s)
        entry = next((f for f in page["files"] if f["filename"] == filename), None)
        if entry is None:
            raise RuntimeError(f"{url} lists no {filename}")
        target = folder / filename
        with urllib.request.urlopen(entry["url"], timeout=timeout_s) as reply:
            target.write_bytes(reply.read())
    except RuntimeError as err:
        raise RuntimeError(f"no source archive either: {err}") from None
    except (OSError, ValueError, KeyError) as err:  # URLError is an OSError
        raise RuntimeError(f"no source archive either: {type(err).__name__}: {err}") from None
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != entry["hashes"]["sha256"]:
        target.unlink()
        raise RuntimeError(
            f"{filename}: sha256 {digest}, the index says {entry['hashes']['sha256']}"
        )
    return target


def _index_page(name: str, timeout_s: float) -> tuple[str, dict]:
    """``(url, page)``: the JSON page (PEP 691: files and versions) of project ``name`` on the
    index pip uses (:func:`_index_url`; none with ``PIP_NO_INDEX``); raises ``RuntimeError``
    saying why when the page cannot be read."""
    if os.environ.get("PIP_NO_INDEX", "").lower() in {"1", "true", "yes", "on"}:
        raise RuntimeError("PIP_NO_INDEX is set")
    url = f"{_index_url()}/{name}/"
    request = urllib.request.Request(url, headers={"Accept": SIMPLE_JSON})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return url, json.load(reply)
    except (OSError, ValueError) as err:  # URLError is an OSError
        raise RuntimeError(f"{url}: {type(err).__name__}: {err}") from None


def _index_url() -> str:
    """The index pip downloads from: ``PIP_INDEX_URL``, else pip's configured
    ``global.index-url``, else PyPI."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        # `pip config list` prints the merged configuration as key='value' lines; `pip config
        # get` misses a PIP_CONFIG_FILE's keys in some pip versions (23.2).
        cmd = [sys.executable, "-m", "pip", "config", "list"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        lines = run.stdout.splitlines() if run.returncode == 0 else []
        found = [
            line.split("=", 1)[1].strip().strip("'\"")
            for line in lines
            if line.startswith("global.index-url=")
        ]
        url = found[-1] if found else DEFAULT_INDEX
    return url.rstrip("/")


def newer_releases(name: str, timeout_s: float = 60) -> list[str]:
    """The releases of peer ``name`` on the index newer than the newest in :data:`VERSIONS`
    (pre-releases included), and those that replace a tested one (``0.23.0.post1`` for
    ``0.23.0``, ``0.30.0`` for ``0.30.0rc2``), oldest first: what the tests do not cover yet."""
    _, page = _index_page(name, timeout_s)
    tested = [Version(v) for v in VERSIONS[name]]
    found = []
    for text in page.get("versions", []):
        try:
            version = Version(text)
        except InvalidVersion:  # a legacy version string: never a current release
            continue
        replaces = any(version.release == v.release and version > v for v in tested)
        if version > tested[0] or replaces:
            found.append(version)
    return [str(v) for v in sorted(found)]


def _unpack_wheel(wheel: Path, members: tuple[str, ...], optional: tuple[str, ...], root: Path):
    wanted = members + optional
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n.startswith(wanted) and n.endswith(".py")]
            _check_members(wheel, names, members)
            archive.extractall(root, names)
    finally:
        wheel.unlink()


def _unpack_source(source: Path, members: tuple[str, ...], optional: tuple[str, ...], root: Path):
    top = source.name.removesuffix(".tar.gz") + "/"  # an sdist holds one folder, <stem>-<version>
    wanted = members + optional
    try:
        with tarfile.open(source) as archive:
            picked = []
            for info in archive.getmembers():
                inner = info.name.removeprefix(top)
                if ".." in Path(inner).parts:  # never outside root, on any Python
                    continue
                if info.isfile() and inner.startswith(wanted) and inner.endswith(".py"):
                    info.name = inner
                    picked.append(info)
            _check_members(source, [info.name for info in picked], members)
            # The "data" filter (Python >= 3.10.12 / 3.11.4) also refuses links and odd modes.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(root, picked, **safe)
    finally:
        source.unlink()


def _check_members(archive: Path, names: list[str], members: tuple[str, ...]) -> None:
    missing = [m for m in members if not any(n.startswith(m) for n in names)]
    if missing:
        raise RuntimeError(f"{archive.name} has no {missing}")


def _stem(name: str) -> str:
    return name.replace("-", "_")


def main(argv: list[str] | None = None) -> int:
    """Fetch every tested release of the engines named (all by default), or ``NAME==VERSION``;
    with ``--newer``, list the releases on the index that are newer than those tested."""
    args = list(argv or [])
    if {"-h", "--help"} & set(args):
        print("\n\n".join(__doc__.split("\n\n")[:2]))  # what it does, how it is called
        return 0
    newer = "--newer" in args
    args = [a for a in args if a != "--newer"] or list(PEERS)
    status = 0
    for arg in args:
        name, _, pinned = arg.partition("==")
        if newer:
            try:
                found = newer_releases(name)
            except (RuntimeError, KeyError) as err:
                print(f"{name}: {err}", file=sys.stderr)
                status = 1
                continue
            print(f"{name}: tested up to {VERSIONS[name][0]}; newer: {', '.join(found) or 'none'}")
            continue
        for version in [pinned] if pinned else VERSIONS.get(name, [""]):
            try:
                print(f"{name} {version}: {fetch(name, version)}")
            except (RuntimeError, KeyError) as err:
                print(f"{name} {version}: {err}", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
