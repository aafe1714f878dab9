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
