"""--text: SAM 3's own concept segmentation (against transformers' post-processing), grounded
segmentation (detector boxes -> SAM) and the detect -> segment pipe giving the same masks."""
from __future__ import annotations

import numpy as np
import pytest
from sam_family_helpers import engine, image, iou, model_dirs_fixture, records, rle_mask, run_cli

from visiontool.models.protocol import DetectOptions, ModelInfo
from visiontool.types import Detections, Prompt

model_dirs = model_dirs_fixture()
IMG = image()


class FakeDetector:
    """A zero-shot detector with known answers: phrase i -> box i (and a weak, overhanging box)."""

    BOXES = [[18.5, 8.0, 71.25, 52.5], [78.0, 52.0, 140.0, 93.0], [2.0, 2.0, 30.0, 20.0]]
    SCORES = [0.9, 0.75, 0.2]

    def __init__(self):
        self.info = ModelInfo(name="fake-gdino", family="grounding-dino", backend="test", task="detect",
                              paradigm="open-vocabulary", needs_nms=False, capabilities=frozenset({"text"}))
        self.calls = []

    def predict(self, images, options: DetectOptions, timings=None):
        self.calls.append(options)
        out = []
        for _ in images:
            n = min(len(options.text), len(self.BOXES))
            out.append(Detections(np.array(self.BOXES[:n] + [self.BOXES[2]]), self.SCORES[:n] + [self.SCORES[2]],
                                  list(range(n)) + [0], list(options.text[:n]) + [options.text[0]]))
        return out


@pytest.fixture
def fake_detector(monkeypatch):
    det = FakeDetector()
    seen = {}

    def load_detector(spec, device="auto", dtype="auto", warn=None, **options):
        seen["spec"], seen["options"] = spec, options
        return det

    monkeypatch.setattr("visiontool.models.registry.load_detector", load_detector)
    det.seen = seen
    return det


@pytest.fixture
def img_path(tmp_path):
    from PIL import Image

    p = tmp_path / "shapes.png"
    Image.fromarray(IMG).save(p)
    return p


def test_sam3_text_matches_transformers_post_processing(model_dirs):
    import torch
    import transformers as T

    path = model_dirs("sam3_video")
    dets = engine(path).segment_text(IMG, ["bus", "truck"], threshold=0.3)
    model = T.Sam3Model.from_pretrained(str(path)).eval()
    proc = T.Sam3Processor.from_pretrained(str(path))
    total = 0
    for ci, phrase in enumerate(["bus", "truck"]):
        inputs = proc(images=IMG, text=phrase, return_tensors="pt")
        with torch.no_grad():
            out = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                        attention_mask=inputs["attention_mask"])
        ref = proc.post_process_instance_segmentation(out, threshold=0.3, mask_threshold=0.5,
                                                      target_sizes=[IMG.shape[:2]])[0]
        order = np.argsort(-ref["scores"].numpy(), kind="stable")
        mine = [i for i in range(len(dets)) if dets.names[i] == phrase]
        assert len(mine) == len(order) and len(mine) > 0
        total += len(mine)
        for i, k in zip(mine, order):
            assert dets.class_ids[i] == ci and dets.data["phrase"][i] == phrase
            assert abs(dets.scores[i] - float(ref["scores"][k])) < 1e-5
            assert iou(rle_mask(dets.masks[i]), ref["masks"][k].numpy().astype(bool)) >= 0.999
    assert total == len(dets)
    assert len(engine(path).segment_text(IMG, ["bus"], threshold=0.99)) == 0  # the threshold is the instances'


def test_sam3_text_through_the_cli(model_dirs, img_path):
    res = run_cli(["segment", img_path, "--model", model_dirs("sam3_video"), "--text", "bus, truck", "--threshold",
                   "0.3", "--format", "json", "-q"])
    assert res.exit_code == 0, res.stderr
    [rec] = records(res.stdout)
    assert rec["masks"] and {m["label"] for m in rec["masks"]} <= {"bus", "truck"}
    assert all(m["phrase"] == m["label"] and m["score"] >= 0.3 and m["prompt"] == {"text": m["label"]}
               for m in rec["masks"])


def test_grounded_text_is_the_detectors_boxes_segmented(model_dirs, img_path, fake_detector):
    path = model_dirs("sam2")
    res = run_cli(["segment", img_path, "--model", path, "--text", "bus, truck", "--format", "json", "-q"])
    assert res.exit_code == 0, res.stderr
    assert fake_detector.seen["spec"] == "IDEA-Research/grounding-dino-tiny"  # the default zero-shot detector
    assert fake_detector.calls[0].text == ("bus", "truck") and fake_detector.calls[0].threshold == 0.5
    [rec] = records(res.stdout)
    assert [m["label"] for m in rec["masks"]] == ["bus", "truck"]  # the 0.2 box is under --threshold 0.5
    assert [m["score"] for m in rec["masks"]] == [0.9, 0.75]
    assert [m["category_id"] for m in rec["masks"]] == [0, 1] and [m["phrase"] for m in rec["masks"]] == ["bus",
                                                                                                           "truck"]
    clipped = [78.0, 52.0, 128.0, 93.0]  # the detector's box overhangs the 128-px image: clipped, as --boxes-from
    direct = engine(path).segment(IMG, [Prompt(box=FakeDetector.BOXES[0]), Prompt(box=clipped)], multimask=False)
    for m, rle in zip(rec["masks"], direct.masks):
        assert iou(rle_mask(m["segmentation"]), rle_mask(rle)) == 1.0
    res = run_cli(["segment", img_path, "--model", path, "--text", "bus, truck", "--threshold", "0.1", "-f", "json",
                   "-q"])
    assert len(records(res.stdout)[0]["masks"]) == 3


def test_detect_pipe_equals_text(model_dirs, img_path, fake_detector):
    """`detect --text … | segment --boxes-from -` gives the masks `segment --text …` gives."""
    path = model_dirs("sam2")
    det = run_cli(["detect", img_path, "--text", "bus, truck", "--threshold", "0.1", "--format", "jsonl", "-q"])
    assert det.exit_code == 0, det.stderr
    piped = run_cli(["segment", "--boxes-from", "-", "--model", path, "--format", "json", "-q"], input=det.stdout)
    assert piped.exit_code == 0, piped.stderr
    direct = run_cli(["segment", img_path, "--model", path, "--text", "bus, truck", "--threshold", "0.1", "--format",
                      "json", "-q"])
    assert direct.exit_code == 0, direct.stderr
    [a], [b] = records(piped.stdout), records(direct.stdout)
    assert len(a["masks"]) == len(b["masks"]) == 3
    for x, y in zip(a["masks"], b["masks"]):
        assert (x["label"], x["score"], x["box"], x["area"]) == (y["label"], y["score"], y["box"], y["area"])
        assert x["segmentation"] == y["segmentation"]


def test_sam3_with_a_detector_uses_the_detectors_boxes(model_dirs, img_path, fake_detector):
    res = run_cli(["segment", img_path, "--model", model_dirs("sam3_video"), "--text", "bus", "--detector",
                   "some/zero-shot", "-f", "json", "-q"])
    assert res.exit_code == 0, res.stderr
    assert fake_detector.seen["spec"] == "some/zero-shot"
    [rec] = records(res.stdout)
    assert [m["prompt"]["box"] for m in rec["masks"]] == [FakeDetector.BOXES[0]]


@pytest.mark.parametrize("args, needle", [
    (["--detector", "none"], "needs a text-capable model"),
    (["--threshold", "1.5"], "--threshold must be within [0, 1]"),
])
def test_text_bad_input(model_dirs, img_path, args, needle):
    res = run_cli(["segment", img_path, "--model", model_dirs("sam2"), "--text", "bus", "-q", *args])
    assert res.exit_code == 2 and needle in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_text_flags_need_text(img_path, model_dirs):
    res = run_cli(["segment", img_path, "--model", model_dirs("sam2"), "--point", "4,4", "--threshold", "0.3"])
    assert res.exit_code == 2 and "--threshold applies to --text" in res.stderr


def test_real_grounding_dino_tiny_pipe_equals_text(model_dirs, img_path, tmp_path):
    """With the zero-shot detector adapter: a tiny random Grounding DINO, both routes the same."""
    pytest.importorskip("visiontool.models.hf_zero_shot")
    from sam_family_helpers import build_grounding_dino

    gd = build_grounding_dino(tmp_path / "gdino")
    path = model_dirs("sam2")
    det = run_cli(["detect", img_path, "--model", gd, "--text", "bus, truck", "--threshold", "0", "--format",
                   "jsonl", "-q", "--device", "cpu"])
    assert det.exit_code == 0, det.stderr
    piped = run_cli(["segment", "--boxes-from", "-", "--model", path, "-f", "json", "-q", "--device", "cpu"],
                    input=det.stdout)
    direct = run_cli(["segment", img_path, "--model", path, "--text", "bus, truck", "--detector", gd,
                      "--threshold", "0", "-f", "json", "-q", "--device", "cpu"])
    assert piped.exit_code == 0 and direct.exit_code == 0, (piped.stderr, direct.stderr)
    [a], [b] = records(piped.stdout), records(direct.stdout)
    assert len(a["masks"]) == len(b["masks"]) > 0
    assert [m["segmentation"] for m in a["masks"]] == [m["segmentation"] for m in b["masks"]]
