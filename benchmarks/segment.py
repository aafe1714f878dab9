"""Benchmark `visiontool segment` with the real vit_b architecture and random weights.

Three measurements, each against its peer in the same run (the machine is shared, so only
ratios within one run mean much):

1. **Cached vs cold, end to end as processes.** The same command line
   (``visiontool segment truck.jpg --checkpoint vit_b.pth --point X,Y --format json``) with a
   new prompt: cold (empty cache: checkpoint hashed, encoder built and run) vs a hit (the
   embedding and decoder weights come from the cache; torch is not even imported).
   Also a miss with ``--no-cache`` (the encoder, but no hashing / cache writing).
2. **64 boxes on truck.jpg** (seeded, 40-600 px): ``SamPredictor.predict_torch`` (segment-
   anything's batched path, masks upsampled to 1800×1200) vs visiontool's decoder + RLE
   output, on the same image embedding; every mask's IoU with predict_torch's is checked.
3. **Encoder time at float32 and bfloat16** (CPU autocast) and the relative error of the
   bfloat16 embedding (‖e_bf16 − e_fp32‖ / ‖e_fp32‖).

Usage::

    .venv/bin/python benchmarks/segment.py            # everything (~5 min on 2 busy cores)
    .venv/bin/python benchmarks/segment.py --skip-process --reps 1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
IMAGES = (REPO.parent / "shared" / "data" / "images").resolve()


def make_vit_b(path: Path) -> Path:
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    torch.save(sam.state_dict(), path)
    return path


def run_cli(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    p = subprocess.run([PY, "-m", "visiontool", "segment", *args], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"visiontool failed: {p.stderr}")
    return dt


def bench_process(ckpt: Path, image: Path, tmp: Path, reps: int) -> dict:
    env = dict(os.environ, VISIONTOOL_CACHE=str(tmp / "vtcache"), PYTHONWARNINGS="ignore")
    base = [str(image), "--checkpoint", str(ckpt), "--format", "json", "-q", "--device", "cpu"]
    cold = run_cli(base + ["--point", "600,400"], env)
    hits = [run_cli(base + ["--point", f"{700 + 10 * i},{450 + 5 * i}"], env) for i in range(max(reps, 3))]
    miss = [run_cli(base + ["--point", "650,420", "--no-cache"], env) for _ in range(max(1, reps - 1))]
    hit = min(hits)
    return {"cold_s": cold, "hit_s": hit, "hits_s": hits, "no_cache_s": min(miss),
            "cold_over_hit": cold / hit, "no_cache_over_hit": min(miss) / hit}


def _boxes(h: int, w: int, n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bw, bh = rng.uniform(40, 600, n), rng.uniform(40, 600, n)
    x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return np.stack([x1, y1, x1 + bw, y1 + bh], 1).round(1)


def bench_boxes_and_encoder(ckpt: Path, image: Path, reps: int, bf16: bool = True) -> dict:
    import torch

    from visiontool.io.images import load_image
    from visiontool.models import sam as sam_models
    from visiontool.models.registry import load_segmenter
    from visiontool.types import Prompt

    rgb = np.asarray(load_image(str(image)))
    h, w = rgb.shape[:2]
    engine = load_segmenter(str(ckpt), "cpu", "float32", use_cache=False, quiet=True)

    # (3) encoder: float32 vs bfloat16 autocast
    t = time.perf_counter()
    emb32 = engine.encode(rgb)
    enc32 = time.perf_counter() - t
    enc16 = rel = float("nan")
    if bf16:
        engine.precision = "bfloat16"
        t = time.perf_counter()
        emb16 = engine.encode(rgb)
        enc16 = time.perf_counter() - t
        engine.precision = "float32"
        rel = float(np.linalg.norm(emb16 - emb32) / np.linalg.norm(emb32))

    # (2) 64 boxes: SamPredictor.predict_torch vs ours, same embedding
    from segment_anything.predictor import SamPredictor

    sam = sam_models.build_sam(sam_models.load_state_dict(ckpt))
    pred = SamPredictor(sam)
    pred.features = torch.from_numpy(emb32)[None]
    pred.original_size = (h, w)
    pred.input_size = tuple(engine.geometry(h, w)[:2])
    pred.is_image_set = True
    boxes = _boxes(h, w)
    tb = torch.as_tensor(pred.transform.apply_boxes(boxes, (h, w)), dtype=torch.float)
    prompts = [Prompt(box=b) for b in boxes]
    t_ref, t_ours = [], []
    ref = ours = None
    for _ in range(reps):
        t = time.perf_counter()
        with torch.no_grad():
            ref, _, _ = pred.predict_torch(None, None, tb, None, multimask_output=False)
        t_ref.append(time.perf_counter() - t)
        t = time.perf_counter()
        ours = engine.masks_from_embedding(emb32, prompts, (h, w))
        t_ours.append(time.perf_counter() - t)
    ious = []
    for i in range(len(ours)):
        a = ours.mask(i)
        b = ref[i, 0].numpy()
        ious.append(float((a.astype(bool) & b).sum() / max((a.astype(bool) | b).sum(), 1)))
    return {"encoder_float32_s": enc32, "encoder_bfloat16_s": enc16, "bf16_speedup": enc32 / enc16,
            "bf16_relative_error": rel,
            "predict_torch_64_boxes_s": min(t_ref), "ours_64_boxes_s": min(t_ours),
            "predict_torch_runs_s": t_ref, "ours_runs_s": t_ours,
            "boxes_speedup": min(t_ref) / min(t_ours), "min_mask_iou": min(ious),
            "mean_fg_fraction": float(np.mean(ours.areas()) / (h * w))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default=str(IMAGES / "truck.jpg"))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--skip-process", action="store_true")
    ap.add_argument("--skip-boxes", action="store_true")
    ap.add_argument("--skip-bf16", action="store_true", help="bfloat16 autocast is ~10x slower than float32 on "
                                                             "CPUs without AVX512-BF16/AMX")
    args = ap.parse_args()
    image = Path(args.image)
    out: dict = {"image": str(image), "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="vt-seg-bench-") as d:
        tmp = Path(d)
        print("building vit_b (random weights)…", file=sys.stderr, flush=True)
        ckpt = make_vit_b(tmp / "sam_vit_b_random.pth")
        if not args.skip_process:
            r = bench_process(ckpt, image, tmp, args.reps)
            out["process"] = r
            print(f"[1] end to end, same command with a new prompt: cold {r['cold_s']:.2f} s, "
                  f"--no-cache {r['no_cache_s']:.2f} s, cache hit {r['hit_s']:.2f} s "
                  f"-> cold/hit {r['cold_over_hit']:.1f}x (no-cache/hit {r['no_cache_over_hit']:.1f}x)", flush=True)
        if not args.skip_boxes:
            r = bench_boxes_and_encoder(ckpt, image, args.reps, bf16=not args.skip_bf16)
            out["boxes_encoder"] = r
            print(f"[2] 64 boxes: predict_torch {r['predict_torch_64_boxes_s']:.2f} s, visiontool "
                  f"{r['ours_64_boxes_s']:.2f} s -> {r['boxes_speedup']:.1f}x; min mask IoU {r['min_mask_iou']:.5f}",
                  flush=True)
            print(f"[3] vit_b encoder: float32 {r['encoder_float32_s']:.2f} s, bfloat16 "
                  f"{r['encoder_bfloat16_s']:.2f} s -> {r['bf16_speedup']:.2f}x; relative error "
                  f"{100 * r['bf16_relative_error']:.2f} %", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
