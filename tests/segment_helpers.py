"""Shared pieces for the segment tests: a tiny SAM checkpoint, a loopback HTTP server, CLI helpers.

The tiny SAM is assembled from ``segment_anything.modeling`` (ViT encoder: width 32, depth 2,
2 heads, global attention in block 1; prompt/decoder width 64) with random but deterministic
weights, saved as a ``.pth`` state dict like the official files.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_user_error  # noqa: F401  (re-exported for the segment tests)

PROMPT_DIM = 64


def build_tiny_sam(seed: int = 0):
    import torch
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)

    torch.manual_seed(seed)
    enc = ImageEncoderViT(depth=2, embed_dim=32, img_size=1024, mlp_ratio=4, num_heads=2, patch_size=16,
                          qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,), window_size=14,
                          out_chans=PROMPT_DIM, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    pe = PromptEncoder(embed_dim=PROMPT_DIM, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                       mask_in_chans=16)
    md = MaskDecoder(num_multimask_outputs=3,
                     transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=128, num_heads=8),
                     transformer_dim=PROMPT_DIM, iou_head_depth=3, iou_head_hidden_dim=64)
    sam = Sam(enc, pe, md).eval()
    with torch.no_grad():  # make norms and biases non-trivial so the tests exercise them
        for name, p in sam.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
            elif "rel_pos" in name:
                p.normal_(0, 0.02)
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[2].weight.mul_(10)
    return sam


def save_tiny_sam(path: Path, seed: int = 0) -> Path:
    import torch

    torch.save(build_tiny_sam(seed).state_dict(), path)
    return path


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_tiny_sam(tmp_path_factory.mktemp("sam") / "sam_tiny.pth")


@pytest.fixture(scope="session")
def tiny_ckpt_b(tmp_path_factory) -> Path:
    """A second tiny checkpoint with other weights (a different identity)."""
    return save_tiny_sam(tmp_path_factory.mktemp("sam_b") / "sam_tiny.pth", seed=1)


def sam_engine(ckpt, **options):
    """The official-SAM adapter for a checkpoint, on the CPU in float32 (as the CLI builds it)."""
    from visiontool.models.registry import load_segmenter

    options.setdefault("quiet", True)
    return load_segmenter(str(ckpt), "cpu", "float32", **options)


def sam_predictor_reference(ckpt, image: Path):
    """segment_anything's own ``SamPredictor`` on the same weights, its image set, next to
    visiontool's adapter: ``(predictor, adapter, rgb)`` for equivalence tests."""
    import torch
    from segment_anything.predictor import SamPredictor

    from visiontool.io.images import load_image
    from visiontool.models import sam as sam_models

    with torch.no_grad():
        sam = sam_models.build_sam(sam_models.load_state_dict(ckpt))
    rgb = np.asarray(load_image(str(image)))
    pred = SamPredictor(sam)
    pred.set_image(rgb)
    return pred, sam_engine(ckpt, use_cache=False), rgb


@pytest.fixture
def count_encodes(monkeypatch):
    """The names of the images SAM's encoder runs on during a test (a cache hit adds none)."""
    from visiontool.models.sam_official import SamOfficial

    calls = []
    real = SamOfficial.encode

    def spy(self, rgb, name="image"):
        calls.append(name)
        return real(self, rgb, name)

    monkeypatch.setattr(SamOfficial, "encode", spy)
    return calls


# ----------------------------------------------------------------------------- HTTP
class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802
        spec = self.routes.get(self.path)
        if spec is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body, mode = spec
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":  # promise everything, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@contextmanager
def loopback_server(routes: dict[str, tuple[bytes, str]]):
    """Serve ``{"/path": (bytes, "ok"|"truncate")}`` on 127.0.0.1; yields the base URL."""
    handler = type("H", (_Handler,), {"routes": routes})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()


# ----------------------------------------------------------------------------- CLI
def run_cli(args: list[str], input: str | None = None):
    from typer.testing import CliRunner

    from visiontool.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def records(stdout: str) -> list[dict]:
    text = stdout.strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def decode(rle: dict) -> np.ndarray:
    """pycocotools' own decoder on a record's RLE (string counts)."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})


# ----------------------------------------------------------------------------- a SAM that finds blobs
BLOB_SCENE_SIZE = (320, 214)  # W, H
BLOBS = [  # (x, y, radius, RGB, group): group 0 red, 1 green, 2 blue
    (50, 45, 18, (220, 40, 40), 0), (110, 62, 15, (220, 40, 40), 0), (255, 50, 22, (40, 190, 60), 1),
    (245, 165, 20, (40, 190, 60), 1), (70, 165, 22, (40, 60, 220), 2), (160, 110, 14, (40, 60, 220), 2),
]


def blob_scene() -> tuple[np.ndarray, np.ndarray]:
    """A grey (H, W, 3) uint8 picture with coloured discs, and its (H, W) group map (255 = none)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", BLOB_SCENE_SIZE, (120, 120, 120))
    lab = Image.new("L", BLOB_SCENE_SIZE, 255)
    draw, draw_lab = ImageDraw.Draw(im), ImageDraw.Draw(lab)
    for x, y, r, colour, group in BLOBS:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        draw_lab.ellipse([x - r, y - r, x + r, y + r], fill=group)
    return np.asarray(im), np.asarray(lab)


def build_blob_sam(token_groups=((0, 1, 2), (2,), (0,), (1,)), token_iou=(0.5, 0.95, 0.90, 0.84)):
    """The tiny SAM rewired so that its masks are regions of the blob scene, not noise.

    A random tiny SAM gives every prompt the same near-threshold, image-wide texture, so an
    automatic-mask comparison would compare one degenerate mask. Here the encoder keeps only
    local colour (residual branches off, patch embedding = random mixes of the mean colour),
    the mask decoder's image tokens are left unchanged by the prompt tokens, and the output
    upscaling carries, for each mask token, a linear read-out of the embedding fitted (least
    squares) to that token's blob groups: mask token t is "the blobs of token_groups[t]".
    The prompt tokens still reach the IoU head (whose output is centred on token_iou) and,
    faintly, the hypernetworks, so scores differ from point to point.
    """
    import torch
    from PIL import Image
    from segment_anything.predictor import SamPredictor

    sam = build_tiny_sam()
    md = sam.mask_decoder
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        enc = sam.image_encoder
        for block in enc.blocks:
            for lin in (block.attn.proj, block.mlp.lin2):
                lin.weight.zero_()
                lin.bias.zero_()
        mix = torch.randn(enc.patch_embed.proj.weight.shape[0], 3, generator=gen) / 256.0
        enc.patch_embed.proj.weight.copy_(mix[:, :, None, None].expand_as(enc.patch_embed.proj.weight))
        for layer in md.transformer.layers:
            layer.cross_attn_image_to_token.out_proj.weight.zero_()
            layer.cross_attn_image_to_token.out_proj.bias.zero_()
    # the image side of the decoder, as output_upscaling receives it, on the scene itself
    rgb, groups = blob_scene()
    seen = {}
    hook = md.output_upscaling.register_forward_pre_hook(lambda mod, args: seen.__setitem__("src", args[0]))
    pred = SamPredictor(sam)
    pred.set_image(rgb)
    pred.predict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([1]), multimask_output=True)
    hook.remove()
    src = seen["src"][0].numpy()  # (C, g, g)
    c = src.shape[0]
    nh, nw = pred.input_size
    rows, cols = -(-nh // 16), -(-nw // 16)
    x = np.concatenate([src[:, :rows, :cols].reshape(c, -1).T, np.ones((rows * cols, 1))], 1)
    cells = np.asarray(Image.fromarray(groups).resize((cols, rows), Image.NEAREST)).reshape(-1)
    up0, norm, up1 = md.output_upscaling[0], md.output_upscaling[1], md.output_upscaling[3]
    mid = up0.weight.shape[1]
    big = 1000.0  # a constant channel that dominates LayerNorm2d's statistics
    mu, sd = big / mid, (big * big / mid - (big / mid) ** 2) ** 0.5
    with torch.no_grad():
        for p in (up0.weight, up0.bias, norm.weight, norm.bias, up1.weight, up1.bias):
            p.zero_()
        for t, wanted in enumerate(token_groups):
            target = np.isin(cells, wanted)
            weight = np.where(target, 0.5 / target.mean(), 0.5 / (1 - target.mean())) ** 0.5
            a, y = x * weight[:, None], np.where(target, 1.0, -1.0) * weight
            gram = a.T @ a
            # ridge: plain least squares gives coefficients ~1e6 that turn float32 rounding into
            # visible differences between two correct implementations
            coef = np.linalg.solve(gram + 0.1 * np.trace(gram) / len(gram) * np.eye(len(gram)), a.T @ y) * 20
            w = torch.from_numpy(coef[:c]).float()[:, None, None]
            up0.weight[:, t], up0.bias[t] = w, float(coef[c])
            up0.weight[:, t + 4], up0.bias[t + 4] = -w, -float(coef[c])  # the mean stays big / mid
            norm.weight[t], norm.bias[t] = sd, mu  # undo the normalisation: channel t ~ read-out t
            up1.weight[t, t] = 1.0
            last = md.output_hypernetworks_mlps[t].layers[2]
            last.weight.mul_(0.01)
            bias = torch.zeros_like(last.bias)
            bias[t], bias[-1] = 1.0, -3.0 / 0.673  # logit = read-out - 3 (0.673 = gelu(gelu(1)))
            last.bias.copy_(bias)
        up0.bias[mid - 1] = big
        norm.bias[mid - 1] = 1.0
        up1.weight[mid - 1, -1] = 1.0
        head = md.iou_prediction_head.layers[-1]
        head.weight.mul_(0.05)
        head.bias.copy_(torch.tensor(token_iou, dtype=head.bias.dtype))
    return sam.eval()
