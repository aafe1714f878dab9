"""Prompts from the command line, from ``--prompts FILE`` and from detection records.

Coordinates are original-image pixels after EXIF orientation: points ``X,Y``, boxes
``X1,Y1,X2,Y2``. Everything here is checked before any model loads; a prompt outside its
image is a usage error naming the value (:func:`check_prompt`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from visiontool.errors import InvalidInputError, UsageError
from visiontool.types import Detections, ImageResult, Prompt

# a detector's box may overhang the image a little (DETR regresses boxes freely) and is
# clipped; one that overhangs by more than this share of the image's size is nonsense
OVERHANG = 0.5


def _fmt(v: float) -> str:
    return f"{v:g}"


def _floats(text: str, flag: str, n: int, form: str) -> list[float]:
    parts = [p for p in str(text).replace(" ", ",").split(",") if p != ""]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != n or not all(np.isfinite(vals)):
        raise UsageError(f"invalid {flag} '{text}': expected {form} (numbers, pixels)")
    return vals


def parse_xy(text: str, flag: str = "--point") -> tuple[float, float]:
    vals = _floats(text, flag, 2, "X,Y")
    return vals[0], vals[1]


def parse_box(text: str, flag: str = "--box") -> list[float]:
    return _floats(text, flag, 4, "X1,Y1,X2,Y2")


def build_prompts(points=None, neg_points=None, boxes=None, mask_input=None, extra=None,
                  frame: int | None = None) -> list[Prompt]:
    """Flags -> prompts: points (+ a single box, + a mask) make one prompt; each further box is
    its own object. ``frame``: the video frame they are given on."""
    pts = [tuple(p) for p in points or []]
    neg = [tuple(p) for p in neg_points or []]
    bxs = [list(b) for b in boxes or []]
    out: list[Prompt] = []
    if pts or neg or mask_input:
        if len(bxs) > 1:
            raise UsageError("points or --mask-input combine with at most one --box; "
                             "use --prompts FILE for several objects with points")
        allp = pts + neg
        source = "--point" if pts else "--neg-point" if neg else "--box" if bxs else "--mask-input"
        out.append(Prompt(points=np.array(allp) if allp else None,
                          labels=np.array([1] * len(pts) + [0] * len(neg)) if allp else None,
                          box=np.array(bxs[0]) if bxs else None, mask_input=mask_input, source=source,
                          frame=frame))
    else:
        out.extend(Prompt(box=np.array(b), source="--box", frame=frame) for b in bxs)
    out.extend(extra or [])
    return out


PROMPT_KEYS = ("points", "labels", "neg_points", "box", "mask_input", "label", "multimask", "frame", "object_id")


def prompts_from_json(data, origin: str) -> list[Prompt]:
    """``--prompts FILE``: a JSON list of prompt sets.

    Each item: ``{"points": [[x, y], ...], "labels": [1, 0, ...]?, "neg_points": [[x, y]]?,
    "box": [x1, y1, x2, y2]?, "mask_input": "coarse.png"?, "label": "name"?, "multimask": bool?,
    "frame": N?, "object_id": K?}`` (``frame`` / ``object_id`` for videos).
    """
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise InvalidInputError(f"{origin}: expected a non-empty JSON list of prompt objects")
    out = []
    for i, item in enumerate(data):
        where = f"{origin}[{i}]"
        if not isinstance(item, dict):
            raise InvalidInputError(f"{where}: expected an object with points/box/mask_input")
        unknown = [k for k in item if k not in PROMPT_KEYS]
        if unknown:  # a typo ("lables") silently gave every point label 1
            import difflib

            close = difflib.get_close_matches(str(unknown[0]), PROMPT_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise InvalidInputError(f"{where}: unknown key '{unknown[0]}' (a prompt has {', '.join(PROMPT_KEYS)})"
                                    f"{hint}")
        try:
            pts = [list(map(float, p)) for p in item.get("points") or []]
            labels = item.get("labels")
            labels = [int(v) for v in labels] if labels is not None else [1] * len(pts)
            neg = [list(map(float, p)) for p in item.get("neg_points") or []]
            if any(len(p) != 2 for p in pts + neg):
                raise ValueError("points must be [x, y] pairs")
            if not all(np.isfinite(v) for p in pts + neg for v in p):
                raise ValueError("points must be finite numbers")
            if len(labels) != len(pts) or any(v not in (0, 1) for v in labels):
                raise ValueError("labels must be 0/1, one per point")
            box = item.get("box")
            if box is not None:
                box = [float(v) for v in box]
                if len(box) != 4 or not all(np.isfinite(box)):
                    raise ValueError("box must be [x1, y1, x2, y2] (finite numbers)")
            mask_input = item.get("mask_input")
            if mask_input is not None:
                mask_input = str(Path(origin).parent / mask_input) if not os.path.isabs(str(mask_input)) and \
                    not os.path.exists(str(mask_input)) else str(mask_input)
                if not os.path.isfile(mask_input):
                    raise UsageError(f"{where}: mask_input file not found: '{item.get('mask_input')}'")
            mm = item.get("multimask")
            if mm is not None and not isinstance(mm, bool):
                raise ValueError("multimask must be true or false")
            frame, obj = item.get("frame"), item.get("object_id")
            for key, v in (("frame", frame), ("object_id", obj)):
                if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                    raise ValueError(f"{key} must be a non-negative integer")
        except UsageError:
            raise
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{where}: {exc}") from exc
        all_pts = pts + neg
        out.append(Prompt(points=np.array(all_pts) if all_pts else None,
                          labels=np.array(labels + [0] * len(neg)) if all_pts else None,
                          box=np.array(box) if box is not None else None, mask_input=mask_input,
                          label=item.get("label"), multimask=mm, source=where, frame=frame, object_id=obj))
    return out


def records_from_text(text: str, origin: str) -> dict[str, ImageResult]:
    """``--boxes-from``: detect's (or segment's) json list or jsonl records -> {image: record}.

    Records of the same image are merged; a failed input's record (``error``) is skipped."""
    from visiontool.convert import from_record
    from visiontool.io.records import parse_json_or_jsonl

    data = parse_json_or_jsonl(text, origin)
    records = data if isinstance(data, list) else [data]  # one jsonl line parses as one record
    out: dict[str, ImageResult] = {}
    for i, rec in enumerate(records):
        r = from_record(rec, f"{origin}: record {i + 1}")
        if r.error is not None:
            continue
        if r.frame is not None:  # its boxes were merged with every other frame's and the video read as a photo
            raise UsageError(f"{origin}: record {i + 1} is frame {r.frame} of the video '{r.image}'; --boxes-from "
                             "segments photos (a video's objects: segment VIDEO --box or --prompts on a --frame, "
                             "propagated through the video, or --text)")
        if r.image in out:
            prev = out[r.image]
            prev.detections = Detections.merge([prev.detections, r.detections])
        else:
            out[r.image] = r
    return out


def prompts_for_detections(dets: Detections, origin: str) -> list[Prompt]:
    """One box prompt per detection, carrying its label, class id and score."""
    out = []
    for i in range(len(dets)):
        box = dets.xyxy[i]
        cid = int(dets.class_ids[i])
        out.append(Prompt(box=np.array(box), label=dets.names[i], category_id=None if cid < 0 else cid,
                          score=float(dets.scores[i]), multimask=False, from_detection=True,
                          source=f"{origin} box {','.join(_fmt(v) for v in box)}"))
    return out


def match_record(records: dict[str, ImageResult] | None, image: str) -> ImageResult | None:
    """The record for ``image`` (same path, else same normalised path, else unique base name)."""
    if not records:
        return None
    if image in records:
        return records[image]
    norm = os.path.normpath(os.path.abspath(image))
    for k, v in records.items():
        if os.path.normpath(os.path.abspath(k)) == norm:
            return v
    base = os.path.basename(image)
    hits = [v for k, v in records.items() if os.path.basename(k) == base]
    return hits[0] if len(hits) == 1 else None


def check_prompt(p: Prompt, width: int, height: int, image: str) -> None:
    """UsageError naming the offending value if the prompt leaves the image; a detection's
    box that overhangs a little is clipped to the image instead."""
    def bad(what: str) -> UsageError:
        return UsageError(f"{p.source}: {what} lies outside {image} ({width}x{height} pixels)")

    if p.points is not None:
        for x, y in p.points:
            if not (0 <= x <= width and 0 <= y <= height):
                raise bad(f"point {_fmt(x)},{_fmt(y)}")
    if p.box is None:
        return
    x1, y1, x2, y2 = p.box
    s = "box " + ",".join(_fmt(v) for v in p.box)
    if x2 < x1 or y2 < y1:
        raise UsageError(f"{p.source}: {s} has x2 < x1 or y2 < y1 (expected X1,Y1,X2,Y2)")
    if p.from_detection:
        mx, my = OVERHANG * width, OVERHANG * height
        inside = x1 < width and y1 < height and x2 > 0 and y2 > 0
        if not inside or x1 < -mx or y1 < -my or x2 > width + mx or y2 > height + my:
            raise UsageError(f"{p.source} lies outside {image} ({width}x{height} pixels); a detection's box may "
                             f"overhang the image by at most {OVERHANG:.0%} of its size")
        p.box = np.clip(p.box, 0, [width, height, width, height])
        return
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise bad(s)


def check_mask_size(p: Prompt, width: int, height: int, image: str) -> None:
    """UsageError if the --mask-input PNG is not the image's size (header only)."""
    if p.mask_input is None:
        return
    from visiontool.io.images import image_size

    size = image_size(p.mask_input)
    if size is None:  # not an image: say so before any record is written
        read_mask_input(p.mask_input, (height, width))
    elif size != (width, height):
        raise UsageError(f"--mask-input '{p.mask_input}' is {size[0]}x{size[1]}, {image} is "
                         f"{width}x{height}; give a mask the size of the image")


def read_mask_input(path: str, hw: tuple[int, int]):
    """``--mask-input PNG`` as an (H, W) bool array (non-zero = object); it must be the image's
    size ``hw`` = (height, width). InvalidInputError / UsageError with one line otherwise."""
    from PIL import Image

    h, w = hw
    try:
        with Image.open(path) as im:
            m = np.asarray(im.convert("L"), dtype=np.float32) > 0
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"--mask-input '{path}' is not a readable image ({exc})") from exc
    if m.shape != (h, w):
        raise UsageError(f"--mask-input '{path}' is {m.shape[1]}x{m.shape[0]}, the image is {w}x{h}; "
                         "give a mask the size of the image")
    return m
