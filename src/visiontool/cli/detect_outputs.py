"""Where `visiontool detect` sends each finished photo or frame: records, annotated copies, crops.

All outputs are checked before any model loads (:func:`check_outputs`). While the run goes,
each result is written whole before the next one starts: an interrupt (Ctrl-C, SIGTERM)
that arrives while a frame is being written is held until the frame is complete
(:func:`deferred_signals`), so every finished frame is in the output and none is half
there. The command then closes every output normally — a JSON list gets its closing
bracket, an ``--output`` file is committed, an annotated video is flushed and renamed — and
exits 130.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from visiontool.errors import UsageError


@contextlib.contextmanager
def deferred_signals():
    """Hold SIGINT/SIGTERM inside the block and deliver them when it ends (main thread only:
    elsewhere signal handlers cannot be changed and nothing is deferred)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum, frame):  # noqa: ARG001 - the handler signature
        pending.append(signum)

    saved = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if pending:
            handler = saved.get(pending[0])
            if callable(handler):
                handler(pending[0], None)  # visiontool's handler raises Interrupted
            elif pending[0] == signal.SIGINT and handler != signal.SIG_IGN:
                raise KeyboardInterrupt


@dataclass
class OutputPlan:
    """What the checks decided: the record format and where the outputs go."""

    fmt: str
    output: str | None
    mot_dir: bool = False  # --format mot with several videos: one SEQ.txt each in --output DIR
    viz_file: bool = False  # --save-viz names one annotated video file


def check_outputs(sources: list, fmt: str, output: str | None, save_viz: str | None,
                  save_crops: str | None) -> OutputPlan:
    """Everything about the outputs that can be wrong, before any model loads (UsageError)."""
    from visiontool.io.output import check_output_dir, check_output_file, same_path
    from visiontool.io.video import is_video_path

    import os

    videos = [s for s in sources if s.is_video]
    plan = OutputPlan(fmt, output)
    if fmt == "mot":
        if not videos:
            raise UsageError("--format mot writes MOTChallenge rows for video frames, and every source is a photo")
        if len(videos) > 1 or (output and output != "-" and (os.path.isdir(output) or output.endswith(os.sep))):
            if not output or output == "-":
                raise UsageError(f"--format mot with {len(videos)} videos writes one SEQ.txt per video: give "
                                 "--output DIR")
            check_output_dir(output, "--output")
            plan.mot_dir = True
        else:
            check_output_file(output, "--output")
    else:
        check_output_file(output, "--output")
    if save_viz:
        if same_path(save_viz, output):
            raise UsageError("--save-viz must differ from the --output file")
        if is_video_path(save_viz):
            if len(sources) != 1 or not videos:
                raise UsageError(f"--save-viz '{save_viz}' is one video file: it takes exactly one video source "
                                 "(give a directory for photos or several videos)")
            check_output_file(save_viz, "--save-viz")
            plan.viz_file = True
        else:
            check_output_dir(save_viz, "--save-viz")
    if save_crops:
        if same_path(save_crops, output) or same_path(save_crops, save_viz):
            raise UsageError("--save-crops must be a directory of its own")
        check_output_dir(save_crops, "--save-crops")
    return plan


class Outputs:
    """The record writer (table/json/jsonl/coco/csv, or MOT), the annotated copies and the
    crops, fed one result at a time; a context manager that closes them all."""

    def __init__(self, plan: OutputPlan, gt=None, save_viz: str | None = None, save_crops: str | None = None,
                 fps_table: dict | None = None, stride: int = 1):
        self.plan = plan
        self.gt = gt
        self.save_viz = save_viz
        self.save_crops = save_crops
        self.fps_table = fps_table
        self.stride = stride
        self._stack = ExitStack()
        self.writer: Any = None
        self.viz: Any = None
        self.crops: Any = None
        self.written = 0  # records written

    def __enter__(self) -> "Outputs":
        from visiontool.io.records import RecordWriter

        if self.plan.fmt == "mot":
            from visiontool.io.mot import MotWriter

            self.writer = self._stack.enter_context(MotWriter(self.plan.output, self.plan.mot_dir))
        else:
            self.writer = self._stack.enter_context(RecordWriter(self.plan.fmt, self.plan.output, gt=self.gt,
                                                                 kind="detect"))
        if self.save_viz:
            from visiontool.io.viz import AnnotationSink

            self.viz = self._stack.enter_context(AnnotationSink(self.save_viz, self.fps_table, self.stride,
                                                                video_file=self.plan.viz_file))
        if self.save_crops:
            from visiontool.io.crops import CropWriter

            self.crops = CropWriter(self.save_crops)
        return self

    @property
    def stats(self) -> dict:
        return getattr(self.writer, "stats", {})

    def record(self, result) -> None:
        with deferred_signals():
            self.writer.write(result)
            self.written += 1

    def image(self, result, image) -> None:
        with deferred_signals():
            if self.viz is not None:
                self.viz(result, image)
            if self.crops is not None:
                self.crops(result, image)

    @property
    def wants_images(self) -> bool:
        return self.viz is not None or self.crops is not None

    def __exit__(self, exc_type, exc, tb) -> bool:
        return self._stack.__exit__(exc_type, exc, tb)
