"""``eplb-rt policies``: the registered balancing policies, one line each.

    eplb-rt policies [--options] [--warm-up]

``--options`` adds each policy's options with their defaults and what they take (pass them to
``eplb-rt plan``).
``--warm-up`` compiles every policy's numba kernels and prints the time each took. The kernels are
cached in the package (``eplb_rt/_kernels``, see :mod:`eplb_rt.algorithms.kernel_cache`), so every
later process loads them instead of compiling them at its first plan. ``setup.py`` runs it after
the build; run it again where the package was built on another CPU (numba's cache is per CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from eplb_rt.algorithms import get_policy, policy_names, warm_up
from eplb_rt.algorithms.registry import describe
from eplb_rt.commands._args import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "policies", "list the balancing policies", __doc__)
    parser.add_argument("--options", action="store_true", help="also list each policy's options")
    parser.add_argument(
        "--warm-up",
        action="store_true",
        help="compile (or load from the package's cache) every policy's kernels; print the seconds",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = policy_names()
    width = max(len(n) for n in names)
    for name in names:
        spec = get_policy(name)
        print(f"{name:<{width}}  {spec.summary}")
        if args.options:
            for field in dataclasses.fields(spec.options):
                what = f"  ({describe(field)})" if field.metadata else ""
                print(f"{'':<{width}}    {field.name} = {field.default!r}{what}")
    if args.warm_up:
        print("warm-up (numba compile or cache load):")
        for name in names:
            start = time.perf_counter()
            warm_up([name])
            print(f"  {name:<{width}}  {time.perf_counter() - start:6.2f} s")
    return 0
