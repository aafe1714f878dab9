"""Tiny random transformers SAM-family models for the tests (no network, no pretrained weights).

Every family the ``segment`` adapter serves, each saved with ``save_pretrained`` together with
its processor, as a user's local model directory would be:

* ``sam`` / ``sam_hq``: a 2-layer ViT at 256 px (16x16 embedding grid);
* ``sam2`` / ``sam2_video``: a one-block-per-stage Hiera at 256 px (64/32/16 feature maps);
* ``edgetam`` / ``edgetam_video``: a small timm RepViT backbone at 256 px;
* ``sam3_video`` (detector + tracker, like ``facebook/sam3``): a 2-layer ViT at 224 px, a
  2-layer CLIP text encoder with a tokenizer written here (a tiny byte-level BPE vocabulary).

The weights are random but seeded, with norms and biases perturbed and the mask-decoder
hypernetwork scaled up so that the masks are neither empty nor full.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FAMILIES = ("sam", "sam_hq", "sam2", "sam2_video", "edgetam", "edgetam_video", "sam3_video")


def _perturb(model, seed: int) -> None:
    """PyTorch's default initialisation (transformers' N(0, 0.02) makes a tiny random SAM
    ignore its prompts), norms and biases perturbed, the mask hypernetworks scaled up."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
                mod.reset_parameters()
            if isinstance(mod, nn.LayerNorm) or type(mod).__name__.endswith("LayerNorm"):
                if getattr(mod, "weight", None) is not None:
                    mod.weight.copy_(1 + 0.2 * torch.randn_like(mod.weight))
                if getattr(mod, "bias", None) is not None:
                    mod.bias.copy_(0.2 * torch.randn_like(mod.bias))
        for name, mod in model.named_modules():
            if name.endswith("output_hypernetworks_mlps") or name.endswith("hq_mask_mlp"):
                for p in mod.parameters():
                    p.mul_(2.0)
            if name.endswith("pred_obj_score_head"):  # objects present (a video drops absent ones)
                mod.proj_out.bias.add_(8.0)


def _sam_configs(hq: bool):
    from transformers import SamConfig, SamHQConfig

    vision = dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2, image_size=256,
                  patch_size=16, window_size=4, global_attn_indexes=[1], num_pos_feats=16, mlp_dim=64)
    prompt = dict(hidden_size=32, image_size=256, patch_size=16, mask_input_channels=8)
    decoder = dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32)
    if hq:
        decoder["vit_dim"] = 32
        return SamHQConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def _sam_processor():
    from transformers import SamImageProcessor, SamProcessor

    ip = SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256},
                           mask_size={"longest_edge": 64}, mask_pad_size={"height": 64, "width": 64})
    return SamProcessor(image_processor=ip)


def _hiera_vision(dim: int = 32):
    return dict(model_type="sam2_vision_model",
                backbone_config=dict(model_type="sam2_hiera_det_model", hidden_size=16, num_attention_heads=1,
                                     image_size=[256, 256], blocks_per_stage=[1, 1, 2, 1],
                                     embed_dim_per_stage=[16, 32, 64, 128],
                                     num_attention_heads_per_stage=[1, 1, 2, 2],
                                     window_size_per_stage=[8, 4, 4, 4], global_attention_blocks=[3],
                                     window_positional_embedding_background_size=[4, 4]),
                backbone_channel_list=[128, 64, 32, 16], backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]],
                fpn_hidden_size=dim)


def _repvit_vision(dim: int = 32):
    return dict(model_type="edgetam_vision_model",
                backbone_config=dict(model_type="timm_wrapper", architecture="repvit_m1",
                                     do_pooling=False, num_classes=1,
                                     model_args={"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3],
                                                 "embed_dim": [8, 16, 32, 64], "depth": [1, 1, 1, 1]}),
                backbone_channel_list=[64, 32, 16, 8], backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]],
                fpn_hidden_size=dim)


# the video models' memory attention reads 64-channel memories (a constant in transformers) and
# only handles object pointers wider than that (split into hidden/64 tokens): hidden size 128
VIDEO_DIM = 128


def _sam2_heads(dim: int = 32):
    prompt = dict(hidden_size=dim, image_size=256, patch_size=16, mask_input_channels=8)
    decoder = dict(hidden_size=dim, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32)
    return prompt, decoder


def _video_kwargs(edgetam: bool = False) -> dict:
    kw = dict(image_size=256, memory_attention_hidden_size=VIDEO_DIM, memory_attention_num_layers=1,
              memory_attention_feed_forward_hidden_size=64 if not edgetam else None,
              memory_attention_rope_feat_sizes=[16, 16], memory_encoder_hidden_size=VIDEO_DIM,
              memory_encoder_output_channels=64, mask_downsampler_embed_dim=VIDEO_DIM, memory_fuser_embed_dim=VIDEO_DIM,
              memory_fuser_intermediate_dim=64, num_maskmem=3, max_object_pointers_in_encoder=4)
    if edgetam:
        kw.pop("memory_attention_feed_forward_hidden_size")
        kw.update(memory_attention_mlp_hidden_size=64, memory_attention_rope_k_sizes=[4, 4],
                  perceiver_resampler_hidden_size=64, perceiver_resampler_num_latents=16,
                  perceiver_resampler_num_latents_2d=16, perceiver_resampler_num_layers=1,
                  perceiver_resampler_num_attention_heads=1, perceiver_resampler_attention_head_dim=64)
    return kw


def _sam2_processor(video: bool, size: int = 256):
    from transformers import Sam2ImageProcessor, Sam2Processor

    ip = Sam2ImageProcessor(size={"height": size, "width": size}, mask_size={"height": size // 4,
                                                                             "width": size // 4})
    if not video:
        return Sam2Processor(image_processor=ip, target_size=size)
    from transformers import Sam2VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    vp = Sam2VideoVideoProcessor(size={"height": size, "width": size})
    return Sam2VideoProcessor(image_processor=ip, video_processor=vp, target_size=size)


def _clip_tokenizer(path: Path):
    """A tiny CLIP BPE tokenizer: byte-level letters, a few merges, CLIP's special tokens."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {}
    for c in letters:
        vocab[c] = len(vocab)
    for c in letters:
        vocab[c + "</w>"] = len(vocab)
    merges = ["s c", "sc h", "o o", "b u", "bu s</w>", "t r", "c k</w>", "c a", "e r</w>"]
    for m in merges:
        a, b = m.split()
        vocab.setdefault(a + b, len(vocab))
    for tok in ("<|startoftext|>", "<|endoftext|>"):
        vocab[tok] = len(vocab)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt"),
                        model_max_length=32, pad_token="<|endoftext|>")
    return tok, vocab


def _sam3_video_config(vocab: dict):
    from transformers import Sam3VideoConfig

    vit = dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, image_size=224, patch_size=14, window_size=8, global_attn_indexes=[1],
               pretrain_image_size=224)
    vision = dict(model_type="sam3_vision_model", backbone_config=vit, fpn_hidden_size=VIDEO_DIM,
                  backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]])
    text = dict(model_type="clip_text_model", vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"], hidden_size=32,
                intermediate_size=64, projection_dim=32, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=32)
    small = dict(hidden_size=VIDEO_DIM, num_layers=1, num_attention_heads=2, intermediate_size=64)
    detector = dict(vision_config=vision, text_config=text, geometry_encoder_config=small,
                    detr_encoder_config=small, detr_decoder_config=dict(small, num_queries=12),
                    mask_decoder_config=dict(hidden_size=VIDEO_DIM, num_upsampling_stages=3, num_attention_heads=2))
    prompt, decoder = _sam2_heads(VIDEO_DIM)
    prompt.update(image_size=224, patch_size=14)
    tracker = dict(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder,
                   **_video_kwargs())
    tracker.update(image_size=224)
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker, low_res_mask_size=56,
                           hotstart_delay=0, recondition_every_nth_frame=0, score_threshold_detection=0.0,
                           new_det_thresh=0.0)


def build(family: str, path: Path, seed: int = 0) -> Path:
    """Write a tiny random ``family`` model (+ processor) to ``path``; returns ``path``."""
    import torch
    import transformers as T

    torch.manual_seed(seed)
    path = Path(path)
    if family in ("sam", "sam_hq"):
        cfg = _sam_configs(family == "sam_hq")
        model = (T.SamHQModel if family == "sam_hq" else T.SamModel)(cfg)
        proc = _sam_processor()
        if family == "sam_hq":
            proc = T.SamHQProcessor(image_processor=proc.image_processor)
    elif family in ("sam2", "sam2_video"):
        prompt, decoder = _sam2_heads(VIDEO_DIM if family == "sam2_video" else 32)
        if family == "sam2":
            model = T.Sam2Model(T.Sam2Config(vision_config=_hiera_vision(), prompt_encoder_config=prompt,
                                             mask_decoder_config=decoder))
        else:
            model = T.Sam2VideoModel(T.Sam2VideoConfig(vision_config=_hiera_vision(VIDEO_DIM),
                                                       prompt_encoder_config=prompt,
                                                       mask_decoder_config=decoder, **_video_kwargs()))
        proc = _sam2_processor(family == "sam2_video")
    elif family in ("edgetam", "edgetam_video"):
        prompt, decoder = _sam2_heads(VIDEO_DIM if family == "edgetam_video" else 32)
        if family == "edgetam":
            model = T.EdgeTamModel(T.EdgeTamConfig(vision_config=_repvit_vision(), prompt_encoder_config=prompt,
                                                   mask_decoder_config=decoder))
        else:
            model = T.EdgeTamVideoModel(T.EdgeTamVideoConfig(vision_config=_repvit_vision(VIDEO_DIM),
                                                             prompt_encoder_config=prompt,
                                                             mask_decoder_config=decoder,
                                                             **_video_kwargs(edgetam=True)))
        proc = _sam2_processor(family == "edgetam_video")
    elif family == "sam3_video":
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            tok, vocab = _clip_tokenizer(Path(d))
        model = T.Sam3VideoModel(_sam3_video_config(vocab))
        ip = T.Sam3ImageProcessor(size={"height": 224, "width": 224})
        proc = T.Sam3Processor(image_processor=ip, tokenizer=tok, target_size=224)
    else:
        raise ValueError(family)
    _perturb(model, seed)
    model.eval().save_pretrained(path)
    proc.save_pretrained(path)
    if family == "sam3_video":
        _hub_layout(path)
    return path


def _hub_layout(path: Path) -> None:
    """transformers 5.24 saves ``Sam3VideoModel``'s tracker under a doubled prefix
    (``tracker_model.tracker_model.``) that ``Sam3TrackerModel`` cannot load; the hub's
    ``facebook/sam3`` has one ``tracker_model.`` prefix, which every SAM 3 class loads."""
    from safetensors.numpy import load_file, save_file

    f = path / "model.safetensors"
    d = load_file(str(f))
    save_file({k.replace("tracker_model.tracker_model.", "tracker_model."): v for k, v in d.items()}, str(f),
              metadata={"format": "pt"})


def image(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A small RGB test image with a few flat shapes (uint8, (h, w, 3))."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 90, np.uint8)
    img[10:50, 20:70] = (230, 200, 40)
    img[55:90, 80:120] = (40, 90, 220)
    img += rng.integers(0, 12, img.shape, dtype=np.uint8)
    return img


# ----------------------------------------------------------------------------- fixtures
class ModelDirs:
    """Tiny models built on first use, once per test session."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, Path] = {}

    def __call__(self, family: str) -> Path:
        if family not in self._built:
            self._built[family] = build(family, self.root / family)
        return self._built[family]


def model_dirs_fixture():
    import pytest

    @pytest.fixture(scope="session")
    def model_dirs(tmp_path_factory) -> ModelDirs:
        return ModelDirs(tmp_path_factory.mktemp("sam_family"))

    return model_dirs


# ----------------------------------------------------------------------------- transformers' own calls
IMAGE_CLASSES = {"sam": "SamModel", "sam_hq": "SamHQModel", "sam2": "Sam2Model", "sam2_video": "Sam2Model",
                 "edgetam": "EdgeTamModel", "edgetam_video": "EdgeTamModel", "sam3_video": "Sam3TrackerModel"}


_REFERENCE: dict = {}


def _reference_model(family: str, path: str):
    import transformers as T

    if (family, path) not in _REFERENCE:
        model = getattr(T, IMAGE_CLASSES[family]).from_pretrained(path).eval()
        ip = T.AutoImageProcessor.from_pretrained(path)
        if family in ("sam", "sam_hq"):
            proc = T.SamProcessor(image_processor=ip)
        elif family == "sam3_video":
            proc = T.Sam3TrackerProcessor(image_processor=ip)
        else:
            proc = T.Sam2Processor(image_processor=ip)
        _REFERENCE[(family, path)] = (model, proc)
    return _REFERENCE[(family, path)]


def reference_masks(family: str, path: Path, img: np.ndarray, *, points=None, labels=None, box=None,
                    mask_logits=None, multimask: bool = True):
    """transformers' processor + model + ``post_process_masks`` for one prompt:
    (masks (M, H, W) bool, iou (M,))."""
    import torch

    model, proc = _reference_model(family, str(path))
    kw = {}
    if points is not None:
        kw.update(input_points=[[[list(map(float, p)) for p in points]]], input_labels=[[list(labels)]])
    if box is not None:
        kw["input_boxes"] = [[list(map(float, box))]]
    inputs = proc(images=img, return_tensors="pt", **kw)
    call = {k: v for k, v in inputs.items() if k not in ("original_sizes", "reshaped_input_sizes")}
    if mask_logits is not None:
        call["input_masks"] = torch.from_numpy(np.asarray(mask_logits, np.float32))[None, None]
    with torch.no_grad():
        out = model(**call, multimask_output=multimask)
    extra = [inputs["reshaped_input_sizes"]] if "reshaped_input_sizes" in inputs else []
    masks = proc.post_process_masks(out.pred_masks, inputs["original_sizes"], *extra)[0][0]
    return masks.numpy().astype(bool), out.iou_scores[0, 0].numpy()


def rle_mask(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    return mask_utils.decode({"size": rle["size"],
                              "counts": counts.encode() if isinstance(counts, str) else counts}).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def engine(path: Path, **options):
    from visiontool.models.registry import load_segmenter

    options.setdefault("quiet", True)
    return load_segmenter(str(path), "cpu", "float32", **options)


def run_cli(args: list, input: str | None = None):
    from typer.testing import CliRunner

    from visiontool.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def records(stdout: str) -> list[dict]:
    text = stdout.strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def build_grounding_dino(path: Path, seed: int = 0) -> Path:
    """A tiny random Grounding DINO (Swin + BERT, d_model 32) with a word-piece tokenizer
    written here, saved like a hub checkpoint."""
    import tempfile

    import torch
    import transformers as T

    torch.manual_seed(seed)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "bus", "truck", "yellow", "school", "person"]
    with tempfile.TemporaryDirectory() as d:
        vocab = Path(d) / "vocab.txt"
        vocab.write_text("\n".join(words) + "\n")
        tok = T.BertTokenizer(vocab_file=str(vocab))
    backbone = T.SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, image_size=64,
                            out_features=["stage2", "stage3", "stage4"])
    text = T.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    cfg = T.GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                                decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                                encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, num_feature_levels=4,
                                encoder_n_points=2, decoder_n_points=2, max_text_len=32)
    model = T.GroundingDinoForObjectDetection(cfg).eval()
    ip = T.GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    model.save_pretrained(path)
    T.GroundingDinoProcessor(image_processor=ip, tokenizer=tok).save_pretrained(path)
    return path
