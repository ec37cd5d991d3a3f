"""The ``eplb-rt`` command. Each subcommand lives in ``eplb_rt.commands.<name>`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a ``(args) -> int`` handler.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

SIGPIPE_STATUS = 141
"""Exit status when stdout's reader has gone: a shell's for a process killed by SIGPIPE."""

# Subcommand modules, in the order ``eplb-rt --help`` lists them.
COMMANDS = ("demo", "plan", "score", "policies", "simulate", "convert", "doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eplb-rt", description="Expert-parallel load balancing for MoE inference."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"eplb_rt.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # what is still buffered: a reader that left shows here, not at exit
        return code
    except BrokenPipeError:
        # The reader of stdout left (`| head`): stop quietly with the status a process killed by
        # SIGPIPE has, and keep Python's flush at exit from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_STATUS
    except (ValueError, OSError) as err:  # a file or argument the user can fix
        print(f"eplb-rt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError as err:  # sizes given that no machine holds (--dense-layers 10**11)
        print(
            f"eplb-rt {args.command}: error: out of memory ({err}); check the sizes given",
            file=sys.stderr,
        )
        return 2
    except OverflowError as err:  # sizes past what an array can index (--dense-layers 10**20)
        print(
            f"eplb-rt {args.command}: error: a size given is too large ({err}); check the "
            "sizes given",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
