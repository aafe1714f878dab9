"""Whether the 0.0 scores of a bbox results file are real ones.

ultrafast-pycocotools' native reader (:mod:`visiontool.io.pred_fast`) reads a null or missing
``"score"`` as 0.0, where pycocotools fails: when some rows have a 0.0 score, the text decides.
:func:`scores_present` looks those records up (the i-th ``{`` starts record i when the file
holds one per record) and falls back to counting every ``"score"`` key.
"""
from __future__ import annotations

import os
import re

import numpy as np

SCAN_CHUNK = 1 << 20  # bytes read at a time: each chunk is searched while it is in the CPU cache
NUMERIC_SCORE = re.compile(rb'"score"\s*:\s*-?[0-9]')
MAX_RECORDS_LOOKED_UP = 5000  # 0.0 scores checked one record at a time (~5 us each); more: count keys


def scores_present(path: str, zero: np.ndarray, n: int) -> bool:
    """The native reader turns a null or missing score into 0.0: accept the file only if each
    record whose score it read as 0.0 (positions ``zero`` among ``n``) holds a numeric
    ``"score"``.

    Those records are looked up, not the whole text searched: when the file holds exactly one
    ``{`` per record (no nested object, no brace in a string), record i starts at the i-th
    ``{``. A pass of numpy over the text finds the braces (~16 ms for 50 MB, against ~60 ms to
    count the ``"score"`` keys and search for ``null``, which steal a core from the engine's
    evaluation it runs beside), then only the 0.0-score records are read. Other files, or
    more than :data:`MAX_RECORDS_LOOKED_UP` such records, take :func:`score_keys_present`."""
    if zero.size > MAX_RECORDS_LOOKED_UP:
        return score_keys_present(path, n)
    starts = record_starts(path, zero, n)
    if starts is None:
        return score_keys_present(path, n)
    with open(path, "rb", buffering=0) as fh:
        for begin, end in starts:
            fh.seek(begin)
            if NUMERIC_SCORE.search(fh.read(end - begin)) is None:
                return False
    return True


def record_starts(path: str, records: np.ndarray, n: int) -> list[tuple[int, int]] | None:
    """The byte range ``[begin, end)`` of each of ``records`` (sorted positions in a JSON list
    of ``n`` objects): from its ``{`` to the next record's (or the end of the file). None when
    the file does not hold exactly ``n`` braces ``{``."""
    wanted = np.union1d(records, records + 1)
    wanted = wanted[wanted < n]
    offsets = np.empty(wanted.size, dtype=np.int64)
    buf = bytearray(SCAN_CHUNK)
    text = np.frombuffer(buf, dtype=np.uint8)
    seen = at = k = 0
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        while got := fh.readinto(buf):
            braces = np.flatnonzero(text[:got] == 0x7B)  # "{"
            if k < wanted.size and wanted[k] < seen + braces.size:
                j = int(np.searchsorted(wanted, seen + braces.size))
                offsets[k:j] = at + braces[wanted[k:j] - seen]
                k = j
            seen += braces.size
            at += got
    if seen != n:
        return None
    where = dict(zip(wanted.tolist(), offsets.tolist()))
    return [(where[i], where.get(i + 1, size)) for i in records.tolist()]


def score_keys_present(path: str, n: int) -> bool:
    """Exactly one ``"score"`` key per record and none of them null (the whole text searched).

    Read in chunks, each counted and searched while in cache (no whole-file copy: 50 MB less
    at the engine's peak); only a file with "null" somewhere is read again whole for the
    exact pattern."""
    key, null = b'"score"', b"null"
    keep = len(key) - 1  # a match split across two chunks lies within the last and first `keep` bytes
    count, has_null, tail = 0, False, b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(SCAN_CHUNK)
            if not chunk:
                break
            seam = tail + chunk[:keep]  # no match fits in either half of the seam alone: none counted twice
            count += chunk.count(key) + seam.count(key)
            has_null = has_null or null in chunk or null in seam
            tail = chunk[-keep:] if len(chunk) >= keep else (tail + chunk)[-keep:]
    if count != n:
        return False
    if has_null:
        with open(path, "rb") as fh:
            return re.search(rb'"score"\s*:\s*null', fh.read()) is None
    return True
