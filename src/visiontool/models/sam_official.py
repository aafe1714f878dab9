"""The segment-anything adapter: Meta's official ``.pth`` checkpoints (vit_b / vit_l / vit_h).

One checkpoint on one device: the ViT image encoder (torch, built only on an embedding
cache miss), the prompt encoder + mask decoder in numpy (:mod:`visiontool.models.sam_decoder`),
full-size masks through :class:`~visiontool.models.sam_upscale.MaskUpscaler`, stored as RLE.
On a cache hit neither torch nor the checkpoint's encoder weights are touched.

Coordinates are original-image pixels after EXIF orientation: points ``(X, Y)``, boxes
``XYXY``. Checkpoint names, download, verification and architecture live in
:mod:`visiontool.models.sam`; the on-disk cache in :mod:`visiontool.services.embedding_cache`.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from visiontool.convert import from_sam_logits
from visiontool.errors import ModelLoadError
from visiontool.models.protocol import AutoOptions, ModelInfo
from visiontool.models.sam import check_checkpoint_spec, default_checkpoint_name, is_checkpoint_name  # noqa: F401
from visiontool.types import Detections, Prompt

MASK_INPUT_LOGIT = 10.0  # a binary --mask-input becomes ±10 low-res logits
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def check(spec: str) -> None:
    check_checkpoint_spec(spec)


def load(spec: str, device: str, precision, cache_dir=None, use_cache: bool = True, quiet: bool = False,
         runtime: str = "torch"):
    return SamOfficial(spec, device, precision, cache_dir=cache_dir, use_cache=use_cache, quiet=quiet,
                       runtime=runtime)


class SamOfficial:
    """A segment-anything checkpoint: cached embeddings, the numpy decoder, masks as RLE."""

    def __init__(self, spec: str, device: str, precision, cache_dir=None, use_cache: bool = True,
                 quiet: bool = False, runtime: str = "torch"):
        from visiontool.models import sam as sam_models
        from visiontool.models.cache import embeddings_dir
        from visiontool.services.embedding_cache import EmbeddingCache

        if use_cache:  # a bad VISIONTOOL_EMBEDDING_CACHE_MB is exit 2 before any download
            from visiontool.services.embedding_cache import default_max_bytes

            default_max_bytes()
        self.device = device
        self.device_type = device.split(":")[0]
        self.precision = precision.name
        self.runtime = runtime  # torch, or openvino/onnxruntime for the image encoder (models.runtimes)
        self.model_name = spec if is_checkpoint_name(spec) else Path(spec).name
        self.quiet = quiet
        self.path = sam_models.resolve_checkpoint(spec, quiet=quiet)
        self.checkpoint_sha = sam_models.checkpoint_sha256(self.path)
        self.cache = EmbeddingCache(Path(cache_dir) if cache_dir else embeddings_dir()) if use_cache else None
        self._sd = None
        self._encoder = None
        self.decoder = self._load_decoder()
        self.stats = {"encoder_runs": 0, "cache_hits": 0}
        self.last_encode_s = 0.0
        self.info = ModelInfo(name=self.model_name, family="sam", backend="segment-anything", task="segment",
                              paradigm="promptable", needs_nms=None, device=device, dtype=self.precision,
                              capabilities=frozenset({"points", "boxes", "mask_input", "auto"}),
                              runtime=runtime, extra={"checkpoint": str(self.path)})
        if runtime != "torch":
            self.info.backend = f"segment-anything+{runtime}"

    # ------------------------------------------------------------------ weights
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
        if self.cache is not None:
            self.cache.warn_discarded()
            if not self.cache.decoder_path(self.checkpoint_sha).is_file():
                try:  # next time, a cache hit needs neither torch nor the checkpoint
                    self.cache.put_decoder(self.checkpoint_sha, dec.w)
                except OSError:
                    pass
        return dec

    def _image_encoder(self):
        if self._encoder is None:
            import torch

            from visiontool.models import sam as sam_models
            from visiontool.models.loader import cached

            def make():
                return sam_models.build_image_encoder(self._state_dict()).to(torch.device(self.device))

            if self.runtime != "torch":
                from visiontool.models.runtimes import sam_export

                def make_runtime():
                    return sam_export.encoder(make, self.checkpoint_sha, self.img_size, self.runtime,
                                              self.model_name)
                self._encoder = cached(("sam-encoder", self.checkpoint_sha, self.runtime), make_runtime)
                return self._encoder
            self._encoder = cached(("sam-encoder", self.checkpoint_sha, self.device), make)
            self.info.params = sum(p.numel() for p in self._encoder.parameters())
        return self._encoder

    @property
    def img_size(self) -> int:
        return self.decoder.img_size

    # ------------------------------------------------------------------ embeddings
    def embedding(self, rgb: np.ndarray, name: str = "image") -> np.ndarray:
        """(C, g, g) float32 embedding of an (H, W, 3) uint8 image — from the cache if possible."""
        from visiontool.services.embedding_cache import embedding_key, image_digest

        key = None
        if self.cache is not None:
            tag = f"{self.device_type}-{self.precision}" + ("" if self.runtime == "torch" else f"-{self.runtime}")
            key = embedding_key(image_digest(rgb), self.checkpoint_sha, tag, self.img_size)
            # an intact entry of another shape is discarded, not fed to the decoder
            hit = self.cache.get(key, expected_shape=self.decoder.embedding_shape)
            self.cache.warn_discarded()
            if hit is not None:
                self.stats["cache_hits"] += 1
                return hit[0]
        emb = self.encode(rgb, name)
        if self.cache is not None:
            self.cache.put_or_warn(key, emb, {"image_hw": list(rgb.shape[:2]), "model": self.model_name,
                                              "precision": self.precision})
        return emb

    def encode(self, rgb: np.ndarray, name: str = "image") -> np.ndarray:
        """Run the ViT encoder (torch): resize longest side to img_size, normalise, pad."""
        import torch
        from PIL import Image

        from visiontool.device import Precision
        from visiontool.models.sam_upscale import preprocess_shape
        from visiontool.render.console import info

        enc = self._image_encoder()
        h, w = rgb.shape[:2]
        nh, nw = preprocess_shape(h, w, self.img_size)
        info(f"encoding {name} with {self.model_name} ({self.device}, {self.precision})…")
        t0 = time.perf_counter()
        small = np.array(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
        x = torch.as_tensor(small, device=self.device).permute(2, 0, 1).float()
        mean = torch.tensor(PIXEL_MEAN, device=self.device).view(-1, 1, 1)
        std = torch.tensor(PIXEL_STD, device=self.device).view(-1, 1, 1)
        x = torch.nn.functional.pad((x - mean) / std, (0, self.img_size - nw, 0, self.img_size - nh))[None]
        with torch.inference_mode(), Precision(self.precision, self.device_type).context():
            feats = enc(x)
        self.stats["encoder_runs"] += 1
        self.last_encode_s = time.perf_counter() - t0
        return feats[0].float().cpu().numpy()

    # ------------------------------------------------------------------ the promptable primitives
    def geometry(self, h: int, w: int):
        from visiontool.models.sam_upscale import preprocess_shape

        nh, nw = preprocess_shape(h, w, self.img_size)
        return nh, nw, np.array([nw / w, nh / h])

    def upscaler(self, hw: tuple[int, int]):
        from visiontool.models.sam_upscale import MaskUpscaler

        cache = self.__dict__.setdefault("_upscalers", {})
        if tuple(hw) not in cache:
            nh, nw, _ = self.geometry(*hw)
            cache.clear()
            cache[tuple(hw)] = MaskUpscaler(4 * self.decoder.grid, self.img_size, (nh, nw), hw)
        return cache[tuple(hw)]

    def decode_points(self, emb: np.ndarray, points: np.ndarray, hw: tuple[int, int]):
        """Single foreground points (B, 2) pixels -> low-res logits (B, 3, h, w), IoU (B, 3)."""
        dec = self.decoder
        _, _, scale = self.geometry(*hw)
        tokens = dec.sparse_embeddings((points * scale)[:, None, :], np.ones((len(points), 1), np.int64), None)
        return dec.decode(emb, tokens, dec.dense_embedding(None), True, extent=self.upscaler(hw).low_extent())

    def upscale_t(self, low: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        """Low-res logits (b, h, w) -> full-size logits transposed (b, W, H)."""
        return self.upscaler(hw).logits_t(low)

    # ------------------------------------------------------------------ prompts
    def predict(self, emb: np.ndarray, prompts: list[Prompt], hw: tuple[int, int],
                multimask: bool | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Low-res logits (M, 4g, 4g) and predicted IoU (M,) for each prompt, batched by shape."""
        from visiontool.models.sam_prompts import decode_by_shape

        dec = self.decoder

        def decode(n, pts, labels, boxes, mask_path, mm):
            tokens = dec.sparse_embeddings(pts, labels, boxes, batch=n)
            dense = dec.dense_embedding(self.mask_logits(mask_path, hw) if mask_path else None)
            return dec.decode(emb, tokens, dense, mm, extent=self.upscaler(hw).low_extent())

        return decode_by_shape(prompts, multimask, self.geometry(*hw)[2], decode)

    def mask_logits(self, path: str, hw: tuple[int, int]) -> np.ndarray:
        """A coarse mask PNG the size of the image -> (4g, 4g) logits in the padded frame."""
        from PIL import Image

        from visiontool.io.prompts import read_mask_input

        h, w = hw
        m = read_mask_input(path, hw)
        nh, nw, _ = self.geometry(h, w)
        small = np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((nw, nh), Image.BILINEAR))
        padded = np.zeros((self.img_size, self.img_size), np.float32)
        padded[:nh, :nw] = small
        side = 4 * self.decoder.grid
        low = np.asarray(Image.fromarray(padded, mode="F").resize((side, side), Image.BILINEAR))
        return (low - 0.5) * (2 * MASK_INPUT_LOGIT)

    def segment(self, image: np.ndarray, prompts: list[Prompt], *, multimask: bool | None = None,
                name: str = "image") -> Detections:
        """Every prompt's masks (multimask: 3, best predicted IoU first), in prompt order."""
        if not prompts:
            return Detections.empty(with_masks=True)
        return self.masks_from_embedding(self.embedding(image, name), prompts, image.shape[:2], multimask)

    def masks_from_embedding(self, emb: np.ndarray, prompts: list[Prompt], hw: tuple[int, int],
                             multimask: bool | None = None) -> Detections:
        """:meth:`segment` on an embedding already computed (for an image of size ``hw``)."""
        preds = self.predict(emb, prompts, hw, multimask)
        return from_sam_logits(preds, prompts, self.upscaler(hw))

    def segment_auto(self, image: np.ndarray, options: AutoOptions, *, name: str = "image") -> Detections:
        from visiontool.services.auto_masks import generate

        return generate(self, image, options, name)
