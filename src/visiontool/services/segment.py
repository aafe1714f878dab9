"""Prompts -> masks with SAM: the orchestration behind ``visiontool segment``.

Coordinates are original-image pixels after EXIF orientation: points ``(X, Y)``, boxes
``XYXY``. Per image: the embedding comes from the on-disk cache or the ViT encoder (torch,
built only on a miss); prompts go through the numpy prompt encoder / mask decoder
(:mod:`visiontool.models.sam_decoder`) in batches; low-res logits become full-size masks
through :class:`MaskUpscaler` and are stored as COCO RLE (string counts).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from visiontool.errors import ImageLoadError, InvalidInputError, ModelLoadError, UsageError
from visiontool.types import ImageResult, Mask

LOGIT_THRESHOLD = 0.0  # Sam.mask_threshold
STABILITY_OFFSET = 1.0
MASK_INPUT_LOGIT = 10.0  # a binary --mask-input becomes ±10 low-res logits


# ----------------------------------------------------------------------------- prompts
@dataclass
class Prompt:
    """One object to segment: any mix of points, one box and one coarse mask.

    points: (P, 2) float XY pixels; labels: (P,) 1 foreground / 0 background;
    box: (4,) XYXY pixels; mask_input: path of a PNG the size of the image.
    label / category_id / score: carried from a detection (``--boxes-from``).
    multimask: None = SAM's advice (3 hypotheses for a lone point, else 1).
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_input: str | None = None
    label: str | None = None
    category_id: int | None = None
    score: float | None = None
    multimask: bool | None = None
    source: str = "prompt"  # what the user wrote it with, for messages
    from_detection: bool = False  # boxes from --boxes-from are clipped to the image, not rejected

    def __post_init__(self) -> None:
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
            self.labels = (np.ones(len(self.points), np.int64) if self.labels is None
                           else np.asarray(self.labels, dtype=np.int64).reshape(-1))
            if len(self.points) == 0:
                self.points, self.labels = None, None
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float64).reshape(4)
        if self.points is None and self.box is None and self.mask_input is None:
            raise InvalidInputError(f"{self.source}: a prompt needs points, a box or a mask input")

    def wants_multimask(self, override: bool | None) -> bool:
        if override is not None:
            return override
        if self.multimask is not None:
            return self.multimask
        return self.box is None and self.mask_input is None and self.points is not None and len(self.points) == 1

    def describe(self) -> dict:
        d: dict = {}
        if self.points is not None:
            d["points"] = [[float(x), float(y)] for x, y in self.points]
            d["labels"] = [int(v) for v in self.labels]
        if self.box is not None:
            d["box"] = [float(v) for v in self.box]
        if self.mask_input is not None:
            d["mask_input"] = self.mask_input
        return d

    def check_mask_size(self, width: int, height: int, image: str) -> None:
        """UsageError if the --mask-input PNG is not the image's size (header only)."""
        if self.mask_input is None:
            return
        size = image_size_hint(self.mask_input)
        if size is not None and size != (width, height):
            raise UsageError(f"--mask-input '{self.mask_input}' is {size[0]}x{size[1]}, {image} is "
                             f"{width}x{height}; give a mask the size of the image")

    def check_inside(self, width: int, height: int, image: str) -> None:
        """UsageError naming the offending value if the prompt leaves the image."""
        def bad(what: str) -> UsageError:
            return UsageError(f"{self.source}: {what} lies outside {image} ({width}x{height} pixels)")

        if self.points is not None:
            for x, y in self.points:
                if not (0 <= x <= width and 0 <= y <= height):
                    raise bad(f"point {_fmt(x)},{_fmt(y)}")
        if self.box is not None and self.from_detection:
            # a detector's box may overhang the image (DETR regresses boxes freely): clip it
            # to the image rather than reject the whole pipe
            x1, y1, x2, y2 = self.box
            if x2 < x1 or y2 < y1:
                raise InvalidInputError(f"{self.source}: box has x2 < x1 or y2 < y1 (expected X1,Y1,X2,Y2)")
            self.box = np.clip(self.box, 0, [width, height, width, height])
            return
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            s = "box " + ",".join(_fmt(v) for v in self.box)
            if x2 < x1 or y2 < y1:
                raise UsageError(f"{self.source}: {s} has x2 < x1 or y2 < y1 (expected X1,Y1,X2,Y2)")
            if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                raise bad(s)


def _fmt(v: float) -> str:
    return f"{v:g}"


def parse_xy(text: str, flag: str) -> tuple[float, float]:
    vals = _floats(text, flag, 2, "X,Y")
    return vals[0], vals[1]


def parse_box(text: str, flag: str = "--box") -> list[float]:
    return _floats(text, flag, 4, "X1,Y1,X2,Y2")


def _floats(text: str, flag: str, n: int, form: str) -> list[float]:
    parts = [p for p in str(text).replace(" ", ",").split(",") if p != ""]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != n or not all(np.isfinite(vals)):
        raise UsageError(f"invalid {flag} '{text}': expected {form} (numbers, pixels)")
    return vals


def prompts_from_json(data, origin: str) -> list[Prompt]:
    """``--prompts FILE``: a JSON list of prompt sets.

    Each item: ``{"points": [[x, y], ...], "labels": [1, 0, ...]?, "neg_points": [[x, y]]?,
    "box": [x1, y1, x2, y2]?, "mask_input": "coarse.png"?, "label": "name"?, "multimask": bool?}``.
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
        try:
            pts = [list(map(float, p)) for p in item.get("points") or []]
            labels = item.get("labels")
            labels = [int(v) for v in labels] if labels is not None else [1] * len(pts)
            neg = [list(map(float, p)) for p in item.get("neg_points") or []]
            if any(len(p) != 2 for p in pts + neg):
                raise ValueError("points must be [x, y] pairs")
            if len(labels) != len(pts) or any(v not in (0, 1) for v in labels):
                raise ValueError("labels must be 0/1, one per point")
            box = item.get("box")
            if box is not None:
                box = [float(v) for v in box]
                if len(box) != 4:
                    raise ValueError("box must be [x1, y1, x2, y2]")
            mask_input = item.get("mask_input")
            if mask_input is not None:
                mask_input = str(Path(origin).parent / mask_input) if not os.path.isabs(str(mask_input)) and \
                    not os.path.exists(str(mask_input)) else str(mask_input)
                if not os.path.isfile(mask_input):
                    raise UsageError(f"{where}: mask_input file not found: '{item.get('mask_input')}'")
            mm = item.get("multimask")
            if mm is not None and not isinstance(mm, bool):
                raise ValueError("multimask must be true or false")
        except UsageError:
            raise
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{where}: {exc}") from exc
        all_pts = pts + neg
        out.append(Prompt(points=np.array(all_pts) if all_pts else None,
                          labels=np.array(labels + [0] * len(neg)) if all_pts else None,
                          box=np.array(box) if box is not None else None, mask_input=mask_input,
                          label=item.get("label"), multimask=mm, source=where))
    return out


def detections_from_records(text: str, origin: str) -> dict[str, list[dict]]:
    """``--boxes-from``: detect's json (a list) or jsonl output -> {image: [detection, ...]}."""
    from visiontool.io.records import parse_json_or_jsonl

    data = parse_json_or_jsonl(text, origin)
    records = data if isinstance(data, list) else [data]  # one jsonl line parses as one record
    out: dict[str, list[dict]] = {}
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("image"), str) or \
                not isinstance(r.get("detections"), list):
            raise InvalidInputError(f"{origin}: record {i + 1} is not a detect record "
                                    "(needs \"image\" and a \"detections\" list)")
        dets = []
        for j, d in enumerate(r["detections"]):
            try:
                box = [float(v) for v in d["box"]]
                if len(box) != 4:
                    raise ValueError
                dets.append({"box": box, "label": None if d.get("label") is None else str(d["label"]),
                             "category_id": None if d.get("category_id") is None else int(d["category_id"]),
                             "score": float(d.get("score", 1.0))})
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidInputError(f"{origin}: record {i + 1} detection {j + 1} needs a \"box\" "
                                        "[x1, y1, x2, y2] and a numeric \"score\"") from exc
        out.setdefault(r["image"], []).extend(dets)
    return out


def prompts_for_detections(dets: list[dict], origin: str) -> list[Prompt]:
    return [Prompt(box=np.array(d["box"]), label=d["label"], category_id=d["category_id"], score=d["score"],
                   multimask=False, source=f"{origin} box {','.join(_fmt(v) for v in d['box'])}",
                   from_detection=True) for d in dets]


# ----------------------------------------------------------------------------- auto
@dataclass(frozen=True)
class AutoOptions:
    """``SamAutomaticMaskGenerator``'s knobs (same names and defaults)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_area: int = 0  # min_mask_region_area: holes/islands under this many pixels are removed

    def replace(self, **kw) -> "AutoOptions":
        from dataclasses import replace

        return replace(self, **{k: v for k, v in kw.items() if v is not None})


PRESETS = {
    "fast": AutoOptions(points_per_side=16, pred_iou_thresh=0.86, stability_score_thresh=0.92),
    "default": AutoOptions(),
    "quality": AutoOptions(points_per_side=32, crop_n_layers=1, crop_n_points_downscale_factor=2,
                           pred_iou_thresh=0.86, stability_score_thresh=0.92, min_area=100),
}


# ----------------------------------------------------------------------------- engine
def _cuda_possible() -> bool:
    """Whether ``--device auto`` could mean CUDA/MPS, decided without importing torch."""
    if sys.platform == "darwin":
        return True
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0") or \
        bool(os.environ.get("VISIONTOOL_ASSUME_GPU"))


def resolve_device_light(device: str):
    """(device string, device type) — imports torch only when a GPU might be present."""
    from visiontool.device import validate_device_spec

    spec = validate_device_spec(device)
    if spec == "cpu" or (spec == "auto" and not _cuda_possible()):
        return "cpu", "cpu"
    from visiontool.device import resolve_device

    dev = resolve_device(spec)
    return str(dev), dev.type


class SamEngine:
    """One checkpoint on one device: embeddings (cached), the numpy decoder, masks."""

    def __init__(self, checkpoint: str | None = None, device: str = "auto", dtype: str = "auto",
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True, quiet: bool = False):
        from visiontool.device import validate_dtype_spec
        from visiontool.models import sam as sam_models
        from visiontool.models.cache import embeddings_dir
        from visiontool.services.embedding_cache import EmbeddingCache

        self.device, self.device_type = resolve_device_light(device)
        dt = validate_dtype_spec(dtype)
        if use_cache:  # hook (wt-sam): a bad VISIONTOOL_EMBEDDING_CACHE_MB is exit 2 before any download
            from visiontool.services.embedding_cache import default_max_bytes

            default_max_bytes()
        self.precision = ("float32" if self.device_type == "cpu" else "float16") if dt == "auto" else dt
        spec = checkpoint or sam_models.default_checkpoint_name(self.device_type)
        self.model_name = spec if sam_models.is_checkpoint_name(spec) else Path(spec).name
        self.quiet = quiet
        self.path = sam_models.resolve_checkpoint(spec, quiet=quiet)
        self.checkpoint_sha = sam_models.checkpoint_sha256(self.path)
        self.cache = EmbeddingCache(Path(cache_dir) if cache_dir else embeddings_dir()) if use_cache else None
        self._sd = None
        self._encoder = None
        self.decoder = self._load_decoder()
        self.encoder_runs = 0
        self.cache_hits = 0

    # weights
    def _state_dict(self) -> dict:
        if self._sd is None:
            from visiontool.models import sam as sam_models

            self._sd = sam_models.load_state_dict(self.path)
        return self._sd

    def _load_decoder(self):
        from visiontool.models import sam as sam_models
        from visiontool.models.loader import cached
        from visiontool.models.sam_decoder import NumpySamDecoder

        def make():
            arrays = self.cache.get_decoder(self.checkpoint_sha) if self.cache is not None else None
            if arrays is None:
                arrays = sam_models.decoder_arrays(self._state_dict())
            try:
                return NumpySamDecoder(arrays)
            except KeyError as exc:
                raise ModelLoadError(f"checkpoint '{self.path}' lacks SAM decoder weights ({exc})") from exc

        dec = cached(("sam-decoder", self.checkpoint_sha), make)
        self._report_discarded()
        if self.cache is not None and not self.cache.decoder_path(self.checkpoint_sha).is_file():
            try:  # next time, a cache hit needs neither torch nor the checkpoint
                self.cache.put_decoder(self.checkpoint_sha, dec.w)
            except OSError:
                pass
        return dec

    def _report_discarded(self) -> None:
        if self.cache is None or not self.cache.discarded:
            return
        from visiontool.render.console import warn

        for path in self.cache.discarded:
            warn(f"discarded a corrupt cache entry ({path}); recomputing it")
        self.cache.discarded.clear()

    def _image_encoder(self):
        if self._encoder is None:
            import torch

            from visiontool.models import sam as sam_models
            from visiontool.models.loader import cached

            def make():
                return sam_models.build_image_encoder(self._state_dict()).to(torch.device(self.device))

            self._encoder = cached(("sam-encoder", self.checkpoint_sha, self.device), make)
        return self._encoder

    @property
    def img_size(self) -> int:
        return self.decoder.img_size

    # embeddings
    def embedding(self, rgb: np.ndarray, name: str = "image") -> np.ndarray:
        """(C, g, g) float32 embedding of an (H, W, 3) uint8 image — from the cache if possible."""
        from visiontool.services.embedding_cache import embedding_key, image_digest

        key = None
        if self.cache is not None:
            key = embedding_key(image_digest(rgb), self.checkpoint_sha, f"{self.device_type}-{self.precision}",
                                self.img_size)
            # hook (wt-sam): an intact entry of another shape is discarded, not fed to the decoder
            hit = self.cache.get(key, expected_shape=self.decoder.embedding_shape)
            self._report_discarded()
            if hit is not None:
                self.cache_hits += 1
                return hit[0]
        emb = self.encode(rgb, name)
        if self.cache is not None:
            try:
                self.cache.put(key, emb, {"image_hw": list(rgb.shape[:2]), "model": self.model_name,
                                          "precision": self.precision})
            except OSError as exc:
                from visiontool.render.console import warn

                warn(f"cannot write the embedding cache ({exc}); continuing without it")
        return emb

    def encode(self, rgb: np.ndarray, name: str = "image") -> np.ndarray:
        """Run the ViT encoder (torch): resize longest side to img_size, normalise, pad."""
        import time

        import torch
        from PIL import Image

        from visiontool.device import Precision
        from visiontool.models.sam_decoder import preprocess_shape
        from visiontool.render.console import info

        enc = self._image_encoder()
        h, w = rgb.shape[:2]
        nh, nw = preprocess_shape(h, w, self.img_size)
        info(f"encoding {name} with {self.model_name} ({self.device}, {self.precision})…")
        t0 = time.perf_counter()
        small = np.array(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
        x = torch.as_tensor(small, device=self.device).permute(2, 0, 1).float()
        mean = torch.tensor([123.675, 116.28, 103.53], device=self.device).view(-1, 1, 1)
        std = torch.tensor([58.395, 57.12, 57.375], device=self.device).view(-1, 1, 1)
        x = torch.nn.functional.pad((x - mean) / std, (0, self.img_size - nw, 0, self.img_size - nh))[None]
        with torch.inference_mode(), Precision(self.precision, self.device_type).context():
            feats = enc(x)
        self.encoder_runs += 1
        self.last_encode_s = time.perf_counter() - t0
        return feats[0].float().cpu().numpy()

    # masks
    def geometry(self, h: int, w: int):
        from visiontool.models.sam_decoder import preprocess_shape

        nh, nw = preprocess_shape(h, w, self.img_size)
        return nh, nw, np.array([nw / w, nh / h])

    def predict(self, emb: np.ndarray, prompts: list[Prompt], hw: tuple[int, int],
                multimask: bool | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Low-res logits (M, 4g, 4g) and predicted IoU (M,) for each prompt, batched by shape."""
        h, w = hw
        nh, nw, scale = self.geometry(h, w)
        dec = self.decoder
        results: list = [None] * len(prompts)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prompts):
            sig = (0 if p.points is None else len(p.points), p.box is not None, p.mask_input,
                   p.wants_multimask(multimask))
            groups.setdefault(sig, []).append(i)
        for (npts, has_box, mask_path, mm), idx in groups.items():
            pts = np.stack([prompts[i].points * scale for i in idx]) if npts else None
            labels = np.stack([prompts[i].labels for i in idx]) if npts else None
            boxes = np.stack([(prompts[i].box.reshape(2, 2) * scale).reshape(4) for i in idx]) if has_box else None
            tokens = dec.sparse_embeddings(pts, labels, boxes, batch=len(idx))
            dense = dec.dense_embedding(self.mask_logits(mask_path, hw) if mask_path else None)
            low, iou = dec.decode(emb, tokens, dense, mm, extent=self.upscaler(hw).low_extent())
            for j, i in enumerate(idx):
                results[i] = (low[j], iou[j])
        return results

    def mask_logits(self, path: str, hw: tuple[int, int]) -> np.ndarray:
        """A coarse mask PNG the size of the image -> (4g, 4g) logits in the padded frame."""
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
        nh, nw, _ = self.geometry(h, w)
        small = np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((nw, nh), Image.BILINEAR))
        padded = np.zeros((self.img_size, self.img_size), np.float32)
        padded[:nh, :nw] = small
        side = 4 * self.decoder.grid
        low = np.asarray(Image.fromarray(padded, mode="F").resize((side, side), Image.BILINEAR))
        return (low - 0.5) * (2 * MASK_INPUT_LOGIT)

    def upscaler(self, hw: tuple[int, int]):
        from visiontool.models.sam_decoder import MaskUpscaler

        cache = self.__dict__.setdefault("_upscalers", {})
        if tuple(hw) not in cache:
            nh, nw, _ = self.geometry(*hw)
            cache.clear()
            cache[tuple(hw)] = MaskUpscaler(4 * self.decoder.grid, self.img_size, (nh, nw), hw)
        return cache[tuple(hw)]


# ----------------------------------------------------------------------------- masks
def _rle_str(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def rles_with_stats(up, low: np.ndarray, offset: float = STABILITY_OFFSET, chunk: int = 8,
                    stability: bool = True):
    """Binary RLEs (bytes counts) of ``logits > 0`` at full size, and SAM's stability scores
    (None each when ``stability`` is False: SamPredictor does not compute them either)."""
    from pycocotools import mask as mask_utils

    rles, stab = [], []
    for i in range(0, low.shape[0], chunk):
        lg = up.logits_t(low[i:i + chunk])  # (b, W, H)
        if stability:
            inter = (lg > LOGIT_THRESHOLD + offset).sum(axis=(1, 2))
            union = (lg > LOGIT_THRESHOLD - offset).sum(axis=(1, 2))
            stab.extend((inter / np.maximum(union, 1)).tolist())
        else:
            stab.extend([None] * lg.shape[0])
        binary = (lg > LOGIT_THRESHOLD).view(np.uint8)
        rles.extend(mask_utils.encode(binary.transpose(2, 1, 0)))
    return rles, stab


def _box_area(rle: dict) -> tuple[list[float], int]:
    from pycocotools import mask as mask_utils

    area = int(mask_utils.area(rle))
    if area == 0:
        return [0.0, 0.0, 0.0, 0.0], 0
    x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
    return [x, y, x + bw, y + bh], area


def masks_for_prompts(engine: SamEngine, emb: np.ndarray, prompts: list[Prompt], hw: tuple[int, int],
                      multimask: bool | None = None) -> list[Mask]:
    """Every prompt's masks (multimask: 3, best predicted IoU first), ids from 0."""
    preds = engine.predict(emb, prompts, hw, multimask)
    up = engine.upscaler(hw)
    order = []
    for pi, (_, iou) in enumerate(preds):
        for k in np.argsort(-iou, kind="stable"):
            order.append((pi, int(k), len(iou)))
    if not order:
        return []
    lows = np.stack([preds[pi][0][k] for pi, k, _ in order])
    rles, stab = rles_with_stats(up, lows, stability=False)
    out: list[Mask] = []
    for mid, ((pi, k, n), rle, st) in enumerate(zip(order, rles, stab)):
        p = prompts[pi]
        box, area = _box_area(rle)
        piou = float(preds[pi][1][k])
        desc = p.describe()
        if n > 1:
            desc["rank"] = int(np.argsort(-preds[pi][1], kind="stable").tolist().index(k)) + 1
        desc["index"] = pi
        out.append(Mask(id=mid, score=float(p.score) if p.score is not None else piou, area=area, box=box,
                        segmentation=_rle_str(rle), prompt=desc, label=p.label, category_id=p.category_id,
                        predicted_iou=piou, stability_score=None if st is None else float(st)))
    return out


# ----------------------------------------------------------------------------- images
@dataclass
class SegmentJob:
    """What to do with one image."""

    source: object  # ImageSource
    prompts: list[Prompt] = field(default_factory=list)
    auto: bool = False


def image_size_hint(name: str) -> tuple[int, int] | None:
    """(W, H) after EXIF orientation from the header only; None if it cannot be read."""
    try:
        from PIL import Image

        with Image.open(name) as im:
            w, h = im.size
            try:
                orient = im.getexif().get(0x0112, 1)
            except Exception:
                orient = 1
        return (h, w) if orient in (5, 6, 7, 8) else (w, h)
    except Exception:
        return None


def run_jobs(engine: SamEngine, jobs: Iterable[SegmentJob], multimask: bool | None = None,
             auto_options: AutoOptions | None = None, gt=None,
             on_error=None) -> Iterator[tuple[ImageResult, np.ndarray | None]]:
    """Yield (ImageResult, rgb or None) per job; per-image load failures become ``error``
    results (``on_error(message)`` is called) and the others go on."""
    from visiontool.io.images import load_image
    from visiontool.io.records import default_image_id

    for pos, job in enumerate(jobs, 1):
        name = job.source.name
        image_id = gt.image_id_for(name) if gt is not None else default_image_id(name, pos)
        try:
            img = load_image(job.source)
        except ImageLoadError as exc:
            if on_error is not None:
                on_error(str(exc))
            yield ImageResult(image=name, width=0, height=0, model=engine.model_name, image_id=image_id,
                              masks=[], error=str(exc)), None
            continue
        rgb = np.asarray(img)
        h, w = rgb.shape[:2]
        for p in job.prompts:
            p.check_inside(w, h, name)
        if job.auto:
            from visiontool.services.auto_masks import generate

            masks = generate(engine, rgb, auto_options or AutoOptions(), name)
        elif job.prompts:
            masks = masks_for_prompts(engine, engine.embedding(rgb, name), job.prompts, (h, w), multimask)
        else:
            masks = []
        yield ImageResult(image=name, width=w, height=h, model=engine.model_name, image_id=image_id,
                          masks=masks), rgb


def segment(images, *, checkpoint: str | None = None, points=None, neg_points=None, boxes=None,
            mask_input: str | None = None, prompts: list[Prompt] | None = None,
            detections: dict[str, list[dict]] | None = None, auto: bool = False,
            auto_options: AutoOptions | None = None, multimask: bool | None = None, device: str = "auto",
            dtype: str = "auto", cache_dir: str | None = None, use_cache: bool = True) -> list[ImageResult]:
    """Segment ``images`` (paths) with SAM; returns one ImageResult (with ``masks``) per image.

    points / neg_points: [(x, y), ...] pixels, together one prompt (with ``boxes`` if exactly
    one box); boxes: [(x1, y1, x2, y2), ...] pixels, one object each; mask_input: PNG path;
    prompts: explicit :class:`Prompt` list; detections: ``{image: [{"box", "label",
    "category_id", "score"}]}`` as detect's records; auto: segment everything.
    Images that fail to load come back with ``error`` set.
    """
    from visiontool.io.images import expand_sources

    sources = expand_sources([str(i) for i in ([images] if isinstance(images, (str, os.PathLike)) else images)])
    base = build_prompts(points=points, neg_points=neg_points, boxes=boxes, mask_input=mask_input,
                         extra=prompts)
    engine = SamEngine(checkpoint, device=device, dtype=dtype, cache_dir=cache_dir, use_cache=use_cache,
                       quiet=True)
    jobs = [SegmentJob(s, list(base) + (prompts_for_detections(match_detections(detections, s.name), "detections")
                                         if detections else []), auto) for s in sources]
    return [r for r, _ in run_jobs(engine, jobs, multimask, auto_options)]


def build_prompts(points=None, neg_points=None, boxes=None, mask_input=None, extra=None,
                  point_flags=("--point", "--neg-point")) -> list[Prompt]:
    """Flags -> prompts: points (+ a single box, + a mask) make one prompt; each further box is
    its own object."""
    pts = [tuple(p) for p in points or []]
    neg = [tuple(p) for p in neg_points or []]
    bxs = [list(b) for b in boxes or []]
    out: list[Prompt] = []
    if pts or neg or mask_input:
        if len(bxs) > 1:
            raise UsageError("points or --mask-input combine with at most one --box; "
                             "use --prompts FILE for several objects with points")
        allp = pts + neg
        out.append(Prompt(points=np.array(allp) if allp else None,
                          labels=np.array([1] * len(pts) + [0] * len(neg)) if allp else None,
                          box=np.array(bxs[0]) if bxs else None, mask_input=mask_input,
                          source=_source_text(pts, neg, bxs[:1], mask_input)))
    else:
        out.extend(Prompt(box=np.array(b), source="--box") for b in bxs)
    out.extend(extra or [])
    return out


def _source_text(pts, neg, bxs, mask_input) -> str:
    if pts:
        return "--point"
    if neg:
        return "--neg-point"
    if bxs:
        return "--box"
    return "--mask-input"


def match_detections(detections: dict[str, list[dict]] | None, image: str) -> list[dict]:
    """Detections recorded for ``image`` (same path, else same normalised path, else base name)."""
    if not detections:
        return []
    if image in detections:
        return detections[image]
    norm = os.path.normpath(os.path.abspath(image))
    for k, v in detections.items():
        if os.path.normpath(os.path.abspath(k)) == norm:
            return v
    base = os.path.basename(image)
    hits = [v for k, v in detections.items() if os.path.basename(k) == base]
    return hits[0] if len(hits) == 1 else []
