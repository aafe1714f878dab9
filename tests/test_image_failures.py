"""An image the model itself fails on (a 20000x1 strip: the resize leaves a 0-pixel side) is that
image's error, like an unreadable file: the others are processed, exit 1. A model that fails on
every image still stops the run with its own error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli_helpers import assert_user_error
from detr_helpers import build_tiny_detr
from segment_helpers import save_tiny_sam
from visiontool.cli.main import app
from visiontool.io.sources import Item
from visiontool.models.protocol import DetectOptions, ModelInfo
from visiontool.services.detect import iter_detect
from visiontool.types import Detections

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_detr(tmp_path_factory) -> str:
    return str(build_tiny_detr(tmp_path_factory.mktemp("tiny-detr-strip")))


@pytest.fixture
def folder(tmp_path, images_dir) -> Path:
    """dog.jpg, a 20000x1 strip (sorted between them), truck.jpg."""
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(images_dir / "dog.jpg", d / "a-dog.jpg")
    Image.new("RGB", (20000, 1), (90, 90, 90)).save(d / "b-strip.png")
    shutil.copy(images_dir / "truck.jpg", d / "c-truck.jpg")
    return d


def records(stdout: str) -> dict[str, dict]:
    return {r["image"]: r for r in map(json.loads, stdout.splitlines())}


@pytest.mark.parametrize("batch", ["1", "3"])
def test_detect_goes_on_past_an_image_the_model_fails_on(folder, tiny_detr, batch):
    res = runner.invoke(app, ["detect", str(folder), "-m", tiny_detr, "-f", "jsonl", "--batch-size", batch, "-q"])
    line = assert_user_error(res, 1, "b-strip.png", "failed on this 20000x1 image", "ValueError", single=False)
    assert "Traceback" not in res.stderr and "unexpected" not in res.stderr, line
    got = records(res.stdout)
    assert sorted(Path(k).name for k in got) == ["a-dog.jpg", "c-truck.jpg"]
    alone = runner.invoke(app, ["detect", str(folder / "a-dog.jpg"), str(folder / "c-truck.jpg"), "-m", tiny_detr,
                                "-f", "jsonl", "-q"])
    assert alone.exit_code == 0, alone.stderr
    want = records(alone.stdout)
    for name, rec in got.items():  # the good images' records are those of a run without the strip
        ref = next(r for k, r in want.items() if Path(k).name == Path(name).name)
        assert rec["detections"] == ref["detections"]


def test_segment_goes_on_past_an_image_the_model_fails_on(folder, tmp_path):
    ckpt = save_tiny_sam(tmp_path / "sam_tiny.pth")
    res = runner.invoke(app, ["segment", str(folder), "--checkpoint", str(ckpt), "--point", "0,0", "-f", "jsonl",
                              "-q"])
    assert_user_error(res, 1, "b-strip.png", "failed on this 20000x1 image", single=False)
    assert sorted(Path(k).name for k in records(res.stdout)) == ["a-dog.jpg", "c-truck.jpg"]
    assert all(r["masks"] for r in records(res.stdout).values())


class FakeDetector:
    """Fails on images wider than 1000 px, or on every image (a broken model)."""

    def __init__(self, broken: bool = False, error=ValueError):
        self.info = ModelInfo(name="fake", family="detr", backend="transformers", task="detect",
                              paradigm="query-based", needs_nms=False, capabilities=frozenset({"batch"}))
        self.broken, self.error, self.calls = broken, error, []

    def predict(self, images, options, timings=None):
        self.calls.append([im.width for im in images])
        if self.broken or any(im.width > 1000 for im in images):
            raise self.error("cannot resize")
        return [Detections.empty() for _ in images]


def items(*widths):
    return [Item(name=f"im{i}.png", image=Image.new("RGB", (w, 10)), position=i + 1) for i, w in enumerate(widths)]


def test_a_batch_with_one_bad_image_is_run_again_one_by_one():
    det = FakeDetector()
    out = [r for r, _ in iter_detect(items(50, 60, 5000, 70), det, DetectOptions(threshold=0.1), batch_size=2)]
    assert [r.error is None for r in out] == [True, True, False, True]
    assert out[2].error.startswith("im2.png: fake failed on this 5000x10 image: ValueError: cannot resize")
    assert det.calls == [[50, 60], [5000, 70], [5000], [70]]  # no probe: the model worked on the first window


def test_a_model_that_fails_on_a_plain_image_too_stops_the_run():
    det = FakeDetector(broken=True)
    with pytest.raises(ValueError, match="cannot resize"):
        list(iter_detect(items(50, 60), det, DetectOptions(threshold=0.1)))
    assert det.calls == [[50], [640]]  # the image, then the plain probe image


def test_the_probe_clears_the_model_when_the_first_image_is_the_bad_one():
    det = FakeDetector()
    out = [r for r, _ in iter_detect(items(5000, 60), det, DetectOptions(threshold=0.1))]
    assert [r.error is None for r in out] == [False, True]
    assert det.calls == [[5000], [640], [60]]


def _cuda_oom(msg):
    import torch

    return torch.cuda.OutOfMemoryError(msg)


@pytest.mark.parametrize("error", [MemoryError, _cuda_oom, lambda msg: RuntimeError(f"CUDA out of memory ({msg})")])
def test_out_of_memory_is_never_one_image_s_fault(error):
    det = FakeDetector(error=error)
    with pytest.raises((MemoryError, RuntimeError), match="cannot resize"):
        list(iter_detect(items(50, 5000), det, DetectOptions(threshold=0.1)))
    assert det.calls == [[50], [5000]]  # no probe, no retry

