"""A COCO ground truth for evaluation, parsed once and reused (compare scores many runs on it).

``GroundTruth.load(path | dict | GroundTruth, iou_type)``; ``gt.require(iou_type)`` checks
that the annotations carry what that iou type reads (raises one line naming the first that
does not); ``gt.handle(engine)`` is the engine's own COCO object, built once.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import sys
import warnings
import weakref
from typing import Any, Callable

import numpy as np

from visiontool.errors import InvalidInputError, UsageError, VisionToolError
from visiontool.io.gt_read import (annotation_problem, bbox_problem, checked_ids, mismatch_note, read_gt_light,
                                   scored_fields)
from visiontool.io.readers import check_input_path, remove_spooled, spool


@contextlib.contextmanager
def quiet():
    """Silence engines' progress prints, including those native code writes to fd 1/2."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: the process was started with that descriptor closed
            stream.flush()
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for fd, dup in saved:
            os.dup2(dup, fd)
            os.close(dup)


class EngineCannotReadGT(InvalidInputError):
    """An engine's reader refused a ground truth that pycocotools reads (``auto`` then falls
    back to pycocotools; a forced engine reports it against the ground truth)."""


class GroundTruth:
    """A COCO ground truth parsed once: lookups for validation plus cached engine handles.

    Attributes: ``path`` (or None), ``index`` (:class:`GroundTruthIndex`), ``image_id_array``
    (sorted int64), ``image_hw_array`` ((n, 2) height/width, -1 unknown), ``image_sizes``
    {id: (h, w)}, ``category_id_array`` (sorted), ``category_names`` {id: name},
    ``has_annotations`` (the file has an ``annotations`` list); lazily: ``gt_counts``
    {category id: non-crowd annotations}, ``n_annotations`` and ``has_zero_id``.
    """

    def __init__(self, path: str | None, dataset: dict | None, images: list, categories: list,
                 anns: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 handles: dict | None = None, zero_id_possible: bool = True, has_annotations: bool = True,
                 checked: dict | None = None, n_anns: int | None = None, images_again: Callable | None = None,
                 rle_size_mismatch: tuple[int, str] | None = None):
        self.path = path
        self.shown = path  # the name messages give it (``path`` may be a temporary copy of a stream)
        self._dataset = dataset
        self._handles: dict[str, Any] = dict(handles or {})
        self._anns = anns
        self._zero_id_possible = zero_id_possible
        self._checked: dict[str, str | None] = dict(checked or {})  # iou type -> problem (None: fine)
        # (count, first) of segm RLE masks whose size is not their image's (scored as pycocotools does)
        self.rle_size_mismatch: tuple[int, str] | None = rle_size_mismatch
        self.has_annotations = has_annotations
        self._n_anns = n_anns if anns is None else int(anns[0].shape[0])
        # the image dicts are needed again only to map records' file names: an engine handle can
        # give them back then (``images_again``), so they need not stay in memory meanwhile
        self._images, self._categories, self._index = images_again or images, categories, None
        for i, cat in enumerate(categories):
            if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
                raise InvalidInputError(f"ground truth '{path or '<gt>'}': categories[{i}] needs 'id' and 'name'")
        ids = np.array(checked_ids(images, "images", path), dtype=np.int64)
        checked_ids(categories, "categories", path)
        order = np.argsort(ids, kind="stable")
        self.image_id_array = ids[order]
        hw = np.array([[_int_or(im.get("height")), _int_or(im.get("width"))] for im in images],
                      dtype=np.int64).reshape(-1, 2)
        self.image_hw_array = hw[order]
        self.category_names = {int(c["id"]): str(c["name"]) for c in categories}
        self.category_id_array = np.array(sorted(self.category_names), dtype=np.int64)
        self.category_id_set = set(self.category_names)

    @functools.cached_property
    def image_sizes(self) -> dict[int, tuple[int, int]]:
        """{image id: (height, width)} where the GT gives both."""
        return {i: (h, w) for i, (h, w) in zip(self.image_id_array.tolist(), self.image_hw_array.tolist())
                if h >= 0 and w >= 0}

    @functools.cached_property
    def image_id_set(self) -> set[int]:
        return set(self.image_id_array.tolist())

    @property
    def label(self) -> str:
        return f"ground truth '{self.shown or '<gt>'}'"

    @property
    def index(self):
        """File-name and category-name lookups, a :class:`visiontool.io.coco.GroundTruthIndex`
        (built on first use: only records need them)."""
        if self._index is None:
            from visiontool.io.coco import GroundTruthIndex

            images = self._images() if callable(self._images) else self._images
            self._index = GroundTruthIndex.from_dict({"images": images, "categories": self._categories},
                                                     self.shown or "<gt>")
        return self._index

    # -- annotation facts, computed on first use (the fast path never needs them)

    def _ann_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._anns is None:
            light = read_gt_light(self.path) if self._dataset is None else None
            if light is not None:
                self._anns = light[2]
            else:
                self._anns = _ann_arrays_of(self.dataset(), self.path or "<gt>")
        return self._anns

    @property
    def n_annotations(self) -> int:
        if self._n_anns is None:
            self._n_anns = int(self._ann_arrays()[0].shape[0])
        return self._n_anns

    @property
    def has_zero_id(self) -> bool:
        """Whether an annotation has id 0 (pycocotools then scores matches to it as false positives)."""
        if not self._zero_id_possible:
            return False
        return bool((self._ann_arrays()[0] == 0).any())

    @property
    def gt_counts(self) -> dict[int, int]:
        h = self._handles.get("hotcoco")
        if self._anns is None and h is not None:  # from the engine's own index (stats(): one call, ~1 ms)
            per = {int(c["id"]): int(c["ann_count"]) - int(c["crowd_count"]) for c in h.stats()["per_category"]}
            return {c: n for c in self.category_names if (n := per.get(c, 0))}
        _, cats, crowd = self._ann_arrays()
        u, n = np.unique(cats[crowd == 0], return_counts=True)
        return {int(c): int(k) for c, k in zip(u.tolist(), n.tolist())}

    def require(self, iou_type: str) -> None:
        """Raise (one line naming the first annotation) unless every annotation carries what
        ``iou_type`` reads: segmentation for segm, keypoints for keypoints (bbox and area were
        checked on loading; a bbox's four numbers by the typed readers, here when the file
        was parsed in full)."""
        if iou_type == "bbox":
            if self._dataset is not None and "bbox" not in self._checked:
                anns = self._dataset.get("annotations") or []
                self._checked["bbox"] = next((f"annotations[{i}]{p}" for i, a in enumerate(anns)
                                              if (p := bbox_problem(a))), None)
        elif iou_type not in self._checked:
            # sizes of the wrong type get past only the full parse (the typed readers refuse them)
            full = self._dataset is not None and iou_type == "segm"
            problem = _image_size_problem(self._dataset["images"]) if full else None
            sizes = {i: (h if h >= 0 else None, w if w >= 0 else None)
                     for i, (h, w) in zip(self.image_id_array.tolist(), self.image_hw_array.tolist())}
            first = None
            mm: list = []
            for i, a in enumerate(self.dataset().get("annotations") or [] if problem is None else []):
                n_mm = len(mm)
                problem = annotation_problem(a, iou_type, sizes, full=False, mismatch=mm)
                if first is None and len(mm) > n_mm:
                    first = i
                if problem:
                    problem = f"annotations[{i}]{problem}"
                    break
            self._checked[iou_type] = problem
            if mm and iou_type == "segm":
                self.rle_size_mismatch = mismatch_note(f"annotations[{first}]", mm)
        if self._checked.get(iou_type):
            raise InvalidInputError(f"{self.label}: {self._checked[iou_type]}")

    # -- construction

    @classmethod
    def load(cls, gt: Any, iou_type: str | None = None) -> GroundTruth:
        """From a path, a COCO dict, a pycocotools ``COCO`` object (its ``dataset``), or an
        existing GroundTruth (returned as is).

        For bbox (or ``iou_type=None``) a path is read by ultrafast-pycocotools' native reader,
        whose handle the evaluation reuses; otherwise msgspec reads only what validation needs
        (for segm also checking every segmentation). Either way the annotations' schema is checked."""
        if isinstance(gt, GroundTruth):
            return gt
        if isinstance(gt, dict):
            return cls._from_dict(gt, None)
        if isinstance(gt, (str, os.PathLike)):
            path = str(gt)
            if check_input_path(path, "ground truth") == "stream":
                return cls._load_stream(path, iou_type)
            _check_file(path)
            if iou_type in (None, "bbox"):
                native = _native_gt(path)
                if native is not None:
                    return native
            elif iou_type == "segm":
                native = _hotcoco_gt(path)
                if native is not None:
                    return native
            light = read_gt_light(path, segm=iou_type == "segm")  # validates the annotations' schema too
            if light is not None:
                images, cats, arrays, has_anns, problem, mismatch = light
                checked = {"segm": problem} if iou_type == "segm" else None
                return cls(path, None, images, cats, arrays, has_annotations=has_anns, checked=checked,
                           rle_size_mismatch=mismatch)
            from visiontool.io.coco import load_json_file

            return cls._from_dict(load_json_file(path, "ground truth"), path)
        if isinstance(getattr(gt, "dataset", None), dict):  # a pycocotools (or compatible) COCO object
            return cls._from_dict(gt.dataset, None)
        raise UsageError(f"unsupported ground truth of type {type(gt).__name__}")

    @classmethod
    def _load_stream(cls, path: str, iou_type: str | None) -> GroundTruth:
        """stdin or a FIFO (``--gt <(zcat instances_val.json.gz)``): read into a temporary file,
        which the engines then read like any other; messages name ``path``."""
        tmp = spool(path, "ground truth")
        try:
            gt = cls.load(tmp, iou_type)
        except VisionToolError as exc:
            remove_spooled(tmp)
            exc.args = tuple(a.replace(tmp, path) if isinstance(a, str) else a for a in exc.args)
            raise
        gt.shown = path
        weakref.finalize(gt, remove_spooled, tmp)  # the copy lives as long as the GroundTruth reading it
        return gt

    @classmethod
    def _from_dict(cls, d: Any, path: str | None) -> GroundTruth:
        name = path or "<gt>"
        if not isinstance(d, dict) or not isinstance(d.get("images"), list):
            raise InvalidInputError(f"ground truth '{name}' has no 'images' list (not a COCO annotation file)")
        if not isinstance(d.get("categories"), list):
            raise InvalidInputError(f"ground truth '{name}' has no 'categories' list")
        for i, im in enumerate(d["images"]):
            if not isinstance(im, dict) or "id" not in im:
                raise InvalidInputError(f"ground truth '{name}': images[{i}] has no 'id'")
        arrays = _ann_arrays_of(d, name)
        d = _integer_ids(d)
        return cls(path, d, d["images"], d["categories"], arrays, has_annotations="annotations" in d)

    def dataset(self) -> dict:
        """The full COCO dict (parsed on first use when loaded from a path). Do not mutate."""
        if self._dataset is None:
            from visiontool.io.coco import load_json_file

            self._dataset = load_json_file(self.path, "ground truth")
        return self._dataset

    def handle(self, engine: str):
        """The engine's COCO object for this GT, built once (compare reuses it across runs).

        The engines' readers are stricter than pycocotools about metadata COCOeval never reads
        (hotcoco refuses ``"info": "fake info"`` or an image whose ``license`` is a string):
        when the engine refuses the file, it gets :meth:`scored_dataset` instead; should it
        refuse that too, :class:`EngineCannotReadGT` names the ground truth, not the results."""
        if engine not in self._handles:
            if engine == "ultrafast":
                from ultrafast_pycocotools import COCO as UCOCO

                def make(src):
                    return UCOCO(src, verbose=False)
            elif engine == "hotcoco":
                from hotcoco import COCO as HCOCO

                def make(src):
                    return HCOCO(src)
            else:
                raise ValueError(engine)
            src = self.path if self._dataset is None or (engine == "hotcoco" and self.path) else self._dataset
            with quiet():
                try:
                    self._handles[engine] = make(src)
                except Exception:
                    try:
                        self._handles[engine] = make(self.scored_dataset())
                    except InvalidInputError:
                        raise
                    except Exception as exc:
                        raise EngineCannotReadGT(f"{self.label}: engine {engine} cannot read it: "
                                                 f"{type(exc).__name__}: {exc}") from None
        return self._handles[engine]

    def scored_dataset(self) -> dict:
        """The GT reduced to what COCOeval reads (see :func:`visiontool.io.gt_read.scored_fields`)."""
        return scored_fields(self.dataset())

def _check_file(path: str) -> None:
    """A regular file whose first bytes cannot start JSON: one line."""
    from visiontool.io.json_input import json_start

    with open(path, "rb") as fh:
        json_start(fh.read(1 << 16), f"ground truth '{path}'")


_ZERO_ID = re.compile(rb'"id"\s*:\s*-?0(?:\.0*)?(?:[eE][-+]?\d+)?\s*[,}\]]')


def _bbox_gt_scan(path: str) -> tuple[int, bool, bool, bool]:
    """The byte scans :func:`_native_gt` needs: the number of ``"area"`` keys, whether one is
    null, whether an ``"id"`` is 0, whether the file has an ``"annotations"`` key."""
    with open(path, "rb") as fh:
        data = fh.read()
    null_area = b"null" in data and re.search(rb'"area"\s*:\s*null', data) is not None
    return data.count(b'"area"'), null_area, _ZERO_ID.search(data) is not None, b'"annotations"' in data


def _native_gt(path: str) -> GroundTruth | None:
    """Images and categories from ultrafast-pycocotools' native reader (its columnar GT
    handle is then reused for the evaluation). That reader requires each annotation's id,
    image_id, category_id and bbox; byte scans check there is one non-null "area" per
    annotation and rule annotation id 0 in or out. None: use the precise readers.

    The scans (~20 ms for COCO-val's 10 MB here) run in a forked child while the reader parses,
    where a fork is safe (:func:`visiontool.io.pred_early.fork_call`; the reader holds the GIL,
    so a thread would not overlap): measured 38-45 ms for both against 57-63 ms one after the other."""
    try:
        from ultrafast_pycocotools import COCO
    except ImportError:
        return None
    from visiontool.io.pred_early import fork_call

    scan = fork_call(_bbox_gt_scan, path)
    try:
        with quiet():
            h = COCO(path, verbose=False)
        compact, meta = getattr(h, "_compact", None), getattr(h, "_dataset", None)
        if compact is None or not isinstance(meta, dict) or not isinstance(meta.get("images"), list) \
                or not isinstance(meta.get("categories"), list):
            return None
        facts = scan.facts() if scan is not None else None
        n_area, null_area, zero, has_key = facts if facts is not None else _bbox_gt_scan(path)
        if n_area != compact.annotation_count or null_area:
            return None
        images, cats = list(h.imgs.values()), list(h.cats.values())
        if not all(isinstance(im, dict) and isinstance(im.get("id"), int) for im in images):
            return None
        if not all(isinstance(c, dict) and isinstance(c.get("id"), int) and "name" in c for c in cats):
            return None
        has_anns = compact.annotation_count > 0 or has_key
    except Exception:  # anything unusual (RecursionError included): the precise readers report it
        return None
    finally:
        if scan is not None:
            scan.cancel()  # reaped (a no-op once its answer was read)
    return GroundTruth(path, None, images, cats, None, {"ultrafast": h}, zero_id_possible=zero,
                       has_annotations=has_anns, n_anns=int(compact.annotation_count))


def _hotcoco_gt(path: str) -> GroundTruth | None:
    """Images, categories and annotation facts from hotcoco's own reader (its handle is then
    reused for the evaluation: the GT is parsed once). hotcoco reads leniently, so byte scans
    check what COCOeval needs of every annotation (one non-null id, image_id, category_id,
    bbox, area and segmentation each) and the RLE masks are checked as results' are (via the
    crowd annotations, when they are the only RLE ones). None: use the precise readers."""
    try:
        from hotcoco import COCO
    except ImportError:
        return None
    try:
        with quiet():
            h = COCO(path)
        if h.load_warnings:
            return None
        ids = h.get_ann_ids()
        n = len(ids)
        with open(path, "rb") as fh:
            data = fh.read()
        # hotcoco's reader requires image_id and category_id itself; "id" may repeat in images
        # and categories, so the engine's ann ids are checked for uniqueness instead
        for key in (b'"area"', b'"bbox"', b'"segmentation"'):
            if data.count(key) != n:
                return None
        if b"null" in data and re.search(rb'"(?:id|image_id|category_id|area|bbox|segmentation)"\s*:\s*null',
                                        data) is not None:
            return None
        if b'"images"' not in data or b'"categories"' not in data:
            return None
        zero = 0 in set(ids)
        if zero and _ZERO_ID.search(data) is None:
            return None  # hotcoco numbers an annotation without "id" 0: the light reader names it
        images, cats = list(h.imgs.values()), list(h.cats.values())
        if not all(isinstance(im, dict) and isinstance(im.get("id"), int) for im in images):
            return None
        sizes = {im["id"]: (im.get("height"), im.get("width")) for im in images}
        n_rle = data.count(b'"counts"')
        if n_rle:
            crowd = [a for a in h.load_anns(h.get_ann_ids(iscrowd=True)) if isinstance(a.get("segmentation"), dict)]
            if len(crowd) != n_rle:
                return None  # RLE masks beyond the crowd regions: the light reader checks them all
            mm: list = []
            if any(annotation_problem(a, "segm", sizes, full=False, mismatch=mm) for a in crowd):
                return None  # the light reader names the annotation by its index in the file
            if mm:
                return None  # the light reader names the first by its index in the file
        has_anns = n > 0 or b'"annotations"' in data
        del data
    except Exception:  # anything unusual: the precise readers report it
        return None
    return GroundTruth(path, None, images, cats, None, {"hotcoco": h}, images_again=lambda: list(h.imgs.values()),
                       zero_id_possible=zero,
                       has_annotations=has_anns, n_anns=n, checked={"segm": None})


def _ann_arrays_of(d: dict, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    anns = d.get("annotations", [])
    if not isinstance(anns, list):
        raise InvalidInputError(f"ground truth '{name}': 'annotations' is not a list")
    for i, a in enumerate(anns):
        problem = annotation_problem(a, "bbox", {})
        if problem:
            raise InvalidInputError(f"ground truth '{name}': annotations[{i}]{problem}")
    return (np.array([int(a["id"]) for a in anns], dtype=np.int64),
            np.array([int(a["category_id"]) for a in anns], dtype=np.int64),
            np.array([1 if a.get("iscrowd") else 0 for a in anns], dtype=np.int64))


def _integer_ids(d: dict) -> dict:
    """``d`` with integral float ids (``1.0``, checked before) as ints, in a copy: pycocotools
    treats 1.0 and 1 as the same key, the fast engines read ids as integers only."""
    keys = {"images": ("id",), "categories": ("id",), "annotations": ("id", "image_id", "category_id")}
    lists = {part: d.get(part) or [] for part in keys}
    if not any(type(x.get(k)) is float for part, ks in keys.items() for x in lists[part] for k in ks):
        return d
    out = dict(d)
    for part, ks in keys.items():
        if part in d:
            out[part] = [{**x, **{k: int(x[k]) for k in ks if type(x.get(k)) is float}} for x in lists[part]]
    return out


def _image_size_problem(images: list) -> str | None:
    """An image ``height`` / ``width`` that is neither absent nor an integer ("480"): pycocotools
    and hotcoco rasterise polygons on them and fail on anything else."""
    for i, im in enumerate(images):
        for key in ("height", "width"):
            v = im.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                return f"images[{i}].{key} is not an integer ({json.dumps(v, default=repr)[:40]})"
    return None


def _int_or(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return -1
