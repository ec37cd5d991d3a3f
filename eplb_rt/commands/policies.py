"""``eplb-rt policies``: the registered balancing policies, one line each.

    eplb-rt policies [--options] [--warm-up [--portable]]

``--options`` adds each policy's options with their defaults and what they take (pass them to
``eplb-rt plan``), and for those the planning pipeline sets (the runtime, ``plan --previous``,
``simulate``) where none is given, what it sets them to.
``--warm-up`` compiles every policy's numba kernels for this CPU and prints the time each took.
The kernels are cached in the package (``eplb_rt/_kernels``, see
:mod:`eplb_rt.algorithms.kernel_cache`), so every later process loads them instead of compiling
them at its first plan. ``--portable`` also compiles them, in a child process, for any CPU of
this architecture: a process on a CPU with no entries of its own loads those. ``setup.py`` runs
``--warm-up --portable`` after the build; ``--warm-up`` where the package was built on another
CPU gives that machine code tuned for its own. A warm-up ends by deleting the cache's entries
of sources since edited (numba keeps them: an editable install that is updated and set up again
would gather one set per update).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time

from eplb_rt.algorithms import get_policy, kernel_cache, policy_names, warm_up
from eplb_rt.algorithms.registry import describe
from eplb_rt.commands._args import add_command
from eplb_rt.planning import PIPELINE_OPTIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "policies", "list the balancing policies", __doc__)
    parser.add_argument("--options", action="store_true", help="also list each policy's options")
    parser.add_argument(
        "--warm-up",
        action="store_true",
        help="compile (or load from the package's cache) every policy's kernels; print the seconds",
    )
    parser.add_argument(
        "--portable",
        action="store_true",
        help="with --warm-up: also compile them for any CPU of this architecture (a child process)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.portable and not args.warm_up:
        raise ValueError("--portable needs --warm-up")
    names = policy_names()
    width = max(len(n) for n in names)
    for name in names:
        spec = get_policy(name)
        print(f"{name:<{width}}  {spec.summary}")
        if args.options:
            for field in dataclasses.fields(spec.options):
                what = f"  ({describe(field)})" if field.metadata else ""
                print(f"{'':<{width}}    {field.name} = {field.default!r}{what}")
                if field.name in PIPELINE_OPTIONS:
                    print(f"{'':<{width}}      planning pipeline: {PIPELINE_OPTIONS[field.name]}")
    if args.warm_up:
        warm_up_all()
    if args.portable:
        # numba reads its target CPU once, at import: another CPU takes another process.
        sys.stdout.flush()
        env = dict(os.environ, **kernel_cache.portable_env())
        done = subprocess.run([sys.executable, "-m", __name__], env=env, check=False)
        if done.returncode:
            print(
                f"eplb-rt policies: the portable warm-up failed (exit {done.returncode})",
                file=sys.stderr,
            )
            return 1
    if args.warm_up and kernel_cache.installed():
        removed, freed = kernel_cache.prune()
        if removed:
            mib = freed / 2**20
            print(f"removed {removed} cache files of sources since edited ({mib:.1f} MiB)")
    return 0


def warm_up_all() -> None:
    """Compile (or load) every policy's kernels for the CPU numba targets; print the times."""
    from llvmlite import binding
    from numba.core import config

    names = policy_names()
    width = max(len(n) for n in names)
    cpu = config.CPU_NAME or binding.get_host_cpu_name()
    print(f"warm-up for CPU {cpu!r} (numba compile or cache load):")
    for name in names:
        start = time.perf_counter()
        warm_up([name])
        print(f"  {name:<{width}}  {time.perf_counter() - start:6.2f} s", flush=True)


if __name__ == "__main__":
    warm_up_all()
