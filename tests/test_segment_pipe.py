# ruff: noqa: F811  (pytest fixtures imported from segment_helpers are re-bound as test arguments)
"""detect → segment in one shell pipe: instance segmentation from two real processes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from detr_helpers import build_tiny_detr
from segment_helpers import decode, tiny_ckpt  # noqa: F401


@pytest.fixture(scope="module")
def tiny_detr(tmp_path_factory) -> str:
    return str(build_tiny_detr(tmp_path_factory.mktemp("tiny-detr")))


def test_detect_jsonl_piped_into_segment(tiny_detr, tiny_ckpt, images_dir):
    exe = [sys.executable, "-m", "visiontool"]
    detect = subprocess.run(exe + ["detect", str(images_dir / "dog.jpg"), str(images_dir / "truck.jpg"), "-m",
                                   tiny_detr, "-t", "0", "--format", "jsonl", "-q"],
                            capture_output=True, text=True, timeout=300)
    assert detect.returncode == 0, detect.stderr
    det = [json.loads(ln) for ln in detect.stdout.splitlines()]
    assert sum(len(r["detections"]) for r in det) > 0
    seg = subprocess.run(exe + ["segment", "--boxes-from", "-", "--checkpoint", str(tiny_ckpt), "--format", "json",
                                "-q"], input=detect.stdout, capture_output=True, text=True, timeout=300)
    assert seg.returncode == 0, seg.stderr
    assert seg.stderr == ""
    out = json.loads(seg.stdout)
    assert [r["image"] for r in out] == [r["image"] for r in det]
    for d, s in zip(det, out):
        assert len(s["masks"]) == len(d["detections"])
        for dd, m in zip(d["detections"], s["masks"]):
            assert (m["label"], m["category_id"], m["score"]) == (dd["label"], dd["category_id"], dd["score"])
            assert decode(m["segmentation"]).shape == (s["height"], s["width"]) == (d["height"], d["width"])


def test_shell_pipe(tiny_detr, tiny_ckpt, images_dir):
    """The literal one-liner from the issue, through /bin/sh."""
    py = sys.executable
    cmd = (f"'{py}' -m visiontool detect '{images_dir / 'dog.jpg'}' -m '{tiny_detr}' -t 0 --format jsonl -q | "
           f"'{py}' -m visiontool segment --boxes-from - --checkpoint '{tiny_ckpt}' --format coco -q")
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert rows and all("segmentation" in r and len(r["bbox"]) == 4 for r in rows)
