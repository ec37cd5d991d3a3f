"""Arguments shared by several subcommands, so that they read and document files the same way."""

from __future__ import annotations

import argparse

LOAD_HELP = "load file(s): .npy [L, E] or [T, L, E], .npz (key counts or load), SGLang .json"


def add_command(subparsers: argparse._SubParsersAction, name: str, summary: str, doc: str):
    """A subcommand parser whose ``--help`` shows the module docstring ``doc`` as written."""
    return subparsers.add_parser(
        name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_load_argument(parser: argparse.ArgumentParser) -> None:
    """``--load FILE [FILE ...]`` (required): files stacked as episodes along ``T``."""
    parser.add_argument("--load", nargs="+", required=True, metavar="FILE", help=LOAD_HELP)
