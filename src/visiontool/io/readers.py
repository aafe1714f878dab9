"""Opening input files with messages that say what is wrong (exit 2, one line).

A directory, a device such as /dev/null, a FIFO, a symlink loop, a dangling link and a
missing file each get their own words, instead of one "file not found" for all of them.
"""
from __future__ import annotations

import errno
import os
import stat

from visiontool.errors import InvalidInputError, UsageError


def check_input_file(path: str | os.PathLike, what: str) -> None:
    """UsageError unless ``path`` is a readable regular file."""
    if check_input_path(path, what) == "stream":
        raise UsageError(f"{what} '{os.fsdecode(path)}' is a named pipe; give it as a regular file")


def check_input_path(path: str | os.PathLike, what: str) -> str:
    """``"file"`` for a readable regular file, ``"stream"`` for ``-`` (stdin) or a FIFO
    (``<(cmd)``); otherwise a one-line :class:`UsageError` saying what the path is."""
    shown = os.fsdecode(path)
    if shown == "-":
        return "stream"
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"{what} '{shown}': symbolic link loop (a link that points back to itself)") from None
        if os.path.islink(path):
            raise UsageError(f"{what} '{shown}': dangling symbolic link (its target "
                             f"'{os.fsdecode(os.readlink(path))}' does not exist)") from None
        if exc.errno == errno.ENOTDIR:
            raise UsageError(f"{what} file not found: '{shown}' (a part of the path is not a directory)") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise UsageError(f"{what} '{shown}': permission denied") from None
        raise UsageError(f"{what} file not found: '{shown}'") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} '{shown}' is a directory; expected a file")
    if stat.S_ISFIFO(st.st_mode):
        return "stream"
    if not stat.S_ISREG(st.st_mode):
        kind = "a character device" if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode) \
            else "a socket" if stat.S_ISSOCK(st.st_mode) else "a special file"
        raise UsageError(f"{what} '{shown}' is not a regular file ({kind})")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{what} '{shown}': permission denied")
    return "file"


def read_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of an input file (UsageError / InvalidInputError with one clear line)."""
    check_input_file(path, what)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{what} '{os.fsdecode(path)}' is not UTF-8 text") from exc
    except OSError as exc:
        raise UsageError(f"{what} '{os.fsdecode(path)}': cannot read ({exc.strerror or exc})") from exc
