"""Where data goes: stdout, or a file written atomically (temp file + rename)."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator, TextIO


@contextlib.contextmanager
def open_output(path: str | os.PathLike | None) -> Iterator[TextIO]:
    """Yield a text stream for data.

    ``None`` or ``"-"`` is stdout. A file is written to a temporary sibling and renamed
    over the target only when the block finishes without error, so a reader never sees
    half a file and a failed run leaves the previous file intact.
    """
    if path is None or str(path) == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
