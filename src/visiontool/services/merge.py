"""Gathering the shards of a cluster run (``--engine ray --output-dir DIR``) into one output.

* :func:`iter_records` — DIR's record dicts in input order (what the local command prints);
* :func:`iter_results` — the same as :class:`~visiontool.types.ImageResult` s, image ids taken
  from a ground truth when one is given (as ``detect --gt`` does);
* :func:`coco_results` — COCO result dicts (``evaluate --pred DIR`` reads these);
* :func:`merge` — any of ``coco | json | jsonl | csv`` through the one record writer.

Failed images (rows with ``error``) are left out, as the local commands leave them out of
their output, unless ``with_errors``. Reading JSONL shards needs nothing beyond the base
install; Parquet shards need pyarrow (extra ``[ray]``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from visiontool.errors import PartialFailure, UsageError
from visiontool.types import ImageResult

MERGE_FORMATS = ("jsonl", "json", "coco", "csv")


@dataclass
class MergeSummary:
    """What :func:`merge` gathered."""

    kind: str
    total: int  # images the run lists
    rows: int  # rows DIR holds
    written: int  # records written
    failed: int  # rows with error (left out unless with_errors)
    complete: bool
    stats: dict = field(default_factory=dict)


def open_run(directory: str | Path):
    """The state of a run's output directory (UsageError when DIR is not one)."""
    from visiontool.io.shards import OutputDir

    out = OutputDir(str(directory))
    if not out.store.is_dir():
        raise UsageError(f"no such directory: '{directory}'")
    if not out.has_job():
        raise UsageError(f"'{directory}' is not the --output-dir of a `visiontool detect|segment --engine ray` run "
                         "(it has no _job.json)")
    state = out.read_state()
    if any(e.shard.endswith(".parquet") for e in state.entries):
        from visiontool.errors import require

        require("pyarrow", "reading Parquet shards", "ray")
    return state


def unfinished(state) -> str:
    """Why a run's output lacks images: not finished, or shards lost or changed since."""
    return state.damage if state.damaged else "the run has not finished"


def iter_records(directory: str | Path, *, with_errors: bool = False, state=None) -> Iterator[dict]:
    """Every record in DIR in input order (the order of the local run); failed images' rows
    only with ``with_errors``."""
    from visiontool.io.shards import iter_positioned

    state = state or open_run(directory)
    for _, rec in iter_positioned(str(directory), state):
        if with_errors or "error" not in rec:
            yield rec


def iter_results(directory: str | Path, *, gt=None, with_errors: bool = False, state=None) -> Iterator[ImageResult]:
    """:func:`iter_records` as ImageResults; with ``gt`` (a GroundTruthIndex) image ids come
    from its file names, whatever ids the run gave."""
    from visiontool.convert import from_record

    for i, rec in enumerate(iter_records(directory, with_errors=with_errors, state=state), 1):
        r = from_record(rec, f"{directory}: record {i}")
        if gt is not None:
            r.image_id = gt.image_id_for(r.image)
        yield r


def coco_results(directory: str | Path, gt=None, stats: dict | None = None) -> Iterator[dict]:
    """COCO result dicts for DIR (``evaluate --pred DIR``); with ``gt`` image ids from its file
    names and category ids matched by name, like ``detect --format coco --gt``."""
    from visiontool.convert import to_coco_results

    stats = stats if stats is not None else {}
    for r in iter_results(directory, gt=gt):
        yield from to_coco_results(r, gt, stats)


def merge(directory: str | Path, fmt: str = "jsonl", output: str | None = None, gt=None,
          with_errors: bool = False, warn: Callable[[str], None] | None = None) -> MergeSummary:
    """Write DIR's records as ``fmt`` to ``output`` (None: stdout). Raises PartialFailure after
    writing when the run has not finished (what is there is written)."""
    from visiontool.io.records import RecordWriter

    if fmt not in MERGE_FORMATS:
        raise UsageError(f"invalid --format '{fmt}': expected {'|'.join(MERGE_FORMATS)}")
    state = open_run(directory)
    kind = state.kind
    written = 0
    with RecordWriter(fmt, output, gt=gt, kind=kind) as writer:
        for r in iter_results(directory, gt=gt, with_errors=with_errors, state=state):
            writer.write(r)
            written += 1
            if gt is not None and r.image_id is None and fmt != "coco":
                writer.stats["null_image_ids"] = writer.stats.get("null_image_ids", 0) + 1
    summary = MergeSummary(kind, state.total, state.rows, written, state.failed, state.complete, writer.stats)
    if warn is not None and state.failed and not with_errors:
        warn(f"{state.failed} of {state.total} images failed in this run and are left out (their rows in "
             f"{directory} carry \"error\"; --with-errors keeps them)")
    if not summary.complete:
        raise PartialFailure(f"{directory} holds {state.rows} of {state.total} images: {unfinished(state)}; rerun "
                             "it with --resume (what is there was merged)")
    return summary
