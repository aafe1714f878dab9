"""Opening input files with messages that say what is wrong (exit 2, one line).

A directory, a device such as /dev/null, a symlink loop, a dangling link and a missing file
each get their own words, instead of one "file not found" for all of them. Streams -- ``-``
(stdin) and FIFOs such as bash's ``<(zcat gt.json.gz)`` -- are read once; a reader that needs
a regular file gets a temporary copy (:func:`spool`).
"""
from __future__ import annotations

import atexit
import errno
import os
import stat
import sys

from visiontool.errors import InvalidInputError, UsageError, VisionToolError


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


def is_stream(path: str | os.PathLike) -> bool:
    """``-`` (stdin) or a FIFO such as ``<(command)``."""
    if os.fsdecode(path) == "-":
        return True
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def one_stdin(paths) -> None:
    """UsageError when more than one of ``paths`` is ``-``: stdin can be read only once."""
    if sum(isinstance(p, (str, os.PathLike)) and os.fsdecode(p) == "-" for p in paths) > 1:
        raise UsageError("only one input can be read from stdin ('-'); give the others as files or <(command)")


def read_stream(path: str | os.PathLike) -> bytes:
    """All of a stream: stdin for ``-``, else the FIFO at ``path``."""
    if os.fsdecode(path) == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as fh:
        return fh.read()


def read_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of an input file or stream (UsageError / InvalidInputError, one clear line)."""
    try:
        if check_input_path(path, what) == "stream":
            return read_stream(path).decode("utf-8")
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{what} '{os.fsdecode(path)}' is not UTF-8 text") from exc
    except OSError as exc:
        raise UsageError(f"{what} '{os.fsdecode(path)}': cannot read ({exc.strerror or exc})") from exc


_spooled: list[str] = []


def spool(path: str, what: str) -> str:
    """Copy the JSON stream ``path`` (``-`` or a FIFO) into a temporary regular file and return
    the file's path, for readers that need one (the native COCO engines read the ground truth
    by path, and again when a run needs more of it). Its first bytes are checked first (not
    JSON, compressed: one line naming ``path``, nothing copied). The copy is removed by
    :func:`remove_spooled`: at exit, also when the command ends with ``os._exit``, or earlier
    by its user."""
    import shutil
    import tempfile

    from visiontool.io.json_input import json_start

    src = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        head = src.read(1 << 16)
        json_start(head, f"{what} '{path}'")
        fd, tmp = tempfile.mkstemp(prefix="visiontool-", suffix=".json")
        _spooled.append(tmp)
        with os.fdopen(fd, "wb") as out:
            out.write(head)
            shutil.copyfileobj(src, out, 1 << 20)
    except OSError as exc:
        raise VisionToolError(f"cannot copy {what} '{path}' to a temporary file in {tempfile.gettempdir()}: "
                              f"{exc.strerror or exc}") from None
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    return tmp


@atexit.register
def remove_spooled(path: str | None = None) -> None:
    """Remove the temporary copy ``path`` :func:`spool` made, or every one."""
    for tmp in [path] if path is not None else list(_spooled):
        if tmp in _spooled:
            _spooled.remove(tmp)
            try:
                os.unlink(tmp)
            except OSError:
                pass
