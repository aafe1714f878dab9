"""Benchmark: visiontool's --runtime openvino / onnxruntime on torchvision Faster R-CNN and
Ultralytics YOLOv8n, against their torch paths and (YOLO) Ultralytics' own OpenVINO export.

Real architectures with random weights (no download; the tests' builders calibrate the norms
and spread the class logits so there are boxes to compare), the four photos of
../shared/data/images, one image per call, interleaved rounds (every path once per round, each in
a process of its own: :mod:`isolated`), medians; visiontool's paths through ``run_detect``, as
the CLI runs them. Export times are reported apart from inference.

1. ``torchvision``: ``fasterrcnn_resnet50_fpn_v2`` (weights=None, weights_backbone=None) —
   torchvision's own eager fp32 loop, visiontool torch, ``--runtime openvino``, ``--runtime
   onnxruntime`` (the backbone runs in the runtime, the heads in torch).
2. ``ultralytics``: YOLOv8n from ``yolov8n.yaml`` — Ultralytics' predict in torch, Ultralytics'
   own ``export(format="openvino")`` + predict as it ships (OpenVINO's CPU default precision:
   bf16 on CPUs with AVX512-BF16/AMX) and the same export pinned to f32 (the comparable row),
   visiontool ``--runtime openvino`` / ``onnxruntime``.

Per row: images/s, the ratio to the torch path (visiontool torch) and to the peer's own export
(YOLO: Ultralytics' OpenVINO export, f32), the largest box difference to the torch path
(each box paired with the nearest one of a score within 1e-3; "unmatched" counts the rest)
and GFLOP/s (FLOPs per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` on one
torch forward of each photo, over the measured time per image).

    python benchmarks/runtimes_detectors.py [--rounds 3] [--only torchvision,ultralytics] [--images N]

Time it on a quiet machine: it prints the load average before and after.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

import isolated  # before any library changes the environment the children get

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "data" / "images"
if not IMAGES.is_dir():
    IMAGES = Path("/work/shared/data/images")
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))  # the random-weight builders the tests use
PARTS = ("torchvision", "ultralytics")
Boxes = list  # per image: (xyxy (N, 4) float64 px, scores (N,) float64)


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def as_boxes(dets) -> Boxes:
    """visiontool Detections -> [(xyxy, scores)]."""
    return [(np.asarray(d.xyxy, dtype=np.float64), np.asarray(d.scores, dtype=np.float64)) for d in dets]


def box_diff(ref: Boxes, got: Boxes) -> tuple[float, int]:
    """Largest |coordinate difference| (px) pairing each reference box with the nearest box of
    ``got`` among those of a score within 1e-3, and how many found no such partner."""
    worst, missing = 0.0, 0
    for (rb, rs), (gb, gs) in zip(ref, got):
        missing += max(0, len(gb) - len(rb))
        for b, s in zip(rb, rs):
            cand = np.flatnonzero(np.abs(gs - s) <= 1e-3)
            if not len(cand):
                missing += 1
                continue
            worst = max(worst, float(np.abs(gb[cand] - b).max(axis=1).min()))
    return worst, missing


def flops_per_image(forward: Callable[[object], object], images) -> float:
    """Mean FLOPs of one torch forward per photo (FlopCounterMode: convolutions, matmuls, ...)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    total = 0
    for im in images:
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            forward(im)
        total += counter.get_total_flops()
    return total / len(images)


def table(title: str, n: int, times, outputs, torch_row: str, peer_row: str | None, flops: float,
          notes: dict[str, str]) -> None:
    base = n / statistics.median(times[torch_row])
    peer = n / statistics.median(times[peer_row]) if peer_row else None
    print(f"\n{title}")
    head = f"  {'path':<52}{'images/s':>9}{'vs torch':>9}"
    head += f"{'vs peer':>9}" if peer else ""
    print(head + f"{'max box diff':>14}{'unmatched':>10}{'GFLOP/s':>9}")
    for name, ts in times.items():
        ips = n / statistics.median(ts)
        diff, missing = box_diff(outputs[torch_row], outputs[name])
        row = f"  {name:<52}{ips:>9.3f}{ips / base:>8.2f}x"
        row += f"{ips / peer:>8.2f}x" if peer else ""
        row += f"{diff:>11.4f} px{missing:>10d}{flops * ips / 1e9:>9.1f}"
        print(row + (f"   {notes[name]}" if name in notes else ""))
    print(f"  FLOPs per image (torch forward, FlopCounterMode): {flops / 1e9:.1f} GFLOP; rounds: "
          + "; ".join(f"{k} {', '.join(f'{t:.2f}' for t in v)}" for k, v in times.items()), flush=True)


def timed_load(fn, *args, **kwargs):
    """(fn(...), seconds it took)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    spent = time.perf_counter() - t0
    return out, spent


# ----------------------------------------------------------------------------- the paths a child times
def photos(paths: list[str]):
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in paths]


def visiontool_path(spec: str, runtime: str, threshold: float, max_det: int, paths: list[str]):
    """visiontool's ``run_detect`` (what ``visiontool detect`` runs) with ``--runtime runtime``."""
    from visiontool.services.detect import run_detect

    images = photos(paths)

    def run() -> Boxes:
        done = run_detect(images, spec, threshold=threshold, max_det=max_det, raise_on_failure=True,
                          load_options={"runtime": runtime, "quiet": True})
        return as_boxes([r.detections for r in done.results])

    return run


def torchvision_path(name: str, file: str, paths: list[str]):
    """torchvision's own eager fp32 loop on the saved random weights."""
    import torch
    from torchvision.models import get_model
    from torchvision.transforms.functional import to_tensor

    model = get_model(name, weights=None, weights_backbone=None).eval()
    model.load_state_dict(torch.load(file, weights_only=True))
    images = photos(paths)

    def run() -> Boxes:
        out = []
        with torch.inference_mode():
            for im in images:
                r = model([to_tensor(im)])[0]
                out.append((r["boxes"].double().numpy(), r["scores"].double().numpy()))
        return out

    return run


def ultralytics_path(model: str, workdir: str, pin_f32: bool, paths: list[str]):
    """Ultralytics' own predict on ``model`` (a .pt, or its ``format=openvino`` export;
    ``pin_f32``: that export compiled at f32), at torch's thread count (its first predict would
    leave torch on min(8, cores - 1) threads)."""
    import torch

    threads = torch.get_num_threads()
    images = photos(paths)
    with contextlib.redirect_stdout(sys.stderr), contextlib.chdir(workdir):
        from ultralytics import YOLO

        y = YOLO(model, task="detect")
        y.predict(images[0], verbose=False)  # sets the predictor up
        if pin_f32:
            from visiontool.models.runtimes.ul_export import _pin_f32

            _pin_f32(y, next(Path(model).glob("*.xml")))

    def run() -> Boxes:
        torch.set_num_threads(threads)
        out = []
        with contextlib.redirect_stdout(sys.stderr):
            for im in images:
                b = y.predict(im, verbose=False)[0].boxes
                out.append((b.xyxy.double().numpy(), b.conf.double().numpy()))
        return out

    return run


def visiontool_factories(spec: str, threshold: float, max_det: int, paths: list[str]) -> dict:
    return {f"visiontool {'torch' if rt == 'torch' else '--runtime ' + rt}":
            (MODULE, "visiontool_path", [spec, rt, threshold, max_det, paths])
            for rt in ("torch", "openvino", "onnxruntime")}


MODULE = "runtimes_detectors"


# ----------------------------------------------------------------------------- 1. torchvision
def bench_torchvision(paths: list[str], tmp: Path, rounds: int) -> None:
    from torchvision.transforms.functional import to_tensor

    from detector_helpers import save_torchvision

    images = photos(paths)
    name = "fasterrcnn_resnet50_fpn_v2"
    file, model = save_torchvision(name, tmp / f"{name}.pth", images=images)  # weights=None, weights_backbone=None
    model.eval()
    spec = f"torchvision:{name}:{file}"
    export_every_runtime(spec, "torchvision: backbone")
    native = (MODULE, "torchvision_path", [name, str(file), paths])
    factories = {"torchvision eager loop (inference_mode, fp32)": native,
                 **visiontool_factories(spec, 0.05, 100, paths)}  # the model's own defaults
    times, outputs = isolated.run_rounds(factories, rounds)
    flops = flops_per_image(lambda im: model([to_tensor(im)]), images)
    table(f"1. torchvision {name}, random weights, {len(images)} photos (CPU, fp32)", len(images), times, outputs,
          "visiontool torch", None, flops, {})


def export_every_runtime(spec: str, what: str) -> None:
    """Load ``spec`` with torch, openvino and onnxruntime (each runtime's export made once, into
    the cache the children read); prints each export's time (the load with its export minus
    the torch load). No model stays loaded."""
    from visiontool.models import loader
    from visiontool.models.registry import load_detector

    loads = {}
    for runtime in ("torch", "openvino", "onnxruntime"):
        _, loads[runtime] = timed_load(load_detector, spec, "cpu", "float32", runtime=runtime, quiet=True)
        loader.release()
    for runtime in ("openvino", "onnxruntime"):
        print(f"{what} {runtime} export {loads[runtime] - loads['torch']:.1f} s (load with export "
              f"{loads[runtime]:.1f} s - torch load {loads['torch']:.1f} s)", flush=True)


# ----------------------------------------------------------------------------- 2. Ultralytics
def bench_ultralytics(paths: list[str], tmp: Path, rounds: int) -> None:
    from detector_helpers import build_yolo

    images = photos(paths)
    path = build_yolo("yolov8n.yaml", tmp / "yolov8n-random.pt", images)
    import torch
    from ultralytics import YOLO

    # Ultralytics' first predict sets torch's threads to min(8, cores - 1) and leaves them so
    # (visiontool's adapter keeps the caller's): put them back after each use here
    threads = torch.get_num_threads()

    peer_dir = tmp / "peer"
    peer_dir.mkdir()
    peer_pt = peer_dir / "yolov8n-random.pt"
    peer_pt.write_bytes(path.read_bytes())
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr), contextlib.chdir(peer_dir):
        exported = YOLO(str(peer_pt)).export(format="openvino")  # the documented CPU path, its defaults
    peer_export_s = time.perf_counter() - t0
    with contextlib.redirect_stdout(sys.stderr), contextlib.chdir(peer_dir):
        torch_yolo = YOLO(str(path))
        peer_bf16 = YOLO(str(exported), task="detect")
        peer_bf16.predict(images[0], verbose=False)  # sets the predictor up
    torch.set_num_threads(threads)
    precision = str(peer_bf16.predictor.model.backend.ov_compiled_model.get_property("INFERENCE_PRECISION_HINT"))
    imgsz = peer_bf16.predictor.args.imgsz
    del peer_bf16
    print(f"ultralytics: peer export format=openvino (static {imgsz}, its defaults) "
          f"{peer_export_s:.1f} s; its compiled inference precision {precision}", flush=True)

    spec = f"ultralytics:{path}"
    export_every_runtime(spec, "ultralytics: visiontool")
    peer_row = "Ultralytics format=openvino predict, pinned f32"
    factories = {"Ultralytics predict (torch)": (MODULE, "ultralytics_path", [str(path), str(peer_dir), False, paths]),
                 "Ultralytics format=openvino predict (as shipped)":
                     (MODULE, "ultralytics_path", [str(exported), str(peer_dir), False, paths]),
                 peer_row: (MODULE, "ultralytics_path", [str(exported), str(peer_dir), True, paths]),
                 **visiontool_factories(spec, 0.25, 300, paths)}  # Ultralytics' predict defaults
    times, outputs = isolated.run_rounds(factories, rounds)
    flops = flops_per_image(_yolo_forward(torch_yolo), images)
    torch.set_num_threads(threads)
    notes = {"Ultralytics format=openvino predict (as shipped)": f"inference precision {precision}; static "
             "640x640 input (a padded square: other boxes than the rectangular torch path)",
             peer_row: "static 640x640 input"}
    table(f"2. Ultralytics YOLOv8n (yolov8n.yaml), random weights, {len(images)} photos (CPU)", len(images), times,
          outputs, "visiontool torch", peer_row, flops, notes)


def _yolo_forward(yolo):
    """One torch forward of the YOLO network on a photo letterboxed as its predict does
    (minimal rectangle at 640, stride 32)."""
    import torch
    from ultralytics.data.augment import LetterBox

    net = yolo.model.eval()

    def forward(im):
        boxed = LetterBox((640, 640), auto=True, stride=32)(image=np.asarray(im))
        x = torch.from_numpy(np.ascontiguousarray(boxed)).permute(2, 0, 1).float().div(255)[None]
        return net(x)

    return forward




def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    ap.add_argument("--images", type=int, default=0, help="use the first N photos only (0: all four; smoke tests)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}: expected {', '.join(PARTS)}")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import torch

    paths = sorted(IMAGES.glob("*.jpg"))
    if args.images:
        paths = paths[:args.images]
    images = photos([str(p) for p in paths])
    flags = cpu_flags()
    print(f"photos: {', '.join(f'{p.name} {im.width}x{im.height}' for p, im in zip(paths, images))}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}, "
          f"amx {'yes' if 'amx_tile' in flags else 'no'}; rounds {args.rounds}; load average at start {load_avg()}",
          flush=True)
    saved = os.environ.get("VISIONTOOL_CACHE")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / "bench"
        tmp.mkdir()
        os.environ["VISIONTOOL_CACHE"] = str(Path(d) / "cache")  # a fresh cache: every export is timed
        try:
            if "torchvision" in parts:
                bench_torchvision([str(p) for p in paths], tmp, args.rounds)
            if "ultralytics" in parts:
                bench_ultralytics([str(p) for p in paths], tmp, args.rounds)
        finally:  # runtimes.py's later parts export into the cache it chose, not into this deleted one
            if saved is None:
                os.environ.pop("VISIONTOOL_CACHE", None)
            else:
                os.environ["VISIONTOOL_CACHE"] = saved
    print(f"\nload average at end {load_avg()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
