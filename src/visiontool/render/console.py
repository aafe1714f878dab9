"""The two consoles: stdout carries data only, stderr carries people-facing text.

Both are created on each call so that redirected or captured streams (CliRunner,
pipes) are honoured; rich turns colour off by itself when the stream is not a tty.
"""
from __future__ import annotations

import errno
import sys
from typing import TYPE_CHECKING

from visiontool.render.text import clean, silence_stderr

if TYPE_CHECKING:
    from rich.console import Console
# rich.console is imported where a console is made: importing it costs ~13 ms, which a command
# that only asks whether stdout is a terminal (evaluate writing JSON to a pipe) need not pay

_state = {"quiet": False}
_said: set[str] = set()
_console_class: list[type] = []


def _console(**kwargs) -> Console:
    """A rich Console for when its stream's reader goes away (``| head``). rich's own reaction
    is a ``SystemExit(1)``, which would stop the command before its outputs are closed. Here
    data on stdout raises BrokenPipeError, which :mod:`visiontool.cli.main` ends quietly with
    exit 0; people-facing text on stderr falls silent and the command carries on, so the data
    of ``visiontool detect DIR -o dets.jsonl 2>&1 | head -3`` is still written whole."""
    if not _console_class:
        from rich.console import Console

        class ReaderAwareConsole(Console):
            def on_broken_pipe(self) -> None:
                self.quiet = True
                if self.stderr:
                    silence_stderr()
                    return
                raise BrokenPipeError(errno.EPIPE, "the reader of this stream went away")

        _console_class.append(ReaderAwareConsole)
    return _console_class[0](**kwargs)


def set_quiet(quiet: bool) -> None:
    """Called once at the start of each command: also forgets which notes were given."""
    _state["quiet"] = quiet
    _said.clear()


def once(key: str, message: str) -> None:
    """A warning given once per command run for ``key``."""
    if key not in _said:
        _said.add(key)
        warn(message)


def is_quiet() -> bool:
    return _state["quiet"]


def print_tables(fh, *tables) -> None:
    """Print rich tables as data: terminal width on a terminal, whole rows anywhere else.

    Off a terminal (pipe, file, CI log) rich would assume 80 columns and fold or
    truncate cells (a long image path, a column header); there each table is
    printed at its natural width, without colour codes, so every cell survives.
    """
    fh = sys.stdout if fh is None else fh
    if _isatty(fh):
        con = _console(file=fh, soft_wrap=False)
        for t in tables:
            if t is not None:
                con.print(t)
        return
    from rich.measure import Measurement

    probe = _console(file=fh, width=100_000, color_system=None)
    for t in tables:
        if t is None:
            continue
        width = Measurement.get(probe, probe.options, t).maximum
        _console(file=fh, soft_wrap=False, width=max(80, width), color_system=None).print(t)


def err() -> Console:
    """Console for progress, warnings and errors on stderr."""
    return _console(file=sys.stderr, stderr=True, highlight=False)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def stdout_is_tty() -> bool:
    return _isatty(sys.stdout)


def warn(message: str) -> None:
    """One warning line on stderr (shown even with -q: warnings are not progress)."""
    err().print(f"visiontool: warning: {clean(message)}", markup=False, soft_wrap=True)


def info(message: str) -> None:
    """One informational line on stderr, silenced by -q."""
    if not _state["quiet"]:
            err().print(clean(message), markup=False, soft_wrap=True)
