"""Benchmark: visiontool detect vs transformers pipeline("object-detection"), same run, same photos.

Builds the DETR-R50 architecture (``DetrConfig()`` defaults) with random weights, saves it
locally (no hub), then times both on the four photos of ../shared/data/images, interleaved
round by round, and reports images/s, the ratio and the largest box difference between
the two (pipeline boxes taken as floats from its own post-processing, before it rounds
them to ints). Then the same for ``--dtype bfloat16`` (skipped, with the reason, on CPUs
without native bfloat16, where autocast is emulated and far slower).

    python benchmarks/detect.py [--rounds 3] [--force-bf16]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "data" / "images"
sys.path.insert(0, str(REPO / "src"))


def build_model(path: Path) -> None:
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

    torch.manual_seed(0)
    DetrForObjectDetection(DetrConfig()).eval().save_pretrained(path)
    DetrImageProcessor().save_pretrained(path)


def max_box_diff(ref: list[dict], ours) -> float:
    """Largest |coordinate difference| in px, pairing each reference box with ours by query score."""
    worst = 0.0
    for r, o in zip(ref, ours):
        ob, os_ = o.detections.xyxy, o.detections.scores
        for box, score in zip(r["boxes"], r["scores"]):
            j = int(np.argmin(np.abs(os_ - score) + np.abs(ob - box).max(axis=1)))
            worst = max(worst, float(np.abs(ob[j] - box).max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--force-bf16", action="store_true")
    args = ap.parse_args()

    import torch
    from PIL import Image
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from visiontool.device import Precision, cpu_has_native_bf16
    from visiontool.io.sources import Item
    from visiontool.models.hf_detection import HFDetector
    from visiontool.models.protocol import DetectOptions
    from visiontool.services.detect import iter_detect
    from visiontool.types import Timings

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    paths = sorted(IMAGES.glob("*.jpg"))
    images = [Image.open(p).convert("RGB") for p in paths]
    print(f"photos: {', '.join(p.name for p in paths)}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, cpu capability {torch.backends.cpu.get_cpu_capability()}")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "detr-r50-random"
        build_model(model_dir)
        pipe = pipeline("object-detection", model=str(model_dir), device="cpu")
        captured: list[dict] = []
        original_post = pipe.image_processor.post_process_object_detection

        def capture(*a, **k):
            out = original_post(*a, **k)
            captured.extend({"boxes": o["boxes"].double().numpy(), "scores": o["scores"].double().numpy()}
                            for o in out)
            return out

        pipe.image_processor.post_process_object_detection = capture
        detectors = {name: HFDetector.load(str(model_dir), "cpu", Precision(name, "cpu"))
                     for name in ("float32", "bfloat16")}
        items = [Item(str(p), im, i) for i, (p, im) in enumerate(zip(paths, images), 1)]

        def run_pipeline():
            captured.clear()
            for im in images:
                pipe(im, threshold=0.0)
            return list(captured)

        def run_ours(precision: str):
            return [r for r, _ in iter_detect(items, detectors[precision], DetectOptions(threshold=0.0),
                                              timings=Timings())]

        fp32 = "float32"
        run_pipeline(), run_ours(fp32)  # warm-up (oneDNN primitive caches, allocator)
        t_pipe, t_ours = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ref = run_pipeline()
            t_pipe.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ours = run_ours(fp32)
            t_ours.append(time.perf_counter() - t0)
        diff = max_box_diff(ref, ours)
        p, o = statistics.median(t_pipe), statistics.median(t_ours)
        n = len(images)
        print(f"\n{'run':<34}{'s / 4 photos':>14}{'images/s':>10}{'vs pipeline':>13}")
        print(f"{'transformers pipeline (float32)':<34}{p:>14.2f}{n / p:>10.2f}{1.0:>12.2f}x")
        print(f"{'visiontool detect (float32)':<34}{o:>14.2f}{n / o:>10.2f}{p / o:>12.2f}x")
        print(f"largest box difference vs pipeline: {diff:.5f} px   (rounds: pipeline "
              f"{', '.join(f'{t:.2f}' for t in t_pipe)}; visiontool {', '.join(f'{t:.2f}' for t in t_ours)})")
        print(f"target >= 1.5x with boxes within 0.01 px: {'MET' if p / o >= 1.5 and diff <= 0.01 else 'NOT MET'}")

        if cpu_has_native_bf16() or args.force_bf16:
            bf16 = "bfloat16"
            run_ours(bf16)
            t0 = time.perf_counter()
            ours16 = run_ours(bf16)
            b = time.perf_counter() - t0
            print(f"{'visiontool detect (bfloat16)':<34}{b:>14.2f}{n / b:>10.2f}{p / b:>12.2f}x   "
                  f"largest box difference {max_box_diff(ref, ours16):.2f} px")
        else:
            conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval()
            x = torch.randn(1, 256, 50, 75)
            with torch.inference_mode():
                conv(x)
                t0 = time.perf_counter()
                conv(x)
                c32 = time.perf_counter() - t0
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    conv(x)
                    t0 = time.perf_counter()
                    conv(x)
                    c16 = time.perf_counter() - t0
            print(f"bfloat16: skipped — this CPU has no AVX512-BF16/AMX, so autocast is emulated: one 3x3 "
                  f"256-channel conv takes {c16 * 1000:.0f} ms in bfloat16 vs {c32 * 1000:.1f} ms in float32 "
                  f"({c16 / c32:.0f}x slower). Run with --force-bf16 to time it anyway.")


if __name__ == "__main__":
    main()
