"""Tiny random-weight open-vocabulary and universal-segmentation models, with tokenizers made
here (no download): Grounding DINO, MM-Grounding-DINO, OWLv2, OWL-ViT, OmDet-Turbo (zero-shot
detection) and Mask2Former, OneFormer, EoMT (instance segmentation), each saved with
``save_pretrained`` (model, image processor, tokenizer) for ``--model DIR``."""
from __future__ import annotations

import json
from pathlib import Path

WORDS = ["cat", "dog", "person", "truck", "cup", "banana", "forklift", "in", "a", "hi", "vis", "vest", "-", ".",
         "detect", "photo", "of", "the", "instance", "semantic", "panoptic", "is", "task", "an", ","]
ZERO_SHOT = ("grounding-dino", "mm-grounding-dino", "owlv2", "owlvit", "omdet-turbo")
UNIVERSAL = ("mask2former", "oneformer", "eomt")
SIZE = {"shortest_edge": 128, "longest_edge": 192}


def bert_tokenizer(directory: Path):
    """A BERT WordPiece tokenizer over a few words (Grounding DINO's text side)."""
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(directory / "vocab.txt"))


def clip_tokenizer(directory: Path, max_length: int = 16):
    """A CLIP byte-level BPE tokenizer with one token per character (OWL, OmDet, OneFormer)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _swin(out_features=("stage2", "stage3", "stage4"), embed_dim=16):
    from transformers import SwinConfig

    return SwinConfig(image_size=128, patch_size=4, window_size=4, embed_dim=embed_dim, depths=[1, 1, 1, 1],
                      num_heads=[1, 1, 1, 1], out_features=list(out_features))


def build_zero_shot(family: str, path: Path, seed: int = 0, tokenizer=None) -> Path:
    """Save a tiny zero-shot detector of ``family`` with its processor to ``path``
    (``tokenizer``: another word-piece tokenizer for the Grounding DINO families)."""
    import torch
    import transformers as T

    path = Path(path)
    torch.manual_seed(seed)
    if family in ("grounding-dino", "mm-grounding-dino"):
        tok = tokenizer if tokenizer is not None else bert_tokenizer(path / "tok")
        text = T.BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=64)
        cls = T.GroundingDinoConfig if family == "grounding-dino" else T.MMGroundingDinoConfig
        cfg = cls(backbone_config=_swin(), text_config=text, d_model=32, num_queries=20, encoder_layers=1,
                  decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                  decoder_attention_heads=2, num_feature_levels=4, encoder_n_points=2, decoder_n_points=2,
                  max_text_len=32)
        model = T.AutoModelForZeroShotObjectDetection.from_config(cfg).eval()
        processor = T.GroundingDinoProcessor(T.GroundingDinoImageProcessor(size=SIZE), tok)
    elif family in ("owlv2", "owlvit"):
        tok = clip_tokenizer(path / "tok", max_length=64)  # one token per character: long
        text = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, max_position_embeddings=64)
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      image_size=64, patch_size=16)
        if family == "owlv2":
            cfg = T.Owlv2Config(text_config=text, vision_config=vision, projection_dim=16)
            processor = T.Owlv2Processor(T.Owlv2ImageProcessor(size={"height": 64, "width": 64}), tok)
        else:
            cfg = T.OwlViTConfig(text_config=text, vision_config=vision, projection_dim=16)
            processor = T.OwlViTProcessor(T.OwlViTImageProcessor(size={"height": 64, "width": 64},
                                                                 crop_size={"height": 64, "width": 64}), tok)
        model = T.AutoModelForZeroShotObjectDetection.from_config(cfg).eval()
    elif family == "omdet-turbo":
        tok = clip_tokenizer(path / "tok", max_length=77)  # OmDet-Turbo pads its prompts to CLIP's 77
        text = T.CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, max_position_embeddings=77, projection_dim=16)
        backbone = _swin(("stage2", "stage3", "stage4"), embed_dim=8)  # stages of 16, 32, 64 channels
        cfg = T.OmDetTurboConfig(text_config=text, backbone_config=backbone, use_timm_backbone=False, backbone=None,
                                 use_pretrained_backbone=False, apply_layernorm_after_vision_backbone=False,
                                 image_size=128, decoder_num_layers=1, encoder_in_channels=[16, 32, 64],
                                 num_queries=20, encoder_layers=1, encoder_projection_indices=[2],
                                 encoder_attention_heads=2, decoder_num_heads=2, decoder_num_points=2,
                                 num_feature_levels=3, encoder_dim_feedforward=32, task_encoder_hidden_dim=32,
                                 decoder_dim_feedforward=32, class_embed_dim=16, text_projection_in_dim=16,
                                 text_projection_out_dim=16, encoder_hidden_dim=8, decoder_hidden_dim=8,
                                 vision_features_channels=[8, 8, 8], disable_custom_kernels=True)
        model = T.AutoModelForZeroShotObjectDetection.from_config(cfg).eval()
        processor = T.OmDetTurboProcessor(T.DetrImageProcessor(size={"height": 128, "width": 128}, do_pad=False), tok)
    else:
        raise KeyError(family)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_universal(family: str, path: Path, seed: int = 0) -> Path:
    """Save a tiny universal-segmentation model of ``family`` with its processor to ``path``."""
    import torch
    import transformers as T

    from hf_tiny import NAMES

    path = Path(path)
    torch.manual_seed(seed)
    labels = dict(id2label=dict(NAMES), label2id={v: k for k, v in NAMES.items()})
    if family == "mask2former":
        swin = _swin(("stage1", "stage2", "stage3", "stage4"), embed_dim=16)
        cfg = T.Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                                  encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                                  dim_feedforward=64, num_queries=10, **labels)
        processor = T.Mask2FormerImageProcessor(size=SIZE)
    elif family == "oneformer":
        tok = clip_tokenizer(path / "tok", max_length=77)
        swin = _swin(("stage1", "stage2", "stage3", "stage4"), embed_dim=16)
        cfg = T.OneFormerConfig(backbone_config=swin, conv_dim=32, mask_dim=32, hidden_dim=32,
                                encoder_feedforward_dim=64,
                                encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=64,
                                num_queries=10, text_encoder_width=32, text_encoder_num_layers=1,
                                text_encoder_vocab_size=len(tok), text_encoder_context_length=77, text_encoder_n_ctx=4,
                                query_dec_layers=1, **labels)
        path.mkdir(parents=True, exist_ok=True)  # its class metadata file, read from the model directory
        (path / "tiny_classes.json").write_text(json.dumps({str(k): {"name": v, "isthing": 1}
                                                            for k, v in NAMES.items()}))
        image_processor = T.OneFormerImageProcessor(size=SIZE, class_info_file="tiny_classes.json",
                                                    repo_path=str(path),
                                                    num_text=cfg.num_queries - cfg.text_encoder_n_ctx)
        processor = T.OneFormerProcessor(image_processor=image_processor, tokenizer=tok)
    elif family == "eomt":
        cfg = T.EomtConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=128, patch_size=16,
                           num_blocks=1, num_queries=10, num_register_tokens=1, num_upscale_blocks=1, **labels)
        processor = T.EomtImageProcessor(size={"shortest_edge": 128, "longest_edge": 128}, do_split_image=False,
                                         do_pad=True)
    else:
        raise KeyError(family)
    model = T.AutoModelForUniversalSegmentation.from_config(cfg).eval()
    with torch.no_grad():  # random mask logits hover at 0 (probability 0.5): spread them so masks have shapes
        for name, p in model.named_parameters():
            if "mask_embed" in name and p.dim() == 2:
                p.normal_(0.0, 2.0 / p.shape[1] ** 0.5)
            elif "mask_embed" in name:
                p.zero_()
            elif name.endswith("class_embed.weight") or name.endswith("class_predictor.weight"):
                p.normal_(0.0, 3.0 / p.shape[1] ** 0.5)  # spread class scores: the best query wins its pixels
            elif "queries_embedder" in name or "queries_features" in name or "query_embed" in name:
                p.normal_(0.0, 1.0)  # random queries start nearly identical: spread them
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
