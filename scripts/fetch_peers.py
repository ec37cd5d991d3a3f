"""Fetch the serving engines' released wheels and unpack their EPLB modules into a cache.

    python scripts/fetch_peers.py [vllm vllm-ascend sglang | NAME==VERSION ...]

Each wheel is fetched with ``pip download --no-deps`` (a pinned version, x86_64, CPython 3.11)
into ``.cache/peers/`` (ignored by git); only the EPLB modules the tests and
``benchmarks/bench_peers.py`` import are unpacked, into ``.cache/peers/<name>-<version>/``, and
the wheel is deleted. :data:`VERSIONS` lists the releases the integration tests run against:
the newest (what the benchmarks compare with) and, per engine, the oldest release of each
interface the adapters speak. Nothing is installed and no engine code enters the repository. Tests
import those modules with small stubs of the engines' runtime imports and skip, with the reason,
when a wheel cannot be had (no index, no network).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "peers"

# name -> members of the wheel to unpack (folders end with "/")
PEERS = {
    "vllm": ("vllm/distributed/eplb/policy/", "vllm/plugins/__init__.py"),
    "vllm-ascend": ("vllm_ascend/eplb/",),
    "sglang": ("sglang/srt/eplb/", "sglang/srt/plugins/__init__.py"),
}
# name -> releases tested, newest first: the newest and the oldest of each interface. vLLM: a
# policy registry since 0.13; up to 0.18 a policy returns three maps (0.13 without the table in
# force), from 0.19 phy2log alone. vllm-ascend: up to 0.13 its factory takes (type, config), by
# 0.23 the type alone (0.23 is the newest stable release). SGLang: plugins since 0.5.11; up to
# 0.5.18 the expert-location code takes the server arguments, from 0.5.19 a runtime context.
VERSIONS = {
    "vllm": ("0.33.0", "0.18.1", "0.13.0"),
    "vllm-ascend": ("0.26.0rc1", "0.23.0", "0.13.0"),
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
    of :data:`VERSIONS`); raises ``RuntimeError`` saying why when its wheel cannot be
    downloaded or lacks the expected modules."""
    members = PEERS[name]
    version = version or VERSIONS[name][0]
    root = CACHE / f"{name}-{version}"
    done = root / ".complete"  # holds the members unpacked: a changed list unpacks again
    if done.exists() and done.read_text() == repr(members):
        return root
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--pre",
        "-d",
        str(wheels),
        *PIP_TARGET,
        f"{name}=={version}",
    ]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"pip download {name}=={version} took over {timeout_s:.0f} s") from None
    stem = name.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    if run.returncode or not found:
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"cannot download {name}=={version}: {tail[0]}")
    with zipfile.ZipFile(found[0]) as wheel:
        names = [n for n in wheel.namelist() if n.startswith(members) and n.endswith(".py")]
        missing = [m for m in members if not any(n.startswith(m) for n in names)]
        if missing:
            raise RuntimeError(f"{found[0].name} has no {missing}")
        wheel.extractall(root, names)
    found[0].unlink()
    done.write_text(repr(members))
    return root


def main(argv: list[str] | None = None) -> int:
    """Fetch every tested release of the engines named (all by default), or ``NAME==VERSION``."""
    status = 0
    for arg in argv or list(PEERS):
        name, _, pinned = arg.partition("==")
        for version in [pinned] if pinned else VERSIONS.get(name, [""]):
            try:
                print(f"{name} {version}: {fetch(name, version)}")
            except (RuntimeError, KeyError) as err:
                print(f"{name} {version}: {err}", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
