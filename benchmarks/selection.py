"""What the benchmark scripts are asked to run, checked before they print anything: a
misspelled section, policy or option would otherwise run nothing, or the defaults, and exit 0 as
if the table were what was asked for."""

from __future__ import annotations

from eplb_rt.algorithms import get_policy
from eplb_rt.commands.simulate import parse_policy_options


def sections(given: str, known: tuple[str, ...]) -> list[str]:
    """``--sections a,b,...`` as a list, each one of ``known``."""
    names = [name for name in given.split(",") if name]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise SystemExit(f"--sections {given!r}: unknown {unknown}; choose from {list(known)}")
    return names


def options(items: list[str], run: list[str]) -> dict:
    """``--option POLICY.KEY=VALUE`` items as ``{policy: {key: value}}``, for policies that run
    here, each checked as the policy reads it (a bad one ends the script in one line)."""
    try:
        given = parse_policy_options(items)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    stray = sorted(set(given) - set(run))
    if stray:
        raise SystemExit(f"--option: {stray} are not among the policies run here, {run}")
    for policy, values in given.items():
        try:
            get_policy(policy).make_options(values)
        except ValueError as err:
            raise SystemExit(f"--option {policy}.*: {err}") from None
    return given
