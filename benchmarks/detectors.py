"""Benchmark: visiontool's detector backends against each backend's own runner, same run, same photos.

Real architectures with random weights (no download), the four photos of ../shared/data/images,
interleaved rounds (native, visiontool, native, ...), medians reported:

1. torchvision Faster R-CNN R50-FPN v2 — torchvision's own eager fp32 loop
   (``model.eval(); with torch.inference_mode(): model([to_tensor(image)])`` per photo) vs
   visiontool's adapter (folded batch-norms, channels-last, the model's own transform per image).
   Target: >= 1.3x, boxes within 0.01 px.
2. Ultralytics YOLOv8n (``yolov8n.yaml``) — ``YOLO.predict(image)`` per photo vs visiontool
   (which calls the same ``predict``). Target: >= 0.95x (no more than 5 % overhead), identical boxes.
3. Grounding DINO, tiny architecture (``GroundingDinoConfig()``: Swin-T + BERT-base) —
   transformers' ``zero-shot-object-detection`` pipeline vs visiontool ``--text``:
   a) the same prompt ("cat. dog. person.", given to the pipeline as one label): boxes
      comparable, target >= 1.3x within 0.01 px;
   b) three phrases as a user passes them: the pipeline runs one forward per label, visiontool
      one forward for all (boxes differ by design: three prompts vs one).
4. One ``compare`` over six architectures (Faster R-CNN, RetinaNet, FCOS, YOLOv8n, DETR-R50,
   RT-DETR-R50) on the photos: the detector table. Random weights: the AP columns mean nothing,
   the speed columns are this machine's.

The random heads are drawn as in the tests (tests/detector_helpers.py: batch-norms calibrated
on the photos, class logits spread) so scores are spread out and boxes can be compared.

    python benchmarks/detectors.py [--rounds 3] [--only torchvision,ultralytics,grounding,compare]
"""
from __future__ import annotations

import argparse
import json
import os
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
sys.path.insert(0, str(REPO / "tests"))  # the random-weight builders the tests use
PARTS = ("torchvision", "ultralytics", "grounding", "compare")


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def max_box_diff(ref: list[tuple[np.ndarray, np.ndarray]], ours) -> tuple[float, int]:
    """Largest |coordinate difference| (px) pairing each reference box with ours of the nearest
    score and box; and how many reference boxes found no partner within 1e-3 in score."""
    worst, missing = 0.0, 0
    for (boxes, scores), det in zip(ref, ours):
        if len(boxes) != len(det):
            missing += abs(len(boxes) - len(det))
        for b, s in zip(boxes, scores):
            cand = np.flatnonzero(np.abs(det.scores - s) <= 1e-3)
            if not len(cand):
                missing += 1
                continue
            worst = max(worst, float(np.abs(det.xyxy[cand] - b).max(axis=1).min()))
    return worst, missing


def interleave(rounds: int, native, ours) -> tuple[list[float], list[float], object, object]:
    native(), ours()  # warm-up: oneDNN primitive caches, allocator, lazy set-up
    tn, to = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        ref = native()
        tn.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = ours()
        to.append(time.perf_counter() - t0)
    return tn, to, ref, got


def report(title: str, n: int, tn, to, diff: float, missing: int, target: float, tol: float, native_name: str):
    pn, po = statistics.median(tn), statistics.median(to)
    print(f"\n{title}")
    print(f"  {'run':<44}{'s / photos':>11}{'images/s':>10}{'ratio':>8}")
    print(f"  {native_name:<44}{pn:>11.2f}{n / pn:>10.2f}{1.0:>7.2f}x")
    print(f"  {'visiontool':<44}{po:>11.2f}{n / po:>10.2f}{pn / po:>7.2f}x")
    print(f"  largest box difference {diff:.5f} px, unmatched boxes {missing}; rounds native "
          f"{', '.join(f'{t:.2f}' for t in tn)} / visiontool {', '.join(f'{t:.2f}' for t in to)}")
    met = pn / po >= target and diff <= tol and missing == 0
    print(f"  target >= {target}x with boxes within {tol} px: {'MET' if met else 'NOT MET'}")
    return pn / po


# ----------------------------------------------------------------------------- 1. torchvision
def bench_torchvision(images, tmp: Path, rounds: int):
    import torch
    from torchvision.transforms.functional import to_tensor

    from detector_helpers import save_torchvision
    from visiontool.models.protocol import DetectOptions
    from visiontool.models.registry import load_detector

    name = "fasterrcnn_resnet50_fpn_v2"
    file, model = save_torchvision(name, tmp / f"{name}.pth", images=images)
    model.eval()
    det = load_detector(f"torchvision:{name}:{file}", "cpu", "float32")
    opts = DetectOptions(threshold=0.05, max_det=100)  # the model's own defaults

    def native():
        out = []
        with torch.inference_mode():
            for im in images:
                r = model([to_tensor(im)])[0]
                out.append((r["boxes"].double().numpy(), r["scores"].double().numpy()))
        return out

    def ours():
        return [det.predict([im], opts)[0] for im in images]

    tn, to, ref, got = interleave(rounds, native, ours)
    diff, missing = max_box_diff(ref, got)
    print(f"  (folded batch-norms: {det.info.extra.get('folded_batchnorms')}, channels-last: "
          f"{det.info.extra.get('channels_last')}, {sum(len(d) for d in got)} boxes)")
    return report("1. torchvision Faster R-CNN R50-FPN v2 (fp32, CPU)", len(images), tn, to, diff, missing, 1.3, 0.01,
                  "torchvision eager loop (inference_mode)")


# ----------------------------------------------------------------------------- 2. Ultralytics
def bench_ultralytics(images, tmp: Path, rounds: int):
    from detector_helpers import build_yolo
    from visiontool.models.protocol import DetectOptions
    from visiontool.models.registry import load_detector

    path = build_yolo("yolov8n.yaml", tmp / "yolov8n-random.pt", images)
    from ultralytics import YOLO

    ref_model = YOLO(str(path))
    det = load_detector(f"ultralytics:{path}", "cpu", "float32")
    opts = DetectOptions(threshold=0.25, max_det=300)  # Ultralytics' predict defaults

    import torch

    threads = torch.get_num_threads()

    def native():
        # Ultralytics' first predict sets torch's threads to min(8, cores - 1) and leaves them so
        # (visiontool's adapter keeps the caller's): both runners at torch's own count, and the
        # parts after this one too
        torch.set_num_threads(threads)
        out = []
        for im in images:
            b = ref_model.predict(im, verbose=False)[0].boxes
            out.append((b.xyxy.double().numpy(), b.conf.double().numpy()))
        return out

    def ours():
        return [det.predict([im], opts)[0] for im in images]

    tn, to, ref, got = interleave(rounds, native, ours)
    torch.set_num_threads(threads)
    diff, missing = max_box_diff(ref, got)
    print(f"  ({sum(len(d) for d in got)} boxes)")
    return report("2. Ultralytics YOLOv8n (fp32, CPU)", len(images), tn, to, diff, missing, 0.95, 0.0,
                  "Ultralytics YOLO.predict")


# ----------------------------------------------------------------------------- 3. Grounding DINO
def build_grounding_dino(path: Path) -> Path:
    import torch
    from transformers import (AutoModelForZeroShotObjectDetection, GroundingDinoConfig, GroundingDinoImageProcessor,
                              GroundingDinoProcessor)

    from hf_tiny_text import bert_tokenizer

    torch.manual_seed(0)
    tok = bert_tokenizer(path / "tok")  # a few words; the ids fit BERT-base's embedding table
    model = AutoModelForZeroShotObjectDetection.from_config(GroundingDinoConfig()).eval()
    model.save_pretrained(path)
    GroundingDinoProcessor(GroundingDinoImageProcessor(), tok).save_pretrained(path)
    return path


def bench_grounding(images, tmp: Path, rounds: int):
    from transformers import pipeline

    from visiontool.models.protocol import DetectOptions
    from visiontool.models.registry import load_detector

    path = build_grounding_dino(tmp / "grounding-dino-tiny-random")
    pipe = pipeline("zero-shot-object-detection", model=str(path), device="cpu")
    captured: list = []
    original = pipe.image_processor.post_process_object_detection

    def capture(*a, **k):  # the pipeline rounds boxes to ints: keep its floats
        out = original(*a, **k)
        captured.extend(out)
        return out

    pipe.image_processor.post_process_object_detection = capture
    det = load_detector(str(path), "cpu", "float32", text=True)
    phrases = ("cat", "dog", "person")
    opts = DetectOptions(threshold=0.1, max_det=None, text=phrases, text_threshold=0.0)  # the pipeline's 0.1
    joint = ". ".join(phrases) + "."

    def native(labels):
        def run():
            out = []
            for im in images:
                captured.clear()
                pipe(im, candidate_labels=labels, threshold=0.1)
                boxes = np.concatenate([c["boxes"].double().numpy() for c in captured] + [np.zeros((0, 4))])
                scores = np.concatenate([c["scores"].double().numpy() for c in captured] + [np.zeros(0)])
                out.append((boxes, scores))
            return out
        return run

    def ours():
        return [det.predict([im], opts)[0] for im in images]

    tn, to, ref, got = interleave(rounds, native([joint]), ours)
    diff, missing = max_box_diff(ref, got)
    a = report(f"3a. Grounding DINO tiny architecture, same prompt ({joint!r} as one pipeline label)", len(images),
               tn, to, diff, missing, 1.3, 0.01, "transformers zero-shot-object-detection pipeline")
    tn, to, _, _ = interleave(rounds, native(list(phrases)), ours)
    pn, po = statistics.median(tn), statistics.median(to)
    print(f"\n3b. Grounding DINO, three phrases {list(phrases)} as a user passes them")
    print(f"  pipeline (one forward per label) {pn:.2f} s, visiontool (one prompt) {po:.2f} s: {pn / po:.2f}x "
          "(boxes differ by design: three prompts vs one)")
    return a


# ----------------------------------------------------------------------------- 4. compare
def build_compare_models(images, tmp: Path) -> list[tuple[str, str]]:
    import torch
    from transformers import (AutoModelForObjectDetection, DetrConfig, DetrImageProcessor, RTDetrConfig,
                              RTDetrImageProcessor)

    from detector_helpers import build_yolo, save_torchvision

    specs = []
    for name, label in (("fasterrcnn_resnet50_fpn", "Faster R-CNN R50-FPN"),
                        ("retinanet_resnet50_fpn", "RetinaNet R50-FPN"), ("fcos_resnet50_fpn", "FCOS R50-FPN")):
        file, _ = save_torchvision(name, tmp / f"{name}.pth", images=images)
        specs.append((label, f"torchvision:{name}:{file}"))
    specs.append(("YOLOv8n", f"ultralytics:{build_yolo('yolov8n.yaml', tmp / 'cmp-yolov8n.pt', images)}"))
    for label, cfg, proc in (("DETR-R50", DetrConfig(use_pretrained_backbone=False), DetrImageProcessor()),
                             ("RT-DETR-R50", RTDetrConfig(), RTDetrImageProcessor())):
        torch.manual_seed(0)
        d = tmp / label.lower()
        AutoModelForObjectDetection.from_config(cfg).eval().save_pretrained(d)
        proc.save_pretrained(d)
        specs.append((label, str(d)))
    return specs


def bench_compare(images, paths, tmp: Path) -> None:
    from visiontool.render.compare_tables import detector_table
    from visiontool.render.console import print_tables
    from visiontool.services.compare import compare

    specs = build_compare_models(images, tmp)
    gt = {"images": [{"id": i + 1, "file_name": p.name, "width": im.width, "height": im.height}
                     for i, (p, im) in enumerate(zip(paths, images))],
          "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 10, 100, 100], "area": 10000,
                           "iscrowd": 0} for i in range(len(paths))],
          "categories": [{"id": 1, "name": "person"}]}
    (tmp / "gt.json").write_text(json.dumps(gt))
    print(f"\n4. compare over six architectures on the {len(paths)} photos (random weights: AP means nothing; "
          f"load {load_avg()})", flush=True)
    res = compare(str(tmp / "gt.json"), models=[s for _, s in specs], names=[n for n, _ in specs],
                  images=[str(p) for p in paths], device="cpu", dtype="float32",
                  on_event=lambda m: print("  " + m, file=sys.stderr, flush=True))
    print_tables(sys.stdout, detector_table(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    args = ap.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import torch
    from PIL import Image
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    paths = sorted(IMAGES.glob("*.jpg"))
    images = [Image.open(p).convert("RGB") for p in paths]
    print(f"photos: {', '.join(f'{p.name} {im.width}x{im.height}' for p, im in zip(paths, images))}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}; load average at start {load_avg()}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / "bench"
        tmp.mkdir()
        os.environ.setdefault("VISIONTOOL_CACHE", str(Path(d) / "cache"))
        if "torchvision" in parts:
            bench_torchvision(images, tmp, args.rounds)
        if "ultralytics" in parts:
            bench_ultralytics(images, tmp, args.rounds)
        if "grounding" in parts:
            bench_grounding(images, tmp, args.rounds)
        if "compare" in parts:
            bench_compare(images, paths, tmp)
    print(f"\nload average at the end {load_avg()}")


if __name__ == "__main__":
    main()
