"""Detection: sources in, ImageResult records out (no printing here).

Pipeline per window of ``batch_size`` images: decode (EXIF, RGB) -> preprocess with the
model's own image processor -> group images whose processed tensors have the same shape
-> one forward pass per group -> the processor's post-processing -> threshold, class
filter, score sort, max-det.

Why group by shape: Hugging Face pads a mixed-size batch to its largest image, and the
padding changes every padded image's detections (transformers #23218). Images of equal
processed shape need no padding, so a batch of them gives each image exactly what it gets
alone (up to float summation order; the tests bound it), and images of other shapes run in
their own forward pass.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from visiontool.errors import ImageLoadError, PartialFailure, UsageError
from visiontool.io.coco import GroundTruthIndex
from visiontool.io.images import ImageSource, expand_sources, load_image
from visiontool.io.records import default_image_id
from visiontool.types import Detections, ImageResult

DEFAULT_THRESHOLD = 0.5


@dataclass
class Timings:
    """Seconds spent per stage over ``images`` images."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    images: int = 0
    wall: float = 0.0

    def ms_per_image(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {"preprocess": 1000 * self.preprocess / n, "inference": 1000 * self.inference / n,
                "postprocess": 1000 * self.postprocess / n}

    def summary(self) -> str:
        ms = self.ms_per_image()
        rate = self.images / self.wall if self.wall > 0 else 0.0
        return (f"{self.images} image{'s' if self.images != 1 else ''} in {self.wall:.2f} s "
                f"({rate:.2f} images/s): preprocess {ms['preprocess']:.0f} ms, inference "
                f"{ms['inference']:.0f} ms, postprocess {ms['postprocess']:.1f} ms per image")


@dataclass
class DetectRun:
    """What one detect call produced (the CLI prints ``results``; compare reads the rest)."""

    results: list[ImageResult]
    timings: Timings
    model: str
    params: int = 0
    needs_nms: bool | None = False
    device: str = "cpu"
    dtype: str = "float32"
    failed: list[str] = field(default_factory=list)


def parse_classes(spec: str | Sequence[str] | None, id2label: dict[int, str]) -> set[int] | None:
    """``--classes person,dog,3`` -> the model's label ids; names are case-insensitive."""
    if spec is None:
        return None
    items = [spec] if isinstance(spec, str) else list(spec)
    tokens = [t.strip() for item in items for t in str(item).split(",") if t.strip()]
    if not tokens:
        return None
    by_name = {v.lower(): k for k, v in id2label.items()}
    wanted: set[int] = set()
    for tok in tokens:
        if tok.lower() in by_name:
            wanted.add(by_name[tok.lower()])
        elif tok.lstrip("-").isdigit() and int(tok) in id2label:
            wanted.add(int(tok))
        else:
            import difflib

            close = difflib.get_close_matches(tok.lower(), list(by_name), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"--classes: '{tok}' is not a class of this model{hint}")
    return wanted


def check_detect_options(threshold: float, batch_size: int) -> None:
    """The option checks every detection run makes before loading anything (detect, compare)."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise UsageError(f"--threshold must be within [0, 1], got {threshold}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")


def filter_detections(d: Detections, threshold: float, classes: set[int] | None, max_det: int | None) -> Detections:
    """Keep score >= threshold (inclusive) and wanted classes; sort by score; cut to max_det."""
    keep = d.scores >= threshold
    if classes is not None:
        keep &= np.isin(d.class_ids, list(classes))
    d = d[keep].sorted_by_score()
    if max_det is not None and max_det >= 0:
        d = d[:max_det]
    return d


def _named_images(items: Iterable[Any]) -> list[tuple[str, Any]]:
    """Python-API inputs: paths/URLs become sources, PIL images and arrays are used as given."""
    named: list[tuple[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            named.append((str(item), None))
        else:
            from PIL import Image

            if isinstance(item, np.ndarray):
                item = Image.fromarray(item)
            if not isinstance(item, Image.Image):
                raise UsageError(f"cannot detect on a {type(item).__name__}: pass paths, URLs, PIL images "
                                 "or HxWx3 uint8 arrays")
            named.append((getattr(item, "filename", "") or f"<image {i}>", item.convert("RGB")))
    return named


class _Window:
    """Images of one window: decoded, preprocessed, grouped, detected."""

    def __init__(self, detector, precision, timings: Timings):
        self.detector = detector
        self.precision = precision
        self.timings = timings

    def run(self, images: list) -> list[Detections]:
        import torch

        det = self.detector
        t0 = time.perf_counter()
        tensors = []
        for im in images:
            enc = det.processor(images=im, return_tensors="pt")
            tensors.append(enc["pixel_values"])
        t1 = time.perf_counter()
        self.timings.preprocess += t1 - t0
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(tuple(t.shape), []).append(i)
        out: list[Detections | None] = [None] * len(images)
        for idxs in groups.values():
            t2 = time.perf_counter()
            pixel_values = torch.cat([tensors[i] for i in idxs]).to(det.device)
            if det.device.type == "cpu" and det.info.get("channels_last"):
                pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), self.precision.context():
                outputs = det.model(pixel_values=pixel_values)
            t3 = time.perf_counter()
            self.timings.inference += t3 - t2
            for key in ("logits", "pred_boxes"):
                if getattr(outputs, key, None) is not None:
                    setattr(outputs, key, getattr(outputs, key).float())
            sizes = [(images[i].height, images[i].width) for i in idxs]
            processed = det.processor.post_process_object_detection(outputs, threshold=-1.0, target_sizes=sizes)
            for i, p in zip(idxs, processed):
                labels = p["labels"].cpu().numpy().astype(np.int64)
                names = np.array([det.id2label.get(int(c), str(int(c))) for c in labels], dtype=object)
                out[i] = Detections(p["boxes"].double().cpu().numpy(), p["scores"].double().cpu().numpy(),
                                    labels, names)
            self.timings.postprocess += time.perf_counter() - t3
        return out  # type: ignore[return-value]


def iter_detect(
    named: list[tuple[str, Any]],
    detector,
    precision,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    classes: set[int] | None = None,
    max_det: int | None = 100,
    batch_size: int = 1,
    gt: GroundTruthIndex | None = None,
    timings: Timings | None = None,
) -> Iterator[tuple[ImageResult, Any]]:
    """Yield ``(result, decoded image or None)`` per input, in input order; failed images
    carry ``result.error``."""
    timings = timings if timings is not None else Timings()
    window = _Window(detector, precision, timings)
    batch_size = max(1, int(batch_size))
    for start in range(0, len(named), batch_size):
        chunk = named[start:start + batch_size]
        decoded: list[tuple[int, str, Any]] = []
        failures: dict[int, ImageResult] = {}
        for k, (name, img) in enumerate(chunk):
            position = start + k + 1
            t0 = time.perf_counter()
            try:
                if img is None:
                    img = load_image(ImageSource(name, name.startswith(("http://", "https://"))))
                decoded.append((k, name, img))
            except ImageLoadError as exc:
                failures[k] = ImageResult(image=name, width=0, height=0, model=detector.name, error=str(exc),
                                          image_id=_image_id(name, position, gt))
            timings.preprocess += time.perf_counter() - t0
        dets = window.run([img for _, _, img in decoded]) if decoded else []
        by_k = {k: (name, img, d) for (k, name, img), d in zip(decoded, dets)}
        for k in range(len(chunk)):
            if k in failures:
                yield failures[k], None
                continue
            name, img, d = by_k[k]
            timings.images += 1
            yield ImageResult(image=name, width=img.width, height=img.height, model=detector.name,
                              image_id=_image_id(name, start + k + 1, gt),
                              detections=filter_detections(d, threshold, classes, max_det)), img


def _image_id(name: str, position: int, gt: GroundTruthIndex | None) -> int | None:
    if gt is not None:
        return gt.image_id_for(name)
    return default_image_id(name, position)


def detect(sources: str | Path | Any | Sequence[Any], model: str | None = None, **options) -> list[ImageResult]:
    """``visiontool.detect``: the records ``visiontool detect`` prints, one per input.

    Same options as :func:`run_detect`; an image that cannot be read raises
    PartialFailure after the others are done unless ``raise_on_failure=False`` (then its
    record carries ``error``).
    """
    options.setdefault("raise_on_failure", True)
    return run_detect(sources, model, **options).results


def run_detect(
    sources: str | Path | Any | Sequence[Any],
    model: str | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    classes: str | Sequence[str] | None = None,
    max_det: int | None = 100,
    batch_size: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    gt: str | Path | GroundTruthIndex | None = None,
    recursive: bool = False,
    on_result: Callable[[ImageResult], None] | None = None,
    on_image: Callable[[ImageResult, Any], None] | None = None,
    raise_on_failure: bool = False,
    warn: Callable[[str], None] | None = None,
) -> DetectRun:
    """Detect objects and time it: what ``visiontool detect`` and ``compare`` run.

    ``sources``: a path, directory, glob or URL (or a list of them), PIL images or HxWx3
    uint8 arrays. Returns a :class:`DetectRun` whose ``results`` are the records the CLI
    prints (boxes xyxy in original-image pixels). ``threshold`` is inclusive.
    ``on_result`` is called as each image finishes (the CLI streams with it); ``on_image``
    also gets the decoded RGB image (for annotated copies). Images that
    cannot be read are reported through ``result.error``; with ``raise_on_failure`` a
    PartialFailure is raised at the end.
    """
    from visiontool.device import resolve_device, resolve_dtype
    from visiontool.models.detr import DEFAULT_MODEL, check_model_spec, load_config, load_detector

    model = model or DEFAULT_MODEL
    check_detect_options(threshold, batch_size)
    items = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    if all(isinstance(s, (str, Path)) for s in items):
        named = [(s.name, None) for s in expand_sources([str(s) for s in items], recursive=recursive)]
    else:
        named = _named_images(items)
    gt_index = GroundTruthIndex.load(gt) if isinstance(gt, (str, Path)) else gt
    check_model_spec(model)
    dev = resolve_device(device)
    precision = resolve_dtype(dtype, dev, warn=warn)
    config = load_config(model)
    wanted = parse_classes(classes, {int(k): str(v) for k, v in (config.id2label or {}).items()})
    detector = load_detector(model, dev)
    timings = Timings()
    results: list[ImageResult] = []
    failed: list[str] = []
    t0 = time.perf_counter()
    for r, img in iter_detect(named, detector, precision, threshold=threshold, classes=wanted, max_det=max_det,
                         batch_size=batch_size, gt=gt_index, timings=timings):
        if r.error:
            failed.append(r.error)
        results.append(r)
        if on_result is not None:
            on_result(r)
        if on_image is not None and img is not None:
            on_image(r, img)
    timings.wall = time.perf_counter() - t0
    run = DetectRun(results, timings, detector.name, detector.params, detector.needs_nms, str(dev),
                    precision.name, failed)
    if failed and raise_on_failure:
        raise PartialFailure(f"{len(failed)} of {len(named)} images failed")
    return run
