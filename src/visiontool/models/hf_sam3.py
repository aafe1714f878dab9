"""SAM 3: concept segmentation from text (images and videos) and the tracker's image features.

A ``sam3_video`` checkpoint (``facebook/sam3``) holds one ViT backbone and two necks: the
detector's (``Sam3Model``: text -> every instance of the concept, with masks, boxes and
scores) and the tracker's (``Sam3TrackerModel``: SAM-style point / box prompts). The backbone
output is cached once per image (entry ``sam3-backbone``) and either neck is run on it, so a
text prompt after a point prompt on the same image (or the reverse) does not run the ViT
again; the tracker's features are cached too (``sam2-features``) so that a new point or box
prompt decodes without torch.

Text on images: ``Sam3Model(vision_embeds=..., input_ids=...)`` per phrase, then the
processor's own post-processing (sigmoid(logits) x sigmoid(presence) scores; mask
probabilities resized bilinearly to the image, > 0.5). ``threshold`` is inclusive.

Text on videos: ``Sam3VideoModel`` streamed frame by frame (``processor.add_text_prompt``,
``model(inference_session, frame=...)``, ``processor.postprocess_outputs``), with the same
bounded-memory pruning as :mod:`.hf_sam_video`.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from visiontool.types import NO_CLASS, Detections

BACKBONE = "sam3-backbone"


def _backbone(ad, rgb: np.ndarray, vision_encoder) -> "torch.Tensor":  # noqa: F821
    """(1, g*g, D) ViT output for ``rgb`` from the cache, else computed (and cached)."""
    import torch

    hit = ad.cache_get(rgb, BACKBONE)
    dev = torch.device(ad.device)
    if hit is not None:
        ad.stats["cache_hits"] += 1
        return torch.from_numpy(np.array(hit[0], np.float32))[None].to(dev)
    from visiontool.render.console import info

    pv = ad.pixel_values(rgb)
    if ad.runtime != "torch":  # the ViT in OpenVINO / ONNX Runtime (models.runtimes.sam_export)
        info(f"encoding the image with {ad.s.spec}'s backbone ({ad.runtime})…")
        hidden = torch.from_numpy(ad.runtime_encoder(pv.shape[-1], "sam3-backbone")(pv.cpu().numpy())[0]).to(dev)
    else:
        info(f"encoding the image with {ad.s.spec}'s backbone ({ad.device}, {ad.precision})…")
        hidden = vision_encoder.backbone(pv).last_hidden_state
    ad.stats["encoder_runs"] += 1
    ad.cache_put(rgb, BACKBONE, [hidden[0].float().cpu().numpy()])
    return hidden


def _spatial(hidden, grid: int):
    b, _, d = hidden.shape
    return hidden.view(b, grid, grid, d).permute(0, 3, 1, 2)


def tracker_features(ad, rgb: np.ndarray, model) -> list[np.ndarray]:
    """``Sam3TrackerModel.get_image_embeddings`` from the (cached) backbone output:
    [s0 (C/8, 4g, 4g), s1 (C/4, 2g, 2g), (C, g, g)]."""
    hidden = _backbone(ad, rgb, model.vision_encoder)
    g = ad.s.grid
    fpn, _ = model.vision_encoder.neck(_spatial(hidden, g))
    maps = list(fpn)
    maps[0] = model.mask_decoder.conv_s0(maps[0])
    maps[1] = model.mask_decoder.conv_s1(maps[1])
    maps[-1] = maps[-1] + model.no_memory_embedding.view(1, -1, 1, 1)  # as get_image_embeddings (level 4)
    sizes = model.backbone_feature_sizes
    return [m[0].float().cpu().numpy() for m, _ in zip(maps, sizes)]


def _processor(ad):
    from visiontool.models.loader import cached

    def make():
        import transformers as T

        from visiontool.models.hf_hub import from_pretrained

        tok = from_pretrained(T.AutoTokenizer.from_pretrained, str(ad.s.path))
        return T.Sam3Processor(image_processor=ad.image_processor(), tokenizer=tok)

    return cached(("hf-sam3-processor", str(ad.s.path)), make)


def segment_text(ad, rgb: np.ndarray, phrases: Sequence[str], *, threshold: float, name: str = "image") -> Detections:
    """Every instance of each phrase with score >= threshold, best first within a phrase."""
    import torch
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    from visiontool.masks import encode_transposed, boxes as mask_boxes
    from visiontool.models.sam_upscale import MaskUpscaler

    model = ad.torch_model("Sam3Model")
    proc = _processor(ad)
    h, w = rgb.shape[:2]
    dev = torch.device(ad.device)
    parts = []
    with torch.inference_mode():
        hidden = _backbone(ad, rgb, model.vision_encoder)
        fpn, pos = model.vision_encoder.neck(_spatial(hidden, _grid(ad, model)))
        vision = Sam3VisionEncoderOutput(last_hidden_state=hidden, fpn_hidden_states=fpn, fpn_position_encoding=pos)
        for ci, phrase in enumerate(phrases):
            text = proc(text=phrase, return_tensors="pt")
            out = model(vision_embeds=vision, input_ids=text["input_ids"].to(dev),
                        attention_mask=text["attention_mask"].to(dev))
            scores = (out.pred_logits.sigmoid() * out.presence_logits.sigmoid())[0].float().cpu().numpy()
            keep = np.nonzero(scores >= threshold)[0]
            keep = keep[np.argsort(-scores[keep], kind="stable")]
            if keep.size == 0:
                continue
            prob = out.pred_masks[0, keep].sigmoid().float().cpu().numpy()  # (K, 4g, 4g)
            low = prob.shape[-1]
            up = MaskUpscaler(low, low, (low, low), (h, w))
            rles: list[dict] = []
            for c0 in range(0, len(prob), 8):
                rles += encode_transposed(up.logits_t(prob[c0:c0 + 8]) > 0.5)
            n = len(rles)
            parts.append(Detections(mask_boxes(rles), scores[keep].astype(np.float64), [ci] * n, [phrase] * n,
                                    masks=rles, data={"phrase": [phrase] * n,
                                                      "prompt": [{"text": phrase}] * n}))
    if not parts:
        return Detections.empty(with_masks=True)
    return Detections.merge(parts)


def _grid(ad, model) -> int:
    cfg = model.config.vision_config.backbone_config
    return int(cfg.image_size) // int(cfg.patch_size)


# ----------------------------------------------------------------------------- video
def propagate_text(ad, frames: Iterator[tuple[int, float, np.ndarray]], phrases: Sequence[str], *,
                   threshold: float = 0.5, max_frames_in_memory: int | None = None):
    """Every instance of the phrases on every frame, each keeping its object id."""
    import torch
    import transformers as T
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    from visiontool.masks import encode_transposed
    from visiontool.models.hf_sam_video import FrameMasks, default_window, masks_to_detections
    from visiontool.types import Prompt  # noqa: F401

    model = ad.torch_model("Sam3VideoModel")
    model.score_threshold_detection = float(threshold)
    base = _processor(ad)
    ip = base.image_processor
    size = ad.s.image_size
    vp = Sam2VideoVideoProcessor(size={"height": size, "width": size}, image_mean=ip.image_mean, image_std=ip.image_std)
    proc = T.Sam3VideoProcessor(image_processor=ip, video_processor=vp, tokenizer=base.tokenizer, target_size=size)
    session = proc.init_video_session(inference_device=torch.device(ad.device), dtype=torch.float32)
    proc.add_text_prompt(session, list(phrases))
    window = default_window(model.config.tracker_config)
    if max_frames_in_memory is not None:
        window = max(1, min(window, int(max_frames_in_memory)))
    window = max(window, int(getattr(model.config, "hotstart_delay", 0)) + 1)
    k = -1
    for index, t, rgb in frames:
        k += 1
        rgb = np.asarray(rgb)
        h, w = rgb.shape[:2]
        pv = ad.pixel_values(rgb)[0]
        with torch.inference_mode():
            out = model(inference_session=session, frame_idx=k, frame=pv)
            post = proc.postprocess_outputs(session, out, original_sizes=[[h, w]])
        _prune_text_session(session, k, window)
        ids = [int(v) for v in post["object_ids"].tolist()]
        masks = post["masks"].cpu().numpy().astype(bool)
        scores = post["scores"].float().cpu().numpy()
        phrase_of = {}
        for text_, oids in (post.get("prompt_to_obj_ids") or {}).items():
            for o in oids:
                phrase_of[int(o)] = text_
        rles = encode_transposed(masks.transpose(0, 2, 1)) if len(ids) else []
        dets = masks_to_detections(rles, scores, [None] * len(ids), ids)
        if len(dets):
            names = [phrase_of.get(int(o)) for o in dets.data["object_id"]]
            dets = dets.replace(names=names, class_ids=[phrases.index(n) if n in phrases else NO_CLASS
                                                        for n in names]).with_columns(
                phrase=names, prompt=[{"text": n} for n in names])
        yield FrameMasks(index, t, dets, rgb)


def _prune_text_session(s, k: int, window: int) -> None:
    """Drop what no later frame reads from a Sam3VideoInferenceSession (forward streaming)."""
    if s.processed_frames is not None:
        s.processed_frames.pop(k, None)
    s.cache.clear_all()
    old = k - window
    for obj_idx, od in s.output_dict_per_obj.items():
        for store in (od["cond_frame_outputs"], od["non_cond_frame_outputs"]):
            for out in store.values():
                out.pop("high_res_masks", None)
        nc = od["non_cond_frame_outputs"]
        for f in list(nc):
            if f <= old:
                del nc[f]
        ft = s.frames_tracked_per_obj.get(obj_idx, {})
        for f in list(ft):
            if f <= old:
                del ft[f]
    for d in (s.obj_id_to_tracker_score_frame_wise, s.suppressed_obj_ids):
        for f in list(d):
            if f <= old:
                del d[f]
