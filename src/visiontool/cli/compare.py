"""`visiontool compare`: prediction files and/or detectors side by side on one COCO ground truth.

stdout carries the data (tables, or the DESIGN.md §3 JSON ``{"runs": [...]}``); progress
lines, evaluate's diagnostics and per-run errors go to stderr.
"""
from __future__ import annotations

import json
from typing import List, Optional

import typer

from visiontool.cli.options import (DeviceOpt, DtypeOpt, OutputOpt, PlotOpt, QuietOpt, RuntimeOpt, choose_format,
                                  format_option, refuse_given, runtime_options)
from visiontool.errors import UsageError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command("compare")
def compare_command(
    preds: Optional[List[str]] = typer.Argument(None, metavar="PRED.json...",
                                                help="Prediction files: COCO results JSON or visiontool "
                                                     "detect/segment json/jsonl records (as evaluate)."),
    gt: str = typer.Option(None, "--gt", metavar="COCO.json", help="COCO ground-truth annotations. Required."),
    names: Optional[List[str]] = typer.Option(None, "--name", "-n", metavar="LABEL",
                                              help="Label of each run, in order (files first, then models); "
                                                   "repeat it. Default: file stem / model directory name."),
    models: Optional[List[str]] = typer.Option(None, "--model", "-m", metavar="SPEC",
                                               help="A detector to run and score (any detect --model spec: hub "
                                                    "id, directory, torchvision:NAME, ultralytics:NAME); repeat "
                                                    "it. Needs --images."),
    images: Optional[List[str]] = typer.Option(None, "--images", metavar="DIR",
                                               help="Images the models run on (directory, files or globs; "
                                                    "only those named in the GT's file_name are used)."),
    iou_type: str = typer.Option("bbox", "--iou-type", help="bbox|segm (segm: prediction files with masks)."),
    per_class: bool = typer.Option(False, "--per-class",
                                   help="Also list the categories whose AP moved most between runs."),
    top: int = typer.Option(10, "--top", min=1, help="How many categories --per-class lists."),
    sort_by: Optional[str] = typer.Option(None, "--sort-by", metavar="KEY",
                                          help="Order the runs after the baseline by KEY: AP, AP50, AP75, APs, "
                                               "APm, APl, AR100, any JSON stat key, name, params, fps, ms, "
                                               "memory, dup. Best first; '--sort-by=-KEY' forces descending, "
                                               "'+KEY' ascending. The baseline stays first."),
    fmt: Optional[str] = format_option(("table", "json"), "json"),
    output: Optional[str] = OutputOpt,
    plot: Optional[str] = PlotOpt,
    backend: str = typer.Option("auto", "--backend", metavar="NAME",
                                help="Evaluation engine, as for evaluate: auto|ultrafast|hotcoco|pycocotools|"
                                     "faster-coco-eval|torchmetrics"),
    lenient: bool = typer.Option(False, "--lenient", help="Skip invalid predictions instead of failing."),
    threshold: float = typer.Option(0.0, "--threshold", "-t", min=0.0, max=1.0,
                                    help="Models keep detections with score >= T. Default 0.0: AP integrates "
                                         "the whole precision-recall curve, so low-score detections count "
                                         "(a high threshold lowers AP)."),
    max_det: int = typer.Option(100, "--max-det", min=1, help="At most N detections per image (COCO uses 100)."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Images per forward pass."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    runtime: str = RuntimeOpt,
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Look into subdirectories of --images."),
    save_preds: Optional[str] = typer.Option(None, "--save-preds", metavar="DIR",
                                             help="Keep each model's COCO results as DIR/<name>.json, so a "
                                                  "later compare of those files costs no inference."),
    dup_score: float = typer.Option(0.5, "--dup-score", min=0.0, max=1.0,
                                    help="Duplicate rate counts detections with score >= this (those a "
                                         "user would keep)."),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup",
                                help="Run each model on one untimed image first (and the first model once "
                                     "before any measurement), so no model pays for one-time set-up."),
    mot: bool = typer.Option(False, "--mot", help="Tracking runs: --gt a MOTChallenge file or folder, MOT "
                                                   "prediction files and/or --model with --video; HOTA, MOTA, "
                                                   "IDF1 side by side (TrackEval)."),
    video: Optional[str] = typer.Option(None, "--video", metavar="VIDEO",
                                        help="--mot with --model: the video the models detect and track on."),
    trackers: Optional[List[str]] = typer.Option(None, "--tracker", metavar="NAME",
                                                 help="--mot: tracker per model run (repeatable; default "
                                                      "bytetrack)."),
    preproc: str = typer.Option("auto", "--preproc", metavar="MODE",
                                help="--mot: MOTChallenge preprocessing, as evaluate --mot."),
    quiet: bool = QuietOpt,
) -> None:
    """Compare prediction files or detectors side by side: COCO AP/AR with Δ vs the first run.

    Files: `visiontool compare --gt GT.json A.json B.json`. Models: `visiontool compare --gt
    GT.json --images DIR --model M1 --model M2` runs each model through detect's path, one at
    a time (memory released in between), and adds parameters, ms per image (preprocess /
    inference / postprocess), images/s, peak memory (resident memory added during the
    model's load and run: the kernel's high-water mark, reset before each model; on CUDA the
    device's peak allocation), whether the architecture needs NMS, and the duplicate rate:
    the share of detections (score >= --dup-score) overlapping a higher-scoring detection of
    the same class in the same image at IoU > 0.7, i.e. what NMS would remove.

    The first run is the baseline. One run alone is fine (its Δ are 0). Exit codes: 0
    success; 1 a model failed to load or run (reported in its row; the others still run)
    or images could not be read; 2 bad flag, missing file or invalid input.
    """
    from visiontool.cli.main import error_line

    if not gt:
        raise UsageError("compare needs --gt COCO.json (see 'visiontool compare --help')")
    if mot:
        from visiontool.cli import compare_mot

        compare_mot.run(gt, list(preds or []), models=list(models or []), video=video, trackers=list(trackers or []),
                        names=list(names or []), preproc=preproc, threshold=threshold or 0.5, max_det=max_det,
                        batch_size=batch_size, device=device, dtype=dtype, runtime=runtime, fmt=fmt,
                        output=output, quiet=quiet,
                        coco_flags={"--iou-type": iou_type != "bbox", "--per-class": per_class,
                                    "--images": bool(images), "--save-preds": bool(save_preds), "--plot": bool(plot),
                                    "--sort-by": bool(sort_by), "--backend": backend != "auto",
                                    "--lenient": lenient})
        return
    out_format = choose_format(fmt, output, ("table", "json"))
    from visiontool.services.compare_runs import STAT_KEYS, parse_sort_key

    if not models:  # files are scored as they are: a model's flag there would be silently ignored
        refuse_given({"--threshold": threshold != 0.0, "--max-det": max_det != 100, "--batch-size": batch_size != 1,
                      "--recursive": recursive, "--save-preds": save_preds is not None,
                      "--dup-score": dup_score != 0.5, "--no-warmup": not warmup},
                     "--model runs; prediction files are scored as they are")
        if sort_by and parse_sort_key(sort_by)[0] not in STAT_KEYS + ("name",):
            raise UsageError(f"--sort-by {sort_by} orders --model runs by what running them measured; prediction "
                             "files have no such figure (sort them by AP, AP50, ..., or name)")
    if iou_type not in ("bbox", "segm", "keypoints"):
        raise UsageError(f"invalid --iou-type '{iou_type}': expected bbox, segm or keypoints")
    from visiontool.cli.options import common_checks
    from visiontool.io.plots import plot_path

    plot_file = plot_path(plot, "compare.png") if plot else None
    common_checks(device=device, dtype=dtype, output=output, files={"--plot": plot_file},
                  dirs={"--save-preds": save_preds}, inputs=[gt, *(preds or [])])
    runtime = runtime_options(runtime).get("runtime", "torch")
    from visiontool.errors import PartialFailure
    from visiontool.render.console import info, set_quiet, warn
    from visiontool.services.compare import compare

    set_quiet(quiet)
    if sort_by:
        parse_sort_key(sort_by)  # a typo fails before any work
    result = compare(gt, list(preds or []) or None, models=list(models or []) or None,
                     images=list(images) if images else None, names=list(names or []), iou_type=iou_type,
                     per_class=per_class, backend=backend, lenient=lenient, threshold=threshold,
                     max_det=max_det, batch_size=batch_size, device=device, dtype=dtype, runtime=runtime,
                     recursive=recursive, save_preds=save_preds, duplicate_min_score=dup_score, warmup=warmup,
                     on_event=info, warn=warn)
    for run in result.runs:
        for line in run.diagnostics:
            warn(f"{run.name}: {line}")
        if run.error:
            error_line(f"{run.name}: {run.error}")
        elif run.failed_images:
            for msg in run.failed_images:
                error_line(f"{run.name}: {msg}")
        if run.saved_to:
            info(f"compare: {run.name}: predictions saved to {run.saved_to}")
    shown = result.sorted(sort_by)
    if plot and not any(r.ok for r in shown.runs):
        warn("--plot: no run has numbers; no chart written")
    elif plot:
        from visiontool.io.compare_plot import write_compare_plot

        info(f"wrote {write_compare_plot(shown, plot_file)}")
    _write(shown, out_format, output, per_class, top)
    failed = result.failed
    if failed:
        raise PartialFailure(f"{len(failed)} of {len(result.runs)} runs failed or were incomplete: "
                             f"{', '.join(r.name for r in failed)} (see their rows)")


def _write(result, out_format: str, output: Optional[str], per_class: bool, top: int) -> None:
    from visiontool.io.output import open_output

    with open_output(output) as fh:
        if out_format == "json":
            fh.write(json.dumps(result.to_dict()) + "\n")
            return
        from visiontool.render.compare_tables import accuracy_table, detector_table, per_class_table
        from visiontool.render.console import print_tables

        print_tables(fh, accuracy_table(result), detector_table(result),
                     per_class_table(result, top) if per_class else None)
