"""`visiontool segment VIDEO ...`: the video half of the segment command (called by cli/segment.py).

Checks (before any model loads): positions, the videos open, prompts inside the frame and
before the video's declared end, a model that can follow objects through a video. Then one
record per processed frame is streamed (jsonl flushes each), ``--save-viz`` writes the
annotated video, ``--masks-dir`` one folder per frame. A video that breaks mid-way keeps the
records written so far and ends the command with exit 1.
"""
from __future__ import annotations

import os
from pathlib import Path

from visiontool.errors import PartialFailure, UsageError


def run_videos(videos: list[str], base, phrases, *, model, detector, threshold, text_threshold, frame, vid_stride,
               start, end, max_frames_in_memory, fmt, output, gt, save_viz, viz_file, masks_dir, cache_dir,
               no_cache, device, dtype, quiet, runtime_options: dict | None = None) -> None:
    from visiontool.cli.main import error_line
    from visiontool.io.video import VideoError, parse_position
    from visiontool.models.registry import load_segmenter, peek_segmenter_capabilities
    from visiontool.render.console import info as say, warn
    from visiontool.services import segment_video as sv

    startp, endp = parse_position(start, "--start"), parse_position(end, "--end")
    caps = peek_segmenter_capabilities(model)
    if caps is not None and "video" not in caps:
        raise UsageError(f"{videos[0]} is a video: segment it with a video model (--model {sv.VIDEO_EXAMPLE}, "
                         f"yonigozlan/EdgeTAM-hf or facebook/sam3); '{model or 'the default SAM checkpoint'}' "
                         "segments images only")
    if phrases and caps is not None and "text" not in caps and detector is not None and \
            detector.lower() in ("none", "off"):
        raise UsageError(f"--text needs a text-capable model (SAM 3, e.g. facebook/sam3) or a zero-shot detector "
                         f"(--detector); '{model}' takes no text and --detector is '{detector}'")
    jobs = [sv.VideoJob(v, list(base), phrases, vid_stride, startp, endp, max_frames_in_memory, text_frame=frame)
            for v in videos]
    infos = [sv.check_job(job) for job in jobs]
    gt_index = None
    if gt:
        from visiontool.io.coco import GroundTruthIndex

        gt_index = GroundTruthIndex.load(gt)

    engine = load_segmenter(model, device, dtype, warn=warn, cache_dir=cache_dir, use_cache=not no_cache,
                            quiet=quiet, **(runtime_options or {}))
    sv.require_video_model(engine.info, videos[0])
    text_options = None
    if phrases:
        from visiontool.cli.segment import _text_options

        text_options = _text_options(engine, phrases, detector, threshold, text_threshold, device, dtype, warn)

    from visiontool.io.records import RecordWriter

    failed: list[str] = []
    lone = len(jobs) == 1
    with RecordWriter(fmt, output, gt_index, kind="segment") as writer:
        for job, vinfo in zip(jobs, infos):
            out_path = _viz_path(save_viz, viz_file, job.source)
            count = 0
            vw = None
            try:
                for result, rgb in sv.iter_video(engine, job, text_options=text_options, gt=gt_index):
                    writer.write(result)
                    count += 1
                    if out_path is not None and rgb is not None:
                        vw = vw or _writer(out_path, vinfo, rgb, vid_stride)
                        from visiontool.io.viz import render

                        vw.write(render(rgb, result.detections, segment=True))
                    if masks_dir:
                        from visiontool.io.masks_dir import write_masks_dir

                        stem = Path(job.source.split("?")[0]).stem or "video"
                        write_masks_dir(result, Path(masks_dir) / stem / f"frame_{result.frame:06d}")
            except VideoError as exc:
                failed.append(str(exc))
                if not lone:
                    error_line(str(exc))
            finally:
                if vw is not None:
                    vw.close()
            say(f"{job.source}: {count} frame(s) segmented" + (f", annotated video {out_path}" if vw else ""))
    if fmt == "coco" and gt_index is not None and writer.stats.get("unmatched_images"):
        warn(f"--gt names no image '<video>#<frame>' for {writer.stats['unmatched_images']} frame(s); those were "
             "left out")
    if failed:
        raise PartialFailure(failed[0] if lone else f"{len(failed)} of {len(jobs)} videos could not be read to the "
                             "end (named above); the frames before were written")


def _viz_path(save_viz: str | None, viz_file: str | None, source: str) -> Path | None:
    if save_viz is None:
        return None
    if viz_file is not None:
        return Path(viz_file)
    stem = Path(source.split("?")[0]).stem or "video"
    return Path(save_viz) / f"{stem}.mp4"


def _writer(path: Path, vinfo, rgb, stride: int):
    from visiontool.io.video import VideoWriter

    fps = (vinfo.fps or 30.0) / max(1, stride)
    h, w = rgb.shape[:2]
    os.makedirs(path.parent, exist_ok=True)
    return VideoWriter(path, fps, w, h)
