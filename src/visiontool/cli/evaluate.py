"""`visiontool evaluate`: COCO AP/AR for predictions against a ground truth (DESIGN.md §2).

stdout carries the data (a table, or the §3 JSON); diagnostics and warnings go to stderr.
"""
from __future__ import annotations

import json
import re
import sys
from typing import Optional

import typer
from typer.core import TyperCommand

from visiontool.cli.main import app, direct_coercion
from visiontool.cli.options import OutputOpt
from visiontool.errors import UsageError


class _EvaluateCommand(TyperCommand):
    """Its options are plain str/bool: coerced without pydantic (see ``direct_coercion``)."""

    def parse_args(self, ctx, args):
        direct_coercion(self.get_params(ctx))
        return super().parse_args(ctx, args)


_RICH_EMOJI = re.compile(r":\S*?:")


def _warn(message: str) -> None:
    """render.console.warn's line, written directly when rich would print it unchanged
    (printable text without an :emoji: code): importing rich costs ~20 ms of a JSON run."""
    line = f"visiontool: warning: {message}"
    if not line.isprintable() or _RICH_EMOJI.search(line):
        from visiontool.render.console import warn

        warn(message)
        return
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@app.command("evaluate", cls=_EvaluateCommand)
def evaluate_command(
    gt: str = typer.Option(None, "--gt", help="COCO ground-truth annotations (JSON). Required."),
    pred: str = typer.Option(None, "--pred", help="Predictions: COCO results JSON, or visiontool "
                                                 "detect/segment json/jsonl records. Required."),
    iou_type: str = typer.Option("bbox", "--iou-type", help="bbox|segm"),
    per_class: bool = typer.Option(False, "--per-class", help="Add AP/AP50/AP75/AR100 per category."),
    fmt: str = typer.Option("table", "--format", help="table|json"),
    plot: str = typer.Option(None, "--plot", metavar="DIR", help="Write precision-recall curves (PNG) here."),
    backend: str = typer.Option("auto", "--backend", metavar="NAME",
                                help="auto|ultrafast|hotcoco|pycocotools|faster-coco-eval|torchmetrics"),
    lenient: bool = typer.Option(False, "--lenient", help="Skip invalid predictions (with a warning "
                                                          "count) instead of failing."),
    output: Optional[str] = OutputOpt,
) -> None:
    """Score predictions with the official COCO metrics (pycocotools' numbers, native speed).

    Exit codes: 0 success; 2 bad flag, missing file or invalid input (the first offending
    record is named; --lenient skips such records instead).
    """
    # checked here rather than by typer: its MissingParameter is not the click class the
    # app's error handler maps to exit 2
    if not gt or not pred:
        raise UsageError("evaluate needs --gt COCO.json and --pred FILE (see 'visiontool evaluate --help')")
    if fmt not in ("table", "json"):
        raise UsageError(f"invalid --format '{fmt}': expected table or json")
    if iou_type not in ("bbox", "segm"):
        raise UsageError(f"invalid --iou-type '{iou_type}': expected bbox or segm")
    from visiontool.io.output import open_output
    from visiontool.services.evaluate import evaluate

    result = evaluate(gt, pred, iou_type, per_class=per_class, backend=backend, lenient=lenient)
    for line in result.diagnostics:
        _warn(line)
    if plot:
        from visiontool.render.console import warn

        if result.precision is None or result.precision.ndim != 5:
            warn("--plot: this backend gives no precision arrays; no curves written")
        else:
            from visiontool.io.plots import write_pr_curves
            from visiontool.render.console import info

            info(f"wrote {write_pr_curves(result.precision, plot, iou_type, result.stats)}")
    with open_output(output) as fh:
        if fmt == "json":
            fh.write(json.dumps(result.to_dict()) + "\n")
            return
        from visiontool.render.console import print_tables
        from visiontool.render.eval_tables import per_class_table, stats_table

        print_tables(fh, stats_table(result), per_class_table(result) if per_class else None)
