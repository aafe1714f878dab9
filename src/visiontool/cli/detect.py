"""`visiontool detect`: object detection with any model family on photos, videos, streams and
webcams (files, folders, globs, URLs or stdin), with optional tracking across video frames."""
from __future__ import annotations

from typing import List, Optional

import typer

from visiontool.cli import engine_options as EO
from visiontool.cli.options import (DeviceOpt, DtypeOpt, OutputOpt, QuietOpt, RuntimeOpt, choose_format, format_option,
                                  refuse_given, runtime_options)

FORMATS = ("table", "json", "jsonl", "coco", "csv", "mot")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command("detect")
def detect_command(
    sources: List[str] = typer.Argument(..., metavar="SOURCE...",
                                        help="Photos, videos (mp4, mkv, webm, mov, avi, ...), directories of "
                                             "either, globs, http(s) URLs, live streams (rtsp://, rtmp://, "
                                             "srt://, udp://), webcam:N, or '-' to read one path per line from "
                                             "stdin."),
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
                                   help="Images (or consecutive frames) per forward pass; results never depend "
                                        "on the batch."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    runtime: str = RuntimeOpt,
    fmt: Optional[str] = format_option(FORMATS, "jsonl"),
    output: Optional[str] = OutputOpt,
    save_viz: Optional[str] = typer.Option(None, "--save-viz", metavar="DIR|FILE.mp4",
                                           help="Write annotated copies (boxes, masks, labels, scores; track ids "
                                                "and trails) into DIR: photos as images, videos as DIR/<stem>.mp4; "
                                                "or, for one video, the annotated video FILE.mp4 (same size, the "
                                                "source's frame rate / --vid-stride)."),
    save_crops: Optional[str] = typer.Option(None, "--save-crops", metavar="DIR",
                                             help="Write one image per detection into DIR/<label>/ (photos and "
                                                  "frames)."),
    gt: Optional[str] = typer.Option(None, "--gt", metavar="COCO.json",
                                     help="COCO ground truth: image ids from its file names (a video frame is "
                                          "'<video>#frame=<N>', N 0-based), category ids matched by name (for "
                                          "--format coco)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Look into subdirectories."),
    source_type: str = typer.Option("auto", "--source-type", metavar="TYPE",
                                    help="auto | image | video | stream | webcam. auto: by URL scheme and "
                                         "extension; webcam: SOURCE is a device number (0 = /dev/video0); "
                                         "stream: a live URL without a video extension; video: decode whatever "
                                         "the extension."),
    vid_stride: int = typer.Option(1, "--vid-stride", min=1, metavar="K",
                                   help="Videos: process every K-th decoded frame."),
    start: Optional[str] = typer.Option(None, "--start", metavar="POS",
                                        help="Videos: first frame to process: a frame index (120), seconds "
                                             "(4.5s) or a time (1:30)."),
    end: Optional[str] = typer.Option(None, "--end", metavar="POS",
                                      help="Videos: stop before this frame index or time (as --start)."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, metavar="N",
                                             help="Videos: at most N frames per video or stream."),
    reconnect: int = typer.Option(3, "--reconnect", min=0, metavar="N",
                                  help="Streams and http(s) videos: reopen a source that fails, stalls or cannot "
                                       "be reached up to N times (1, 2, 4, … s apart); a stream that ends "
                                       "cleanly ends the run."),
    track: bool = typer.Option(False, "--track",
                               help="Follow objects across each video's frames: persistent track_id per "
                                    "detection (with the trackers library)."),
    tracker: Optional[str] = typer.Option(None, "--tracker", metavar="NAME",
                                          help="bytetrack (default) | sort | ocsort | botsort | cbiou | mcbyte "
                                               "(implies --track)."),
    tracker_opts: Optional[List[str]] = typer.Option(None, "--tracker-opt", metavar="KEY=VALUE",
                                                     help="A tracker constructor option, e.g. "
                                                          "lost_track_buffer=60 (repeat it)."),
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
    one-stage detectors (torchvision, Ultralytics YOLO) and open-vocabulary models (--text),
    in photos, videos, streams and webcams.

    Boxes are absolute pixel floats [x1, y1, x2, y2] on the original image (after EXIF
    orientation), sorted by score. A video gives one record per processed frame (frame,
    time_s); --track adds track ids; --format mot writes MOTChallenge rows. Exit 1 if some
    inputs failed (each named on stderr; the rest, and a broken video's good frames, are
    written); 130 when interrupted, after every finished frame is written.
    """
    from visiontool.cli.detect_outputs import Outputs, check_outputs
    from visiontool.cli.main import error_line
    from visiontool.cli.options import common_checks
    from visiontool.errors import Interrupted, PartialFailure, UsageError
    from visiontool.io.coco import GroundTruthIndex
    from visiontool.io.output import check_not_an_input
    from visiontool.io.readers import one_stdin
    from visiontool.io.sources import expand_media, expected_items, iter_items
    from visiontool.models.registry import check_detector_spec
    from visiontool.render.console import err, set_quiet, warn
    from visiontool.services.detect import check_detect_options, parse_text

    set_quiet(quiet)
    # everything a user can get wrong is checked before any model loads
    one_stdin([*sources, gt])
    out_format = choose_format(fmt, output, FORMATS)
    common_checks(device=device, dtype=dtype)
    load_options = runtime_options(runtime)
    check_detect_options(threshold, batch_size)
    phrases = parse_text(text)
    if text_threshold is not None and not phrases:
        raise UsageError("--text-threshold applies to --text; add --text PHRASES")
    if model:
        check_detector_spec(model)
    ray_run = EO.check_engine(engine, address=address, replicas=replicas, gpus_per_replica=gpus_per_replica,
                              cpus_per_replica=cpus_per_replica, output_dir=output_dir, resume=resume,
                              output_format=output_format, quiet=quiet,
                              local_only={"--output": output, "--format": fmt, "--save-viz": save_viz,
                                           "--save-crops": save_crops, "--track": track or tracker or tracker_opts,
                                           "--start": start, "--end": end, "--max-frames": max_frames,
                                           "--source-type": source_type != "auto", "--vid-stride": vid_stride != 1})
    if ray_run is not None:  # --engine ray: the records go to shards in --output-dir
        from visiontool.engines.ray import detect_on_ray

        detect_on_ray(ray_run, sources, recursive=recursive, model=model, threshold=threshold, classes=classes,
                      max_det=max_det, nms_iou=nms_iou, batch_size=batch_size, device=device, dtype=dtype, gt=gt,
                      text=phrases, text_threshold=text_threshold, load_options=load_options)
        return
    srcs = expand_media(sources, recursive=recursive, source_type=source_type)
    videos = [s for s in srcs if s.is_video]
    if out_format == "table" and not fmt and not output and any(s.kind == "stream" for s in srcs):
        out_format = "jsonl"  # a table is printed at the end, and a live stream has none: stream records
    video = _video_options(start, end, vid_stride, max_frames, reconnect)
    if srcs and not videos:  # a video's flags were silently ignored on photos
        default = type(video)()
        refuse_given({"--vid-stride": video.stride != default.stride, "--start": start is not None,
                      "--end": end is not None, "--max-frames": max_frames is not None,
                      "--reconnect": video.reconnect != default.reconnect},
                     "videos and streams, and every source is a photo")
    if videos:
        from visiontool.io.video import av

        av()  # PyAV missing: exit 2 with the install line, now
    track_opts = None
    if track or tracker or tracker_opts:
        from visiontool.services.track import check_track_options
        from visiontool.services.video_detect import check_track_sources

        check_track_sources(srcs)
        track_opts = check_track_options(tracker, tracker_opts)
    plan = check_outputs(srcs, out_format, output, save_viz, save_crops)
    check_not_an_input({"--output": output, "--save-viz": save_viz}, [*(s.name for s in srcs), gt])
    gt_index = GroundTruthIndex.load(gt) if gt else None
    if out_format == "coco" and gt_index is not None and gt_index.ambiguous_names:
        _check_labels_name_one_category(gt_index, model, phrases)

    from visiontool.services.detect import run_detect

    unit = "frame" if videos else "image"
    progress = task = None
    if (len(srcs) > 1 or videos) and not quiet:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        total = expected_items(srcs, video)
        progress = Progress(TextColumn("detect"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=err(), transient=True)
    fps_table: dict = {}
    items = iter_items(srcs, video, on_retry=warn, fps_table=fps_table)
    interrupted = None
    with Outputs(plan, gt=gt_index, save_viz=save_viz, save_crops=save_crops, fps_table=fps_table,
                 stride=vid_stride) as outputs:
        def on_result(result) -> None:
            if result.error:
                if len(srcs) > 1:  # a lone source's failure is the final error line itself
                    error_line(result.error)
            else:
                outputs.record(result)
                if gt_index is not None and result.image_id is None:
                    outputs.stats["null_image_ids"] = outputs.stats.get("null_image_ids", 0) + 1
            if progress is not None:
                progress.update(task, advance=1)

        if progress is not None:
            progress.start()
            task = progress.add_task("detect", total=total)
        try:
            run = run_detect(None, model, threshold=threshold, classes=classes, max_det=max_det,
                             batch_size=batch_size, device=device, dtype=dtype, gt=gt_index, text=phrases,
                             text_threshold=text_threshold, nms_iou=nms_iou, items=items, on_result=on_result,
                             on_image=outputs.image if outputs.wants_images else None, warn=warn,
                             keep_results=False, video=video, track=track_opts, load_options=load_options)
        except Interrupted as exc:
            if not outputs.written:
                raise  # nothing finished: leave any previous --output file as it was
            interrupted = exc  # close every output normally first: the finished frames stay written
        finally:
            if progress is not None:
                progress.stop()
    if interrupted is not None:
        raise interrupted
    report_mapping(outputs.stats, gt_index, out_format)
    if not quiet and run.timings.images:
        line = f"{run.timings.summary(unit)} [{run.device}, {run.dtype}]"
        if save_viz and outputs.viz is not None and outputs.viz.written:
            line += f"; annotated: {_shown(outputs.viz.written)}"
        if save_crops and outputs.crops is not None:
            line += f"; {outputs.crops.count} crop(s) in {save_crops}"
        err().print(line, markup=False, highlight=False, soft_wrap=True)
    if run.failed:
        if len(srcs) == 1:
            raise PartialFailure(run.failed[0])
        what = "inputs could not be processed, or only in part" if videos else "images could not be processed"
        raise PartialFailure(f"{len(run.failed)} of {len(srcs)} {what} (named above)")


def _shown(paths: list) -> str:
    return str(paths[0]) if len(paths) == 1 else f"{len(paths)} files"


def _video_options(start: Optional[str], end: Optional[str], stride: int, max_frames: Optional[int],
                   reconnect: int):
    from visiontool.errors import UsageError
    from visiontool.io.sources import VideoOptions
    from visiontool.io.video import parse_position

    first = parse_position(start, "--start")
    last = parse_position(end, "--end")
    if first is not None and last is not None and first.unit == last.unit and last.value <= first.value:
        raise UsageError(f"--end {end} is not after --start {start}: no frame would be processed")
    return VideoOptions(stride=stride, start=first, end=last, max_frames=max_frames, reconnect=reconnect)


def _check_labels_name_one_category(gt_index, model: str | None, phrases) -> None:
    """Before the model loads: a label of the model (or a --text phrase) that two GT categories
    share is one line now, not after the first image (GroundTruthIndex.category_id_for)."""
    from visiontool.models import registry

    if phrases:
        labels = list(phrases)
    else:
        try:
            names = registry.peek_class_names(model or registry.DEFAULT_DETECTOR)
        except Exception:  # noqa: BLE001 - the load says what is wrong with the model
            return
        labels = list((names or {}).values())
    for label in labels:
        gt_index.category_id_for(str(label))


def report_mapping(stats: dict, gt_index, out_format: str) -> None:
    """Warnings about records that found no image or category in the ground truth."""
    from visiontool.render.console import warn

    if stats.get("unmatched_images"):
        warn(f"{stats['unmatched_images']} image(s) are not in the ground truth's file names; their detections "
             "were left out of the COCO results")
    if stats.get("unmatched_labels"):
        labels = ", ".join(sorted(str(x) for x in stats["unmatched_labels"]))
        warn(f"labels without a category of the same name in the ground truth were left out: {labels}")
    from visiontool.convert import shared_image_ids_warning

    shared = shared_image_ids_warning(stats, gt_index is not None)
    if shared:
        warn(shared)
    if gt_index is not None and out_format != "coco" and stats.get("null_image_ids"):
        warn(f"{stats['null_image_ids']} image(s) are not in the ground truth's file names (image_id is null)")
