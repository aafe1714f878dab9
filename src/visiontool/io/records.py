"""Writing ImageResult records as table | json | jsonl | coco | csv (DESIGN.md §3).

One writer serves detect and segment. ``jsonl`` lines are flushed as each image finishes
(a crash loses nothing already printed); ``json`` is streamed as a list, element by
element; ``coco`` is COCO results (xywh boxes, plus RLE ``segmentation`` for masks) with
ids mapped onto a ground truth when one is given; ``table`` is rendered at the end.
"""
from __future__ import annotations

import csv
import json
from contextlib import ExitStack
from typing import TextIO

from visiontool.convert import csv_header, to_coco_results, to_csv_rows, to_record
from visiontool.errors import InvalidInputError, Interrupted, UsageError, VisionToolError
from visiontool.io.coco import GroundTruthIndex
from visiontool.io.output import open_output
from visiontool.types import ImageResult

FORMATS = ("table", "json", "jsonl", "coco", "csv")


def validate_format(fmt: str | None, allowed: tuple[str, ...] = FORMATS) -> str | None:
    if fmt is None:
        return None
    f = fmt.strip().lower()
    if f not in allowed:
        raise UsageError(f"invalid --format '{fmt}': expected one of {'|'.join(allowed)}")
    return f


def parse_json_or_jsonl(text: str, what: str):
    """Parse ``text`` as one JSON document, else as JSON lines (detect's ``jsonl``).

    Returns the document (a list, or the one record of a single-line ``jsonl``) or the list of
    line records. ``what`` names the input in the one-line InvalidInputError.
    """
    if not text.strip():
        raise InvalidInputError(f"{what} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as first:
        lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
        if len(lines) < 2:
            raise InvalidInputError(f"{what} is not valid JSON: {first.msg} at line {first.lineno} "
                                    f"column {first.colno}") from None
        out = []
        for n, ln in lines:
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{what} is neither JSON nor JSONL: line {n}: {exc.msg} at column "
                                        f"{exc.colno}") from None
        return out


class RecordWriter:
    """Context manager writing results in one format to stdout or an atomic file.

    >>> with RecordWriter("jsonl", None) as w:
    ...     w.write(result)
    """

    def __init__(self, fmt: str, output: str | None = None, gt: GroundTruthIndex | None = None,
                 kind: str = "detect", table_title: str | None = None):
        self.fmt = validate_format(fmt)
        self.output = output
        self.gt = gt
        self.kind = kind
        self.table_title = table_title
        self.stats: dict = {}
        self._stack = ExitStack()
        self._fh: TextIO | None = None
        self._count = 0
        self._csv = None
        self._header: list[str] = []
        self._table_rows: list[ImageResult] = []

    def __enter__(self) -> "RecordWriter":
        # an interrupted run keeps every finished record (the list is closed first)
        self._fh = self._stack.enter_context(open_output(self.output, keep_on_interrupt=True)) \
            if self.fmt != "table" or self.output else None
        return self

    def _list_item(self, obj: dict) -> None:
        # the list opens with its first item: a run that fails before any leaves stdout empty, not "["
        self._fh.write(("[\n" if self._count == 0 else ",\n") + json.dumps(obj))
        self._count += 1

    def write(self, result: ImageResult) -> None:
        """Write one record (failed inputs are reported on stderr by the command, not written)."""
        fmt = self.fmt
        if fmt == "jsonl":
            self._fh.write(json.dumps(to_record(result)) + "\n")
            self._fh.flush()
        elif fmt == "json":
            self._list_item(to_record(result))
            self._fh.flush()
        elif fmt == "coco":
            for row in to_coco_results(result, self.gt, self.stats):
                self._list_item(row)
            self._fh.flush()
        elif fmt == "csv":
            if self._csv is None:
                self._csv = csv.writer(self._fh, lineterminator="\n")
                self._header = csv_header(result)
                self._csv.writerow(self._header)
            self._csv.writerows(to_csv_rows(result, self._header))
            self._fh.flush()
        else:
            self._table_rows.append(result)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self.fmt in ("json", "coco") and self._count and exc_type is not None \
                    and issubclass(exc_type, VisionToolError):
                self._fh.write("\n]\n")  # a run stopped by an error keeps its finished records valid JSON, as jsonl
            elif exc_type is None or issubclass(exc_type, Interrupted):
                if self.fmt in ("json", "coco"):
                    self._fh.write("\n]\n" if self._count else "[]\n")
                elif self.fmt == "csv" and self._csv is None:  # no record: the header alone
                    csv.writer(self._fh, lineterminator="\n").writerow(
                        csv_header(ImageResult("", 0, 0, "", kind=self.kind)))
                elif self.fmt == "table":
                    self._render_table()
        finally:
            self._stack.__exit__(exc_type, exc, tb)
        return False

    def _render_table(self) -> None:
        from visiontool.render.console import print_tables
        from visiontool.render.tables import results_table

        print_tables(self._fh, results_table(self._table_rows, title=self.table_title))
