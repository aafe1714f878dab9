"""Assertions on CLI results shared by the command tests."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path


def entry_point() -> str:
    """The installed ``visiontool`` console script next to this interpreter."""
    exe = Path(sys.executable).with_name("visiontool")
    assert exe.is_file(), "the visiontool console script is not installed in this environment"
    return str(exe)


def assert_user_error(result, code: int, *needles: str, single: bool = True) -> str:
    """Exit ``code``, no traceback, ``visiontool: error:`` lines on stderr (exactly one when
    ``single``) that mention every needle; returns the first error line."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("visiontool: error:")]
    assert lines, result.stderr
    if single:
        assert len(lines) == 1, result.stderr
    text = "\n".join(lines)
    for n in needles:
        assert n in text, (n, text)
    return lines[0]


def one_error_line(result, code: int = 2) -> str:
    """The strictest form: stderr is exactly one error line and stdout is empty."""
    line = assert_user_error(result, code)
    assert [ln for ln in result.stderr.splitlines() if ln.strip()] == [line], result.stderr
    assert result.stdout == ""
    return line


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Files this process writes stop at ``nbytes``: a write past it fails with EFBIG, as one on a
    full disk fails with ENOSPC (Python ignores SIGXFSZ). Only the soft limit changes; it is put
    back after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@contextlib.contextmanager
def fifo(tmp_path: Path, data: bytes, name: str = "fifo"):
    """A named pipe that a thread fills with ``data`` once a reader opens it, as ``<(cat FILE)``."""
    path = tmp_path / name
    os.mkfifo(path)

    def feed():
        with contextlib.suppress(BrokenPipeError), open(path, "wb") as fh:
            fh.write(data)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        yield path
    finally:
        if writer.is_alive():  # nobody read it (an error came first): let the writer go
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(timeout=10)
