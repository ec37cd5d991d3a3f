"""``eplb-rt doctor``: what this environment gives eplb_rt, checked, with the fix for each fault.

    eplb-rt doctor [--no-kernels] [--json FILE]

Run it where eplb_rt serves (a serving engine's environment, on the machine with the devices)
before the first start. One line per check, ``ok``, ``warn`` or ``FAIL``, each fault with
what to do:

* ``extension``: ``eplb_rt._C`` loads and was built against the torch release that runs (its
  C++ ABI changes between releases); torch_npu, which eplb_rt imports first where it is
  installed, has CANN set up (without it that import breaks ``import torch``);
* ``devices``: a visible GPU or NPU has its kernels in the build;
* ``kernels``: the default policy's numba kernels load from the package's cache, in a child
  process (a kernel without an entry compiles now, tens of seconds, and is saved for the next
  processes where the cache is writable); ``--no-kernels`` skips it;
* ``vllm``, ``vllm-ascend``, ``sglang``: each installed engine's release against those tested,
  and eplb_rt's plugin entry point in its group (absent: eplb_rt is installed in another
  environment than the engine's);
* ``settings``: the ``EPLB_RT_*`` variables the engines' plugins read make a valid config.

Exit status 0 when nothing failed (warnings included), 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time

from eplb_rt import envs, formats
from eplb_rt.commands._args import add_command, check_output
from eplb_rt.integrations import ENGINES

OK, WARN, FAIL = "ok", "warn", "FAIL"

KERNEL_CHECK = """
import json, sys, time
start = time.perf_counter()
from numba.core.registry import CPUDispatcher
from eplb_rt.algorithms import warm_up
from eplb_rt.config import EplbConfig
warm_up([EplbConfig().policy])
kernels = {id(v): v for n, m in list(sys.modules.items()) if n.startswith("eplb_rt.")
           for v in vars(m).values() if isinstance(v, CPUDispatcher)}.values()
compiled = sum(sum(k.stats.cache_misses.values()) for k in kernels)
print(json.dumps({"compiled": compiled, "seconds": time.perf_counter() - start}))
"""


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is ``ok``, ``warn`` or ``FAIL``; ``fix`` what to do
    (empty when nothing is to be done)."""

    name: str
    status: str
    detail: str
    fix: str = ""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "doctor", "check this environment for eplb_rt and the engines", __doc__
    )
    parser.add_argument(
        "--no-kernels",
        action="store_true",
        help="skip the kernel-cache check (a child process that may compile for a minute)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the checks as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output(args.json, "--json")
    checks = [*_extension_and_devices()]
    if not args.no_kernels:
        print("checking the kernel cache (a kernel without an entry compiles now)", file=sys.stderr)
        checks.append(_kernels())
    checks += [_engine(name) for name in ENGINES]
    checks.append(_settings())
    import eplb_rt

    print(f"eplb_rt {eplb_rt.__version__} ({os.path.dirname(eplb_rt.__file__)})")
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"  {c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix:
            print(f"  {'':<4}  {'':<{width}}  -> {c.fix}")
    if args.json:
        formats.write_json(args.json, [dataclasses.asdict(c) for c in checks], indent=1)
    return int(any(c.status == FAIL for c in checks))


def _release(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: builds of one release share its C++ ABI."""
    return version.split("+", maxsplit=1)[0]


def _extension_and_devices() -> list[Check]:
    # eplb_rt imports torch_npu before its extension (an NPU build links it): first the case
    # where that import cannot work.
    if _importable("torch_npu") and not _cann():
        return [
            Check(
                "extension",
                FAIL,
                "torch_npu is installed but CANN is not set up (ASCEND_HOME_PATH unset): "
                "importing torch_npu, as eplb_rt does before its extension, breaks import torch",
                "source CANN's set_env.sh, or uninstall torch-npu on a machine without NPUs",
            )
        ]
    try:
        import torch

        import eplb_rt

        info = eplb_rt.build_info()
    except Exception as err:  # the extension does not load: nothing else can be checked
        fix = "rebuild in this environment: pip install --no-build-isolation -e . (keeps its torch)"
        return [Check("extension", FAIL, f"eplb_rt._C does not load: {err}", fix)]
    built, running = info["torch_version"], torch.__version__
    backends = [name.upper() for name, on in info["backends"].items() if on]
    detail = f"{', '.join(backends)} kernels; built against torch {built}, running {running}"
    out = [Check("extension", OK, detail)]
    if _release(built) != _release(running):
        fix = "rebuild eplb_rt against this torch: pip install --no-build-isolation -e ."
        out[0] = Check("extension", FAIL, detail, fix)
    out.append(_devices(info, torch))
    return out


def _devices(info: dict, torch) -> Check:
    seen = []
    if torch.cuda.is_available():
        seen.append(f"{torch.cuda.device_count()} CUDA device(s)")
        if not info["backends"]["cuda"]:
            return Check(
                "devices",
                FAIL,
                f"{seen[0]} visible, but eplb_rt was built without CUDA kernels",
                "rebuild with nvcc on PATH: EPLB_RT_CUDA=ON pip install --no-build-isolation -e .",
            )
    if _importable("torch_npu"):  # with CANN: checked before the extension loaded
        if not info["backends"]["npu"]:
            return Check(
                "devices",
                FAIL,
                "torch_npu and CANN are installed, but eplb_rt was built without NPU kernels",
                "rebuild with CANN set up: EPLB_RT_NPU=ON pip install --no-build-isolation -e .",
            )
        seen.append("torch_npu with CANN")
    if not seen:
        return Check("devices", OK, "no GPU or NPU visible: the CPU kernels serve")
    return Check("devices", OK, f"{' and '.join(seen)}; their kernels are built")


def _cann() -> bool:
    """Whether CANN's environment is set up (its set_env.sh sourced)."""
    return bool(os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME"))


def _importable(module: str) -> bool:
    """Whether ``module`` is installed, found without importing it (torch_npu without CANN
    breaks ``import torch``)."""
    return importlib.util.find_spec(module) is not None


def _kernels() -> Check:
    try:
        shipped = envs.get("EPLB_RT_KERNEL_CACHE")
    except ValueError:  # the settings check names it; the package then takes it as unset
        shipped = True
    if not shipped:
        return Check(
            "kernels",
            WARN,
            "EPLB_RT_KERNEL_CACHE=0: the kernels compiled into the package are not used; each "
            "process without numba's own cache of them compiles them at its first plan",
            "unset EPLB_RT_KERNEL_CACHE",
        )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", KERNEL_CHECK], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-2:])
        return Check("kernels", FAIL, f"the default policy's warm-up failed: {tail}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["compiled"]:
        return Check(
            "kernels",
            WARN,
            f"{result['compiled']} kernel(s) had no cache entry for this CPU and numba and "
            f"compiled ({seconds:.1f} s); saved for later processes where the cache is writable",
            "run eplb-rt doctor again: 0 compiled means they are saved (else eplb-rt policies "
            "--warm-up in each new environment)",
        )
    detail = f"the default policy's kernels load from the cache ({seconds:.1f} s)"
    return Check("kernels", OK, detail)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _registered(group: str) -> bool:
    return any(ep.name == "eplb_rt" for ep in importlib.metadata.entry_points(group=group))


def _engine(dist: str) -> Check:
    engine = ENGINES[dist]
    version = _version(dist)
    if version is None:
        return Check(dist, OK, "not installed")
    # Not a dependency of eplb_rt; every engine depends on it.
    from packaging.version import InvalidVersion, Version

    oldest, newest = engine.tested
    tested = f"tested {oldest} to {newest}"
    if not _registered(engine.entry_points):
        return Check(
            dist,
            FAIL,
            f"{version}; eplb_rt's {engine.entry_points} entry point is not installed here",
            "install eplb_rt in the engine's environment (pip install --no-build-isolation .)",
        )
    try:
        # The public version: a local build tag (vLLM's 0.34.0+cu130) is the same release.
        release = Version(Version(version).public)
        inside = Version(oldest) <= release <= Version(newest)
        newer = release > Version(newest)
        # A pre-release or build of the oldest tested release has what that release has.
        older = Version(release.base_version) < Version(oldest)
    except InvalidVersion:
        inside, newer, older = False, False, False
    detail = f"{version} ({tested}); plugin registered"
    if inside:
        return Check(dist, OK, detail)
    rescued = engine.unless is not None and importlib.util.find_spec(engine.unless) is not None
    if older and engine.older_lack and envs.given("EPLB_RT_POLICY") and not rescued:
        return Check(
            dist,
            FAIL,
            f"{detail}; releases before {oldest} have {engine.older_lack}: EPLB_RT_POLICY "
            "selects no eplb_rt policy there",
            f"upgrade {dist} to {oldest} or newer, or unset EPLB_RT_POLICY",
        )
    why = "newer than tested: its EPLB interface may have changed" if newer else "not tested"
    return Check(dist, WARN, f"{detail}; {why}")


def _settings() -> Check:
    from eplb_rt.config import EplbConfig

    try:
        for name in envs.VARIABLES:
            envs.get(name)
        config = EplbConfig.from_dict({}, env=True)
        if config.export_dir:  # the runtime and the plugins make it at their start
            formats.check_folder(config.export_dir, "EPLB_RT_EXPORT_DIR")
    except (ValueError, TypeError) as err:
        return Check("settings", FAIL, str(err), "fix or unset the variable named")
    if not envs.given("EPLB_RT_POLICY"):
        return Check("settings", OK, "EPLB_RT_POLICY unset: the engines keep their own EPLB policy")
    options = f" with {config.policy_options}" if config.policy_options else ""
    return Check("settings", OK, f"the engines' EPLB runs eplb_rt's {config.policy!r}{options}")
