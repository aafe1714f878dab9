"""Writing ImageResult records as table | json | jsonl | coco | csv (DESIGN.md §3).

One writer serves detect and segment. ``jsonl`` lines are flushed as each image finishes
(a crash loses nothing already printed); ``json`` is streamed as a list, element by
element; ``coco`` is COCO results (xywh boxes, plus RLE ``segmentation`` for masks) with
ids mapped onto a ground truth when one is given; ``table`` is rendered at the end.
"""
from __future__ import annotations

import csv
import json
import os
import re
from contextlib import ExitStack
from typing import TextIO

from visiontool.errors import InvalidInputError, UsageError
from visiontool.io.coco import GroundTruthIndex, xyxy_to_xywh
from visiontool.io.output import open_output
from visiontool.types import ImageResult

FORMATS = ("table", "json", "jsonl", "coco", "csv")
_NUMERIC_STEM = re.compile(r"^\d+$")


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


def default_image_id(image: str, position: int) -> int:
    """Image id when no GT is given: the file's numeric stem (COCO names such as
    ``000000039769.jpg`` -> 39769), else the 1-based position among the inputs."""
    stem = os.path.splitext(os.path.basename(image.split("?")[0]))[0]
    return int(stem) if _NUMERIC_STEM.match(stem) else position


def coco_results(result: ImageResult, gt: GroundTruthIndex | None, stats: dict | None = None) -> list[dict]:
    """COCO result dicts for one image; ids mapped by file name / category name on ``gt``."""
    stats = stats if stats is not None else {}
    image_id = result.image_id
    if image_id is None:
        stats["unmatched_images"] = stats.get("unmatched_images", 0) + 1
        return []
    rows: list[dict] = []

    def category(label: str | None, cid: int | None) -> int | None:
        if gt is None:
            return cid
        mapped = gt.category_id_for(label) if label is not None else None
        if mapped is None:
            stats.setdefault("unmatched_labels", set()).add(label)
        return mapped

    if result.masks is not None:
        for m in result.masks:
            cid = category(m.label, m.category_id if m.category_id is not None else 1)
            if cid is None:
                continue
            rows.append({"image_id": image_id, "category_id": int(cid), "bbox": xyxy_to_xywh(m.box),
                         "score": float(m.score), "segmentation": m.segmentation})
        return rows
    d = result.detections
    for box, score, cid0, name in zip(d.xyxy, d.scores, d.class_ids, d.names):
        cid = category(str(name), int(cid0))
        if cid is None:
            continue
        rows.append({"image_id": image_id, "category_id": int(cid), "bbox": xyxy_to_xywh(box),
                     "score": float(score)})
    return rows


_CSV_DET = ["image", "image_id", "width", "height", "model", "label", "category_id", "score",
            "x1", "y1", "x2", "y2"]
_CSV_MASK = ["image", "image_id", "width", "height", "model", "mask_id", "label", "score", "area",
             "x1", "y1", "x2", "y2"]


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
        self._table_rows: list[ImageResult] = []

    def __enter__(self) -> "RecordWriter":
        self._fh = self._stack.enter_context(open_output(self.output)) if self.fmt != "table" or self.output \
            else None
        if self.fmt in ("json", "coco"):
            self._fh.write("[")
        elif self.fmt == "csv":
            self._csv = csv.writer(self._fh, lineterminator="\n")
            self._csv.writerow(_CSV_MASK if self.kind == "segment" else _CSV_DET)
        return self

    def _list_item(self, obj: dict) -> None:
        self._fh.write(("\n" if self._count == 0 else ",\n") + json.dumps(obj))
        self._count += 1

    def write(self, result: ImageResult) -> None:
        fmt = self.fmt
        if fmt == "jsonl":
            self._fh.write(json.dumps(result.to_dict()) + "\n")
            self._fh.flush()
        elif fmt == "json":
            self._list_item(result.to_dict())
            self._fh.flush()
        elif fmt == "coco":
            for row in coco_results(result, self.gt, self.stats):
                self._list_item(row)
            self._fh.flush()
        elif fmt == "csv":
            self._write_csv(result)
            self._fh.flush()
        else:
            self._table_rows.append(result)

    def _write_csv(self, r: ImageResult) -> None:
        head = [r.image, "" if r.image_id is None else r.image_id, r.width, r.height, r.model]
        if r.masks is not None:
            for m in r.masks:
                self._csv.writerow(head + [m.id, m.label or "", f"{m.score:.6g}", m.area, *m.box])
        else:
            for item in r.detections.to_list():
                self._csv.writerow(head + [item["label"], item["category_id"], item["score"], *item["box"]])

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                if self.fmt in ("json", "coco"):
                    self._fh.write("\n]\n" if self._count else "]\n")
                elif self.fmt == "table":
                    self._render_table()
        finally:
            self._stack.__exit__(exc_type, exc, tb)
        return False

    def _render_table(self) -> None:
        from visiontool.render.console import print_tables
        from visiontool.render.tables import results_table

        print_tables(self._fh, results_table(self._table_rows, title=self.table_title))
