"""Benchmark: visiontool's --runtime openvino / onnxruntime against its torch path and the
transformers pipeline, on the real DETR-R50 architecture with random weights (no download).

1. ``shapes``: one dynamic-shape OpenVINO export against a static export compiled for the exact
   processed shape of a photo (what per-shape buckets would give), same input, median of N calls.
2. ``detect``: images/s on the four photos of ../shared/data/images, interleaved rounds
   (pipeline, torch, openvino, onnxruntime, ...), each path in a process of its own
   (:mod:`isolated`: in one shared process the runtimes' threads slowed the torch path by ~10 %),
   visiontool's paths through ``run_detect`` as the CLI runs them; medians; export time
   reported separately; boxes compared with the torch path.

3. ``detectors``: torchvision Faster R-CNN R50-FPN v2 and Ultralytics YOLOv8n, each runtime
   against the torch path and the peer's own runner / export (:mod:`runtimes_detectors`).
4. ``sam``: the segment-anything vit_b and SAM 2.1 hiera-tiny image encoders, torch fp32
   against OpenVINO and ONNX Runtime (:mod:`runtimes_sam`).
5. ``rtdetr``: as ``detect`` for RT-DETR-R50 (exported static at batch 1 and 640×640). Its
   random initialisation gives batch norms and convolutions weights ~N(0, 0.01), which makes the
   encoder's output constant and every encoder score tie (the top-k's pick is then arbitrary, in
   torch as in a runtime): those layers are initialised as torchvision does first.
6. ``deformable``: as ``detect`` for Deformable DETR R50 (``DeformableDetrConfig()``'s defaults,
   the architecture of SenseTime/deformable-detr, random weights, no download), exported once
   per processed image size (``runtimes.hf_shapes``): each size's export is timed and reported
   apart from inference (the four photos are three sizes at 800-1333 px).

7. ``owl``: open-vocabulary OWLv2 (``Owlv2Config()`` at 960 px: the ViT-B/16 architecture of
   google/owlv2-base-patch16, random weights, a character-level CLIP tokenizer
   written here) with ``--text`` of three phrases: the transformers zero-shot pipeline, the torch
   path and both runtimes (one export, the phrases as an input).

    python benchmarks/runtimes.py [--rounds 3] [--only shapes,detect,detectors,sam,rtdetr,deformable,owl]

Run it on a quiet machine; it prints ``uptime``'s load with the figures.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import isolated  # before any library changes the environment the children get

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
PHOTOS = sorted((REPO.parent / "shared" / "data" / "images").glob("*.jpg"))
if not PHOTOS:
    PHOTOS = sorted(Path("/work/shared/data/images").glob("*.jpg"))


def load() -> str:
    return open("/proc/loadavg").read().split()[:3].__repr__()


def build_detr_r50(path: Path) -> Path:
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

    cfg = DetrConfig(use_pretrained_backbone=False)
    torch.manual_seed(0)
    DetrForObjectDetection(cfg).eval().save_pretrained(path)
    DetrImageProcessor().save_pretrained(path)
    return path


def build_rtdetr_r50(path: Path) -> Path:
    import torch
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor

    torch.manual_seed(0)
    model = RTDetrForObjectDetection(RTDetrConfig()).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
            elif isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    model.save_pretrained(path)
    RTDetrImageProcessor().save_pretrained(path)
    return path


def build_deformable_r50(path: Path) -> Path:
    import torch
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, DeformableDetrImageProcessor

    torch.manual_seed(0)
    DeformableDetrForObjectDetection(DeformableDetrConfig(use_pretrained_backbone=False)).eval().save_pretrained(path)
    DeformableDetrImageProcessor().save_pretrained(path)
    return path


def export_per_shape(det, images, tag: str, runtime: str) -> None:
    """A per-shape runtime adapter: export (or open from the cache) every processed size of
    ``images`` now, each timed, so the timed rounds run cached engines only."""
    sizes = dict.fromkeys(tuple(det.processor(images=im, return_tensors="pt")["pixel_values"].shape[2:])
                          for im in images)
    for h, w in sizes:
        t0 = time.perf_counter()
        det.engine_for((int(h), int(w)))
        print(f"{tag}: {runtime} export at {h}x{w} {time.perf_counter() - t0:.1f} s", flush=True)


def bench_shapes(model_dir: Path, reps: int) -> None:
    import openvino as ov
    import torch
    from PIL import Image

    from visiontool.models import registry
    from visiontool.models.runtimes import hf_export

    det = registry.load_detector(str(model_dir), "cpu", "float32")
    pv = det.processor(images=Image.open(PHOTOS[0]).convert("RGB"), return_tensors="pt")["pixel_values"]
    x = pv.numpy()
    net = hf_export._net(det.model)
    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    compiled = {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for policy, shape in (("dynamic", [-1, 3, -1, -1]), ("static", list(pv.shape))):
            t0 = time.perf_counter()
            om = ov.convert_model(net, example_input=pv, input=[ov.PartialShape(shape)])
            compiled[policy] = core.compile_model(om, "CPU", cfg)
            print(f"shapes: {policy} export+compile {time.perf_counter() - t0:.1f} s", flush=True)
    times = {k: [] for k in compiled}
    outs = {}
    for _ in range(reps):  # interleaved
        for k, c in compiled.items():
            req = c.create_infer_request() if k not in outs else outs[k][1]
            t0 = time.perf_counter()
            r = req.infer([x])
            times[k].append(time.perf_counter() - t0)
            outs[k] = (np.array(r[c.outputs[1]]), req)
    diff = float(np.abs(outs["dynamic"][0] - outs["static"][0]).max())
    for k, v in times.items():
        print(f"shapes: {k:8s} input {tuple(pv.shape)} median {statistics.median(v) * 1000:.0f} ms "
              f"(min {min(v) * 1000:.0f}) over {reps}", flush=True)
    print(f"shapes: max |pred_boxes dynamic - static| = {diff:.2e}; load {load()}", flush=True)


def bench_detect(model_dir: Path, rounds: int, tag: str = "detect") -> None:
    """Export (timed, apart), then interleaved rounds with every path in a process of its own
    (:mod:`isolated`): the pipeline, and visiontool's ``run_detect`` -- what ``visiontool detect``
    runs, forward streams included -- with each runtime."""
    from PIL import Image

    from visiontool.models import loader, registry

    images = [Image.open(p).convert("RGB") for p in PHOTOS]
    text = tag == "owl"
    for runtime in ("torch", "openvino", "onnxruntime"):
        t0 = time.perf_counter()
        extra = {"text": True} if text else {}
        det = registry.load_detector(str(model_dir), "cpu", "float32", runtime=runtime, **extra)
        print(f"{tag}: {runtime} load (+ export on first use) {time.perf_counter() - t0:.1f} s", flush=True)
        if hasattr(det, "engine_for"):  # exported per processed size: every size now, timed apart
            export_per_shape(det, images, tag, runtime)
        del det
        loader.release()  # no live session in this process while the children run
    paths = ("pipeline", "torch", "openvino", "onnxruntime")
    time_runners({p: ("runtimes", "detect_path", [str(model_dir), p, tag]) for p in paths}, rounds, len(images), tag)


def detect_path(model_dir: str, path: str, tag: str):
    """What a benchmark child times for ``path``: the four photos through the transformers
    pipeline, or through visiontool's ``run_detect`` with ``--runtime path`` (``tag`` ``owl``:
    open-vocabulary, the phrases of :data:`OWL_TEXT`)."""
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in PHOTOS]
    text = list(OWL_TEXT) if tag == "owl" else None
    if path == "pipeline":
        from transformers import pipeline

        if text:
            zs = pipeline("zero-shot-object-detection", model=model_dir, device="cpu")
            return lambda: [zs(im, candidate_labels=text, threshold=0.1) for im in images]
        pipe = pipeline("object-detection", model=model_dir, device="cpu")
        return lambda: [pipe(im, threshold=0.5) for im in images]
    from visiontool.services.detect import run_detect

    def run():
        done = run_detect(images, model_dir, threshold=0.0, text=text, raise_on_failure=True,
                          load_options={"runtime": path, "quiet": True})
        return [r.detections for r in done.results]

    return run


def build_owlv2_base(path: Path) -> Path:
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    sys.path.insert(0, str(REPO / "tests"))
    from hf_tiny_text import clip_tokenizer

    tok = clip_tokenizer(path / "tok", max_length=16)  # OWL's 16 tokens per phrase
    torch.manual_seed(0)
    # google/owlv2-base-patch16: ViT-B/16 at 960 px (Owlv2Config()'s vision default is 768)
    Owlv2ForObjectDetection(Owlv2Config(vision_config={"image_size": 960})).eval().save_pretrained(path)
    Owlv2Processor(Owlv2ImageProcessor(), tok).save_pretrained(path)
    return path


OWL_TEXT = ("person", "car", "dog")


def time_runners(factories: dict, rounds: int, n_images: int, tag: str) -> None:
    """Interleaved rounds, each path in a fresh process (:func:`isolated.run_rounds`: one
    untimed pass over the photos, then one timed); images/s (medians) against the torch path,
    and the runtimes' boxes against the torch path's."""
    times, outputs = isolated.run_rounds(factories, rounds)
    boxes = {k: v for k, v in outputs.items() if k != "pipeline"}
    base = n_images / statistics.median(times["torch"])
    for k, v in times.items():
        ips = n_images / statistics.median(v)
        print(f"{tag}: {k:12s} {ips:.3f} images/s ({ips / base:.2f}x torch path)", flush=True)
    for k in ("openvino", "onnxruntime"):
        d = max(box_difference(a, b) for a, b in zip(boxes["torch"], boxes[k]))
        print(f"{tag}: {k} max box difference vs torch {d:.4f} px (each detection against the other side's "
              f"closest of its class: random weights tie scores, so the order may differ)", flush=True)
    print(f"{tag}: load {load()}", flush=True)


def box_difference(a, b) -> float:
    """The largest distance (px, max over coordinates) from a detection of ``a`` to the closest
    of ``b`` with the same class; inf when the counts differ."""
    if len(a.xyxy) != len(b.xyxy):
        return float("inf")
    worst = 0.0
    for box, cls in zip(a.xyxy, a.class_ids):
        same = b.xyxy[b.class_ids == cls]
        worst = max(worst, float(np.abs(same - box).max(-1).min()) if len(same) else float("inf"))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="shapes,detect,detectors,sam,rtdetr,deformable,owl")
    args = ap.parse_args()
    os.environ.setdefault("VISIONTOOL_CACHE", tempfile.mkdtemp(prefix="vt-bench-cache-"))
    only = set(args.only.split(","))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if "detectors" in only:
        import runtimes_detectors

        runtimes_detectors.main(["--rounds", str(args.rounds)])
    if "sam" in only:
        import runtimes_sam

        runtimes_sam.main(["--rounds", str(args.rounds)])
    if "rtdetr" in only:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = build_rtdetr_r50(Path(tmp) / "rtdetr-r50")
            print(f"load before: {load()}", flush=True)
            bench_detect(model_dir, args.rounds, "rtdetr")
    if "deformable" in only:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = build_deformable_r50(Path(tmp) / "deformable-detr-r50")
            print(f"load before: {load()}", flush=True)
            bench_detect(model_dir, args.rounds, "deformable")
    if "owl" in only:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = build_owlv2_base(Path(tmp) / "owlv2-base")
            print(f"load before: {load()}", flush=True)
            bench_detect(model_dir, args.rounds, "owl")  # one export for every phrase list
    if not only & {"shapes", "detect"}:
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_detr_r50(Path(tmp) / "detr-r50")
        print(f"load before: {load()}", flush=True)
        if "shapes" in only:
            bench_shapes(model_dir, max(3, args.rounds))
        if "detect" in only:
            bench_detect(model_dir, args.rounds)


if __name__ == "__main__":
    main()
