"""Tiny random-weight transformers detectors, one per family the installed transformers offers,
saved with ``save_pretrained`` (model + image processor) so ``--model DIR`` loads them.

Closed vocabulary (``build_detector``): DETR, Conditional DETR, Deformable DETR, DAB-DETR,
YOLOS, RT-DETR, RT-DETRv2, D-FINE, DEIMv2, LW-DETR, RF-DETR, Table Transformer. Every model
works at ~128-192 px (its processor is saved with a small size) and knows a few COCO names.
"""
from __future__ import annotations

from pathlib import Path

NAMES = {0: "person", 1: "bicycle", 2: "car", 3: "dog", 4: "cat", 5: "truck", 6: "cup", 7: "banana"}
SMALL_SIZE = {"shortest_edge": 128, "longest_edge": 192}
FIXED_SIZE = {"height": 128, "width": 128}


def _labels(**extra):
    return dict(id2label=dict(NAMES), label2id={v: k for k, v in NAMES.items()}, **extra)


def _timm_resnet(multi_scale: bool = False):
    from transformers import TimmBackboneConfig

    return TimmBackboneConfig(backbone="resnet18", out_indices=[2, 3, 4] if multi_scale else [4])


def _detr_like(cls_name: str, decoder_layers: int = 1, **extra):
    import transformers

    cfg = getattr(transformers, cls_name)(
        backbone_config=_timm_resnet(extra.pop("multi_scale", False)), d_model=32, encoder_layers=1,
        decoder_layers=decoder_layers, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
        decoder_attention_heads=2, num_queries=12, **_labels(**extra))
    return cfg


def _rt_resnet():
    from transformers import RTDetrResNetConfig

    return RTDetrResNetConfig(embeddings_size=10, hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 2, 1],
                              out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4])


def _hgnet():
    from transformers import HGNetV2Config

    return HGNetV2Config(stage_in_channels=[16, 64, 128, 256], stage_mid_channels=[16, 32, 64, 128],
                         stage_out_channels=[64, 128, 256, 512], stage_num_blocks=[1, 1, 2, 1],
                         stage_downsample=[False, True, True, True], stage_light_block=[False, False, True, True],
                         stage_kernel_size=[3, 3, 5, 5], stage_numb_of_layers=[3, 3, 3, 3], embeddings_size=10,
                         hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 2, 1],
                         out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4], stem_channels=[3, 16, 16],
                         use_lab=True)


_RT_COMMON = dict(encoder_hidden_dim=32, encoder_in_channels=[128, 256, 512], feat_strides=[8, 16, 32],
                  encoder_layers=1, encoder_ffn_dim=64, encoder_attention_heads=2, d_model=32, num_queries=20,
                  decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64, num_feature_levels=3, decoder_layers=2,
                  decoder_attention_heads=2, num_denoising=0)


def config_for(family: str):
    """The tiny config of ``family`` (a transformers model_type)."""
    import transformers as T

    if family == "detr":
        return _detr_like("DetrConfig")
    if family == "conditional_detr":
        return _detr_like("ConditionalDetrConfig")
    if family == "table-transformer":
        return _detr_like("TableTransformerConfig")
    if family == "dab-detr":
        return _detr_like("DabDetrConfig")
    if family == "deformable_detr":
        return _detr_like("DeformableDetrConfig", decoder_layers=2, multi_scale=True, num_feature_levels=3,
                          encoder_n_points=2, decoder_n_points=2)
    if family == "yolos":
        return T.YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=[128, 192], patch_size=16, num_detection_tokens=12, **_labels())
    if family == "rt_detr":
        return T.RTDetrConfig(backbone_config=_rt_resnet(), **_RT_COMMON, **_labels())
    if family == "rt_detr_v2":
        return T.RTDetrV2Config(backbone_config=_rt_resnet(), **_RT_COMMON, decoder_n_levels=3,
                                decoder_n_points=2, **_labels())
    if family == "d_fine":
        return T.DFineConfig(backbone_config=_hgnet(), **_RT_COMMON, decoder_n_points=[3, 6, 3], reg_max=32,
                             reg_scale=4.0, depth_mult=0.34, hidden_expansion=0.5, decoder_offset_scale=0.5,
                             layer_scale=1, **_labels())
    if family == "deimv2":
        return T.Deimv2Config(backbone_config=_hgnet(), **_RT_COMMON, decoder_n_points=[3, 6, 3], decoder_n_levels=3,
                              reg_max=32, reg_scale=4.0, depth_mult=0.34, hidden_expansion=0.5,
                              decoder_offset_scale=0.5, layer_scale=1, encode_proj_layers=[2], **_labels())
    if family == "lw_detr":
        backbone = T.LwDetrViTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                     window_block_indices=[0, 2], out_indices=[1, 3], num_windows=16, image_size=128)
        return T.LwDetrConfig(backbone_config=backbone, d_model=32, projector_scale_factors=[0.5, 2.0],
                              decoder_ffn_dim=32, decoder_layers=2, decoder_self_attention_heads=2,
                              decoder_cross_attention_heads=4, num_queries=12, group_detr=2, **_labels())
    if family == "rf_detr":
        backbone = T.RfDetrDinov2Config(num_attention_heads=2, num_hidden_layers=4, out_features=["stage2", "stage3"],
                                        hidden_size=32, patch_size=16, num_windows=2, image_size=128)
        return T.RfDetrConfig(backbone_config=backbone, d_model=32, decoder_ffn_dim=32, decoder_layers=2,
                              decoder_self_attention_heads=2, decoder_cross_attention_heads=4, num_queries=12,
                              group_detr=2, **_labels())
    raise KeyError(family)


FAMILIES = ("detr", "conditional_detr", "deformable_detr", "dab-detr", "yolos", "rt_detr", "rt_detr_v2", "d_fine",
            "deimv2", "lw_detr", "rf_detr", "table-transformer")


def processor_for(family: str):
    import transformers as T

    if family in ("rt_detr", "rt_detr_v2", "d_fine", "deimv2"):
        return T.RTDetrImageProcessor(size=FIXED_SIZE)
    if family == "lw_detr":
        return T.DeformableDetrImageProcessor(size=FIXED_SIZE)
    if family == "rf_detr":
        return T.RfDetrImageProcessor(size=FIXED_SIZE)
    if family == "yolos":
        return T.YolosImageProcessor(size=SMALL_SIZE)
    if family == "deformable_detr":
        return T.DeformableDetrImageProcessor(size=SMALL_SIZE)
    if family == "conditional_detr":
        return T.ConditionalDetrImageProcessor(size=SMALL_SIZE)
    return T.DetrImageProcessor(size=SMALL_SIZE)


def build_detector(family: str, path: Path, seed: int = 0) -> Path:
    """Save a tiny ``family`` detector (random weights, heads spread so boxes and scores vary)."""
    import torch
    from transformers import AutoModelForObjectDetection

    torch.manual_seed(seed)
    model = AutoModelForObjectDetection.from_config(config_for(family)).eval()
    with torch.no_grad():  # random DETR queries are nearly identical: spread them (and the decoder)
        for name, p in model.named_parameters():
            if ("query" in name and "embed" in name) or name.endswith(("query_position_embeddings.weight",
                                                                     "detection_tokens")):
                p.normal_(0.0, 1.0)
            elif family in ("detr", "conditional_detr", "table-transformer", "dab-detr") and p.dim() == 2 and \
                    ("decoder" in name or "class_labels_classifier" in name or "bbox" in name):
                p.normal_(0.0, 0.5 / p.shape[1] ** 0.5 * 4)
        if family in ("rt_detr", "rt_detr_v2", "d_fine", "deimv2"):
            # their init gives convolutions and batch norms weights ~N(0, 0.01): the encoder's
            # output is then constant across positions and every encoder score ties, so which
            # queries the top-k picks is arbitrary (and differs between torch and an exported graph)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.fill_(1.0)
                elif isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = Path(path)
    model.save_pretrained(path)
    processor_for(family).save_pretrained(path)
    return path
