"""`visiontool segment`: masks from points, boxes, coarse masks, detector output, or everything.

stdout carries data only (table / json / jsonl / coco); progress and problems go to stderr.
Every user error is checked before the model loads: flags, files, JSON, prompt coordinates.
"""
from __future__ import annotations

import sys
from typing import List, Optional

import typer

from visiontool.cli import engine_options as EO
from visiontool.cli.options import (DeviceOpt, DtypeOpt, OutputOpt, QuietOpt, RuntimeOpt, choose_format, format_option,
                                  runtime_options)
from visiontool.errors import PartialFailure, UsageError

MAX_POINTS_PER_SIDE = 1024  # --auto's grid: 1024 x 1024 points already covers every input pixel

SEGMENT_FORMATS = ("table", "json", "jsonl", "coco")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command("segment")
def segment_command(
    images: Optional[List[str]] = typer.Argument(None, metavar="IMAGE|VIDEO...",
                                                 help="Image files, directories, globs or URLs, or videos "
                                                      "(mp4/mkv/webm/mov/avi); optional with --boxes-from (its "
                                                      "records name the images)."),
    model: Optional[str] = typer.Option(
        None, "--model", "--checkpoint", "-m", metavar="SPEC",
        help="vit_b|vit_l|vit_h or a segment-anything .pth (downloaded once to the cache), or a Hugging Face "
             "SAM-family model id or directory: SAM, SAM-HQ, SAM 2/2.1, EdgeTAM, SAM 3 (videos need a video "
             "model: SAM 2 video, EdgeTAM video, SAM 3). Default: vit_b on CPU, vit_h on CUDA."),
    point: Optional[List[str]] = typer.Option(None, "--point", metavar="X,Y",
                                              help="Foreground point in image pixels (repeatable)."),
    neg_point: Optional[List[str]] = typer.Option(None, "--neg-point", metavar="X,Y",
                                                  help="Background point (repeatable)."),
    box: Optional[List[str]] = typer.Option(None, "--box", metavar="X1,Y1,X2,Y2",
                                            help="Box in pixels (repeatable; each box is its own object)."),
    mask_input: Optional[str] = typer.Option(None, "--mask-input", metavar="PNG",
                                             help="Coarse mask (the image's size; non-zero = object)."),
    prompts_file: Optional[str] = typer.Option(None, "--prompts", metavar="FILE",
                                               help='JSON list of prompt sets: [{"points": [[x, y]], '
                                                    '"labels": [1], "box": [x1, y1, x2, y2], "mask_input": '
                                                    '"m.png", "label": "name"}]; on a video also "frame": N and '
                                                    '"object_id": K.'),
    boxes_from: Optional[str] = typer.Option(None, "--boxes-from", metavar="FILE|-",
                                             help="visiontool detect json/jsonl output ('-' = stdin): one mask "
                                                  "per detection, with its label and score."),
    text: Optional[List[str]] = typer.Option(
        None, "--text", "-t", metavar="PHRASES",
        help='Segment every instance of these phrases ("yellow school bus, person"; repeatable): SAM 3 on its '
             "own, any other model with a zero-shot detector's boxes (--detector). Labels carry the phrase."),
    detector: Optional[str] = typer.Option(
        None, "--detector", metavar="SPEC",
        help="The zero-shot detector for --text (a detect --model spec; default IDEA-Research/grounding-dino-tiny "
             "for models without text; with SAM 3 it replaces SAM 3's own detection; 'none' forbids it)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", metavar="T",
                                              help="--text: minimum instance score, inclusive (default 0.5)."),
    text_threshold: Optional[float] = typer.Option(None, "--text-threshold", metavar="T",
                                                   help="--text with a detector: its phrase-matching threshold."),
    frame: Optional[int] = typer.Option(None, "--frame", metavar="N",
                                        help="Video: the frame the prompts are given on (default: the first "
                                             "processed frame); masks are propagated forward and backward."),
    vid_stride: int = typer.Option(1, "--vid-stride", metavar="K", help="Video: process every K-th frame."),
    start: Optional[str] = typer.Option(None, "--start", metavar="POS",
                                        help="Video: first frame, as a frame index (120), seconds (4.5s) or a "
                                             "time (1:30)."),
    end: Optional[str] = typer.Option(None, "--end", metavar="POS", help="Video: stop before this frame/time."),
    max_frames_in_memory: Optional[int] = typer.Option(
        None, "--max-frames-in-memory", metavar="N",
        help="Video: tracking state kept for at most N past frames (default: what the model reads, 16 for SAM 2; "
             "fewer changes the masks) and decoded frames held in memory for the backward pass (default 64; the "
             "rest wait in a temporary directory)."),
    auto: bool = typer.Option(False, "--auto", help="Segment everything (automatic mask generator)."),
    preset: Optional[str] = typer.Option(None, "--preset", metavar="fast|default|quality",
                                         help="--auto settings: fast (16 points/side), default (32), quality "
                                              "(32 + a layer of crops)."),
    points_per_side: Optional[int] = typer.Option(None, "--points-per-side", help="--auto grid density."),
    pred_iou_thresh: Optional[float] = typer.Option(None, "--pred-iou-thresh",
                                                    help="--auto: minimum predicted IoU."),
    stability_score_thresh: Optional[float] = typer.Option(None, "--stability-score-thresh",
                                                           help="--auto: minimum stability score."),
    min_area: Optional[int] = typer.Option(
        None, "--min-area",
        help="--auto: remove holes and islands under this many pixels (SAM's min_mask_region_area)."),
    multimask: Optional[bool] = typer.Option(None, "--multimask/--single-mask",
                                             help="3 hypotheses ranked by predicted IoU, or 1. Default: 3 for a "
                                                  "single point, else 1."),
    fmt: Optional[str] = format_option(SEGMENT_FORMATS, "jsonl"),
    gt: Optional[str] = typer.Option(None, "--gt", metavar="COCO.json",
                                     help="With --format coco: image and category ids from this ground truth "
                                          "(a video frame is the image named '<video>#<frame>')."),
    output: Optional[str] = OutputOpt,
    masks_dir: Optional[str] = typer.Option(None, "--masks-dir", metavar="DIR",
                                            help="One PNG per mask + metadata.csv (segment-anything amg.py "
                                                 "layout) in DIR/<image>/."),
    save_viz: Optional[str] = typer.Option(None, "--save-viz", metavar="DIR|OUT.mp4",
                                           help="Coloured overlays in DIR; for a video, the annotated video "
                                                "(OUT.mp4, or DIR/<video>.mp4)."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", metavar="DIR",
                                            help="Embedding cache (default: the user cache dir)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the embedding cache."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    runtime: str = RuntimeOpt,
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
    """Segment objects with the SAM family: SAM, SAM-HQ, SAM 2/2.1, EdgeTAM, SAM 3.

    The image encoder runs once per image and its features are cached on disk, so further
    calls on the same image with new prompts take a fraction of a second. Default checkpoint:
    vit_b on CPU, vit_h on CUDA.

    Examples: visiontool segment truck.jpg --point 500,375;
    visiontool segment truck.jpg --model facebook/sam3 --text "truck";
    visiontool segment clip.mp4 --model facebook/sam2.1-hiera-tiny --point 320,180 --save-viz out.mp4;
    visiontool detect img.jpg --format jsonl | visiontool segment --boxes-from -

    Exit codes: 0 success; 1 runtime failure, some images failed or a video broke (frames so far
    kept); 2 bad flag, missing file, malformed JSON, a prompt outside the image or beyond the video.
    """
    from visiontool.cli.main import error_line
    from visiontool.cli.options import common_checks
    from visiontool.io import prompts as P
    from visiontool.models.protocol import AUTO_PRESETS
    from visiontool.io.readers import one_stdin
    from visiontool.render.console import set_quiet

    set_quiet(quiet)
    one_stdin([*(images or []), prompts_file, boxes_from, gt])
    ray_run = EO.check_engine(engine, address=address, replicas=replicas, gpus_per_replica=gpus_per_replica,
                              cpus_per_replica=cpus_per_replica, output_dir=output_dir, resume=resume,
                              output_format=output_format, quiet=quiet,
                              local_only={"--format": fmt, "--output": output, "--masks-dir": masks_dir,
                                          "--save-viz": save_viz, "--gt": gt})
    # ---- everything a user can get wrong, before any model loads
    from visiontool.io.video import is_video_source, is_video_path

    fmt = choose_format(fmt, output, SEGMENT_FORMATS)  # as detect: table on a terminal, jsonl when piped
    if gt and fmt != "coco":
        raise UsageError("--gt maps ids for --format coco; add --format coco")
    videos = [v for v in images or [] if is_video_source(v)]
    if videos and len(videos) != len(images or []):
        raise UsageError("give either images or videos, not both, in one segment call")
    viz_file = save_viz if videos and save_viz and is_video_path(save_viz) else None
    if viz_file and len(videos) > 1:
        raise UsageError(f"--save-viz {save_viz}: one annotated video per input; give a directory for "
                         f"{len(videos)} videos")
    common_checks(device=device, dtype=dtype, output=output, files={"--save-viz": viz_file},
                  dirs={"--masks-dir": masks_dir, "--save-viz": None if viz_file else save_viz},
                  inputs=[*(images or []), prompts_file, boxes_from, gt, mask_input])
    seg_runtime = runtime_options(runtime)  # the SAM image encoder's runtime (images and video frames)
    if model is not None:
        if not model.strip():  # an unset shell variable must not mean the default checkpoint
            raise UsageError("--model is empty")
        from visiontool.models.registry import check_segmenter_spec

        check_segmenter_spec(model)
    from visiontool.services.detect import parse_text

    phrases = parse_text(text)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold must be within [0, 1], got {threshold}")
    if text_threshold is not None and not 0.0 <= text_threshold <= 1.0:
        raise UsageError(f"--text-threshold must be within [0, 1], got {text_threshold}")
    if not phrases:
        for flag, v in (("--threshold", threshold), ("--text-threshold", text_threshold), ("--detector", detector)):
            if v is not None:
                raise UsageError(f"{flag} applies to --text; add --text PHRASES")
    if detector is not None and detector.lower() not in ("none", "off"):
        from visiontool.models.registry import check_detector_spec

        check_detector_spec(detector)
    if not videos:
        for flag, v in (("--frame", frame), ("--start", start), ("--end", end),
                        ("--max-frames-in-memory", max_frames_in_memory)):
            if v is not None:
                raise UsageError(f"{flag} applies to videos")
        if vid_stride != 1:
            raise UsageError("--vid-stride applies to videos")
    if vid_stride < 1:
        raise UsageError(f"--vid-stride must be at least 1, got {vid_stride}")
    if frame is not None and frame < 0:
        raise UsageError(f"--frame must be >= 0, got {frame}")
    if max_frames_in_memory is not None and max_frames_in_memory < 1:
        raise UsageError(f"--max-frames-in-memory must be at least 1, got {max_frames_in_memory}")
    if no_cache and cache_dir:
        raise UsageError("--cache-dir and --no-cache contradict each other")
    if not no_cache:
        from visiontool.services.embedding_cache import default_max_bytes

        default_max_bytes()  # a bad VISIONTOOL_EMBEDDING_CACHE_MB fails now, not after the encoder
    for flag, v in (("--points-per-side", points_per_side), ("--min-area", min_area)):
        if v is not None and v < (1 if flag == "--points-per-side" else 0):
            raise UsageError(f"invalid {flag} {v}")
    if points_per_side is not None and points_per_side > MAX_POINTS_PER_SIDE:
        raise UsageError(f"--points-per-side {points_per_side}: at most {MAX_POINTS_PER_SIDE}, one point per pixel "
                         "of SAM's 1024-pixel input (the default is 32)")
    for flag, v in (("--pred-iou-thresh", pred_iou_thresh), ("--stability-score-thresh", stability_score_thresh)):
        if v is not None and not 0.0 <= v <= 1.0:
            raise UsageError(f"invalid {flag} {v}: expected a number in [0, 1]")
    if preset is not None and preset not in AUTO_PRESETS:
        raise UsageError(f"invalid --preset '{preset}': expected fast|default|quality")
    auto_knobs = any(v is not None for v in (preset, points_per_side, pred_iou_thresh, stability_score_thresh,
                                              min_area))
    if auto_knobs and not auto:
        raise UsageError("--preset/--points-per-side/--pred-iou-thresh/--stability-score-thresh/--min-area "
                         "apply to --auto; add --auto")
    if mask_input:
        import os

        if not os.path.isfile(mask_input):
            raise UsageError(f"--mask-input file not found: '{mask_input}'")

    points = [P.parse_xy(p, "--point") for p in point or []]
    negs = [P.parse_xy(p, "--neg-point") for p in neg_point or []]
    boxes = [P.parse_box(b) for b in box or []]
    extra = []
    if prompts_file:
        from visiontool.io.coco import load_json_file

        extra = P.prompts_from_json(load_json_file(prompts_file, "--prompts"), prompts_file)
    records = _read_boxes_from(boxes_from) if boxes_from else None
    base = P.build_prompts(points=points, neg_points=negs, boxes=boxes, mask_input=mask_input, extra=extra,
                           frame=frame)
    if auto and (base or records is not None or phrases):
        raise UsageError("--auto segments everything; it takes no prompts")
    if not auto and not base and records is None and not phrases:
        raise UsageError("nothing to segment: give --point, --box, --mask-input, --prompts, --text, --boxes-from "
                         "or --auto")
    if not videos:
        for p in base:
            keys = [k for k, v in (("frame", p.frame), ("object_id", p.object_id)) if v is not None]
            if keys:  # ignored on a photo before: the user meant a video
                verb = "applies" if len(keys) == 1 else "apply"
                raise UsageError(f"{p.source}: {' and '.join(repr(k) for k in keys)} {verb} to videos, and every "
                                 "source is a photo")
    if videos:
        if auto:
            raise UsageError("--auto segments images; give a video point, box, mask, --prompts or --text prompts")
        if records is not None:
            raise UsageError("--boxes-from names images; for a video give --box/--prompts on a --frame, or --text")
        from visiontool.cli.segment_video import run_videos

        run_videos(videos, base, phrases, model=model, detector=detector, threshold=threshold,
                   text_threshold=text_threshold, frame=frame, vid_stride=vid_stride, start=start, end=end,
                   max_frames_in_memory=max_frames_in_memory, fmt=fmt, output=output, gt=gt,
                   save_viz=save_viz, viz_file=viz_file, masks_dir=masks_dir, cache_dir=cache_dir,
                   no_cache=no_cache, device=device, dtype=dtype, quiet=quiet, runtime_options=seg_runtime)
        return

    from visiontool.io.images import expand_sources, image_size
    from visiontool.services.segment import SegmentJob

    if images:
        sources = expand_sources(list(images))
    elif records is not None:
        if not records:
            raise UsageError(f"--boxes-from {boxes_from}: no records, so no images to segment")
        sources = expand_sources(list(records))
    else:
        raise UsageError("no image given (see 'visiontool segment --help')")
    jobs = []
    for s in sources:
        ps = list(base)
        found = P.match_record(records, s.name)
        if found is not None:
            ps += P.prompts_for_detections(found.detections, "--boxes-from")
        jobs.append(SegmentJob(s, ps, auto, phrases))
    # prompt coordinates against each image's size (header only), still before the model
    for job in jobs:
        if job.source.is_url:
            continue
        size = image_size(job.source.name)
        if size is not None:
            for p in job.prompts:
                P.check_prompt(p, size[0], size[1], job.source.name)
                P.check_mask_size(p, size[0], size[1], job.source.name)
    gt_index = None
    if gt:
        from visiontool.io.coco import GroundTruthIndex

        gt_index = GroundTruthIndex.load(gt)
    opts = None
    if auto:
        opts = AUTO_PRESETS[preset or "default"].replace(points_per_side=points_per_side,
                                                         pred_iou_thresh=pred_iou_thresh,
                                                         stability_score_thresh=stability_score_thresh,
                                                         min_area=min_area)

    if ray_run is not None:  # --engine ray: the records go to shards in --output-dir
        from visiontool.engines.ray import segment_on_ray

        segment_on_ray(ray_run, jobs, records=records, model=model, multimask=multimask, auto_options=opts,
                       gt=gt_index, device=device, dtype=dtype, cache_dir=cache_dir, use_cache=not no_cache,
                       load_options=seg_runtime)
        return
    # ---- the model, then one image at a time
    from visiontool.io.records import RecordWriter
    from visiontool.models.registry import load_segmenter
    from visiontool.render.console import warn
    from visiontool.services.segment import iter_segment

    engine = load_segmenter(model, device, dtype, warn=warn, cache_dir=cache_dir, use_cache=not no_cache,
                            quiet=quiet, **seg_runtime)
    text_options = None
    if phrases:
        text_options = _text_options(engine, phrases, detector, threshold, text_threshold, device, dtype, warn)
    failed: list[str] = []
    lone = len(jobs) == 1  # a lone image's failure is the final error line itself
    used_viz: set[str] = set()
    used_dirs: set[str] = set()
    with RecordWriter(fmt, output, gt_index, kind="segment") as writer:
        for result, rgb in iter_segment(engine, jobs, multimask, opts, gt_index,
                                        on_error=None if lone else error_line, text_options=text_options):
            if result.error:
                failed.append(result.error)
                continue
            writer.write(result)
            if masks_dir:
                from visiontool.io.masks_dir import image_folder, write_masks_dir

                write_masks_dir(result, image_folder(masks_dir, result.image, used_dirs))
            if save_viz:
                from visiontool.io.viz import save_annotated, viz_path

                save_annotated(rgb, result.detections, viz_path(save_viz, result.image, used_viz, ext=".png"),
                               segment=True)
    from visiontool.convert import shared_image_ids_warning

    shared = shared_image_ids_warning(writer.stats, gt_index is not None)
    if shared:
        warn(shared)
    if fmt == "coco" and gt_index is not None:
        labels = writer.stats.get("unmatched_labels")
        if labels:
            warn(f"--gt: no category named {', '.join(sorted(str(x) for x in labels))}; those masks were left out")
    if failed:
        raise PartialFailure(failed[0] if lone else f"{len(failed)} of {len(jobs)} images could not be processed "
                             "(named above)")


def _text_options(engine, phrases, detector, threshold, text_threshold, device, dtype, warn):
    """How --text is served: the model's own concept segmentation or a detector's boxes."""
    from visiontool.services import segment_text as st
    from visiontool.services.segment import TextOptions

    st.check_text_route(engine.info, detector)
    det = st.load_detector(detector, phrases, device, dtype, warn) if st.wants_detector(engine.info, detector) \
        else None
    return TextOptions(det, st.DEFAULT_THRESHOLD if threshold is None else threshold, text_threshold)


def _read_boxes_from(spec: str) -> dict:
    """--boxes-from FILE or '-' (stdin) -> {image: record}."""
    from visiontool.io.prompts import records_from_text
    from visiontool.io.readers import read_text

    text = sys.stdin.read() if spec == "-" else read_text(spec, "--boxes-from")
    return records_from_text(text, "--boxes-from -" if spec == "-" else f"--boxes-from {spec}")
