"""Text for people on a terminal (no rich import: the error path stays cheap)."""
from __future__ import annotations

import os
import sys


def clean(text: str) -> str:
    """One line, safe for a terminal: whitespace runs become one space, and control
    characters (an escape sequence in a file name) or undecodable bytes are shown as
    ``\\x1b`` / ``\\udce9`` escapes instead of reaching the terminal."""
    text = " ".join(str(text).split())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def stderr_line(text: str) -> None:
    """One line on stderr. When stderr's reader went away (``2> >(head -1)``) stderr falls
    silent and the command goes on: its data, on stdout or in files, is what matters."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except BrokenPipeError:
        silence_stderr()


def silence_stderr() -> None:
    """Point descriptor 2 at /dev/null: stderr's reader went away, nobody is left to read it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        pass
