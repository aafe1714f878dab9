"""The transformers SAM-family adapter: SAM, SAM-HQ, SAM 2/2.1, EdgeTAM and SAM 3.

One checkpoint (a hub id or a ``save_pretrained`` directory, see
:mod:`~visiontool.models.hf_sam_spec` for the families) serves:

* point / negative-point / box / coarse-mask prompts, multimask answers ranked by predicted
  IoU, and ``--auto`` through the three primitives of :mod:`visiontool.services.auto_masks`;
* ``segment_text`` (capability ``text``: SAM 3's concept segmentation, :mod:`.hf_sam3`);
* ``propagate`` (capability ``video``: SAM 2 / EdgeTAM / SAM 3 video models, :mod:`.hf_sam_video`).

The image encoder (torch, transformers; or, with ``runtime`` openvino / onnxruntime, its
cached export: :func:`visiontool.models.runtimes.sam_export.hf_encoder`) runs only on an
embedding-cache miss; its features are stored by
:class:`~visiontool.services.embedding_cache.EmbeddingCache` under a key made of the decoded
pixels, the model's content hash (``config.json`` + weight files) and the precision (with a
``-<runtime>`` suffix for a runtime's features). On a hit the prompt encoder and mask decoder run in numpy
(:mod:`.hf_sam_decoder`; SAM-HQ's heads run in torch), so neither torch nor transformers is
imported. Full-size masks come from the low-res logits through the processor's own bilinear
resizes, evaluated as banded separable products (:class:`~visiontool.models.sam_upscale.MaskUpscaler`).

Coordinates are original-image pixels after EXIF orientation: points ``(X, Y)``, boxes ``XYXY``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from visiontool.convert import from_sam_logits
from visiontool.errors import ModelLoadError, UsageError
from visiontool.models import hf_sam_spec as S
from visiontool.models.protocol import AutoOptions, ModelInfo
from visiontool.types import Detections, Prompt

MASK_INPUT_LOGIT = 10.0  # a binary --mask-input becomes ±10 low-res logits (as the official adapter)
ENTRY = {"sam1": "sam1-features", "sam_hq": "samhq-features", "sam2": "sam2-features"}


def check(spec: str) -> None:
    S.check(spec)


def load(spec: str, device: str, precision, cache_dir=None, use_cache: bool = True, quiet: bool = False,
         runtime: str = "torch"):
    return HFSam(spec, device, precision, cache_dir=cache_dir, use_cache=use_cache, quiet=quiet, runtime=runtime)


class HFSam:
    """A transformers SAM-family checkpoint: cached features, numpy heads, masks as RLE."""

    def __init__(self, spec: str, device: str, precision, cache_dir=None, use_cache: bool = True,
                 quiet: bool = False, runtime: str = "torch"):
        from visiontool.models.cache import embeddings_dir
        from visiontool.services.embedding_cache import EmbeddingCache

        self.s = S.read_spec(spec)
        self.device = device
        self.device_type = device.split(":")[0]
        self.precision = precision.name
        self.quiet = quiet
        self.runtime = runtime  # torch, or openvino/onnxruntime for the image encoder (models.runtimes.sam_export)
        self.model_sha = S.content_sha(self.s)
        self.cache = EmbeddingCache(Path(cache_dir) if cache_dir else embeddings_dir()) if use_cache else None
        self.stats = {"encoder_runs": 0, "cache_hits": 0}
        self.last_encode_s = 0.0
        caps = set()
        if self.s.kind is not None:
            caps |= {"points", "boxes", "mask_input", "auto", "batch"}
        if self.s.text:
            caps.add("text")
        if self.s.video:
            caps.add("video")
        self.info = ModelInfo(name=spec, family=self.s.family, backend="transformers", task="segment",
                              paradigm="promptable", needs_nms=None, params=self._count_params(), device=device,
                              dtype=self.precision, capabilities=frozenset(caps), runtime=runtime,
                              extra={"model_type": self.s.model_type, "path": str(self.s.path)})
        if runtime != "torch":
            self.info.backend = f"transformers+{runtime}"

    # ------------------------------------------------------------------ identity
    def _count_params(self) -> int:
        try:
            from safetensors import safe_open

            n = 0
            for f in self.s.weight_files():
                with safe_open(str(f), framework="numpy") as st:
                    for k in st.keys():
                        n += int(np.prod(st.get_slice(k).get_shape()))
            return n
        except Exception:  # noqa: BLE001 - a count for tables only
            return 0

    def require(self, capability: str, what: str) -> None:
        if not self.info.can(capability):
            if capability == "text":
                raise UsageError(f"{what} needs a text-capable model ({S.TEXT_EXAMPLES}); '{self.s.spec}' is "
                                 f"{self.s.model_type}")
            if capability == "video":
                raise UsageError(f"{what}: '{self.s.spec}' ({self.s.model_type}) is an image model; use a video "
                                 f"model such as {S.VIDEO_EXAMPLES}")
            raise UsageError(f"{what}: '{self.s.spec}' ({self.s.model_type}) takes only --text prompts; for points "
                             f"and boxes use a SAM 3 checkpoint with its tracker ({S.TEXT_EXAMPLES})")

    # ------------------------------------------------------------------ torch parts (cache misses only)
    def torch_model(self, cls_name: str | None = None):
        """The transformers model ``cls_name`` (default: the image model) on this device, eval."""
        from visiontool.models.loader import cached

        cls_name = cls_name or self.s.image_class

        def make():
            import torch
            import transformers

            from visiontool.models.hf_hub import from_pretrained

            cls = getattr(transformers, cls_name)
            model = from_pretrained(cls.from_pretrained, str(self.s.path))
            model = model.to(torch.device(self.device)).eval()
            return model

        model = cached(("hf-sam-model", str(self.s.path), cls_name, self.device), make)
        self.info.params = self.info.params or sum(p.numel() for p in model.parameters())
        return model

    def runtime_encoder(self, side: int, part: str = "embeddings"):
        """The exported image encoder for ``(1, 3, side, side)`` pixel values (``part``
        ``"embeddings"``: what :meth:`encode` caches; ``"sam3-backbone"``: SAM 3's ViT) in
        ``self.runtime``: numpy pixel values -> numpy features, exported once (cached on disk,
        checked against torch)."""
        from visiontool.models.loader import cached
        from visiontool.models.runtimes import sam_export

        def make():
            from visiontool.models.loader import release

            cls_name = "Sam3Model" if self.s.image_class is None else self.s.image_class
            enc = sam_export.hf_encoder(lambda: self.torch_model(cls_name), self.model_sha, self.s.model_type, part,
                                        side, self.runtime, self.s.spec, quiet=self.quiet)
            if self.s.kind in ("sam1", "sam2") and self.s.family != "sam3":  # nothing else reads the torch model
                release(("hf-sam-model", str(self.s.path), cls_name, self.device))
            return enc

        return cached(("hf-sam-encoder", self.model_sha, part, side, self.runtime), make)

    def image_processor(self):
        from visiontool.models.loader import cached

        def make():
            from transformers import AutoImageProcessor

            from visiontool.models.hf_hub import from_pretrained

            return from_pretrained(AutoImageProcessor.from_pretrained, str(self.s.path))

        return cached(("hf-sam-image-processor", str(self.s.path)), make)

    def pixel_values(self, rgb: np.ndarray):
        import torch

        if not rgb.flags.writeable:  # PIL-backed arrays are read-only; torch.from_numpy warns about them
            rgb = np.array(rgb)
        pv = self.image_processor()(images=rgb, return_tensors="pt")["pixel_values"]
        return pv.to(torch.device(self.device))

    # ------------------------------------------------------------------ numpy heads
    @property
    def decoder(self):
        from visiontool.models.loader import cached

        def make():
            from visiontool.models import hf_sam_decoder as D

            w = S.read_tensors(self.s, ("prompt_encoder.", "mask_decoder.", "shared_image_embedding."))
            d = self.s.decoder
            if self.s.kind == "sam1":
                return D.sam1_decoder(w, self.s.image_size, self.s.grid, d["num_heads"])
            return D.Sam2Decoder(w, self.s.image_size, self.s.grid, num_heads=d["num_heads"], dynamic=d["dynamic"],
                                 delta=d["delta"], thresh=d["thresh"], ln_eps=d["ln_eps"])

        if self.s.kind == "sam_hq":
            raise RuntimeError("SAM-HQ decodes in torch")
        return cached(("hf-sam-decoder", self.model_sha), make)

    # ------------------------------------------------------------------ geometry
    def geometry(self, h: int, w: int) -> tuple[int, int, np.ndarray]:
        """(input h, input w, XY scale from image pixels to the model's input frame)."""
        size = self.s.image_size
        if self.s.pad:
            from visiontool.models.sam_upscale import preprocess_shape

            nh, nw = preprocess_shape(h, w, size)
        else:
            nh, nw = size, size
        return nh, nw, np.array([nw / w, nh / h])

    def upscaler(self, hw: tuple[int, int]):
        from visiontool.models.sam_upscale import MaskUpscaler

        ups = self.__dict__.setdefault("_upscalers", {})
        key = tuple(int(v) for v in hw)
        if key not in ups:
            low = 4 * self.s.grid
            ups.clear()
            if self.s.pad:
                nh, nw, _ = self.geometry(*key)
                ups[key] = MaskUpscaler(low, self.s.image_size, (nh, nw), key)
            else:  # SAM 2/3 post_process_masks: one resize from the low-res logits to the image
                ups[key] = MaskUpscaler(low, low, (low, low), key)
        return ups[key]

    # ------------------------------------------------------------------ embeddings
    def _key(self, rgb: np.ndarray, entry: str) -> str:
        from visiontool.services.embedding_cache import embedding_key, image_digest

        digest = self.__dict__.get("_digest")
        if digest is None or digest[0] is not rgb:
            digest = (rgb, image_digest(rgb))
            self.__dict__["_digest"] = digest
        # runtime features are kept apart from torch's (a precision tag suffix, as sam_official)
        tag = f"{self.device_type}-{self.precision}" + ("" if self.runtime == "torch" else f"-{self.runtime}")
        return embedding_key(digest[1], self.model_sha, f"{tag}/{entry}", self.s.image_size)

    def cache_get(self, rgb: np.ndarray, entry: str) -> list[np.ndarray] | None:
        if self.cache is None:
            return None
        from visiontool.services.embedding_cache import unpack

        hit = self.cache.get(self._key(rgb, entry))
        self.cache.warn_discarded()
        return unpack(hit[0], hit[1]) if hit is not None else None

    def cache_put(self, rgb: np.ndarray, entry: str, arrays: Sequence[np.ndarray]) -> None:
        if self.cache is None:
            return
        from visiontool.services.embedding_cache import pack

        flat, meta = pack(arrays)
        meta.update(image_hw=list(rgb.shape[:2]), model=self.s.spec, precision=self.precision, entry=entry)
        self.cache.put_or_warn(self._key(rgb, entry), flat, meta)

    def embedding(self, rgb: np.ndarray, name: str = "image"):
        """The prompt heads' image features of an (H, W, 3) uint8 image (cache first):
        SAM (C, g, g); SAM-HQ [(C, g, g), ViT features...]; SAM 2 family [s0, s1, (C, g, g)]."""
        self.require("points", "point and box prompts")
        entry = ENTRY[self.s.kind]
        hit = self.cache_get(rgb, entry)
        if hit is not None:
            self.stats["cache_hits"] += 1
            return hit[0] if self.s.kind == "sam1" else hit
        feats = self.encode(rgb, name)
        self.cache_put(rgb, entry, [feats] if self.s.kind == "sam1" else feats)
        return feats

    def encode(self, rgb: np.ndarray, name: str = "image"):
        """Run the image encoder (torch, or the runtime's export) -> the features :meth:`embedding` returns."""
        import torch

        from visiontool.device import Precision
        from visiontool.render.console import info

        sam3 = self.s.model_type in ("sam3_video", "sam3_tracker", "sam3_tracker_video")
        exported = self.runtime != "torch" and not sam3
        model = None if exported else self.torch_model()  # the export needs no torch model once cached
        if self.s.family != "sam3":  # hf_sam3 says so when it runs the backbone (often cached)
            how = self.runtime if exported else f"{self.device}, {self.precision}"
            info(f"encoding {name} with {self.s.spec} ({how})…")
        t0 = time.perf_counter()
        with torch.inference_mode(), Precision(self.precision, self.device_type).context():
            if sam3:
                from visiontool.models import hf_sam3

                feats = hf_sam3.tracker_features(self, rgb, model)
            elif exported:
                pv = self.pixel_values(rgb).cpu().numpy()  # (1, 3, S, S): the processor's fixed size
                outs = self.runtime_encoder(pv.shape[-1])(pv)
                feats = [np.asarray(t[0], np.float32) for t in outs]  # the flat order of the torch branch below
                if self.s.kind == "sam1":
                    feats = feats[0]
            else:
                pv = self.pixel_values(rgb)
                out = model.get_image_embeddings(pv)
                if self.s.kind == "sam1":
                    feats = out[0].float().cpu().numpy()
                elif self.s.kind == "sam_hq":
                    emb, inter = out
                    feats = [emb[0].float().cpu().numpy()] + [t[0].float().cpu().numpy() for t in inter]
                else:
                    feats = [t[0].float().cpu().numpy() for t in out]
        if self.s.family != "sam3":  # hf_sam3 counts the backbone runs (its output is cached apart)
            self.stats["encoder_runs"] += 1
        self.last_encode_s = time.perf_counter() - t0
        return feats

    # ------------------------------------------------------------------ the promptable primitives
    def decode_points(self, emb, points: np.ndarray, hw: tuple[int, int]):
        """Single foreground points (B, 2) pixels -> low-res logits (B, 3, 4g, 4g), IoU (B, 3)."""
        _, _, scale = self.geometry(*hw)
        pts = (np.asarray(points, np.float64) * scale)[:, None, :]
        labels = np.ones((len(points), 1), np.int64)
        if self.s.kind == "sam_hq":
            return self._hq_decode(emb, pts, labels, None, None, True)
        dec = self.decoder
        tokens = dec.sparse_embeddings(pts, labels, None, batch=len(points))
        if self.s.kind == "sam1":
            return dec.decode(emb, tokens, dec.dense_embedding(None), True, extent=self.upscaler(hw).low_extent())
        low, iou, _ = dec.decode(emb, tokens, dec.dense_embedding(None), True)
        return low, iou

    def upscale_t(self, low: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        """Low-res logits (b, 4g, 4g) -> full-size logits transposed (b, W, H)."""
        return self.upscaler(hw).logits_t(low)

    # ------------------------------------------------------------------ prompts
    def predict(self, emb, prompts: list[Prompt], hw: tuple[int, int],
                multimask: bool | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Low-res logits (M, 4g, 4g) and predicted IoU (M,) for each prompt, batched by shape."""
        from visiontool.models.sam_prompts import decode_by_shape

        def decode(n, pts, labels, boxes, mask_path, mm):
            mask = self.mask_logits(mask_path, hw) if mask_path else None
            if self.s.kind == "sam_hq":
                return self._hq_decode(emb, pts, labels, boxes, mask, mm)
            dec = self.decoder
            tokens = dec.sparse_embeddings(pts, labels, boxes, batch=n)
            dense = dec.dense_embedding(mask)
            if self.s.kind == "sam1":
                return dec.decode(emb, tokens, dense, mm, extent=self.upscaler(hw).low_extent())
            low, iou, _ = dec.decode(emb, tokens, dense, mm)
            return low, iou

        return decode_by_shape(prompts, multimask, self.geometry(*hw)[2], decode)

    def _hq_decode(self, feats, pts, labels, boxes, mask, multimask: bool):
        """SAM-HQ's heads (torch): ``SamHQModel.forward`` on the cached embeddings."""
        import torch

        model = self.torch_model()
        dev = torch.device(self.device)
        emb = torch.from_numpy(np.array(feats[0], np.float32))[None].to(dev)
        inter = [torch.from_numpy(np.array(t, np.float32))[None].to(dev) for t in feats[1:]]
        kw: dict[str, Any] = {}
        if pts is not None:
            kw["input_points"] = torch.as_tensor(pts, dtype=torch.float32)[None].to(dev)
            kw["input_labels"] = torch.as_tensor(labels, dtype=torch.int64)[None].to(dev)
        if boxes is not None:
            kw["input_boxes"] = torch.as_tensor(boxes, dtype=torch.float32)[None].to(dev)
        if mask is not None:
            kw["input_masks"] = torch.as_tensor(mask, dtype=torch.float32)[None, None].to(dev)
        with torch.inference_mode():
            out = model(image_embeddings=emb, intermediate_embeddings=inter, multimask_output=multimask, **kw)
        return out.pred_masks[0].float().cpu().numpy(), out.iou_scores[0].float().cpu().numpy()

    def mask_logits(self, path: str, hw: tuple[int, int]) -> np.ndarray:
        """A coarse mask PNG the size of the image -> (4g, 4g) logits in the model's input frame."""
        from PIL import Image

        from visiontool.io.prompts import read_mask_input

        h, w = hw
        m = read_mask_input(path, hw)
        side = 4 * self.s.grid
        img = Image.fromarray(m.astype(np.float32), mode="F")
        if self.s.pad:
            nh, nw, _ = self.geometry(h, w)
            small = np.asarray(img.resize((nw, nh), Image.BILINEAR))
            padded = np.zeros((self.s.image_size, self.s.image_size), np.float32)
            padded[:nh, :nw] = small
            img = Image.fromarray(padded, mode="F")
        low = np.asarray(img.resize((side, side), Image.BILINEAR))
        return ((low - 0.5) * (2 * MASK_INPUT_LOGIT)).astype(np.float32)

    def segment(self, image: np.ndarray, prompts: list[Prompt], *, multimask: bool | None = None,
                name: str = "image") -> Detections:
        """Every prompt's masks (multimask: 3, best predicted IoU first), in prompt order."""
        if not prompts:
            return Detections.empty(with_masks=True)
        hw = image.shape[:2]
        preds = self.predict(self.embedding(image, name), prompts, hw, multimask)
        return self.masks_from_predictions(preds, prompts, hw)

    def masks_from_predictions(self, preds, prompts: list[Prompt], hw) -> Detections:
        return from_sam_logits(preds, prompts, self.upscaler(hw))

    def segment_auto(self, image: np.ndarray, options: AutoOptions, *, name: str = "image") -> Detections:
        from visiontool.services.auto_masks import generate

        self.require("auto", "--auto")
        return generate(self, image, options, name)

    # ------------------------------------------------------------------ text and video
    def segment_text(self, image: np.ndarray, phrases: Sequence[str], *, threshold: float,
                     name: str = "image") -> Detections:
        """SAM 3 concept segmentation: every instance of each phrase, score >= threshold."""
        from visiontool.models import hf_sam3

        self.require("text", "--text")
        return hf_sam3.segment_text(self, image, phrases, threshold=threshold, name=name)

    def propagate(self, frames: Iterator[tuple[int, float, np.ndarray]], prompts: list[Prompt], *,
                  text: Sequence[str] | None = None, threshold: float = 0.5,
                  max_frames_in_memory: int | None = None) -> Iterator[tuple[int, float, Detections]]:
        """Masks of the prompted objects on every frame (see :mod:`.hf_sam_video`)."""
        self.require("video", "a video")
        from visiontool.models.hf_sam_video_features import check_supported

        check_supported(self, bool(text))
        if text:
            from visiontool.models import hf_sam3

            self.require("text", "--text on a video")
            return hf_sam3.propagate_text(self, frames, text, threshold=threshold,
                                          max_frames_in_memory=max_frames_in_memory)
        from visiontool.models import hf_sam_video

        return hf_sam_video.propagate(self, frames, prompts, max_frames_in_memory=max_frames_in_memory)


__all__ = ["HFSam", "check", "load", "ModelLoadError"]
