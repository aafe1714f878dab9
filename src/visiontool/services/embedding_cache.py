"""On-disk cache of SAM image embeddings, so a second call on the same image skips the encoder.

Key: SHA-256 over the *decoded* image (RGB bytes + size, so re-encoding or renaming a file
does not matter), the checkpoint's content hash (not its path or mtime), and the encoder
settings that change the numbers (precision, input size, format version).

Entry file ``<root>/<k[:2]>/<k>.emb``::

    b"VTEMB\\x01" | uint32 little-endian header length | header JSON | payload (float32, C order)

The header records the key, shape and the payload's SHA-256; an entry whose magic, header,
length or checksum is wrong, or whose array is not the shape the model expects
(``get(key, expected_shape=(C, g, g))``), is deleted and treated as a miss (then recomputed).
The prompt-encoder / mask-decoder arrays cached per checkpoint (``decoders/<sha>.npz``) are
checked the same way: keys, shapes and dtypes of SAM's decoder for the dimensions they
describe, and the checkpoint they were written for. Every discarded file is listed in
``discarded`` (the caller warns once per file, never blaming the checkpoint) with its reason
in ``reasons``. Writes go to a unique temporary file in the same directory followed by
``os.replace``, so readers never see half an entry and two processes writing the same entry
both leave a complete one. The cache is bounded (``max_bytes``, default 2 GiB or
``VISIONTOOL_EMBEDDING_CACHE_MB``, a finite number of megabytes >= 0, else exit 2): after
each write the least recently used entries (by mtime, bumped on every hit) are evicted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"VTEMB\x01"
FORMAT_VERSION = 1
DEFAULT_MAX_MB = 2048


def image_digest(rgb: np.ndarray) -> str:
    """SHA-256 of a decoded (H, W, 3) uint8 image, shape included."""
    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    h = hashlib.sha256(f"{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def embedding_key(image_sha: str, checkpoint_sha: str, precision: str, img_size: int) -> str:
    blob = json.dumps({"v": FORMAT_VERSION, "image": image_sha, "checkpoint": checkpoint_sha,
                       "precision": precision, "img_size": img_size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


MAX_MB_ENV = "VISIONTOOL_EMBEDDING_CACHE_MB"


def default_max_bytes() -> int:
    """The size bound in bytes: ``VISIONTOOL_EMBEDDING_CACHE_MB`` (megabytes, a finite number
    >= 0; unset or empty = 2048). UsageError (exit 2) for anything else: nan, inf, -5, abc."""
    from visiontool.errors import UsageError

    raw = os.environ.get(MAX_MB_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_MB * 1024 * 1024
    try:
        mb = float(raw)
    except ValueError:
        mb = float("nan")
    if not (0.0 <= mb < float("inf")):  # also false for nan
        raise UsageError(f"{MAX_MB_ENV}={raw!r} is not a cache size: expected megabytes as a finite number "
                         f">= 0 (e.g. {DEFAULT_MAX_MB}), or unset it for the default")
    return int(mb * 1024 * 1024)


def pack(arrays) -> tuple[np.ndarray, dict]:
    """Several float32 arrays as one entry: the flat concatenation and the ``parts`` header."""
    flat = np.concatenate([np.ascontiguousarray(a, dtype=np.float32).reshape(-1) for a in arrays])
    return flat, {"parts": [list(a.shape) for a in arrays]}


def unpack(flat: np.ndarray, header: dict) -> list[np.ndarray] | None:
    """The arrays :func:`pack` stored (None: the header does not describe ``flat``)."""
    parts, out, i = header.get("parts"), [], 0
    if not isinstance(parts, list):
        return None
    for shape in parts:
        n = int(np.prod(shape))
        if n < 0 or i + n > flat.size:
            return None
        out.append(flat[i:i + n].reshape(shape))
        i += n
    return out if i == flat.size else None


@dataclass
class EmbeddingCache:
    """A directory of embedding entries; all methods are safe under concurrent processes."""

    root: Path
    max_bytes: int = field(default_factory=default_max_bytes)
    discarded: list[str] = field(default_factory=list)  # files found unusable (for a stderr note)
    reasons: dict[str, str] = field(default_factory=dict)  # discarded file -> why

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # ------------------------------------------------------------------ entries
    def path_for(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.emb"

    def get(self, key: str, expected_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, dict] | None:
        """The cached array and header, or None (missing, or unusable and now deleted).

        ``expected_shape``: what the model needs, e.g. ``(C, g, g)`` from the decoder's
        dimensions; an entry that is intact but of another shape is discarded too.
        """
        path = self.path_for(key)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        parsed = _parse(data, key)
        if parsed is None:
            self._discard(path, "damaged (header, length or checksum)")
            return None
        if expected_shape is not None and tuple(parsed[0].shape) != tuple(int(v) for v in expected_shape):
            self._discard(path, f"holds an array of shape {tuple(parsed[0].shape)}, the model needs "
                                f"{tuple(int(v) for v in expected_shape)}")
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least-recently-used order is mtime order
        return parsed

    def put(self, key: str, array: np.ndarray, meta: dict | None = None) -> Path:
        """Write one entry atomically, then evict old entries beyond ``max_bytes``."""
        arr = np.ascontiguousarray(array, dtype=np.float32)
        payload = arr.tobytes()
        header = dict(meta or {})
        header.update(key=key, shape=list(arr.shape), dtype="float32",
                      sha256=hashlib.sha256(payload).hexdigest(), version=FORMAT_VERSION)
        hbytes = json.dumps(header, sort_keys=True).encode()
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, [MAGIC, struct.pack("<I", len(hbytes)), hbytes, payload])
        self.evict(keep=path)
        return path

    def put_or_warn(self, key: str, array: np.ndarray, meta: dict | None = None) -> None:
        """:meth:`put`, where a failed write (a full disk, a read-only directory) is one warning
        and the run goes on without the cache."""
        try:
            self.put(key, array, meta)
        except OSError as exc:
            from visiontool.render.console import warn

            warn(f"cannot write the embedding cache ({exc}); continuing without it")

    def warn_discarded(self) -> None:
        """One warning per file discarded since the last call (the adapters call it after a lookup)."""
        if not self.discarded:
            return
        from visiontool.render.console import warn

        for path in self.discarded:
            warn(f"discarded a corrupt cache entry ({path}); recomputing it")
        self.discarded.clear()

    def entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.glob("??/*.emb")]

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete least recently used entries until the total is within ``max_bytes``."""
        stats = []
        for p in self.entries():
            try:
                st = p.stat()
            except OSError:
                continue
            stats.append((st.st_mtime_ns, st.st_size, p))
        total = sum(s for _, s, _ in stats)
        removed: list[Path] = []
        for _, size, p in sorted(stats, key=lambda t: t[0]):
            if total <= self.max_bytes:
                break
            if keep is not None and p == keep:
                continue
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
            total -= size
        return removed

    # ------------------------------------------------------------------ decoder weights
    def decoder_path(self, checkpoint_sha: str) -> Path:
        return self.root / "decoders" / f"{checkpoint_sha[:32]}.npz"

    def get_decoder(self, checkpoint_sha: str) -> dict | None:
        """Prompt-encoder + mask-decoder arrays saved by a previous run: None if absent, or if
        unreadable or not SAM's decoder arrays (other keys, shapes or dtypes, or written for
        another checkpoint) — then deleted, to be rebuilt from the checkpoint."""
        from visiontool.models.sam_weights import decoder_problem

        path = self.decoder_path(checkpoint_sha)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception:  # truncated or corrupt archive: drop it, rebuild from the checkpoint
            self._discard(path, "not a readable .npz archive")
            return None
        problem = decoder_problem(arrays, checkpoint_sha)
        if problem is not None:
            self._discard(path, f"not this checkpoint's decoder arrays: {problem}")
            return None
        return arrays

    def put_decoder(self, checkpoint_sha: str, arrays: dict) -> None:
        """Write the decoder arrays (and the checkpoint hash they belong to) atomically."""
        from visiontool.models.sam_weights import CHECKPOINT_SHA_KEY

        path = self.decoder_path(checkpoint_sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".dec.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **{**arrays, CHECKPOINT_SHA_KEY: np.array(checkpoint_sha)})
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _discard(self, path: Path, reason: str) -> None:
        """Delete an unusable cache file and remember it (once) for the caller's warning."""
        if str(path) not in self.discarded:
            self.discarded.append(str(path))
        self.reasons[str(path)] = reason
        with contextlib.suppress(OSError):
            path.unlink()


def _parse(data: bytes, key: str) -> tuple[np.ndarray, dict] | None:
    if len(data) < len(MAGIC) + 4 or not data.startswith(MAGIC):
        return None
    (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    if hlen > len(data) - start:
        return None
    try:
        header = json.loads(data[start:start + hlen].decode())
        shape = tuple(int(v) for v in header["shape"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    payload = data[start + hlen:]
    if header.get("key") != key or header.get("dtype") != "float32" or \
            len(payload) != int(np.prod(shape)) * 4 or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        return None
    return np.frombuffer(payload, dtype=np.float32).reshape(shape), header


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for c in chunks:
                fh.write(c)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
