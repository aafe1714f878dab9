"""`visiontool merge DIR`: one output from the shards of `detect|segment --engine ray --output-dir DIR`."""
from __future__ import annotations

from typing import Optional

import typer

from visiontool.cli.options import OutputOpt, QuietOpt

FORMATS = ("jsonl", "json", "coco", "csv")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command("merge")
def merge_command(
    directory: str = typer.Argument(..., metavar="DIR",
                                    help="The --output-dir of a `visiontool detect|segment --engine ray` run."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", metavar="FORMAT",
                                      help=f"{' | '.join(FORMATS)}. Default: from the --output extension, else "
                                           "jsonl."),
    gt: Optional[str] = typer.Option(None, "--gt", metavar="COCO.json",
                                     help="COCO ground truth: image ids from its file names, category ids matched "
                                          "by name (as `detect --format coco --gt`)."),
    output: Optional[str] = OutputOpt,
    with_errors: bool = typer.Option(False, "--with-errors",
                                     help="Keep the rows of images that failed (json/jsonl; they carry \"error\")."),
    quiet: bool = QuietOpt,
) -> None:
    """Gather the sharded records of `visiontool detect|segment --engine ray` into one file:
    the records the local command would have printed, in its order (failed images left out
    unless --with-errors).

    Example: visiontool merge out/ -f coco --gt coco.json -o preds.json

    Exit codes: 0 success; 1 the run has not finished (what is there is merged); 2 DIR is not
    a run's output, a bad flag or a bad ground truth.
    """
    from visiontool.cli.detect import report_mapping
    from visiontool.cli.options import common_checks, format_from_output
    from visiontool.errors import UsageError
    from visiontool.io.records import validate_format
    from visiontool.render.console import info, set_quiet, warn
    from visiontool.services.merge import merge

    set_quiet(quiet)
    if fmt:
        out_format = validate_format(fmt, FORMATS)
    else:
        out_format = format_from_output(output, FORMATS) or "jsonl"
    if with_errors and out_format not in ("json", "jsonl"):
        raise UsageError("--with-errors keeps failed images' rows in json/jsonl; coco and csv have no place for them")
    common_checks(output=output, inputs=[directory, gt])
    gt_index = None
    if gt:
        from visiontool.io.coco import GroundTruthIndex

        gt_index = GroundTruthIndex.load(gt)
    summary = merge(directory, out_format, output, gt=gt_index, with_errors=with_errors, warn=warn)
    report_mapping(summary.stats, gt_index, out_format)
    info(f"{summary.written} records from {summary.rows} rows of {directory} ({summary.kind}, "
         f"{summary.failed} failed)")
