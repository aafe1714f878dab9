"""Benchmark: visiontool detect on a video vs the straightforward loops people write, tracking cost, memory.

A generated 1280x720 clip (``--frames`` 300, moving squares, H.264) and DETR-R50 with random
weights (``DetrConfig()`` defaults, saved locally: no hub). Every run is a separate process,
timed from its first frame to its last (model loading excluded on both sides):

1. baseline: OpenCV ``VideoCapture.read`` + BGR->RGB + transformers ``pipeline("object-detection")``
   per frame, the loop of most tutorials;
2. ``visiontool detect clip.mp4 -m DETR`` (its own closing line: frames / loop seconds);
3. the same with ``--track`` (ByteTrack): the wall-clock change and the tracker's own time
   per frame (the postprocess difference);
4. peak RSS (the process's high-water mark) of run 2 vs the same command on the first 30 frames;
5. decoding alone (PyAV, frames/s), to show what overlapping it with inference hides;
6. YOLOv8n (random weights from Ultralytics' packaged yaml, saved once so both sides load
   the same .pt) vs Ultralytics' own ``model.predict(source=clip, stream=True)`` — the
   predictor ``yolo predict`` runs — when the extra and visiontool's Ultralytics adapter
   are installed (skipped with the reason otherwise).

    python benchmarks/video.py [--frames 300] [--skip-yolo | --only-yolo]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

BASELINE = textwrap.dedent("""
    import json, sys, time, warnings
    warnings.filterwarnings("ignore")
    import cv2
    from PIL import Image
    from transformers import pipeline
    from transformers.utils import logging
    logging.set_verbosity_error()
    pipe = pipeline("object-detection", model=sys.argv[2], device="cpu")
    cap = cv2.VideoCapture(sys.argv[1])
    n, t0 = 0, time.perf_counter()
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        pipe(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)), threshold=0.5)
        n += 1
    print(json.dumps({"frames": n, "seconds": time.perf_counter() - t0}))
""")

ULTRALYTICS = textwrap.dedent("""
    import json, sys, time
    from ultralytics import YOLO
    model = YOLO(sys.argv[2])
    n, t0 = 0, time.perf_counter()
    for _ in model.predict(source=sys.argv[1], stream=True, verbose=False, device="cpu"):
        n += 1
    print(json.dumps({"frames": n, "seconds": time.perf_counter() - t0}))
""")

# runs a command as a child and reports the child's peak RSS (a fresh parent per measurement:
# RUSAGE_CHILDREN is the largest child so far)
PEAK = textwrap.dedent("""
    import resource, subprocess, sys
    p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    sys.stdout.write(p.stdout)
    sys.stderr.write(p.stderr)
    sys.stderr.write(f"\\nPEAK_KB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n")
    sys.exit(p.returncode)
""")

SPEED_LINE = re.compile(r"(\d+) frames? in ([\d.]+) s \(([\d.]+) frames/s\): preprocess ([\d.]+) ms, inference "
                        r"([\d.]+) ms, postprocess ([\d.]+) ms")


def build_detr(path: Path) -> None:
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

    torch.manual_seed(0)
    DetrForObjectDetection(DetrConfig()).eval().save_pretrained(path)
    DetrImageProcessor().save_pretrained(path)


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), e.get("PYTHONPATH", "")])
    e["HF_HUB_OFFLINE"] = "1"
    e["PYTHONWARNINGS"] = "ignore"
    return e


def run_script(script: str, *args: str) -> dict:
    p = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env())
    if p.returncode:
        raise SystemExit(f"baseline failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def visiontool(*args: str) -> dict:
    """Run ``visiontool detect ...`` in a child; its speed line and peak RSS."""
    cmd = [sys.executable, "-c", PEAK, sys.executable, "-m", "visiontool", "detect", *args, "--device", "cpu",
           "--dtype", "float32"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env())
    if p.returncode:
        raise SystemExit(f"visiontool failed ({p.returncode}):\n{p.stderr[-2000:]}")
    m = SPEED_LINE.search(p.stderr)
    peak = int(re.search(r"PEAK_KB (\d+)", p.stderr).group(1))
    n, secs, fps, pre, inf, post = m.groups()
    return {"frames": int(n), "seconds": float(secs), "fps": float(fps), "pre_ms": float(pre), "inf_ms": float(inf),
            "post_ms": float(post), "peak_mb": peak / 1024}


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--skip-yolo", action="store_true")
    ap.add_argument("--only-yolo", action="store_true", help="skip the DETR-R50 half (it takes the longest)")
    args = ap.parse_args()

    import torch

    from visiontool.io.video import iter_frames, write_test_video

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus; load at start "
          f"{load()}")
    with tempfile.TemporaryDirectory(prefix="visiontool-bench-video-") as tmp:
        tmp = Path(tmp)
        clip = tmp / "clip.mp4"
        write_test_video(clip, frames=args.frames, size=(1280, 720), fps=30, squares=5)
        if args.only_yolo:
            yolo(clip, tmp)
            print(f"load at end {load()}")
            return
        detr = tmp / "detr-r50-random"
        build_detr(detr)

        t0 = time.perf_counter()
        decoded = sum(1 for _ in iter_frames(str(clip)))
        decode_fps = decoded / (time.perf_counter() - t0)

        base = run_script(BASELINE, str(clip), str(detr))
        base_fps = base["frames"] / base["seconds"]
        ours = visiontool(str(clip), "-m", str(detr), "-f", "jsonl", "-o", str(tmp / "plain.jsonl"))
        tracked = visiontool(str(clip), "-m", str(detr), "--track", "-f", "jsonl", "-o", str(tmp / "track.jsonl"))
        short = visiontool(str(clip), "-m", str(detr), "-f", "jsonl", "-o", str(tmp / "30.jsonl"), "--max-frames",
                           "30")

        frame_ms = 1000.0 / ours["fps"]
        track_ms = tracked["post_ms"] - ours["post_ms"]
        print(f"\nDETR-R50 (random weights), {args.frames}-frame 1280x720 clip, {decoded} frames decoded by PyAV "
              f"at {decode_fps:.0f} frames/s ({1000 / decode_fps:.1f} ms per frame, overlapped with inference)")
        print(f"{'run':<46}{'frames':>7}{'frames/s':>10}{'vs baseline':>13}")
        print(f"{'OpenCV read + transformers pipeline':<46}{base['frames']:>7}{base_fps:>10.3f}{1.0:>12.2f}x")
        print(f"{'visiontool detect':<46}{ours['frames']:>7}{ours['fps']:>10.3f}{ours['fps'] / base_fps:>12.2f}x")
        print(f"{'visiontool detect --track':<46}{tracked['frames']:>7}{tracked['fps']:>10.3f}"
              f"{tracked['fps'] / base_fps:>12.2f}x")
        print(f"visiontool per frame: preprocess {ours['pre_ms']:.0f} ms (waiting for decoded frames included), "
              f"inference {ours['inf_ms']:.0f} ms, postprocess {ours['post_ms']:.1f} ms")
        print(f"--track: tracker {track_ms:.2f} ms per frame = {100 * track_ms / frame_ms:.2f} % of the frame time; "
              f"wall clock {100 * (1 - tracked['fps'] / ours['fps']):+.1f} % frames/s (run-to-run noise included)")
        print(f"peak RSS: {ours['peak_mb']:.0f} MB for {ours['frames']} frames vs {short['peak_mb']:.0f} MB for "
              f"{short['frames']} frames = {ours['peak_mb'] / short['peak_mb']:.3f}x")
        ok = [ours["fps"] / base_fps >= 1.2, track_ms / frame_ms <= 0.05, ours["peak_mb"] / short["peak_mb"] <= 1.1]
        print(f"targets: >= 1.2x baseline {'MET' if ok[0] else 'NOT MET'}; --track <= 5 % "
              f"{'MET' if ok[1] else 'NOT MET'}; peak RSS <= 1.1x {'MET' if ok[2] else 'NOT MET'}")

        if args.skip_yolo:
            print("YOLOv8n: skipped (--skip-yolo)")
        else:
            yolo(clip, tmp)
        print(f"load at end {load()}")


def yolo(clip: Path, tmp: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:
        print("YOLOv8n: skipped — ultralytics is not installed (pip install 'visiontool[yolo]')")
        return
    if importlib.util.find_spec("visiontool.models.ultralytics") is None:
        print("YOLOv8n: skipped — this visiontool build has no Ultralytics adapter (visiontool.models.ultralytics)")
        return
    from ultralytics import YOLO

    weights = tmp / "yolov8n-random.pt"
    YOLO("yolov8n.yaml").save(str(weights))
    ref = run_script(ULTRALYTICS, str(clip), str(weights))
    ref_fps = ref["frames"] / ref["seconds"]
    ours = visiontool(str(clip), "-m", f"ultralytics:{weights}", "-f", "jsonl", "-o", str(tmp / "yolo.jsonl"))
    print(f"\nYOLOv8n (random weights from yolov8n.yaml), {ref['frames']} frames")
    print(f"{'Ultralytics predict(stream=True) (yolo predict)':<46}{ref_fps:>10.3f} frames/s")
    print(f"{'visiontool detect -m ultralytics:…':<46}{ours['fps']:>10.3f} frames/s = {ours['fps'] / ref_fps:.2f}x "
          f"(target >= 0.95x: {'MET' if ours['fps'] / ref_fps >= 0.95 else 'NOT MET'})")


if __name__ == "__main__":
    main()
