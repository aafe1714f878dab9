"""The one conversion layer: model outputs, records, COCO results and back, all as :class:`Detections`.

A detection, a SAM mask, a ``--boxes-from`` line and a COCO result are the same row in four
spellings. Every command converts through here:

* ``from_arrays`` / ``from_transformers`` — a model's boxes, scores and labels (+ masks);
* ``from_sam`` — masks answering prompts (RLE, predicted IoU, the prompts);
* ``to_record`` / ``from_record`` — the JSON record of DESIGN.md §3 (detect and segment);
* ``to_coco_results`` / ``from_coco_results`` — COCO results (``[x, y, w, h]`` only here);
* ``to_csv_rows`` — the csv format;
* ``to_mot_rows`` — MOTChallenge rows (``frame,id,x,y,w,h,score,-1,-1,-1``, 1-based frames).

COCO's and MOT's xywh boxes exist in this module only (and in COCO and MOT files).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Iterable, Sequence

import numpy as np

from visiontool.errors import InvalidInputError
from visiontool.types import NO_CLASS, Detections, ImageResult, Prompt

_NUMERIC_STEM = re.compile(r"^\d+$")


# ----------------------------------------------------------------------------- boxes
def xyxy_to_xywh(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def xywh_to_xyxy(box) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def default_image_id(image: str, position: int) -> int:
    """Image id when no GT is given: the file's numeric stem (COCO names such as
    ``000000039769.jpg`` -> 39769), else the 1-based position among the inputs."""
    stem = os.path.splitext(os.path.basename(image.split("?")[0]))[0]
    return int(stem) if _NUMERIC_STEM.match(stem) else position


# ----------------------------------------------------------------------------- model outputs
def from_arrays(boxes, scores, labels, id2label: dict[int, str], masks: Sequence[dict] | None = None,
                **columns: Any) -> Detections:
    """A model's outputs -> Detections. ``boxes``: (N, 4) xyxy pixels (tensor or array);
    ``labels``: the model's ids (names from ``id2label``, else the id as text); ``masks``:
    RLEs; ``columns``: optional data columns (:data:`visiontool.types.COLUMNS`)."""
    b = _np(boxes, np.float64).reshape(-1, 4)
    ids = _np(labels, np.int64).reshape(-1)
    names = [id2label.get(int(c), str(int(c))) for c in ids]
    return Detections(b, _np(scores, np.float64).reshape(-1), ids, names,
                      masks=None if masks is None else list(masks), data=columns)


def from_transformers(processed: dict, id2label: dict[int, str], **columns: Any) -> Detections:
    """One image's ``post_process_object_detection`` dict (``boxes``, ``scores``, ``labels``)."""
    return from_arrays(processed["boxes"], processed["scores"], processed["labels"], id2label, **columns)


def from_sam_logits(preds, prompts: Sequence[Prompt], upscaler, chunk: int = 8) -> Detections:
    """A SAM-family decoder's answers -> Detections: ``preds[i] = (low_res_logits (K, h, w),
    predicted_iou (K,))`` for ``prompts[i]``; each prompt's K masks ranked by predicted IoU
    (stable), brought to full size by ``upscaler.logits_t`` (transposed logits, > 0 is the
    object) ``chunk`` at a time and stored as RLE."""
    from visiontool.masks import encode_transposed

    order = []
    for pi, (_, iou) in enumerate(preds):
        ranked = np.argsort(-iou, kind="stable")
        for rank, k in enumerate(ranked, 1):
            order.append((pi, int(k), rank if len(iou) > 1 else None))
    lows = np.stack([preds[pi][0][k] for pi, k, _ in order])
    rles: list[dict] = []
    for c0 in range(0, len(lows), chunk):
        rles += encode_transposed(upscaler.logits_t(lows[c0:c0 + chunk]) > 0)
    return from_sam(rles, [preds[pi][1][k] for pi, k, _ in order], [prompts[pi] for pi, _, _ in order],
                    ranks=[r for _, _, r in order], prompt_index=[pi for pi, _, _ in order])


def from_sam(rles: list[dict], predicted_iou, prompts: Sequence[Prompt | None],
             ranks: Sequence[int | None] | None = None, stability=None,
             prompt_index: Sequence[int] | None = None, extra_prompt: Sequence[dict] | None = None) -> Detections:
    """Masks answering prompts -> Detections (box = the mask's extent, score = the prompt's
    detection score if it carries one, else the predicted IoU).

    ``prompts[i]`` is the prompt mask ``i`` answers; ``ranks[i]`` its rank among a multimask
    answer (None for a single mask); ``prompt_index[i]`` the prompt's position; ``extra_prompt``
    more fields for the record's ``prompt`` (e.g. ``{"auto": True, "crop_box": …}``)."""
    from visiontool.masks import boxes

    n = len(rles)
    piou = np.asarray(predicted_iou, dtype=np.float64).reshape(-1) if n else np.zeros(0)
    labels, cids, scores, descs = [], [], [], []
    for i in range(n):
        p = prompts[i]
        d = p.describe() if p is not None else {}
        if ranks is not None and ranks[i] is not None:
            d["rank"] = int(ranks[i])
        if prompt_index is not None:
            d["index"] = int(prompt_index[i])
        if extra_prompt is not None and extra_prompt[i]:
            d.update(extra_prompt[i])
        descs.append(d)
        labels.append(p.label if p is not None else None)
        cids.append(p.category_id if p is not None and p.category_id is not None else NO_CLASS)
        scores.append(float(p.score) if p is not None and p.score is not None else float(piou[i]))
    data: dict[str, Any] = {"predicted_iou": piou, "prompt": descs}
    if stability is not None:
        data["stability_score"] = np.asarray(stability, dtype=np.float64).reshape(-1)
    objects = [p.object_id if p is not None else None for p in prompts[:n]]
    if any(o is not None for o in objects):
        data["object_id"] = np.asarray([-1 if o is None else o for o in objects], dtype=np.int64)
    return Detections(boxes(rles), scores, cids, labels, masks=rles, data=data)


def _np(x: Any, dtype) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if dtype is np.float64:
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


# ----------------------------------------------------------------------------- records
def _f(v) -> float:
    return float(v)


def _det_entry(d: Detections, i: int, masks_style: bool) -> dict:
    """Row ``i`` as a record entry (``detections`` item, or ``masks`` item when masks_style)."""
    name = d.names[i]
    cid = int(d.class_ids[i])
    data = d.data
    if masks_style:
        e: dict[str, Any] = {"id": i}
        if name is not None:
            e["label"] = str(name)
        if cid != NO_CLASS:
            e["category_id"] = cid
        rle = d.masks[i] if d.masks is not None else None
        if rle is not None:
            from visiontool.masks import areas

            area = int(areas([rle])[0])
        else:
            area = int(d.areas()[i])
        e.update(score=_f(d.scores[i]), area=area, box=[_f(v) for v in d.xyxy[i]],
                 prompt=data["prompt"][i] if "prompt" in data else None, segmentation=rle)
        for key in ("predicted_iou", "stability_score"):
            if key in data and not _isnan(data[key][i]):
                e[key] = _f(data[key][i])
    else:
        e = {"label": None if name is None else str(name), "category_id": cid, "score": _f(d.scores[i]),
             "box": [_f(v) for v in d.xyxy[i]]}
        if d.masks is not None and d.masks[i] is not None:
            e["segmentation"] = d.masks[i]
    for key in ("object_id", "track_id"):
        if key in data and int(data[key][i]) >= 0:
            e[key] = int(data[key][i])
    if "phrase" in data and data["phrase"][i] is not None:
        e["phrase"] = str(data["phrase"][i])
    if "keypoints" in data:
        e["keypoints"] = [[_f(v) for v in kp] for kp in data["keypoints"][i]]
    return e


def _isnan(v) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def to_record(r: ImageResult) -> dict:
    """The JSON record of DESIGN.md §3 for one image or frame."""
    d: dict[str, Any] = {"image": r.image, "image_id": r.image_id, "width": r.width, "height": r.height,
                         "model": r.model}
    if r.frame is not None:
        d["frame"] = int(r.frame)
        d["time_s"] = None if r.time_s is None else round(float(r.time_s), 6)
    if r.error is not None:
        d["error"] = r.error
        return d
    key = "masks" if r.kind == "segment" else "detections"
    det = r.detections
    d[key] = [_det_entry(det, i, key == "masks") for i in range(len(det))]
    return d


def records_to_list(results: Iterable[ImageResult]) -> list[dict]:
    return [to_record(r) for r in results]


def from_record(rec: Any, where: str = "record") -> ImageResult:
    """A record (detect's ``detections`` or segment's ``masks``) -> ImageResult.

    InvalidInputError names ``where`` and the offending entry. Boxes must be four finite
    numbers with x2 >= x1 and y2 >= y1; masks must be valid COCO RLE."""
    if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
        raise InvalidInputError(f"{where} is not a visiontool record (needs an \"image\" path)")
    kind = "segment" if isinstance(rec.get("masks"), list) else "detect"
    items = rec.get("masks") if kind == "segment" else rec.get("detections")
    error = rec.get("error")
    if items is None and error is None:
        raise InvalidInputError(f"{where} has neither a \"detections\" nor a \"masks\" list")
    items = items or []
    if not isinstance(items, list):
        raise InvalidInputError(f"{where}: \"{'masks' if kind == 'segment' else 'detections'}\" is not a list")
    width, height = _int_or_zero(rec.get("width")), _int_or_zero(rec.get("height"))
    boxes, scores, cids, names, rles, cols = [], [], [], [], [], {}
    for j, e in enumerate(items):
        at = f"{where} {'mask' if kind == 'segment' else 'detection'} {j + 1}"
        if not isinstance(e, dict):
            raise InvalidInputError(f"{at} is not an object")
        boxes.append(_box(e.get("box"), at))
        scores.append(_score(e.get("score", 1.0), at))
        cid = e.get("category_id")
        try:
            cids.append(NO_CLASS if cid is None else int(cid))
        except (TypeError, ValueError):
            raise InvalidInputError(f"{at}: category_id must be an integer") from None
        names.append(None if e.get("label") is None else str(e["label"]))
        seg = e.get("segmentation")
        if seg is not None:
            from visiontool.masks import check_rle

            why = check_rle(seg, height or None, width or None) if height and width else check_rle(seg)
            if why:
                raise InvalidInputError(f"{at}: segmentation: {why}")
        rles.append(seg)
        for key in ("predicted_iou", "stability_score", "track_id", "object_id", "phrase", "prompt"):
            if key in e:
                cols.setdefault(key, {})[j] = e[key]
    n = len(boxes)
    data = {}
    for key, vals in cols.items():
        if key in ("track_id", "object_id"):
            data[key] = np.array([int(vals.get(j, -1)) for j in range(n)], dtype=np.int64)
        elif key in ("predicted_iou", "stability_score"):
            data[key] = np.array([float(vals.get(j, np.nan)) for j in range(n)])
        else:
            data[key] = [vals.get(j) for j in range(n)]
    masks = rles if any(r is not None for r in rles) else None
    det = Detections(np.array(boxes).reshape(-1, 4), scores, cids, names, masks=masks, data=data)
    image_id = rec.get("image_id")
    return ImageResult(image=rec["image"], width=width, height=height, model=str(rec.get("model") or ""),
                       image_id=image_id if isinstance(image_id, int) and not isinstance(image_id, bool) else None,
                       detections=det, kind=kind, error=None if error is None else str(error),
                       frame=rec.get("frame") if isinstance(rec.get("frame"), int) else None,
                       time_s=rec.get("time_s") if isinstance(rec.get("time_s"), (int, float)) else None)


def _int_or_zero(v) -> int:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def _box(v, at: str) -> list[float]:
    try:
        box = [float(x) for x in v]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not all(math.isfinite(x) for x in box):
        raise InvalidInputError(f"{at} needs a \"box\" of four finite numbers [x1, y1, x2, y2]")
    if box[2] < box[0] or box[3] < box[1]:
        raise InvalidInputError(f"{at}: box has x2 < x1 or y2 < y1 (expected [x1, y1, x2, y2])")
    return box


def _score(v, at: str) -> float:
    if isinstance(v, bool):
        raise InvalidInputError(f"{at}: score must be a number")
    try:
        s = float(v)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{at}: score must be a number") from None
    if not math.isfinite(s):
        raise InvalidInputError(f"{at}: score must be finite")
    return s


# ----------------------------------------------------------------------------- COCO results
def shared_image_ids_warning(stats: dict, with_gt: bool) -> str | None:
    """The warning for photos that got the same COCO image id (from :func:`to_coco_results`'s
    ``stats``): two ``000000000001.jpg`` in two folders, or one GT file name matched twice."""
    shared = stats.get("shared_image_ids")
    if not shared:
        return None
    iid, first, second = shared[0]
    fix = ("both match that ground-truth file name: give only the photos it describes" if with_gt else
           "give --gt (ids from its file names), or rename them")
    return (f"{len(shared)} photo(s) got an image id another photo has (image_id {iid}: '{first}' and '{second}'), "
            f"so their COCO results read as one image's; {fix}")


def to_coco_results(result: ImageResult, gt=None, stats: dict | None = None) -> list[dict]:
    """COCO result dicts for one record; with ``gt`` (a GroundTruthIndex) category ids are
    matched by name. Masks add ``segmentation``, keypoints add ``keypoints``. ``stats``
    collects ``unmatched_images`` and ``unmatched_labels``."""
    stats = stats if stats is not None else {}
    if result.error is not None:
        return []
    if result.image_id is None:
        stats["unmatched_images"] = stats.get("unmatched_images", 0) + 1
        return []
    if result.frame is None:  # (a video's frames have ids unique by construction: memory stays flat on a stream)
        owner = stats.setdefault("image_owners", {}).setdefault(result.image_id, result.image)
        if owner != result.image:  # two photos, one image id: their results would be one image's
            stats.setdefault("shared_image_ids", []).append((result.image_id, owner, result.image))
    d = result.detections
    rows: list[dict] = []
    segment = result.kind == "segment"
    kps = d.data.get("keypoints")
    for i in range(len(d)):
        name = d.names[i]
        cid = int(d.class_ids[i])
        if gt is not None:
            mapped = gt.category_id_for(str(name)) if name is not None else None
            if mapped is None:
                stats.setdefault("unmatched_labels", set()).add(name)
                continue
            cid = mapped
        elif cid == NO_CLASS:
            cid = 1 if segment else cid  # a class-less mask scores as category 1 (one-class GT)
        row = {"image_id": result.image_id, "category_id": int(cid), "bbox": xyxy_to_xywh(d.xyxy[i]),
               "score": float(d.scores[i])}
        if d.masks is not None and d.masks[i] is not None:
            row["segmentation"] = d.masks[i]
        if kps is not None:
            row["keypoints"] = [float(v) for v in np.asarray(kps[i], dtype=np.float64).reshape(-1)]
        rows.append(row)
    return rows


def from_coco_results(rows: Iterable[dict], names: dict[int, str] | None = None) -> dict[int, Detections]:
    """COCO result dicts -> {image_id: Detections} (labels from ``names``: category id -> name)."""
    names = names or {}
    by_image: dict[int, list[dict]] = {}
    for r in rows:
        by_image.setdefault(int(r["image_id"]), []).append(r)
    out = {}
    for iid, rs in by_image.items():
        masks = [r.get("segmentation") for r in rs]
        out[iid] = Detections([xywh_to_xyxy(r["bbox"]) for r in rs], [r["score"] for r in rs],
                              [int(r["category_id"]) for r in rs],
                              [names.get(int(r["category_id"]), str(r["category_id"])) for r in rs],
                              masks=masks if any(m is not None for m in masks) else None)
    return out


# ----------------------------------------------------------------------------- csv
CSV_DETECT = ["image", "image_id", "width", "height", "model", "label", "category_id", "score",
              "x1", "y1", "x2", "y2"]
CSV_SEGMENT = ["image", "image_id", "width", "height", "model", "mask_id", "label", "score", "area",
               "x1", "y1", "x2", "y2"]


def csv_header(result: ImageResult) -> list[str]:
    """The csv columns for records like ``result`` (frame/time_s for video, track_id with --track)."""
    head = list(CSV_SEGMENT if result.kind == "segment" else CSV_DETECT)
    if result.frame is not None:
        head[1:1] = ["frame", "time_s"]
    for key in ("track_id", "object_id", "phrase"):
        if key in result.detections.data:
            head.append(key)
    return head


def to_csv_rows(r: ImageResult, header: list[str]) -> list[list]:
    """One csv row per detection (or mask), in ``header``'s columns."""
    d = r.detections
    base = {"image": r.image, "image_id": "" if r.image_id is None else r.image_id, "width": r.width,
            "height": r.height, "model": r.model, "frame": "" if r.frame is None else r.frame,
            "time_s": "" if r.time_s is None else round(float(r.time_s), 6)}
    areas = d.areas() if r.kind == "segment" else None
    rows = []
    for i in range(len(d)):
        row = dict(base)
        x1, y1, x2, y2 = (float(v) for v in d.xyxy[i])
        name = d.names[i]
        row.update(label="" if name is None else str(name), score=float(d.scores[i]), x1=x1, y1=y1, x2=x2, y2=y2,
                   category_id="" if int(d.class_ids[i]) == NO_CLASS else int(d.class_ids[i]), mask_id=i)
        if areas is not None:
            row["area"] = int(areas[i])
            row["score"] = f"{float(d.scores[i]):.6g}"
        for key in ("track_id", "object_id", "phrase"):
            if key in d.data:
                v = d.data[key][i]
                row[key] = "" if v is None or (key != "phrase" and int(v) < 0) else v
        rows.append([row.get(col, "") for col in header])
    return rows


# ----------------------------------------------------------------------------- MOTChallenge
def _num(v: float, places: int) -> str:
    text = f"{float(v):.{places}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def to_mot_rows(r: ImageResult) -> list[str]:
    """MOTChallenge text rows for one video frame: ``frame,id,x,y,w,h,score,-1,-1,-1``.

    MOT frames are 1-based: ``frame = r.frame + 1`` (record frame 0 is MOT frame 1). With a
    ``track_id`` column (``--track``) only tracked detections are written, with their id;
    without one every detection is written with id -1 (MOTChallenge's ``det.txt`` form).
    Boxes in pixels to 1/1000 px, ``[x, y, w, h]`` with (x, y) the top-left corner."""
    if r.frame is None or r.error is not None:
        return []
    d = r.detections
    ids = d.data.get("track_id")
    rows = []
    for i in range(len(d)):
        tid = -1 if ids is None else int(ids[i])
        if ids is not None and tid < 0:
            continue
        x, y, w, h = xyxy_to_xywh(d.xyxy[i])
        rows.append(f"{int(r.frame) + 1},{tid},{_num(x, 3)},{_num(y, 3)},{_num(w, 3)},{_num(h, 3)},"
                    f"{_num(d.scores[i], 6)},-1,-1,-1")
    return rows
