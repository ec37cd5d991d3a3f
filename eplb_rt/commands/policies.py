"""``eplb-rt policies``: the registered balancing policies, one line each.

    eplb-rt policies [--options]

``--options`` adds each policy's options with their defaults (pass them to ``eplb-rt plan``).
"""

from __future__ import annotations

import argparse
import dataclasses

from eplb_rt.algorithms import get_policy, policy_names
from eplb_rt.commands._args import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "policies", "list the balancing policies", __doc__)
    parser.add_argument("--options", action="store_true", help="also list each policy's options")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = policy_names()
    width = max(len(n) for n in names)
    for name in names:
        spec = get_policy(name)
        print(f"{name:<{width}}  {spec.summary}")
        if args.options:
            for field in dataclasses.fields(spec.options):
                print(f"{'':<{width}}    {field.name} = {field.default!r}")
    return 0
