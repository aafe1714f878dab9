"""Assertions on CLI results shared by the command tests."""
from __future__ import annotations

import contextlib


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
