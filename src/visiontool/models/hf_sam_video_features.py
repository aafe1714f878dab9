"""A video model's per-frame image features from the image path's runtime export (``--runtime``).

transformers' video models (``Sam2VideoModel``, ``EdgeTamVideoModel``, ``Sam3TrackerVideoModel``)
look a frame's features up in ``inference_session.cache`` before they run their own vision
encoder (``_prepare_vision_features``). :class:`RuntimeFrameFeatures` computes them with the
cached OpenVINO / ONNX Runtime export that ``segment IMAGE --runtime`` already uses
(:meth:`visiontool.models.hf_sam.HFSam.runtime_encoder`: the same export, the same cache
entry, keyed by the model's content) and puts them there, so the model's memory attention,
mask decoder and memory encoder run on them unchanged:

* SAM 2 / EdgeTAM (export part ``embeddings``: ``get_image_embeddings`` of the video model
  itself — the image class of a ``sam2_video`` / ``edgetam_video`` checkpoint is the video
  class): ``s0``, ``s1`` (after the mask decoder's 1x1 convs) and the lowest-resolution map
  with the no-memory embedding added, each ``(1, C, h, w)``. The video reads them flattened to
  ``(h*w, 1, C)`` without the no-memory embedding (``get_image_features``), so it is
  subtracted again (float32 rounding: one ulp). The sine position encodings depend only on
  the maps' sizes: computed once by the neck's own ``position_encoding``.
* SAM 3 tracker (export part ``sam3-backbone``: the ViT): the tracker's neck, the 1x1 convs and
  the position encodings run in torch on the runtime's ViT output, exactly as
  ``Sam3TrackerVideoModel.get_image_features`` (all levels but the last).

``Sam3VideoModel`` (``--text`` on a video) calls its detector's vision encoder directly, with
no such look-up: :func:`check_supported` refuses it.
"""
from __future__ import annotations

import numpy as np

from visiontool.errors import UsageError


def check_supported(ad, text: bool) -> None:
    """UsageError (exit 2) for a video run ``--runtime`` cannot accelerate."""
    if ad.runtime != "torch" and text:
        raise UsageError(f"--runtime {ad.runtime}: --text on a video runs SAM 3's detector and tracker in torch "
                         "(Sam3VideoModel has no exported image encoder yet); use --runtime torch, or give points "
                         "or boxes")


class RuntimeFrameFeatures:
    """``pixel_values (3, S, S)`` -> the dict ``inference_session.cache.cache_vision_features`` takes
    (``vision_feats``: list of ``(h*w, 1, C)``, high resolution first; ``vision_pos_embeds``: the
    same shapes with the position encodings' channels)."""

    def __init__(self, ad, model):
        self.ad = ad
        self.model = model
        self.sam3 = ad.s.family == "sam3"
        self.encoder = ad.runtime_encoder(ad.s.image_size, "sam3-backbone" if self.sam3 else "embeddings")
        self._pos: list | None = None

    def __call__(self, pv) -> dict:
        import torch

        outs = self.encoder(np.ascontiguousarray(pv[None].detach().cpu().numpy(), dtype=np.float32))
        with torch.inference_mode():
            if self.sam3:
                return self._sam3(torch.from_numpy(np.asarray(outs[0], np.float32)))
            maps = [torch.from_numpy(np.asarray(o, np.float32)) for o in outs]
            feats = [m.flatten(2).permute(2, 0, 1) for m in maps]
            feats[-1] = feats[-1] - self.model.no_memory_embedding.detach().to(feats[-1].dtype)
            if self._pos is None:
                self._pos = self._positions(maps)
            return {"vision_feats": feats, "vision_pos_embeds": list(self._pos)}

    def _positions(self, maps) -> list:
        import torch

        neck = self.model.vision_encoder.neck
        d = int(self.model.config.vision_config.fpn_hidden_size)
        out = []
        for m in maps:
            shape = torch.Size([1, d, int(m.shape[-2]), int(m.shape[-1])])
            out.append(neck.position_encoding(shape, m.device, torch.float32).to(torch.float32)
                       .flatten(2).permute(2, 0, 1))
        return out

    def _sam3(self, hidden) -> dict:
        """As ``Sam3TrackerVideoModel.get_image_features`` from the ViT output (1, g*g, D)."""
        m = self.model
        g = self.ad.s.grid
        spatial = hidden.view(1, g, g, -1).permute(0, 3, 1, 2)
        fpn, pos = m.vision_encoder.neck(spatial)
        maps = list(fpn[:-1])
        maps[0] = m.mask_decoder.conv_s0(maps[0])
        maps[1] = m.mask_decoder.conv_s1(maps[1])
        return {"vision_feats": [t.flatten(2).permute(2, 0, 1) for t in maps],
                "vision_pos_embeds": [p.flatten(2).permute(2, 0, 1) for p in pos[:-1]]}
