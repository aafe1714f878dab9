"""Opening and reading JSON input files (evaluate's --gt and --pred) without surprises.

* :func:`check_input_path` says what a path is when it is not a readable file: not found,
  a directory, a symlink loop, a character device such as ``/dev/null``; a FIFO (``<(cmd)``)
  and ``-`` (stdin) are read as streams.
* :func:`open_json` looks at the first bytes before reading the rest: after an optional
  UTF-8 BOM and whitespace a JSON document or JSON lines start with ``[`` or ``{``, so a
  2 GiB video or a UTF-16 file is rejected at once. A regular file is memory-mapped (its
  pages are the page cache's, not the heap's), a stream is read into memory.
* :func:`iter_items` yields the elements of a top-level list, the lines of JSON lines, or a
  single object, decoding one element at a time (msgspec), so a large valid file costs its
  mapped pages plus what the caller keeps of each element. A document nested deeper than the
  decoder's recursion limit is an :class:`InvalidInputError`, not a ``RecursionError``.

Every failure is a :class:`~visiontool.errors.UsageError` (the path) or
:class:`~visiontool.errors.InvalidInputError` (the content), one line naming the input.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from visiontool.errors import InvalidInputError, UsageError
from visiontool.io.readers import check_input_path, is_stream  # noqa: F401 (re-exported: one path check)

_WS = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"
_HEAD = 1 << 16  # bytes read from a stream before deciding it is JSON at all
# compressed files and archives, by their magic bytes: (format, the shell command that gives the JSON)
_PACKED = ((b"\x1f\x8b", "gzip-compressed", "zcat"), (b"BZh", "bzip2-compressed", "bzcat"),
           (b"\xfd7zXZ\x00", "xz-compressed", "xzcat"), (b"\x28\xb5\x2f\xfd", "zstd-compressed", "zstdcat"),
           (b"PK\x03\x04", "a zip archive", "unzip -p"))


def json_start(head: bytes, label: str) -> int:
    """Offset of the first JSON byte (``[`` or ``{``) in ``head`` (the first bytes of the
    input), after an optional UTF-8 BOM and whitespace. ``label`` is e.g. "predictions 'p.json'"."""
    wide = head.lstrip(b"\x00")[:1] in (b"[", b"{", b" ", b"\n", b"\r", b"\t") and b"\x00" in head[:4]
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or wide:
        raise InvalidInputError(f"{label} is UTF-16 or UTF-32 text; JSON input must be UTF-8")
    start = len(_BOM) if head.startswith(_BOM) else 0
    n = len(head)
    while start < n and head[start] in _WS:
        start += 1
    if start == n:
        if n >= _HEAD:
            raise InvalidInputError(f"{label} is not JSON: it starts with {n} bytes of blanks")
        raise InvalidInputError(f"{label} is empty")
    if head[start] not in b"[{":
        for magic, what, command in _PACKED:
            if head.startswith(magic):
                path = label.partition(" '")[2][:-1] or "-"
                hint = f"pipe it through {command.split()[0]}" if is_stream(path) else \
                    f"e.g. <({command} {path}) in its place"
                raise InvalidInputError(f"{label} is {what}: give the JSON itself, {hint}")
        snippet = head[start:start + 24].decode("utf-8", "backslashreplace")
        raise InvalidInputError(f"{label} is not JSON: expected a JSON list or object (or JSON lines) but it "
                                f"starts with {ascii(snippet)}")
    if head[start] == ord("["):
        _first_element(head, start, label)
    return start


def _first_element(head: bytes, start: int, label: str) -> None:
    """A list's first element must parse within the first bytes unless they end first: so
    ``[`` followed by gigabytes of anything else fails here, before a reader loads it all."""
    import json

    text = head[start + 1:].decode("utf-8", "ignore")
    body = text.lstrip()
    if not body or body[0] == "]":
        return
    try:
        json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as exc:
        # stopped well before the end of what was read (a string running past it is no proof)
        if len(body) - exc.pos > 64 and not exc.msg.startswith("Unterminated string"):
            col = start + 2 + (len(text) - len(body)) + exc.pos
            raise InvalidInputError(f"{label} is not valid JSON: {exc.msg} near byte {col}") from None
    except RecursionError:
        raise too_deep(label) from None


@dataclass
class JsonInput:
    """An opened input: ``data`` (an mmap or bytes) and ``start``, the offset of its first
    JSON byte. ``label`` names it in messages."""

    data: Any
    start: int
    label: str

    def body(self) -> memoryview:
        return memoryview(self.data)[self.start:]


@contextlib.contextmanager
def open_json(path: str, what: str) -> Iterator[JsonInput]:
    """Check the path, look at its first bytes, and give the whole input: a read-only mmap
    for a regular file (unmapped on exit), bytes for stdin or a FIFO."""
    kind = check_input_path(path, what)
    label = f"{what} '{path}'"
    if kind == "stream":
        fh = sys.stdin.buffer if path == "-" else open(path, "rb")
        try:
            head = fh.read(_HEAD)
            start = json_start(head, label)
            data = head + fh.read()
        finally:
            if fh is not sys.stdin.buffer:
                fh.close()
        yield JsonInput(data, start, label)
        return
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {label}: {exc.strerror or exc}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise InvalidInputError(f"{label} is empty")
        start = json_start(fh.read(min(size, _HEAD)), label)
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        yield JsonInput(mm, start, label)
    finally:
        try:
            mm.close()
        except BufferError:  # a view is still alive (an exception holds it): the GC unmaps it
            pass


_DROP_EVERY = 1 << 16  # list elements between two page drops (a few MB of a results file)
_DROP_BYTES = 1 << 26  # JSON lines bytes between two page drops


def _drop_pages(data) -> None:
    """Let the kernel drop the mapped file's resident pages (they are read again from the page
    cache if touched): the mapping then adds what is being read, not the whole file, to the RSS."""
    if isinstance(data, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        try:
            data.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def where(data, offset: int) -> str:
    """``line L column C`` of a byte offset (1-based, as json's messages count them)."""
    view = memoryview(data)[:offset]
    line = bytes(view).count(b"\n") + 1 if offset < (1 << 26) else None
    if line is None:
        return f"byte {offset}"
    col = offset - (bytes(view).rfind(b"\n") + 1) + 1
    return f"line {line} column {col}"


def _reason(exc: Exception) -> tuple[str, int | None]:
    """(reason, byte offset or None) of a msgspec DecodeError, in json's words."""
    import re

    msg = str(exc)
    m = re.search(r"\(byte (\d+)\)", msg)
    reason = re.sub(r"^JSON is malformed: ", "", re.sub(r"\s*\(byte \d+\)", "", msg))
    if "truncated" in msg:
        reason = "the input ends in the middle of a value (truncated)"
    return reason, (int(m.group(1)) if m else None)


def _decode_error(exc: Exception, inp: JsonInput) -> str:
    """The reason and where (line and column in the file) of a DecodeError on ``inp.body()``."""
    reason, offset = _reason(exc)
    return reason if offset is None else f"{reason} at {where(inp.data, inp.start + offset)}"


def _at_nonstandard(buf, exc: Exception) -> bool:
    """Whether msgspec stopped at a NaN / Infinity token, which Python's json (and so
    pycocotools) reads: the caller then parses with json to report the value itself."""
    import re

    m = re.search(r"\(byte (\d+)\)", str(exc))
    if not m:
        return False
    at = bytes(memoryview(buf)[int(m.group(1)):int(m.group(1)) + 9])
    return at.startswith((b"NaN", b"Infinity", b"-Infinity"))


def _json_loads(buf, label: str) -> Any:
    """Python's json, for documents with NaN / Infinity tokens (errors are one line)."""
    import json

    try:
        return json.loads(bytes(buf).decode("utf-8"))
    except RecursionError:
        raise too_deep(label) from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"{label} is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{label} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                                ) from None


def too_deep(label: str) -> InvalidInputError:
    return InvalidInputError(f"{label} is nested too deeply to be COCO data (JSON nested thousands of "
                             f"levels deep)")


def decode(raw, label: str) -> Any:
    """One JSON value (bytes-like) as Python objects; errors are one line."""
    import msgspec

    try:
        return msgspec.json.decode(raw)
    except RecursionError:
        raise too_deep(label) from None
    except msgspec.DecodeError as exc:
        raise InvalidInputError(f"{label} is not valid JSON: {exc}") from None


def load_document(path: str, what: str) -> Any:
    """A whole small JSON document (e.g. a ground truth) as Python objects."""
    import msgspec

    with open_json(path, what) as inp:
        body = inp.body()
        try:
            return msgspec.json.decode(body)
        except RecursionError:
            raise too_deep(inp.label) from None
        except msgspec.DecodeError as exc:
            if "UTF-8" in str(exc):
                raise InvalidInputError(f"{inp.label} is not UTF-8 JSON") from None
            raise InvalidInputError(f"{inp.label} is not valid JSON: {_decode_error(exc, inp)}") from None
        finally:
            body.release()


@dataclass
class Items:
    """What :func:`iter_items` found: ``shape`` is ``"list"``, ``"lines"`` or ``"object"``."""

    shape: str
    count: int | None  # elements of a list (None for JSON lines until read)


def iter_items(inp: JsonInput, info: Items | None = None) -> Iterator[tuple[int, Any]]:
    """(index, value) for each element of a top-level list, each line of JSON lines (index
    = line number - 1, blank lines skipped), or the single top-level object (index 0).
    ``info`` (if given) is filled with the shape before the first item is yielded."""
    import msgspec

    info = info if info is not None else Items("list", None)
    body = inp.body()
    first = body[0:1].tobytes()
    raws: list = []
    try:
        if first == b"[":
            try:
                raws = msgspec.json.decode(body, type=list[msgspec.Raw])
            except RecursionError:
                raise too_deep(inp.label) from None
            except msgspec.DecodeError as exc:
                if not _at_nonstandard(body, exc):
                    raise InvalidInputError(f"{inp.label} is not valid JSON: {_decode_error(exc, inp)}") from None
                doc = _json_loads(body, inp.label)
                info.shape, info.count = ("list", len(doc)) if isinstance(doc, list) else ("object", 1)
                yield from enumerate(doc if isinstance(doc, list) else [doc])
                return
            info.shape, info.count = "list", len(raws)
            _drop_pages(inp.data)  # the scan touched every page
            for i in range(len(raws)):
                raw, raws[i] = raws[i], None  # each element is dropped once read
                try:
                    value = msgspec.json.decode(raw)
                except RecursionError:
                    raise too_deep(f"{inp.label}: element {i}") from None
                del raw
                if i % _DROP_EVERY == _DROP_EVERY - 1:
                    _drop_pages(inp.data)
                yield i, value
            return
        try:
            msgspec.json.decode(body, type=msgspec.Raw)  # one value, or JSON lines?
            single = True
        except RecursionError:
            raise too_deep(inp.label) from None
        except msgspec.DecodeError as exc:
            if _at_nonstandard(body, exc):
                info.shape, info.count = "object", 1
                yield 0, _json_loads(body, inp.label)
                return
            if "trailing characters" not in str(exc):
                raise InvalidInputError(f"{inp.label} is not valid JSON: {_decode_error(exc, inp)}") from None
            single = False
        if single:
            info.shape, info.count = "object", 1
            yield 0, decode(body, inp.label)
            return
        info.shape = "lines"
        yield from _lines(inp, body)
    finally:
        del raws[:]  # each Raw holds a view of the mapping
        try:
            body.release()
        except BufferError:  # a decoded value still refers to it: the GC releases it
            pass


def _lines(inp: JsonInput, body: memoryview) -> Iterator[tuple[int, Any]]:
    """JSON lines: every line's syntax is checked first (msgspec.Raw builds nothing), so a
    malformed file is reported as such before any record's content."""
    import msgspec

    spans = []
    data, pos, end = inp.data, inp.start, len(inp.data)
    lineno = bytes(memoryview(data)[:inp.start]).count(b"\n")  # lines before the first (BOM, blanks)
    while pos < end:
        nl = data.find(b"\n", pos)
        stop = end if nl < 0 else nl
        lineno += 1
        if bytes(memoryview(data)[pos:min(stop, pos + 64)]).strip() or stop - pos > 64:
            spans.append((lineno, pos, stop))
        pos = stop + 1
    for lineno, a, b in spans:
        with memoryview(data)[a:b] as line:
            try:
                msgspec.json.decode(line, type=msgspec.Raw)
            except RecursionError:
                raise too_deep(f"{inp.label}: line {lineno}") from None
            except msgspec.DecodeError as exc:
                if not _at_nonstandard(line, exc):
                    reason, offset = _reason(exc)
                    at = "" if offset is None else f" at column {offset + 1}"
                    raise InvalidInputError(f"{inp.label} is neither JSON nor JSONL: line {lineno}: {reason}{at}"
                                            ) from None
    _drop_pages(data)  # the syntax pass touched every page
    since_drop = 0
    for lineno, a, b in spans:
        since_drop += b - a
        if since_drop > _DROP_BYTES:
            _drop_pages(data)
            since_drop = 0
        with memoryview(data)[a:b] as line:
            try:
                value = msgspec.json.decode(line)
            except RecursionError:
                raise too_deep(f"{inp.label}: line {lineno}") from None
            except msgspec.DecodeError:
                value = _json_loads(line, f"{inp.label}: line {lineno}")
        yield lineno - 1, value
