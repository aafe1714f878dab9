"""A tiny DETR with random weights, saved with save_pretrained (no network, no pretrained weights)."""
from __future__ import annotations

from pathlib import Path

# a few real COCO categories with DETR's ids (1-90 numbering, gaps included)
COCO_SUBSET = {1: "person", 2: "bicycle", 3: "car", 17: "cat", 18: "dog", 47: "cup", 52: "banana",
               53: "apple", 62: "chair", 63: "couch", 8: "truck"}


def build_tiny_detr(path: Path, num_queries: int = 12, seed: int = 0, id2label: dict | None = None) -> Path:
    """Save a small DETR (resnet18 backbone, d_model 32, one encoder/decoder layer) to ``path``.

    Query embeddings and heads are re-drawn with a larger spread so the random model gives
    varied boxes, labels and scores (DETR's own init makes all queries nearly identical).
    """
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, TimmBackboneConfig

    named = id2label or COCO_SUBSET
    # like the real checkpoints: every id up to the largest is a class, the gaps are "N/A"
    id2label = {i: named.get(i, "N/A") for i in range(max(named) + 1)}
    cfg = DetrConfig(
        backbone_config=TimmBackboneConfig(backbone="resnet18", out_indices=[4]),
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=num_queries,
        id2label=id2label, label2id={v: k for k, v in id2label.items() if v != "N/A"},
    )
    torch.manual_seed(seed)
    model = DetrForObjectDetection(cfg).eval()
    with torch.no_grad():
        model.model.query_position_embeddings.weight.normal_(0.0, 1.0)
        for p in model.model.decoder.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
        for layer in model.bbox_predictor.layers:
            layer.weight.normal_(0.0, 0.3)
            layer.bias.normal_(0.0, 0.3)
        model.class_labels_classifier.weight.normal_(0.0, 0.5)
        bias = torch.full_like(model.class_labels_classifier.bias, -6.0)
        for k in named:
            bias[int(k)] = 0.0  # only the named classes are likely
        model.class_labels_classifier.bias.copy_(bias)
    path = Path(path)
    model.save_pretrained(path)
    DetrImageProcessor().save_pretrained(path)
    return path
