"""`visiontool detect`: DETR-family object detection on images from files, folders, globs, URLs or stdin."""
from __future__ import annotations

from typing import List, Optional

import typer

from visiontool.cli.main import app, error_line
from visiontool.cli.options import DeviceOpt, DtypeOpt, OutputOpt, QuietOpt, choose_format

FORMATS = ("table", "json", "jsonl", "coco", "csv")


@app.command("detect")
def detect_command(
    sources: List[str] = typer.Argument(..., metavar="SOURCE...",
                                        help="Image files, directories, globs, http(s) URLs, or '-' to read "
                                             "one path per line from stdin."),
    model: str = typer.Option("facebook/detr-resnet-50", "--model", "-m", metavar="ID|PATH",
                              help="Hugging Face hub id or local directory of any object-detection model "
                                   "(DETR, Conditional/Deformable DETR, YOLOS, RT-DETR, Table Transformer)."),
    threshold: float = typer.Option(0.5, "--threshold", "-t", min=0.0, max=1.0, metavar="T",
                                    help="Keep detections with score >= T (inclusive). DETR scores are the "
                                         "softmax over classes with the no-object class left out."),
    classes: Optional[List[str]] = typer.Option(None, "--classes", "-c", metavar="NAMES|IDS",
                                                help="Only these classes: names or model ids, comma-separated "
                                                     "or repeated (e.g. -c person,dog -c 3)."),
    max_det: int = typer.Option(100, "--max-det", min=0, metavar="N",
                                help="At most N detections per image (highest scores)."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, metavar="N",
                                   help="Images per forward pass. Only images of equal processed size share "
                                        "a pass, so results never depend on the batch."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    fmt: Optional[str] = typer.Option(None, "--format", "-f", metavar="FORMAT",
                                      help="table | json | jsonl | coco | csv. Default: table on a terminal, "
                                           "jsonl when piped, or from the --output extension."),
    output: Optional[str] = OutputOpt,
    save_viz: Optional[str] = typer.Option(None, "--save-viz", metavar="DIR",
                                           help="Write annotated copies (boxes, labels, scores) into DIR."),
    gt: Optional[str] = typer.Option(None, "--gt", metavar="COCO.json",
                                     help="COCO ground truth: image ids from its file names, category ids "
                                          "matched by name (for --format coco)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Look into subdirectories."),
    quiet: bool = QuietOpt,
) -> None:
    """Detect objects with a DETR-family model (set prediction: no NMS).

    Boxes are absolute pixel floats [x1, y1, x2, y2] on the original image (after EXIF
    orientation). Exit 1 if some images failed (each named on stderr; the rest are written).
    """
    import sys

    from visiontool.device import validate_device_spec, validate_dtype_spec
    from visiontool.errors import PartialFailure
    from visiontool.io.coco import GroundTruthIndex
    from visiontool.io.images import expand_sources
    from visiontool.io.records import RecordWriter
    from visiontool.models.detr import check_model_spec
    from visiontool.render.console import err, set_quiet, warn

    set_quiet(quiet)
    # everything a user can get wrong is checked before any model loads
    out_format = choose_format(fmt, output, FORMATS)
    validate_device_spec(device)
    validate_dtype_spec(dtype)
    check_model_spec(model)
    named = [s.name for s in expand_sources(sources, recursive=recursive)]
    gt_index = GroundTruthIndex.load(gt) if gt else None
    if save_viz and output and output != "-" and __import__("os").path.abspath(save_viz) == \
            __import__("os").path.abspath(output):
        from visiontool.errors import UsageError

        raise UsageError("--save-viz must be a directory, not the --output file")

    from visiontool.services.detect import run_detect

    progress = None
    task = None
    if len(named) > 1 and not quiet:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("detect"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=err(), transient=True)
    used: set[str] = set()

    def save_annotated(result, image) -> None:
        from visiontool.io.viz import draw_detections, save_image, viz_path

        save_image(draw_detections(image, result.detections), viz_path(save_viz, result.image, used))

    with RecordWriter(out_format, output, gt=gt_index, kind="detect") as writer:
        def on_result(result) -> None:
            if result.error:
                if len(named) > 1:  # a lone image's failure is the final error line itself
                    error_line(result.error)
            else:
                writer.write(result)
            if progress is not None:
                progress.update(task, advance=1)

        if progress is not None:
            progress.start()
            task = progress.add_task("detect", total=len(named))
        try:
            run = run_detect(named, model, threshold=threshold, classes=classes, max_det=max_det,
                         batch_size=batch_size, device=device, dtype=dtype, gt=gt_index,
                         on_result=on_result, on_image=save_annotated if save_viz else None, warn=warn)
        finally:
            if progress is not None:
                progress.stop()
    stats = writer.stats
    if stats.get("unmatched_images"):
        warn(f"{stats['unmatched_images']} image(s) are not in the ground truth's file names; their detections "
             "were left out of the COCO results")
    if stats.get("unmatched_labels"):
        labels = ", ".join(sorted(str(x) for x in stats["unmatched_labels"]))
        warn(f"labels without a category of the same name in the ground truth were left out: {labels}")
    if gt_index is not None and out_format != "coco":
        missing = sum(1 for r in run.results if not r.error and r.image_id is None)
        if missing:
            warn(f"{missing} image(s) are not in the ground truth's file names (image_id is null)")
    if not quiet:
        err().print(f"{run.timings.summary()} [{run.device}, {run.dtype}]", markup=False, highlight=False,
                    soft_wrap=True)
    sys.stdout.flush()
    if run.failed:
        if len(named) == 1:
            raise PartialFailure(run.failed[0])
        raise PartialFailure(f"{len(run.failed)} of {len(named)} images could not be processed (named above)")
