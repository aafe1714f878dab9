"""Reading a COCO ground truth for evaluation: a light schema read, and the per-iou-type checks.

``read_gt_light`` parses with msgspec only what validation needs (images, categories and
each annotation's id, category and crowd flag; the segmentation stays unparsed bytes), and
checks the annotations' schema. ``annotation_problem`` says why an annotation cannot be
scored for an iou type, as pycocotools' COCOeval reads it: ``bbox`` and ``area`` always,
``segmentation`` (polygons, RLE or uncompressed RLE, the RLE's counts and size checked as
a result's are) for segm, ``keypoints`` (51 numbers) and ``num_keypoints`` for keypoints.
"""
# no `from __future__ import annotations`: msgspec reads the annotations of the local schema classes
import json
import os
from numbers import Real
from typing import Any

import numpy as np

from visiontool.io.pred_checks import N_KEYPOINT_VALUES, Invalid, int_id, number, polygons, rle_problem


def read_gt_light(path: str, segm: bool = False):
    """``(images, categories, (ann ids, ann category ids, ann iscrowd), has_annotations,
    problem, mismatch)`` of a COCO GT file, or None if the file does not fit the strict schema
    (the caller then parses it fully and names what is wrong). With ``segm`` every annotation's
    segmentation is checked; ``problem`` is the first failure ("annotations[i]: ...") or None;
    ``mismatch`` is ``(count, first)`` of RLE masks of another size than their image, or None."""
    import mmap

    import msgspec

    global _NONE
    _NONE = msgspec.Raw()

    class Img(msgspec.Struct, gc=False):
        id: int
        file_name: str | None = None
        width: int | None = None
        height: int | None = None

    class Cat(msgspec.Struct, gc=False):
        id: int
        name: str

    class Ann(msgspec.Struct, gc=False):
        id: int
        image_id: int
        category_id: int
        bbox: tuple[float, float, float, float]
        area: float
        iscrowd: int = 0
        segmentation: msgspec.Raw = msgspec.Raw()  # empty: absent

    class GT(msgspec.Struct, gc=False):
        images: list[Img]
        categories: list[Cat]
        annotations: list[Ann] | None = None

    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return None
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                g = msgspec.json.decode(mm, type=GT)
                anns = g.annotations or []
                mismatch: list = []
                problem = _segm_problem(anns, g.images, mismatch) if segm else None
                for a in anns:
                    a.segmentation = _NONE  # drop the views into the mapping before it closes
    except (msgspec.DecodeError, ValueError, OSError, RecursionError, BufferError):
        return None
    images = [{"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height}
              for im in g.images]
    cats = [{"id": c.id, "name": c.name} for c in g.categories]
    n = len(anns)
    try:
        arrays = (np.fromiter((a.id for a in anns), np.int64, n),
                  np.fromiter((a.category_id for a in anns), np.int64, n),
                  np.fromiter((1 if a.iscrowd else 0 for a in anns), np.int64, n))
    except OverflowError:
        return None  # an annotation id beyond 64 bits: the full parse names it
    note = (len(mismatch), mismatch_note(f"annotations[{mismatch[0][0]}]", [mismatch[0][1]])[1]) if mismatch else None
    return images, cats, arrays, g.annotations is not None, problem, note


_NONE = None


def mismatch_note(where: str, mm: list) -> tuple[int, str] | None:
    """(count, first) of RLE size mismatches collected by :func:`annotation_problem`, with
    ``where`` of the first (e.g. "annotations[3]"), or None."""
    if not mm:
        return None
    (h, w), (gh, gw) = mm[0]
    return len(mm), f"{where}: {h}x{w} on a {gh}x{gw} image"


def _segm_problem(anns, images, mismatch: list) -> str | None:
    """The first annotation that cannot be scored as segm ("annotations[i]..."), or None;
    ``mismatch`` gets ``(i, (mask size, image size))`` for each RLE of another size than its image."""
    import msgspec

    sizes = {im.id: (im.height, im.width) for im in images}
    for i, a in enumerate(anns):
        raw = a.segmentation
        head = bytes(memoryview(raw)[:1])
        if not head or head == b"n":
            return f"annotations[{i}] has no 'segmentation' (segm evaluation needs masks)"
        if head == b"[":
            continue  # polygons: their numbers are checked by the engine's own reader
        mm: list = []
        problem = annotation_problem(
            {"segmentation": msgspec.json.decode(raw), "image_id": a.image_id}, "segm", sizes, full=False,
            mismatch=mm)
        if mm:
            mismatch.append((i, mm[0]))
        if problem:
            return f"annotations[{i}]{problem}"
    return None


def annotation_problem(a: Any, iou_type: str, sizes: dict, full: bool = True,
                       mismatch: list | None = None) -> str | None:
    """Why annotation ``a`` cannot be scored for ``iou_type`` (text after "annotations[i]"), or
    None. ``sizes``: {image id: (height, width)}; ``full``: also the keys every iou type needs.
    An RLE whose size is not its image's is scored as pycocotools scores it (it keeps its own
    size, so no result mask of the image's size matches it): ``mismatch``, when given, gets
    ``(mask size, image size)`` appended for it."""
    if not isinstance(a, dict):
        return " is not an object"
    try:
        if full:
            for key in ("id", "image_id", "category_id", "bbox", "area"):
                if key not in a:
                    return f" has no '{key}'"
            for key in ("id", "image_id", "category_id"):
                int_id(a[key], key)
            _real(a["area"], "area")  # pycocotools compares it with the area ranges
            if "iscrowd" in a and not isinstance(a["iscrowd"], bool):
                _real(a["iscrowd"], "iscrowd")  # pycocotools takes int() of it
        if iou_type == "segm":
            seg = a.get("segmentation")
            if seg is None:
                return " has no 'segmentation' (segm evaluation needs masks)"
            if isinstance(seg, list):
                polygons(seg)
            elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
                size = seg["size"]
                if (not isinstance(size, (list, tuple)) or len(size) != 2
                        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in size)):
                    return ".segmentation.size must be [height, width]"
                want = sizes.get(a.get("image_id"))
                if mismatch is not None and want is not None and None not in want and tuple(size) != tuple(want):
                    mismatch.append((list(size), list(want)))
                if not isinstance(seg["counts"], (str, list)):
                    return ".segmentation.counts must be a string or a list of run lengths"
                problem = rle_problem(seg["counts"], int(size[0]), int(size[1]))
                if problem:
                    return f".segmentation.{problem}"
            else:
                return ".segmentation must be polygons or COCO RLE {'size': [h, w], 'counts': ...}"
        elif iou_type == "keypoints":
            kps = a.get("keypoints")
            if kps is None or "num_keypoints" not in a:
                return " has no 'keypoints' and 'num_keypoints' (keypoints evaluation needs them)"
            if not isinstance(kps, list) or len(kps) != N_KEYPOINT_VALUES:
                return f".keypoints must be {N_KEYPOINT_VALUES} numbers (17 COCO keypoints x (x, y, v))"
            for x in kps:
                number(x, "keypoints")
    except Invalid as exc:
        return f": {exc}"
    return None


def checked_ids(items: list, where: str, path: str | None) -> list[int]:
    """The ``id`` of every image or category, checked: an integer within 64 bits (pycocotools
    cannot sort ids of mixed types; every fast engine stores them as 64-bit integers)."""
    from visiontool.errors import InvalidInputError

    try:
        return [int_id(x["id"], f"{where}[{i}].id") for i, x in enumerate(items)]
    except Invalid as exc:
        raise InvalidInputError(f"ground truth '{path or '<gt>'}': {exc}") from None


def _real(v: Any, what: str) -> None:
    """A JSON number (NaN included: pycocotools scores it; a string, null or bool is not one)."""
    if isinstance(v, bool) or not isinstance(v, Real):
        raise Invalid(f"{what} is not a number ({json.dumps(v, default=repr)[:40]})")


def bbox_problem(a: dict) -> str | None:
    """Why a ground-truth annotation's ``bbox`` cannot be scored for bbox (after
    "annotations[i]"), or None: 4 numbers (pycocotools computes IoU from them)."""
    b = a.get("bbox")
    if not isinstance(b, (list, tuple)) or len(b) != 4:
        return f": bbox must be a list of 4 numbers ({json.dumps(b, default=repr)[:40]})"
    try:
        for x in b:
            _real(x, "bbox")
    except Invalid as exc:
        return f": {exc}"
    return None


def scored_fields(d: dict) -> dict:
    """COCO GT ``d`` reduced to what COCOeval reads: images' id, height, width (and a string
    file_name), categories' id and name (supercategory, keypoints and skeleton when well
    typed), the annotations as they are; other top-level keys (info, licenses, ...) dropped.
    For engines whose readers refuse metadata pycocotools ignores."""
    images = []
    for im in d["images"]:
        m = {k: im[k] for k in ("id", "height", "width") if k in im}
        if isinstance(im.get("file_name"), str):
            m["file_name"] = im["file_name"]
        images.append(m)
    cats = []
    for c in d["categories"]:
        m = {"id": c["id"], "name": str(c["name"])}
        if isinstance(c.get("supercategory"), str):
            m["supercategory"] = c["supercategory"]
        for k in ("keypoints", "skeleton"):
            if isinstance(c.get(k), list):
                m[k] = c[k]
        cats.append(m)
    return {"images": images, "annotations": d.get("annotations") or [], "categories": cats}
