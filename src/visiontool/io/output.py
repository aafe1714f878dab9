"""Where data goes: stdout, or files written atomically — the one writer every output uses.

* :func:`atomic_write` writes to a unique temporary sibling (``mkstemp``: concurrent runs
  never share a temp name) and renames it over the target only when the block finishes,
  so a reader never sees half a file and a failed or interrupted run leaves the previous
  file intact (and no temp file behind). A new file gets the mode the umask allows
  (``0666 & ~umask``, like ``open()``), an existing file keeps its own mode.
* :func:`check_output_file` / :func:`check_output_dir` find a bad destination (a directory
  where a file goes, a file where a directory goes, a read-only mount, /proc, /sys) before
  any model loads, by creating and removing a probe file where the output will go.
* Names that are not valid UTF-8 (undecodable bytes in a file name, surrogate-escaped by
  Python) are written back as their original bytes (``errors="surrogateescape"``).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO, Iterator, TextIO

from visiontool.errors import Interrupted, UsageError

TEXT_ERRORS = "surrogateescape"  # non-UTF-8 file names round-trip as their original bytes
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # errors only a write can give
NEARLY_FULL = 16 << 20  # bytes: less free than this after a failed export means the disk filled up


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def out_of_space(exc: BaseException, directory: str | os.PathLike) -> str | None:
    """Why a write into ``directory`` failed when the disk is the cause, else None: a full
    disk's OSError, or a native writer's failure (OpenVINO says only ``iostream error``) that
    left less than 16 MiB free there. Called before the partial output is removed."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = None
    if not is_disk_full(exc) and (free is None or free >= NEARLY_FULL):
        return None
    reason = exc.strerror if is_disk_full(exc) else "No space left on device"
    left = "" if free is None else f": {free / 2**20:.1f} MiB free"
    return f"{reason} ({os.fsdecode(directory)}{left})"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _target_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", fsync: bool = True,
                 keep_on_interrupt: bool = False) -> Iterator[IO]:
    """Yield a file object whose content replaces ``path`` atomically when the block ends
    without an exception (``mode``: "w" text UTF-8, or "wb"). Parent directories are created.

    ``keep_on_interrupt``: on Ctrl-C / SIGTERM (:class:`~visiontool.errors.Interrupted`) the
    content written so far still replaces ``path`` — for record streams whose every finished
    record is complete (the writer closes its brackets first), so no computed work is lost."""
    target = Path(path)
    if _is_stream(target):  # /dev/null, /dev/stdout, a named pipe: nothing to replace, write through
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "errors": TEXT_ERRORS, "newline": ""}
        with open(target, mode, **kwargs) as fh:
            yield fh
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "errors": TEXT_ERRORS, "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as fh:
            try:
                yield fh
            except Interrupted:
                if not keep_on_interrupt:
                    raise
                _commit(fh, tmp, target, fsync)
                raise
            _commit(fh, tmp, target, fsync)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(exc) and exc.filename is None:
            exc.filename = os.fsdecode(target)  # the file the user named, for the one error line
        raise


def _commit(fh, tmp: str, target: Path, fsync: bool) -> None:
    fh.flush()
    if fsync:
        os.fsync(fh.fileno())
    os.chmod(tmp, _target_mode(target))
    os.replace(tmp, target)


def _is_stream(p: Path) -> bool:
    import stat

    try:
        mode = p.stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb", fsync=False) as fh:
        fh.write(data)


def save_image(img, path: str | os.PathLike, **kwargs) -> None:
    """A PIL image to ``path`` (format from the extension), atomically."""
    p = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}.get(p.suffix.lower(), "PNG")
    if fmt == "JPEG":
        kwargs.setdefault("quality", 92)
    with atomic_write(p, "wb", fsync=False) as fh:
        img.save(fh, format=fmt, **kwargs)


@contextlib.contextmanager
def open_output(path: str | os.PathLike | None, keep_on_interrupt: bool = False) -> Iterator[TextIO]:
    """A text stream for data: ``None`` or ``"-"`` is stdout, else an atomic file."""
    if path is None or str(path) == "-":
        with contextlib.suppress(AttributeError, ValueError):
            sys.stdout.reconfigure(errors=TEXT_ERRORS)
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_write(path, keep_on_interrupt=keep_on_interrupt) as fh:
        yield fh


def write_probe(directory: str | os.PathLike) -> None:
    """Create and remove a file in ``directory`` (OSError when that fails): the only honest
    writability test (root passes every os.access check; read-only mounts and /proc only fail
    on creation)."""
    fd, tmp = tempfile.mkstemp(prefix=".visiontool-probe-", dir=directory)
    os.close(fd)
    os.unlink(tmp)


def _probe(directory: Path, flag: str, shown: str) -> None:
    try:
        write_probe(directory)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"{flag} '{shown}': cannot write there ({reason})") from None


def _special(p: Path) -> bool:
    parts = p.resolve().parts
    return len(parts) > 1 and parts[1] in ("proc", "sys")


def check_output_file(path: str | os.PathLike | None, flag: str = "--output") -> None:
    """UsageError now if ``path`` cannot receive a file (stdout '-' and None always can)."""
    if path is None or str(path) == "-":
        return
    p = Path(path)
    shown = os.fsdecode(path)
    if p.is_dir():
        raise UsageError(f"{flag} '{shown}' is a directory; give a file name")
    if _is_stream(p):
        return  # /dev/null, /dev/stdout, a named pipe: written through
    if p.exists() and not p.is_file():
        raise UsageError(f"{flag} '{shown}' is not a regular file")
    if _special(p.parent if not p.exists() else p):
        raise UsageError(f"{flag} '{shown}': cannot write data files under /proc or /sys")
    parent = p.parent
    existing = parent
    while not existing.exists():
        if existing.is_symlink():
            raise UsageError(f"{flag} '{shown}': '{existing}' is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} '{shown}': '{existing}' is not a directory")
    _probe(existing, flag, shown)


def check_output_dir(path: str | os.PathLike | None, flag: str) -> None:
    """UsageError now if ``path`` cannot be (or become) a directory we write into; creates it."""
    if path is None:
        return
    p = Path(path)
    shown = os.fsdecode(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} '{shown}' is a file; give a directory")
    if _special(p) or str(p.resolve()).startswith("/dev/"):
        raise UsageError(f"{flag} '{shown}': cannot write under /proc, /sys or /dev")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{flag} '{shown}': a file is in the way of that directory") from None
    except OSError as exc:
        raise UsageError(f"{flag} '{shown}': cannot create the directory ({exc.strerror or exc})") from None
    _probe(p, flag, shown)


def same_path(a: str | os.PathLike | None, b: str | os.PathLike | None) -> bool:
    if a is None or b is None or str(a) == "-" or str(b) == "-":
        return False
    return os.path.abspath(a) == os.path.abspath(b)


def check_not_an_input(outputs: dict[str, str | os.PathLike | None], inputs) -> None:
    """UsageError when an output file (flag -> path) is one of the input files (``detect
    photo.jpg -o photo.jpg``, ``evaluate --pred p.json -o p.json``): writing it would replace
    that input. Symbolic and hard links to an input count as the input."""
    paths = [i for i in inputs if isinstance(i, (str, os.PathLike)) and str(i) != "-"]
    _check_not_in_a_run(outputs, [p for p in paths if os.path.isdir(p)])
    files = [i for i in paths if os.path.isfile(i)]
    for flag, out in outputs.items():
        if out is None or str(out) == "-" or not os.path.isfile(out):
            continue
        for path in files:
            try:
                same = os.path.samefile(out, path)
            except OSError:
                continue
            if same:
                raise UsageError(f"{flag} '{os.fsdecode(out)}' is also an input ('{os.fsdecode(path)}'): writing it "
                                 "would replace that input; give another file name")


def _check_not_in_a_run(outputs: dict[str, str | os.PathLike | None], dirs: list) -> None:
    """UsageError when an output would replace a file of an ``--engine ray`` run read as an input
    (``merge DIR -o DIR/_job.json`` destroyed the run's description; its ``_*`` files and
    ``part-*`` shards are the run's state). Other files beside them are fine."""
    from visiontool.io.shards import JOB_FILE

    runs = [d for d in dirs if os.path.isfile(os.path.join(d, JOB_FILE))]
    for flag, out in outputs.items():
        if out is None or str(out) == "-":
            continue
        for run in runs:
            rel = os.path.relpath(os.path.realpath(out), os.path.realpath(run))
            top = rel.split(os.sep)[0]
            if top != os.pardir and (rel == os.curdir or top.startswith(("_", "part-"))):
                raise UsageError(f"{flag} '{os.fsdecode(out)}' is a file of the run in '{os.fsdecode(run)}' (its _* "
                                 "files and part-* shards are the run's state): writing it would damage the run; "
                                 "give a path outside them")
