"""Masks that follow prompted objects through a video: SAM 2 / EdgeTAM / SAM 3 tracker video models.

transformers' own streaming API does the tracking (``processor.add_inputs_to_inference_session``,
``model(inference_session, frame_idx, frame=pixel_values, reverse=...)``); this module feeds it
decoded frames one at a time and keeps its state bounded:

* **Order.** Prompts are given on their frames (``Prompt.frame``, default the first processed
  frame). From the first prompt frame N the masks are propagated backward to the first frame
  (frames before N are held — in memory, beyond ``max_frames_in_memory`` in a temporary
  directory — until N is reached), then, with the backward pass's tracking memory cleared,
  forward from N to the end exactly as transformers' documented ``propagate_in_video_iterator``
  from N. Prompts on later frames are added when the forward pass reaches them (a new object
  starts there; a known object gets a correction). Results come out in frame order.
* **Memory.** After each frame its pixel values, vision features and full-resolution mask
  logits are dropped, and the tracking outputs of frames further back than the model reads
  (``num_maskmem`` memory frames, ``max_object_pointers_in_encoder`` object pointers) — or
  than ``max_frames_in_memory`` if that is smaller — are deleted, so memory stays flat
  however long the clip.
* **Speed.** Per frame the work is transformers' own (the image encoder, then the memory
  attention, mask decoder and memory encoder); decoding runs ahead in its own thread. Encoding
  the next frame in a worker thread while the current one is tracked was measured slower on
  2 cores (see docs/segment.md) and is not done. With ``ad.runtime`` openvino / onnxruntime
  the image encoder runs in the image path's cached export instead
  (:mod:`.hf_sam_video_features`: the features go into the session's own feature cache).

Frames are numbered for the model by their position among the processed frames (so
``--vid-stride`` clips look like a video at the lower rate); records keep the decoded index.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from visiontool.errors import UsageError
from visiontool.types import Detections, Prompt


class FrameMasks(tuple):
    """``(index, time_s, Detections)`` of one frame, with the frame's RGB array as ``.image``."""

    image: np.ndarray | None = None

    def __new__(cls, index: int, time_s: float, dets: Detections, image: np.ndarray | None = None):
        self = super().__new__(cls, (index, time_s, dets))
        self.image = image
        return self


class _Held:
    """Frames before the first prompt frame, kept for the backward pass (RAM, then disk)."""

    def __init__(self, in_memory: int):
        self.in_memory = max(1, in_memory)
        self.items: list = []  # (k, index, time_s, rgb | path)
        self._dir: tempfile.TemporaryDirectory | None = None

    def add(self, k: int, index: int, t: float, rgb: np.ndarray) -> None:
        if len(self.items) >= self.in_memory:
            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="visiontool-frames-")
            path = Path(self._dir.name) / f"{k}.npy"
            np.save(path, rgb)
            self.items.append((k, index, t, path))
        else:
            self.items.append((k, index, t, rgb))

    @staticmethod
    def image(item) -> np.ndarray:
        v = item[3]
        return np.load(v) if isinstance(v, Path) else v

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def default_window(config) -> int:
    """How many past frames the tracker reads: memory frames and object pointers."""
    return max(int(getattr(config, "num_maskmem", 7)), int(getattr(config, "max_object_pointers_in_encoder", 16)))


def object_ids(prompts: list[Prompt]) -> list[int]:
    """Each prompt's object id: its own, else the next unused one (1, 2, ...) in prompt order."""
    used = {p.object_id for p in prompts if p.object_id is not None}
    out, nxt = [], 1
    for p in prompts:
        if p.object_id is not None:
            out.append(int(p.object_id))
            continue
        while nxt in used:
            nxt += 1
        used.add(nxt)
        out.append(nxt)
    return out


class VideoRun:
    """One propagation: a streaming inference session of the adapter's video model."""

    def __init__(self, ad, max_frames_in_memory: int | None = None):
        import torch

        self.ad = ad
        self.model = ad.torch_model(ad.s.video_class)
        self.window = default_window(self.model.config)
        if max_frames_in_memory is not None:
            self.window = max(1, min(self.window, int(max_frames_in_memory)))
        self.hold = int(max_frames_in_memory) if max_frames_in_memory is not None else 64
        self.processor = video_processor(ad)
        self.session = self.processor.init_video_session(inference_device=torch.device(ad.device),
                                                         dtype=torch.float32)
        self.labels: dict[int, Prompt] = {}  # object id -> the prompt that started it
        self.features = None  # --runtime: the frame's image features from the image path's export
        if ad.runtime != "torch":
            from visiontool.models.hf_sam_video_features import RuntimeFrameFeatures

            self.features = RuntimeFrameFeatures(ad, self.model)

    # ------------------------------------------------------------------ prompts
    def add_prompts(self, k: int, prompts: list[Prompt], ids: list[int], hw: tuple[int, int]) -> None:
        """Add this frame's prompts (one transformers call per object; the session is told
        about all of them as new inputs)."""
        merged: dict[int, dict] = {}
        for p, oid in zip(prompts, ids):
            m = merged.setdefault(oid, {"points": [], "labels": [], "box": None, "mask": None, "prompt": p})
            if p.points is not None:
                m["points"] += [list(map(float, xy)) for xy in p.points]
                m["labels"] += [int(v) for v in p.labels]
            if p.box is not None:
                if m["box"] is not None:
                    raise UsageError(f"object {oid} has two boxes on frame {p.frame}; give one box per object "
                                     "and frame")
                m["box"] = [float(v) for v in p.box]
            if p.mask_input is not None:
                m["mask"] = p.mask_input
            self.labels.setdefault(oid, p)
        for oid, m in merged.items():
            if m["mask"] is not None:
                if m["points"] or m["box"] is not None:
                    raise UsageError(f"object {oid}: a video mask prompt cannot be combined with points or a box "
                                     "on the same frame")
                self.processor.add_inputs_to_inference_session(self.session, frame_idx=k, obj_ids=[oid],
                                                               input_masks=[_read_mask(m["mask"], hw)],
                                                               original_size=hw)
                continue
            kw = {}
            if m["points"]:
                kw.update(input_points=[[m["points"]]], input_labels=[[m["labels"]]])
            if m["box"] is not None:
                kw["input_boxes"] = [[m["box"]]]
            self.processor.add_inputs_to_inference_session(self.session, frame_idx=k, obj_ids=[oid],
                                                           original_size=hw, **kw)
        # the processor replaces the list on each call: every object of this frame is new input
        self.session.obj_with_new_inputs = list(merged)

    # ------------------------------------------------------------------ one frame
    def step(self, k: int, rgb: np.ndarray, reverse: bool):
        """Track frame ``k`` (streaming: the model encodes it, then conditions on its memory)."""
        import torch

        pv = self.ad.pixel_values(rgb)[0]
        if self.features is not None:  # the model finds them in its cache and skips its own encoder
            self.session.cache.cache_vision_features(k, self.features(pv))
        with torch.inference_mode():
            out = self.model(inference_session=self.session, frame_idx=k, frame=pv, reverse=reverse)
        self.prune(k, reverse)
        return out

    def prune(self, k: int, reverse: bool) -> None:
        """Forget what no later frame reads (see the module docstring)."""
        s = self.session
        if s.processed_frames is not None:
            s.processed_frames.pop(k, None)
        sign = -1 if reverse else 1
        for obj_idx, od in s.output_dict_per_obj.items():
            for store in (od["cond_frame_outputs"], od["non_cond_frame_outputs"]):
                for out in store.values():
                    out.pop("high_res_masks", None)
            nc = od["non_cond_frame_outputs"]
            for f in list(nc):
                nc[f].pop("pred_masks", None)
                if (k - f) * sign >= self.window:
                    del nc[f]
            ft = s.frames_tracked_per_obj.get(obj_idx, {})
            for f in list(ft):
                if (k - f) * sign >= self.window:
                    del ft[f]

    def forget_tracking(self) -> None:
        """Before the forward pass: drop what the backward pass tracked (conditioning frames stay)."""
        s = self.session
        for obj_idx, od in s.output_dict_per_obj.items():
            od["non_cond_frame_outputs"].clear()
            s.frames_tracked_per_obj[obj_idx] = {}

    def detections(self, out, hw: tuple[int, int]) -> Detections:
        """The frame's masks: one per object present (non-empty), score = object-presence probability."""
        from visiontool.masks import encode_transposed

        ids = list(out.object_ids)
        if not ids:
            return Detections.empty(with_masks=True)
        low = out.pred_masks.float().cpu().numpy()[:, 0]  # (O, 4g, 4g)
        scores = 1.0 / (1.0 + np.exp(-out.object_score_logits.float().cpu().numpy().reshape(-1)))
        up = self.ad.upscaler(hw)
        rles: list[dict] = []
        for c0 in range(0, len(low), 8):
            rles += encode_transposed(up.logits_t(low[c0:c0 + 8]) > 0)
        return masks_to_detections(rles, scores, [self.labels.get(i) for i in ids], ids)


def masks_to_detections(rles: list[dict], scores, prompts: list[Prompt | None], ids: list[int]) -> Detections:
    """Per-object video masks -> Detections (empty masks left out), with ``object_id``."""
    from visiontool.masks import areas, boxes
    from visiontool.types import NO_CLASS

    keep = [i for i, a in enumerate(areas(rles)) if a > 0] if rles else []
    rles = [rles[i] for i in keep]
    prompts = [prompts[i] for i in keep]
    descs = [p.describe() if p is not None else {} for p in prompts]
    return Detections(boxes(rles), [float(scores[i]) for i in keep],
                      [p.category_id if p is not None and p.category_id is not None else NO_CLASS for p in prompts],
                      [p.label if p is not None else None for p in prompts], masks=rles,
                      data={"object_id": np.asarray([ids[i] for i in keep], dtype=np.int64), "prompt": descs})


def video_processor(ad):
    """The streaming processor of the adapter's video model (coordinates, prompts, sessions)."""
    from visiontool.models.loader import cached

    def make():
        import transformers as T
        from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

        ip = ad.image_processor()
        size = ad.s.image_size
        vp = Sam2VideoVideoProcessor(size={"height": size, "width": size}, image_mean=ip.image_mean,
                                     image_std=ip.image_std)
        cls = T.Sam3TrackerVideoProcessor if ad.s.family == "sam3" else T.Sam2VideoProcessor
        return cls(image_processor=ip, video_processor=vp, target_size=size)

    return cached(("hf-sam-video-processor", str(ad.s.path)), make)


def _read_mask(path: str, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    from visiontool.errors import InvalidInputError

    try:
        with Image.open(path) as im:
            m = np.asarray(im.convert("L")) > 0
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"--mask-input '{path}' is not a readable image ({exc})") from exc
    if m.shape != tuple(hw):
        raise UsageError(f"--mask-input '{path}' is {m.shape[1]}x{m.shape[0]}, the video is {hw[1]}x{hw[0]}")
    return m


# ----------------------------------------------------------------------------- the run
def propagate(ad, frames: Iterator[tuple[int, float, np.ndarray]], prompts: list[Prompt], *,
              max_frames_in_memory: int | None = None) -> Iterator[FrameMasks]:
    """Yield :class:`FrameMasks` for every frame of ``frames`` ((index, time_s, rgb) in decoding
    order), in that order. UsageError if a prompt's frame is never decoded."""
    if not prompts:
        raise UsageError("nothing to track: give --point, --box, --mask-input, --prompts or --text")
    run = VideoRun(ad, max_frames_in_memory)
    ids = object_ids(prompts)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        return
    default = first[0]
    by_frame: dict[int, list[tuple[Prompt, int]]] = {}
    for p, oid in zip(prompts, ids):
        by_frame.setdefault(default if p.frame is None else int(p.frame), []).append((p, oid))
    order = sorted(by_frame)
    f0 = order[0]
    held = _Held(run.hold)
    stream = _chain(first, frames)
    try:
        yield from _run(run, stream, by_frame, f0, held)
    finally:
        held.close()


def _chain(first, rest):
    yield first
    yield from rest


def _run(run: VideoRun, stream, by_frame: dict, f0: int, held: _Held) -> Iterator[FrameMasks]:
    pending = sorted(by_frame)
    k = -1
    cur = None
    seen_last = None
    for index, t, rgb in stream:  # phase 1: reach the first prompt frame, holding what comes before
        k += 1
        seen_last = index
        if index < f0:
            held.add(k, index, t, np.asarray(rgb))
            continue
        if index > f0:
            raise _missing(f0, index)
        cur = (k, index, t, np.asarray(rgb))
        break
    if cur is None:
        raise _beyond(f0, seen_last, k + 1)
    hw = cur[3].shape[:2]
    k0 = cur[0]
    p0 = by_frame[f0]
    run.add_prompts(k0, [p for p, _ in p0], [o for _, o in p0], hw)
    pending.remove(f0)
    first_result = FrameMasks(cur[1], cur[2], run.detections(run.step(k0, cur[3], reverse=False), hw), cur[3])
    if held.items:  # phase 2: backward from f0; results kept (RLE) and emitted in frame order
        back = [None] * len(held.items)
        for i in range(len(held.items) - 1, -1, -1):
            it = held.items[i]
            back[i] = run.detections(run.step(it[0], held.image(it), reverse=True), hw)
        for it, dets in zip(held.items, back):
            yield FrameMasks(it[1], it[2], dets, held.image(it))
        run.forget_tracking()
    held.close()
    yield first_result
    for index, t, rgb in stream:  # phase 3: forward from f0; prompts on later frames join when reached
        k += 1
        seen_last = index
        rgb = np.asarray(rgb)
        if pending and index > pending[0]:
            raise _missing(pending[0], index)
        if pending and index == pending[0]:
            pf = by_frame[index]
            run.add_prompts(k, [p for p, _ in pf], [o for _, o in pf], hw)
            pending.pop(0)
        yield FrameMasks(index, t, run.detections(run.step(k, rgb, reverse=False), hw), rgb)
    if pending:
        raise _beyond(pending[0], seen_last, k + 1)


def _missing(frame: int, index: int) -> UsageError:
    return UsageError(f"prompt frame {frame} is not among the processed frames (the next one is {index}; "
                      "--vid-stride and --start choose which frames are read)")


def _beyond(frame: int, last: int | None, count: int) -> UsageError:
    where = f"the last processed frame is {last}" if last is not None else "no frame was decoded"
    return UsageError(f"prompt frame {frame} is beyond the end of the video ({where}, {count} frame(s) read)")
