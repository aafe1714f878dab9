"""What a cluster run reads: SOURCE arguments -> image names, and image bytes on any node.

Beyond the local SOURCEs (files, directories with ``--recursive``, globs, http(s) URLs, ``-``
for a list on stdin, all expanded by :func:`visiontool.io.images.expand_sources` exactly as
the local commands do) a cluster run takes:

* **manifests**: a text file of paths/URLs (``.txt``, ``.lst``, ``.list``: one per line, ``#``
  comments), or a Parquet / JSONL / CSV file with a ``path`` column. Relative entries are
  relative to the manifest's folder. Entries are taken as listed, without a check that they
  exist (a missing one becomes a row with ``error``), so ten million entries cost no stat.
* **object-store URLs** that ``pyarrow.fs`` opens (``s3://``, ``gs://``, … when pyarrow has
  that filesystem; ``file://`` always): one object, or every image under a prefix
  (``--recursive`` for nested prefixes). Only ``file://`` can be tested on this machine.

Names are de-duplicated in order, like the local commands do.
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterator

from visiontool.errors import ImageLoadError, InvalidInputError, UsageError

MANIFEST_TEXT = (".txt", ".lst", ".list")
MANIFEST_TABLE = (".parquet", ".pq", ".jsonl", ".ndjson", ".csv")
LOCAL_SCHEMES = ("http://", "https://")


def is_object_url(s: str) -> bool:
    """A URI for ``pyarrow.fs`` (``s3://bucket/key``, ``gs://…``, ``file:///…``), not http(s)."""
    return "://" in s and not s.startswith(LOCAL_SCHEMES) and s.split("://", 1)[0].isidentifier()


def is_manifest(s: str) -> bool:
    low = s.split("?")[0].lower()
    if not low.endswith(MANIFEST_TEXT + MANIFEST_TABLE):
        return False
    return is_object_url(s) or os.path.isfile(os.path.expanduser(s))


def iter_names(sources: list[str], recursive: bool = False) -> Iterator[str]:
    """Every image name the SOURCE arguments list, in argument order, each once."""
    from visiontool.io.images import expand_sources

    seen: set[str] = set()
    plain: list[str] = []

    def emit(names) -> Iterator[str]:
        for n in names:
            if n not in seen:
                seen.add(n)
                yield n

    def flush() -> Iterator[str]:
        if plain:
            yield from emit(s.name for s in expand_sources(list(plain), recursive=recursive))
            plain.clear()

    if not sources:
        raise UsageError("no image given: pass files, directories, globs, URLs, manifests, or '-' for paths on stdin")
    for raw in sources:
        if raw != "-" and is_manifest(raw):
            yield from flush()
            yield from emit(manifest_entries(raw))
        elif is_object_url(raw):
            yield from flush()
            yield from emit(object_listing(raw, recursive))
        else:
            plain.append(raw)
    yield from flush()


# ----------------------------------------------------------------------------- manifests
def manifest_entries(path: str) -> Iterator[str]:
    """The paths a manifest lists (streamed: a Parquet manifest is read a row group at a time)."""
    low = path.split("?")[0].lower()
    base = "" if is_object_url(path) else os.path.dirname(os.path.abspath(os.path.expanduser(path)))
    n = 0
    for entry in (_text_entries(path) if low.endswith(MANIFEST_TEXT) else _table_entries(path, low)):
        entry = entry.strip()
        if not entry:
            continue
        n += 1
        yield _resolve(entry, base, path)
    if n == 0:
        raise UsageError(f"manifest '{path}' lists no images")


def _resolve(entry: str, base: str, manifest: str) -> str:
    if "://" in entry or os.path.isabs(entry) or entry.startswith("~"):
        return os.path.expanduser(entry) if entry.startswith("~") else entry
    if not base:  # a manifest in an object store: its entries relative to its prefix
        return manifest.rsplit("/", 1)[0] + "/" + entry
    return os.path.join(base, entry)


def _open_binary(path: str):
    if is_object_url(path):
        from visiontool.io.storage import filesystem

        fs, p = filesystem(path)
        return fs.open_input_file(p)
    return open(os.path.expanduser(path), "rb")


def _text_entries(path: str) -> Iterator[str]:
    with _open_binary(path) as fh:
        for raw in fh:
            line = raw.decode("utf-8", "surrogateescape").strip() if isinstance(raw, bytes) else raw.strip()
            if line and not line.startswith("#"):
                yield line


def _table_entries(path: str, low: str) -> Iterator[str]:
    if low.endswith((".jsonl", ".ndjson")):
        import json

        with _open_binary(path) as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except ValueError as exc:
                    raise InvalidInputError(f"manifest '{path}' line {n}: not JSON ({exc})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
                    raise InvalidInputError(f"manifest '{path}' line {n}: needs a \"path\" string")
                yield rec["path"]
        return
    from visiontool.errors import require

    require("pyarrow", "a Parquet or CSV manifest", "ray")
    if low.endswith(".csv"):
        import pyarrow.csv as pacsv

        with _open_binary(path) as fh:
            reader = pacsv.open_csv(fh)
            _check_column(reader.schema.names, path)
            for batch in reader:
                yield from (str(v) for v in batch.column("path").to_pylist() if v is not None)
        return
    import pyarrow.parquet as pq

    with _open_binary(path) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as exc:  # noqa: BLE001 - pyarrow's own error types vary by version
            raise InvalidInputError(f"manifest '{path}' is not a Parquet file ({exc})") from None
        _check_column(pf.schema_arrow.names, path)
        for batch in pf.iter_batches(columns=["path"], batch_size=65536):
            yield from (str(v) for v in batch.column(0).to_pylist() if v is not None)


def _check_column(names: list[str], path: str) -> None:
    if "path" not in names:
        raise InvalidInputError(f"manifest '{path}' has no 'path' column (columns: {', '.join(names) or 'none'})")


# ----------------------------------------------------------------------------- object stores
def object_listing(uri: str, recursive: bool) -> list[str]:
    """One object, or the images under a prefix, as URIs in the spelling given."""
    from pyarrow.fs import FileSelector, FileType

    from visiontool.io.images import IMAGE_EXTENSIONS
    from visiontool.io.storage import filesystem

    fs, path = filesystem(uri)
    scheme = uri.split("://", 1)[0]
    prefix = uri[: len(uri) - len(uri.split("://", 1)[1])]  # "s3://"
    info = fs.get_file_info(path)
    if info.type == FileType.File:
        return [uri]
    if info.type != FileType.Directory:
        raise UsageError(f"no such object or prefix: '{uri}'")
    found = fs.get_file_info(FileSelector(path, recursive=recursive))
    names = sorted(f.path for f in found if f.type == FileType.File
                   and os.path.splitext(f.base_name)[1].lower() in IMAGE_EXTENSIONS)
    if not names:
        hint = "" if recursive else " (use --recursive to look under nested prefixes)"
        raise UsageError(f"'{uri}' holds no images{hint}")
    if scheme == "file":
        return [f"file://{n}" for n in names]
    return [f"{prefix}{n.lstrip('/')}" for n in names]


_FS_CACHE: dict[str, object] = {}


def load_object(uri: str):
    """Decode an object-store image exactly as :func:`visiontool.io.images.load_image` decodes
    a file (EXIF orientation, every mode to RGB, the pixel limit): its bytes go through a
    temporary file, and messages name the URI."""
    from visiontool.io.images import load_image

    key = uri.split("://", 1)[0] + "://" + uri.split("://", 1)[1].split("/", 1)[0]
    try:
        if key not in _FS_CACHE:
            from visiontool.io.storage import filesystem

            _FS_CACHE[key] = filesystem(uri)[0]
        fs = _FS_CACHE[key]
        path = uri.split("://", 1)[1]  # pyarrow's path: "bucket/key", or "/abs/path" for file://
        with fs.open_input_stream(path) as fh:
            data = fh.read()
    except (OSError, UsageError) as exc:
        raise ImageLoadError(f"{uri}: cannot open ({exc})") from exc
    suffix = os.path.splitext(uri.split("?")[0])[1]
    with tempfile.NamedTemporaryFile(suffix=suffix, prefix="visiontool-") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            return load_image(tmp.name)
        except ImageLoadError as exc:
            raise ImageLoadError(str(exc).replace(tmp.name, uri)) from exc

