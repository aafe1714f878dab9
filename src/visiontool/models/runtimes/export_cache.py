"""The on-disk cache of exported networks: ``<visiontool cache>/exports/<key>/``.

The key is a hash of: the network's content (every tensor of the state dict as loaded and
prepared), the family and exporter version, the runtime and its version, torch's and
transformers' versions (the traced graph depends on them), the precision and the input-shape
policy. An entry is written into a temporary directory next to it and renamed into place
(atomic: a crashed export never leaves a half entry), with ``entry.json`` naming the key's
fields and every file's size and sha256. On load the entry is validated (key, sizes, hashes,
the engine compiles); a corrupt or stale entry is rebuilt with one warning. The first export
shows a progress line and its time on stderr (``-q`` silences it).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from visiontool.errors import UsageError, VisionToolError
from visiontool.io.output import out_of_space, write_probe

ENTRY = "entry.json"
CACHE_FORMAT = 1


def exports_dir() -> Path:
    from visiontool.models.cache import visiontool_cache_dir

    return visiontool_cache_dir() / "exports"


def state_hash(module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes) — the weights' content."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_of(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:40]


def describe(directory: Path, fields: dict[str, Any], files: list[str]) -> None:
    """Write ``entry.json`` (key fields, file sizes and hashes) into ``directory``."""
    entry = {"format": CACHE_FORMAT, "key": fields,
             "files": {f: {"size": (directory / f).stat().st_size, "sha256": file_sha256(directory / f)}
                       for f in files}}
    (directory / ENTRY).write_text(json.dumps(entry, indent=1, sort_keys=True))


def problem(directory: Path, fields: dict[str, Any] | None) -> str | None:
    """Why the entry in ``directory`` cannot be used (None: it is sound). ``fields`` None:
    only the files are checked (an export directory written by ``visiontool export``)."""
    try:
        entry = json.loads((directory / ENTRY).read_text())
    except FileNotFoundError:
        return f"{ENTRY} is missing"
    except (OSError, ValueError) as exc:
        return f"{ENTRY} is unreadable ({exc})"
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT or not isinstance(entry.get("files"), dict):
        return f"{ENTRY} has another format"
    if fields is not None and entry.get("key") != fields:
        return "it was made for other weights or library versions"
    for name, want in entry["files"].items():
        p = directory / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != want.get("size"):
            return f"{name} has {p.stat().st_size} bytes, expected {want.get('size')}"
        if file_sha256(p) != want.get("sha256"):
            return f"{name} does not match its recorded hash"
    return None


@contextlib.contextmanager
def build_lock(root: Path, key: str):
    """Hold ``<cache>/locks/export-<key>`` exclusively (``fcntl.flock``; released when the process dies):
    processes exporting the same key (Ray replicas starting together on one machine or on a
    shared disk) take turns, so the first exports and the others find its entry. Without
    ``fcntl`` (Windows) there is no lock: :func:`_publish` still keeps the entry whole."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield False
        return
    locks = root.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / f"export-{key}"
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except OSError:
            fcntl.flock(fh, fcntl.LOCK_EX)  # another process is exporting this key: wait for it
            waited = True
        try:
            yield waited
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _usable(final: Path, fields: dict[str, Any], open_engine: Callable[[Path], Any]) -> tuple[Any, str | None]:
    """(engine, None) for a sound entry in ``final``; (None, why) otherwise."""
    if not final.exists():
        return None, "absent"
    why = problem(final, fields)
    if why is None:
        try:
            return open_engine(final), None
        except Exception as exc:  # noqa: BLE001 - the runtime could not read it: rebuild
            why = f"the runtime cannot read it ({(str(exc).splitlines() or [type(exc).__name__])[0][:200]})"
    return None, why


def _publish(tmp: Path, final: Path, fields: dict[str, Any], bad_before: bool) -> bool:
    """Rename the finished ``tmp`` into ``final``. An entry that appeared there while we
    exported (another process won a race the lock could not prevent) is kept if sound and
    ``tmp`` dropped (False); the corrupt or stale entry we found (``bad_before``) or an unsound
    one is moved aside first (a rename, so a reader never sees half a directory)."""
    if final.exists():
        if not bad_before and problem(final, fields) is None:
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        aside = Path(tempfile.mkdtemp(prefix=".old-", dir=final.parent))
        try:
            os.replace(final, aside / "entry")
        except OSError:
            pass  # gone meanwhile
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:  # another process put its entry there between the check and the rename
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True


_scratch: list[Path] = []


def _writable(root: Path) -> Path:
    """``root``, created, if a file can be made there; else a temporary directory for this
    process (removed at exit), with one warning: a read-only or misconfigured cache
    (VISIONTOOL_CACHE naming a file, a read-only home in a container) costs an export per run,
    not the run."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_probe(root)
        return root
    except OSError as exc:
        if not _scratch:
            import atexit

            from visiontool.render.console import warn

            _scratch.append(Path(tempfile.mkdtemp(prefix="visiontool-exports-")))
            atexit.register(shutil.rmtree, _scratch[0], True)
            warn(f"cannot write the export cache in {root} ({exc.strerror or exc}); exporting into "
                 f"{_scratch[0]} for this run only (point VISIONTOOL_CACHE at a writable directory to keep "
                 "exports)")
        return _scratch[0]


def get_or_build(fields: dict[str, Any], build: Callable[[Path], list[str]], open_engine: Callable[[Path], Any],
                 what: str, quiet: bool = False) -> tuple[Any, Path]:
    """The engine for the cached export keyed by ``fields``, exporting with ``build(dir)``
    (returns the file names written) when there is none or it is corrupt or stale.

    Concurrent callers with the same key (processes or threads): one exports while the others
    wait on :func:`build_lock` and then open its entry; a sound entry is never replaced."""
    from visiontool.render.console import info, warn

    root = exports_dir()
    key = key_of(fields)
    final = root / key
    engine, why = _usable(final, fields, open_engine)
    if engine is not None:
        return engine, final
    writable = _writable(root)
    if writable != root:  # the cache cannot be written: this run's scratch directory
        root, final = writable, writable / key
        engine, why = _usable(final, fields, open_engine)
        if engine is not None:
            return engine, final
    with build_lock(root, key) as waited:
        if waited:  # someone exported while we waited: theirs, if sound
            engine, why_now = _usable(final, fields, open_engine)
            if engine is not None:
                return engine, final
            why = why_now if why == "absent" else why
        if why != "absent":
            warn(f"cached export {final} is corrupt or stale ({why}); exporting again")
        if not quiet:
            info(f"exporting {what} ({'for this run' if root in _scratch else f'once; cached in {root}'}) ...")
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        published = False
        try:
            try:
                files = build(tmp)
            except (VisionToolError, KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - an operator the exporter lacks, a failed trace: one line
                full = out_of_space(exc, root)
                if full:
                    raise VisionToolError(f"{what}: cannot write the export into the cache: {full}; free some "
                                          "space or point VISIONTOOL_CACHE at another disk") from exc
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise UsageError(f"{what}: the export failed ({type(exc).__name__}: {first}); use --runtime torch") \
                    from exc
            describe(tmp, fields, files)
            published = _publish(tmp, final, fields, bad_before=why != "absent")
            engine = open_engine(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if published:  # an entry the runtime cannot read never stays (only ours is removed)
                shutil.rmtree(final, ignore_errors=True)
            raise
    if not quiet:
        info(f"exported {what} in {time.perf_counter() - t0:.1f} s")
    return engine, final
