"""MOTChallenge text files: read with line-numbered validation, found in folders, written as frames finish.

One row per box, comma-separated (whitespace-separated rows are accepted too)::

    ground truth:  frame,id,x,y,w,h,consider,class,visibility      (MOT16/17/20 gt.txt)
    predictions:   frame,id,x,y,w,h,score,-1,-1,-1                 (what detect --format mot writes)

``frame`` is 1-based, ``id`` a non-negative integer, ``x, y`` the box's top-left corner and
``w, h`` its size in pixels. A ground-truth row's 7th column is MOTChallenge's *consider*
flag (0 = ignore), not a score; its 8th the class (1 pedestrian, 2 person on vehicle, ...,
or -1 when there are no classes). Missing trailing columns are filled (ground truth:
consider 1, class -1; predictions: score 1), so a six-column file is fine.

Every row is checked before anything is scored (exit 2 naming the file and line): column
count, integer frames >= 1 (within ``seqinfo.ini``'s ``seqLength`` when there is one),
integer ids >= 0, finite numbers, w and h >= 0, a 0/1-style consider flag, a prediction
class of -1 or 1 (MOTChallenge scores one class), and no id twice in one frame.

A folder of sequences is either the MOTChallenge layout (``SEQ/gt/gt.txt`` with
``SEQ/seqinfo.ini``; predictions ``SEQ.txt``, also under ``data/`` as TrackEval keeps
them) or one ``SEQ.txt`` per sequence.
"""
from __future__ import annotations

import configparser
import math
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from visiontool.errors import InvalidInputError, UsageError
from visiontool.io.readers import is_stream, read_stream

GT_COLUMNS = "frame,id,x,y,w,h,consider,class,visibility"
PRED_COLUMNS = "frame,id,x,y,w,h,score,-1,-1,-1"
_SPLIT = re.compile(r"\s*,\s*|\s+")


@dataclass
class MotTable:
    """One MOT file, validated. ``lines`` are its rows, normalised (comma-separated, padded)
    for the metric library; the arrays have one entry per row."""

    path: str
    kind: str  # "gt" | "pred"
    lines: list[str]
    frames: np.ndarray  # (N,) int64, 1-based
    ids: np.ndarray  # (N,) int64
    boxes: np.ndarray  # (N, 4) float64 xywh pixels
    conf: np.ndarray  # (N,) float64: the prediction score, or the ground truth's consider flag
    classes: np.ndarray  # (N,) int64 (-1: none)

    @property
    def max_frame(self) -> int:
        return int(self.frames.max()) if len(self.frames) else 0

    def __len__(self) -> int:
        return len(self.frames)


def _fail(path: str, n: int, why: str, line: str) -> InvalidInputError:
    shown = line if len(line) <= 60 else line[:57] + "..."
    return InvalidInputError(f"{path}: line {n}: {why} (in '{shown}')")


def _integral(text: str) -> int | None:
    try:
        v = float(text)
    except ValueError:
        return None
    if not math.isfinite(v) or v != int(v):
        return None
    return int(v)


def read_mot(path: str | os.PathLike, kind: str = "pred", seq_length: int | None = None) -> MotTable:
    """Read and validate a MOTChallenge file (``kind``: "gt" or "pred"); InvalidInputError
    names the line of the first bad row, UsageError a missing file."""
    p = Path(path)
    shown = os.fsdecode(path)
    stream = is_stream(path)
    if not stream and not p.is_file():
        raise UsageError(f"MOT {'ground truth' if kind == 'gt' else 'prediction'} file not found: '{shown}'")
    try:
        text = read_stream(path).decode("utf-8") if stream else p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{shown}: not a text file (MOTChallenge rows are comma-separated text)") from None
    minimum = 6
    lines: list[str] = []
    frames, ids, boxes, conf, classes = [], [], [], [], []
    seen: dict[tuple[int, int], int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f for f in _SPLIT.split(line)]
        if fields and fields[-1] == "":
            fields = fields[:-1]  # a trailing comma
        if len(fields) < minimum:
            cols = GT_COLUMNS if kind == "gt" else PRED_COLUMNS
            raise _fail(shown, n, f"{len(fields)} column(s); a MOTChallenge row has at least {minimum} ({cols})", line)
        frame = _integral(fields[0])
        if frame is None or frame < 1:
            raise _fail(shown, n, f"frame '{fields[0]}' is not an integer >= 1 (MOT frames are 1-based)", line)
        if frame >= 2 ** 63:
            raise _fail(shown, n, f"frame {fields[0]} is beyond the 64-bit integer range", line)
        if seq_length is not None and frame > seq_length:
            raise _fail(shown, n, f"frame {frame} is beyond the sequence's {seq_length} frames (seqinfo.ini)", line)
        tid = _integral(fields[1])
        if tid is None or tid < 0:
            why = (f"id {fields[1]}: -1 marks an untracked detection (det.txt); only tracks can be scored "
                   "(run detect with --track)" if tid == -1 and kind == "pred"
                   else f"id '{fields[1]}' is not an integer >= 0")
            raise _fail(shown, n, why, line)
        if tid >= 2 ** 63:
            raise _fail(shown, n, f"id {fields[1]} is beyond the 64-bit integer range", line)
        try:
            x, y, w, h = (float(v) for v in fields[2:6])
        except ValueError:
            raise _fail(shown, n, "x, y, w, h must be numbers", line) from None
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise _fail(shown, n, "x, y, w, h must be finite", line)
        if w < 0 or h < 0:
            raise _fail(shown, n, f"negative box size w={fields[4]} h={fields[5]}", line)
        if len(fields) > 6:
            try:
                c = float(fields[6])
            except ValueError:
                c = math.nan
            if not math.isfinite(c):
                what = "consider flag" if kind == "gt" else "score"
                raise _fail(shown, n, f"column 7 ({what}) '{fields[6]}' is not a finite number", line)
            if kind == "gt" and c != int(c):
                raise _fail(shown, n, f"column 7 of a ground-truth row is MOTChallenge's consider flag (1 = score "
                                      f"it, 0 = ignore), not a score: got {fields[6]}", line)
        else:
            c = 1.0
            fields.append("1")
        cls = -1
        if len(fields) > 7:
            v = _integral(fields[7])
            if v is None:
                raise _fail(shown, n, f"column 8 (class) '{fields[7]}' is not an integer", line)
            cls = v
            if kind == "pred" and cls > 1:
                raise _fail(shown, n, f"column 8 (class) is {cls}: MOTChallenge evaluation scores one class, "
                                      "so predictions carry -1 (or 1)", line)
        elif kind == "gt":
            fields.append("-1")
        for extra in fields[8:]:
            try:
                float(extra)
            except ValueError:
                raise _fail(shown, n, f"column '{extra}' is not a number", line) from None
        key = (frame, tid)
        if key in seen:
            raise _fail(shown, n, f"id {tid} appears twice in frame {frame} (also line {seen[key]})", line)
        seen[key] = n
        lines.append(",".join(fields))
        frames.append(frame)
        ids.append(tid)
        boxes.append((x, y, w, h))
        conf.append(c)
        classes.append(cls)
    return MotTable(shown, kind, lines, np.asarray(frames, np.int64), np.asarray(ids, np.int64),
                    np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(conf, np.float64),
                    np.asarray(classes, np.int64))


# ----------------------------------------------------------------------------- sequences
@dataclass
class GtSequence:
    name: str
    path: str  # the gt file
    length: int | None = None  # seqinfo.ini seqLength


def _seq_length(seq_dir: Path) -> int | None:
    ini = seq_dir / "seqinfo.ini"
    if not ini.is_file():
        return None
    cp = configparser.ConfigParser()
    try:
        cp.read(ini, encoding="utf-8")
        return int(cp["Sequence"]["seqLength"])
    except (KeyError, ValueError, configparser.Error):
        raise InvalidInputError(f"{ini}: no integer [Sequence] seqLength") from None


def find_gt_sequences(path: str | os.PathLike) -> list[GtSequence]:
    """The sequences of a MOT ground truth: a file (one sequence, named after its MOT folder
    ``SEQ/gt/gt.txt`` or its stem), a sequence folder, a folder of ``SEQ/gt/gt.txt``, or a
    folder of ``SEQ.txt``."""
    p = Path(path)
    shown = os.fsdecode(path)
    if is_stream(path):  # stdin or <(command): one sequence, named after it ("stdin", "63" for /dev/fd/63)
        return [GtSequence("stdin" if shown == "-" else p.stem, shown, None)]
    if p.is_file():
        if p.parent.name == "gt" and p.name == "gt.txt":
            return [GtSequence(p.parent.parent.name, str(p), _seq_length(p.parent.parent))]
        return [GtSequence(p.stem, str(p), None)]
    if not p.is_dir():
        raise UsageError(f"MOT ground truth not found: '{shown}'")
    if (p / "gt" / "gt.txt").is_file():
        return [GtSequence(p.resolve().name, str(p / "gt" / "gt.txt"), _seq_length(p))]
    seqs = [GtSequence(d.name, str(d / "gt" / "gt.txt"), _seq_length(d))
            for d in sorted(p.iterdir()) if (d / "gt" / "gt.txt").is_file()]
    if not seqs:
        seqs = [GtSequence(f.stem, str(f), None) for f in sorted(p.glob("*.txt")) if f.is_file()]
    if not seqs:
        raise UsageError(f"'{shown}' holds no MOTChallenge ground truth (SEQ/gt/gt.txt or SEQ.txt files)")
    return seqs


def find_pred_files(path: str | os.PathLike, seqs: list[GtSequence]) -> tuple[dict[str, str], list[str]]:
    """{sequence: prediction file} for every ground-truth sequence, and the names of files
    that match no sequence. A file answers a single sequence; a folder holds ``SEQ.txt``
    (or ``data/SEQ.txt``). UsageError names the sequences without predictions."""
    p = Path(path)
    shown = os.fsdecode(path)
    if p.is_file() or is_stream(path):
        if len(seqs) != 1:
            raise UsageError(f"--pred '{shown}' is one file but the ground truth holds {len(seqs)} sequences; give "
                             "a folder with one SEQ.txt per sequence")
        return {seqs[0].name: str(p)}, []
    if not p.is_dir():
        raise UsageError(f"MOT prediction file or folder not found: '{shown}'")
    base = p / "data" if (p / "data").is_dir() and not any(p.glob("*.txt")) else p
    found = {f.stem: str(f) for f in base.glob("*.txt") if f.is_file()}
    names = [s.name for s in seqs]
    missing = [n for n in names if n not in found]
    if missing and len(seqs) == 1 and len(found) == 1:
        return {names[0]: next(iter(found.values()))}, []
    if missing:
        raise UsageError(f"--pred '{shown}' has no predictions for sequence(s) {', '.join(missing)} (expected "
                         f"{', '.join(n + '.txt' for n in missing[:3])}{' ...' if len(missing) > 3 else ''})")
    return {n: found[n] for n in names}, sorted(set(found) - set(names))


# ----------------------------------------------------------------------------- writing
def _file_stem(name: str, used: set[str]) -> str:
    from visiontool.io.viz import unique_stem

    return unique_stem(re.sub(r"[:/\\?*]+", "-", name.split("?")[0].rstrip("/").split("/")[-1] or name), used)


class MotWriter:
    """``--format mot``: rows of each frame written (and flushed) as the frame finishes.

    One video source goes to ``output`` (stdout when None or '-', else a file written
    atomically); several need ``output`` to be a directory and get one ``<video stem>.txt``
    each (the sequence layout ``evaluate --mot`` reads)."""

    def __init__(self, output: str | None, per_source_dir: bool = False):
        self.output = output
        self.per_source_dir = per_source_dir
        self._stack = ExitStack()
        self._fh: TextIO | None = None
        self._source: str | None = None
        self._inner: ExitStack | None = None
        self._used: set[str] = set()
        self.rows = 0
        self.files: list[str] = []

    def __enter__(self) -> "MotWriter":
        from visiontool.io.output import open_output

        if not self.per_source_dir:
            self._fh = self._stack.enter_context(open_output(self.output))
        return self

    def write(self, result) -> None:
        from visiontool.convert import to_mot_rows

        if result.frame is None or result.error is not None:
            return
        if self.per_source_dir and result.image != self._source:
            self._next_file(result.image)
        rows = to_mot_rows(result)
        if rows:
            self._fh.write("\n".join(rows) + "\n")
            self.rows += len(rows)
        self._fh.flush()

    def _next_file(self, name: str) -> None:
        from visiontool.io.output import atomic_write

        self._close_inner(None)
        self._source = name
        path = Path(self.output) / f"{_file_stem(name, self._used)}.txt"
        self._inner = ExitStack()
        self._fh = self._inner.enter_context(atomic_write(path))
        self.files.append(str(path))

    def _close_inner(self, exc_info) -> None:
        if self._inner is not None:
            inner, self._inner = self._inner, None
            inner.__exit__(*(exc_info or (None, None, None)))

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._close_inner((exc_type, exc, tb))
        finally:
            self._stack.__exit__(exc_type, exc, tb)
        return False
