"""`visiontool detect`: object detection with any model family on images from files, folders,
globs, URLs or stdin."""
from __future__ import annotations

from typing import List, Optional

import typer

from visiontool.cli import engine_options as EO
from visiontool.cli.options import DeviceOpt, DtypeOpt, OutputOpt, QuietOpt, choose_format, format_option

FORMATS = ("table", "json", "jsonl", "coco", "csv")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command("detect")
def detect_command(
    sources: List[str] = typer.Argument(..., metavar="SOURCE...",
                                        help="Image files, directories, globs, http(s) URLs, or '-' to read "
                                             "one path per line from stdin."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", metavar="SPEC",
        help="A Hugging Face hub id or local directory (DETR, RT-DETR, D-FINE, YOLOS, … ; Grounding DINO, OWLv2 "
             "for --text), torchvision:NAME[:WEIGHTS.pth], or ultralytics:NAME|PATH (extra [yolo]). Default: "
             "facebook/detr-resnet-50, or IDEA-Research/grounding-dino-tiny with --text."),
    threshold: float = typer.Option(0.5, "--threshold", "-t", min=0.0, max=1.0, metavar="T",
                                    help="Keep detections with score >= T (inclusive)."),
    text: Optional[List[str]] = typer.Option(
        None, "--text", metavar="PHRASES",
        help="Open vocabulary: comma-separated phrases to find (e.g. \"forklift, person in a hi-vis vest\"); "
             "labels are the phrases. Needs a zero-shot model."),
    text_threshold: Optional[float] = typer.Option(None, "--text-threshold", min=0.0, max=1.0, metavar="T",
                                                   help="Grounding DINO: token score to accept a phrase "
                                                        "(the model's default 0.25)."),
    classes: Optional[List[str]] = typer.Option(None, "--classes", "-c", metavar="NAMES|IDS",
                                                help="Only these classes: names or model ids, comma-separated "
                                                     "or repeated (e.g. -c person,dog -c 3)."),
    max_det: int = typer.Option(100, "--max-det", min=0, metavar="N",
                                help="At most N detections per image (highest scores)."),
    nms_iou: Optional[float] = typer.Option(None, "--nms-iou", min=0.0, max=1.0, metavar="IOU",
                                            help="NMS IoU for models that need NMS (default: the model's own); "
                                                 "set predictors (DETR family) use none."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, metavar="N",
                                   help="Images per forward pass; results never depend on the batch."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    fmt: Optional[str] = format_option(FORMATS, "jsonl"),
    output: Optional[str] = OutputOpt,
    save_viz: Optional[str] = typer.Option(None, "--save-viz", metavar="DIR",
                                           help="Write annotated copies (boxes, masks, labels, scores) into DIR."),
    gt: Optional[str] = typer.Option(None, "--gt", metavar="COCO.json",
                                     help="COCO ground truth: image ids from its file names, category ids "
                                          "matched by name (for --format coco)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Look into subdirectories."),
    quiet: bool = QuietOpt,
    engine: str = EO.EngineOpt,
    address: Optional[str] = EO.AddressOpt,
    replicas: Optional[int] = EO.ReplicasOpt,
    gpus_per_replica: Optional[float] = EO.GpusOpt,
    cpus_per_replica: Optional[float] = EO.CpusOpt,
    output_dir: Optional[str] = EO.OutputDirOpt,
    resume: bool = EO.ResumeOpt,
    output_format: Optional[str] = EO.OutputFormatOpt,
) -> None:
    """Detect objects with any model family: set predictors (DETR, RT-DETR, …), two-stage and
    one-stage detectors (torchvision, Ultralytics YOLO) and open-vocabulary models (--text).

    Boxes are absolute pixel floats [x1, y1, x2, y2] on the original image (after EXIF
    orientation), sorted by score. Exit 1 if some images failed (each named on stderr; the
    rest are written).
    """
    from visiontool.cli.main import error_line
    from visiontool.cli.options import common_checks
    from visiontool.errors import PartialFailure, UsageError
    from visiontool.io.coco import GroundTruthIndex
    from visiontool.io.images import expand_sources
    from visiontool.io.output import same_path
    from visiontool.io.records import RecordWriter
    from visiontool.models.registry import check_detector_spec
    from visiontool.render.console import err, set_quiet, warn
    from visiontool.services.detect import check_detect_options, parse_text

    set_quiet(quiet)
    # everything a user can get wrong is checked before any model loads
    out_format = choose_format(fmt, output, FORMATS)
    if save_viz and same_path(save_viz, output):
        raise UsageError("--save-viz must be a directory, not the --output file")
    common_checks(device=device, dtype=dtype, output=output, dirs={"--save-viz": save_viz})
    check_detect_options(threshold, batch_size)
    phrases = parse_text(text)
    if model:
        check_detector_spec(model)
    ray_run = EO.check_engine(engine, address=address, replicas=replicas, gpus_per_replica=gpus_per_replica,
                              cpus_per_replica=cpus_per_replica, output_dir=output_dir, resume=resume,
                              output_format=output_format, quiet=quiet,
                              local_only={"--output": output, "--format": fmt, "--save-viz": save_viz})
    if ray_run is not None:  # --engine ray: the records go to shards in --output-dir
        from visiontool.engines.ray import detect_on_ray

        detect_on_ray(ray_run, sources, recursive=recursive, model=model, threshold=threshold, classes=classes,
                      max_det=max_det, nms_iou=nms_iou, batch_size=batch_size, device=device, dtype=dtype, gt=gt,
                      text=phrases, text_threshold=text_threshold)
        return
    named = [s.name for s in expand_sources(sources, recursive=recursive)]
    gt_index = GroundTruthIndex.load(gt) if gt else None

    from visiontool.services.detect import run_detect

    progress = None
    task = None
    if len(named) > 1 and not quiet:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("detect"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=err(), transient=True)
    used: set[str] = set()

    def save_annotated(result, image) -> None:
        from visiontool.io.viz import save_annotated as save, viz_path

        save(image, result.detections, viz_path(save_viz, result.image, used))

    with RecordWriter(out_format, output, gt=gt_index, kind="detect") as writer:
        def on_result(result) -> None:
            if result.error:
                if len(named) > 1:  # a lone image's failure is the final error line itself
                    error_line(result.error)
            else:
                writer.write(result)
                if gt_index is not None and result.image_id is None:
                    writer.stats["null_image_ids"] = writer.stats.get("null_image_ids", 0) + 1
            if progress is not None:
                progress.update(task, advance=1)

        if progress is not None:
            progress.start()
            task = progress.add_task("detect", total=len(named))
        try:
            run = run_detect(named, model, threshold=threshold, classes=classes, max_det=max_det,
                             batch_size=batch_size, device=device, dtype=dtype, gt=gt_index, text=phrases,
                             text_threshold=text_threshold, nms_iou=nms_iou, on_result=on_result,
                             on_image=save_annotated if save_viz else None, warn=warn, keep_results=False)
        finally:
            if progress is not None:
                progress.stop()
    report_mapping(writer.stats, gt_index, out_format)
    if not quiet:
        err().print(f"{run.timings.summary()} [{run.device}, {run.dtype}]", markup=False, highlight=False,
                    soft_wrap=True)
    if run.failed:
        if len(named) == 1:
            raise PartialFailure(run.failed[0])
        raise PartialFailure(f"{len(run.failed)} of {len(named)} images could not be processed (named above)")


def report_mapping(stats: dict, gt_index, out_format: str) -> None:
    """Warnings about records that found no image or category in the ground truth."""
    from visiontool.render.console import warn

    if stats.get("unmatched_images"):
        warn(f"{stats['unmatched_images']} image(s) are not in the ground truth's file names; their detections "
             "were left out of the COCO results")
    if stats.get("unmatched_labels"):
        labels = ", ".join(sorted(str(x) for x in stats["unmatched_labels"]))
        warn(f"labels without a category of the same name in the ground truth were left out: {labels}")
    if gt_index is not None and out_format != "coco" and stats.get("null_image_ids"):
        warn(f"{stats['null_image_ids']} image(s) are not in the ground truth's file names (image_id is null)")
