"""Text for people on a terminal (no rich import: the error path stays cheap)."""
from __future__ import annotations


def clean(text: str) -> str:
    """One line, safe for a terminal: whitespace runs become one space, and control
    characters (an escape sequence in a file name) or undecodable bytes are shown as
    ``\\x1b`` / ``\\udce9`` escapes instead of reaching the terminal."""
    text = " ".join(str(text).split())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
