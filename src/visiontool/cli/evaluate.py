"""`visiontool evaluate`: COCO AP/AR for predictions against a ground truth (DESIGN.md §2).

stdout carries the data (a table, or the §3 JSON); diagnostics and warnings go to stderr.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer

from visiontool.cli.main import exit_without_teardown
from visiontool.cli.options import OutputOpt, PlotOpt, QuietOpt, choose_format, format_option
from visiontool.errors import UsageError

IOU_TYPES = ("bbox", "segm", "keypoints")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _warn(message: str) -> None:
    """A warning line written directly (rich's import would cost ~20 ms of a JSON run)."""
    from visiontool.render.text import clean, stderr_line

    stderr_line(f"visiontool: warning: {clean(message)}")


@app.command("evaluate")
def evaluate_command(
    gt: str = typer.Option(None, "--gt", help="COCO ground-truth annotations (JSON). Required."),
    pred: str = typer.Option(None, "--pred", help="Predictions: COCO results JSON, visiontool "
                                                 "detect/segment json/jsonl records, or the --output-dir of an "
                                                 "--engine ray run. Required."),
    iou_type: str = typer.Option("bbox", "--iou-type", help="bbox|segm|keypoints"),
    per_class: bool = typer.Option(False, "--per-class", help="Add AP/AP50/AP75/AR100 per category."),
    fmt: Optional[str] = format_option(("table", "json"), "json"),
    plot: Optional[str] = PlotOpt,
    backend: str = typer.Option("auto", "--backend", metavar="NAME",
                                help="auto|ultrafast|hotcoco|pycocotools|faster-coco-eval|torchmetrics"),
    lenient: bool = typer.Option(False, "--lenient", help="Skip invalid predictions (with a warning "
                                                          "count) instead of failing."),
    output: Optional[str] = OutputOpt,
    mot: bool = typer.Option(False, "--mot",
                             help="Tracking: --gt and --pred are MOTChallenge files (frame,id,x,y,w,h,...) or "
                                  "folders of sequences; prints HOTA, MOTA, IDF1 and their components, computed "
                                  "by TrackEval."),
    preproc: str = typer.Option("auto", "--preproc", metavar="MODE",
                                help="--mot: auto | mot17 | mot16 | mot20 | none. MOTChallenge preprocessing "
                                     "(pedestrians only, predictions on distractors removed); auto applies it "
                                     "to MOTChallenge data (seqinfo.ini or MOT17-.. names, class ids)."),
    quiet: bool = QuietOpt,
) -> None:
    """Score predictions with the official COCO metrics (pycocotools' numbers, native speed),
    or tracks with the MOTChallenge metrics (--mot: TrackEval's HOTA, CLEAR MOT, IDF1).

    Exit codes: 0 success; 2 bad flag, missing file or invalid input (the first offending
    record is named; --lenient skips such records instead; a bad MOT row is named by its line).
    """
    # checked here rather than by typer: its MissingParameter is not the click class the
    # app's error handler maps to exit 2
    if mot:
        _evaluate_mot(gt, pred, fmt, output, preproc, quiet,
                      coco_flags={"--iou-type": iou_type != "bbox", "--per-class": per_class, "--plot": bool(plot),
                                  "--backend": backend != "auto", "--lenient": lenient})
        return
    if not gt or not pred:
        raise UsageError("evaluate needs --gt COCO.json and --pred FILE (see 'visiontool evaluate --help')")
    if gt.lower().endswith(".txt") or (os.path.isdir(gt) and _mot_folder(gt)):
        raise UsageError(f"--gt '{gt}' looks like MOTChallenge tracking ground truth, not COCO JSON: add --mot")
    fmt = choose_format(fmt, output, ("table", "json"))
    if iou_type not in IOU_TYPES:
        raise UsageError(f"invalid --iou-type '{iou_type}': expected {'|'.join(IOU_TYPES)}")
    from visiontool.io.output import check_not_an_input, check_output_file, open_output
    from visiontool.io.plots import plot_path

    check_output_file(output, "--output")
    plot_file = plot_path(plot, f"pr_{iou_type}.png") if plot else None
    check_output_file(plot_file, "--plot")
    check_not_an_input({"--output": output, "--plot": plot_file}, [gt, pred])
    from visiontool.services.evaluate import evaluate

    if quiet or plot or "visiontool.render.console" in sys.modules:
        # rich's console (~30 ms of imports) only where it prints: --plot's note, a table
        from visiontool.render.console import set_quiet

        set_quiet(quiet)

    # precision/recall arrays only for the curves (per-class rows come from them anyway)
    result = evaluate(gt, pred, iou_type, per_class=per_class, backend=backend, lenient=lenient, warn=False,
                      arrays=bool(plot))
    # the ground truth (``result.ground_truth``) lives to the end: freeing hotcoco's at COCO-val
    # size takes ~20 ms, and the process leaves without freeing anything once the output is out
    exit_without_teardown()
    for line in result.diagnostics:
        _warn(line)
    if plot:
        from visiontool.render.console import warn

        if result.precision is None or result.precision.ndim != 5:
            warn("--plot: this backend gives no precision arrays; no curves written")
        else:
            from visiontool.io.plots import write_pr_curves
            from visiontool.render.console import info

            info(f"wrote {write_pr_curves(result.precision, plot_file, iou_type, result.stats)}")
    with open_output(output) as fh:
        if fmt == "json":
            fh.write(json.dumps(result.to_dict()) + "\n")
            return
        from visiontool.render.console import print_tables
        from visiontool.render.eval_tables import per_class_table, stats_table

        print_tables(fh, stats_table(result), per_class_table(result) if per_class else None)


def _mot_folder(path: str) -> bool:
    """A directory laid out as MOTChallenge ground truth (SEQ/gt/gt.txt or *.txt files)."""
    import glob

    return bool(glob.glob(os.path.join(glob.escape(path), "*", "gt", "gt.txt"))
                or glob.glob(os.path.join(glob.escape(path), "*.txt")))


def _evaluate_mot(gt: Optional[str], pred: Optional[str], fmt: Optional[str], output: Optional[str], preproc: str,
                  quiet: bool, coco_flags: dict) -> None:
    """``evaluate --mot``: TrackEval's HOTA / CLEAR / Identity as a table or JSON."""
    if not gt or not pred:
        raise UsageError("evaluate --mot needs --gt GT.txt|DIR and --pred PRED.txt|DIR (see 'visiontool evaluate "
                         "--help')")
    used = [flag for flag, given in coco_flags.items() if given]
    if used:
        raise UsageError(f"{', '.join(used)} appl{'y' if len(used) > 1 else 'ies'} to COCO evaluation, not --mot")
    fmt = choose_format(fmt, output, ("table", "json"))
    from visiontool.io.output import check_not_an_input, check_output_file, open_output
    from visiontool.render.console import set_quiet
    from visiontool.services.mot_metrics import PREPROC, evaluate_mot

    if preproc not in PREPROC:
        raise UsageError(f"invalid --preproc '{preproc}': expected {'|'.join(PREPROC)}")
    check_output_file(output, "--output")
    check_not_an_input({"--output": output}, [gt, pred])
    set_quiet(quiet)
    result = evaluate_mot(gt, pred, preproc=preproc)
    for line in result.diagnostics:
        _warn(line)
    with open_output(output) as fh:
        if fmt == "json":
            fh.write(json.dumps(result.to_dict()) + "\n")
            return
        from visiontool.render.console import print_tables
        from visiontool.render.mot_tables import metrics_table

        print_tables(fh, metrics_table(result))
