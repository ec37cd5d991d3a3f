"""The one table of ``EPLB_RT_*`` environment variables, and their only reader.

Each variable has a type, a default and one line of documentation (mirrored in the README).
Read them with :func:`get`; an unparsable value is an error naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from typing import Any


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):  # set but empty: off
        return False
    raise ValueError(f"expected 1/true/yes/on or 0/false/no/off, got {text!r}")


def parse_options(items: Iterable[str], what: str) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> ``{key: "VALUE"}``, a dash in a key read as an underscore (the
    policy converts and checks the values); ``what`` names the source in the error. A key given
    twice is an error: which of two values was meant is the user's to say."""
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} must be KEY=VALUE, got {item!r}")
        name = key.strip().replace("-", "_")
        if name in options:
            raise ValueError(f"option {name} given twice ({options[name]!r} and {value.strip()!r})")
        options[name] = value.strip()
    return options


def _options(text: str) -> dict[str, str]:
    """``KEY=VALUE[,KEY=VALUE...]`` -> ``{key: "VALUE"}``; empty items are skipped."""
    items = filter(None, (part.strip() for part in text.split(",")))
    return parse_options(items, "each comma-separated item")


def _count(text: str) -> int:
    """A whole number >= 1."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise ValueError(f"expected a whole number >= 1, got {text!r}")
    return value


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in _LEVELS:
        raise ValueError(f"expected one of {', '.join(_LEVELS)}, got {text!r}")
    return level


@dataclasses.dataclass(frozen=True)
class EnvVar:
    """One environment variable: its parser, default and documentation."""

    parse: Callable[[str], Any]
    default: Any
    doc: str


VARIABLES: dict[str, EnvVar] = {
    "EPLB_RT_LOG_LEVEL": EnvVar(
        _log_level,
        "WARNING",
        "Log level of the eplb_rt logger (DEBUG, INFO, WARNING, ERROR, CRITICAL), set when a "
        "runtime is built; unset: the level the application gave it (WARNING by default).",
    ),
    "EPLB_RT_DISABLE_REBALANCE": EnvVar(
        _flag, False, "1: record heat but never plan or migrate (static placement)."
    ),
    "EPLB_RT_POLICY": EnvVar(
        str.strip,
        None,
        "Overrides EplbConfig.policy when a config is built with from_dict(..., env=True); "
        "selects the policy of the vLLM / vllm-ascend / SGLang plugins (unset: engine's own).",
    ),
    "EPLB_RT_POLICY_OPTIONS": EnvVar(
        _options,
        None,
        "Options of that policy, KEY=VALUE[,KEY=VALUE...] (e.g. hierarchical=true); overrides "
        "EplbConfig.policy_options with from_dict(..., env=True); the plugins check them "
        "when they load.",
    ),
    "EPLB_RT_EXPORT_DIR": EnvVar(
        str,
        None,
        "Overrides EplbConfig.export_dir in EplbConfig.from_dict(..., env=True) (every committed "
        "placement as JSON); the vllm-ascend policy writes each load it plans on there "
        "(load-<pid>-<n>.npy).",
    ),
    "EPLB_RT_TRANSFER_TIMEOUT_S": EnvVar(
        float,
        None,
        "Overrides EplbConfig.transfer_timeout_s (seconds a layer's transfer may take).",
    ),
    "EPLB_RT_KERNEL_CACHE": EnvVar(
        _flag,
        True,
        "0: do not use the numba kernel cache shipped in the package (eplb_rt/_kernels); "
        "kernels then compile on first use into numba's own cache (NUMBA_CACHE_DIR, ...).",
    ),
    "EPLB_RT_PLAN_THREADS": EnvVar(
        _count,
        None,
        "The most threads a plan splits its layers over where their number is not given (the "
        "runtime's adapting plan_threads, eplb-rt plan and simulate, the engines' plugins); "
        "unset: the cores the process may run on less one, at most 4.",
    ),
    "EPLB_RT_DEMO_PORT": EnvVar(
        int,
        None,
        "TCP port on which `eplb-rt demo` serves its ranks' rendezvous; unset: a free port.",
    ),
}


def text(name: str) -> str | None:
    """``name``'s raw text in the environment, or ``None`` where it is not set."""
    _variable(name)
    return os.environ.get(name)


def given(name: str) -> bool:
    """Whether ``name`` is set to a value (not unset, not blank)."""
    value = text(name)
    return value is not None and bool(value.strip())


def _variable(name: str) -> EnvVar:
    try:
        return VARIABLES[name]
    except KeyError:
        raise KeyError(f"unknown eplb_rt variable {name!r}; known: {sorted(VARIABLES)}") from None


def get(name: str) -> Any:
    """The parsed value of ``name`` (its default when unset, or when set but empty and its
    default is ``None``)."""
    var = _variable(name)
    raw = os.environ.get(name)
    # Set but empty is unset where unset means "none" (a flag: off, as its parser says).
    if raw is None or (var.default is None and not raw.strip()):
        return var.default
    try:
        return var.parse(raw)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={raw!r}: {err}") from None
