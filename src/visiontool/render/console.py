"""The two consoles: stdout carries data only, stderr carries people-facing text.

Both are created on each call so that redirected or captured streams (CliRunner,
pipes) are honoured; rich turns colour off by itself when the stream is not a tty.
"""
from __future__ import annotations

import sys

from rich.console import Console

_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"]


def out() -> Console:
    """Console for data (tables) on stdout."""
    return Console(file=sys.stdout, soft_wrap=False)


def err() -> Console:
    """Console for progress, warnings and errors on stderr."""
    return Console(file=sys.stderr, stderr=True, highlight=False)


def stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def warn(message: str) -> None:
    """One warning line on stderr (shown even with -q: warnings are not progress)."""
    err().print(f"visiontool: warning: {message}", markup=False, soft_wrap=True)


def info(message: str) -> None:
    """One informational line on stderr, silenced by -q."""
    if not _state["quiet"]:
        err().print(message, markup=False, soft_wrap=True)
