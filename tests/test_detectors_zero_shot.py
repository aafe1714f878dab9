"""``--text``: open-vocabulary detection with every zero-shot family of the installed
transformers (tiny models, tokenizers made in the test) against transformers' own
post-processing; labels are the phrases; the CLI path and its usage errors."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli_helpers import one_error_line
from detector_helpers import assert_same_detections, small_photos
from hf_tiny_text import ZERO_SHOT, build_zero_shot
from visiontool.cli.main import app
from visiontool.models.protocol import DetectOptions

runner = CliRunner()
PHRASES = ("cat", "dog", "person in a hi-vis vest")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> Path:
    return small_photos(tmp_path_factory.mktemp("zsphotos"), images_dir)


@pytest.fixture(scope="module")
def images(photos):
    return [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.png"))]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("zsmodels")
    cache: dict = {}

    def get(family):
        if family not in cache:
            cache[family] = build_zero_shot(family, d / family)
        return cache[family]
    return get


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text)) - {"sep", "cls"}


def native(path: Path, family: str, image, threshold: float, text_threshold: float = 0.25):
    """transformers' own processor -> model -> post_process_grounded_object_detection."""
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(path))
    model = AutoModelForZeroShotObjectDetection.from_pretrained(str(path)).eval()
    text = list(PHRASES) if family != "owlv2" and family != "owlvit" else [list(PHRASES)]
    enc = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    size = [(image.height, image.width)]
    if family in ("grounding-dino", "mm-grounding-dino"):
        r = processor.post_process_grounded_object_detection(out, input_ids=enc["input_ids"], threshold=threshold,
                                                             text_threshold=text_threshold, target_sizes=size)[0]
    elif family == "omdet-turbo":
        r = processor.post_process_grounded_object_detection(out, text_labels=[list(PHRASES)], threshold=threshold,
                                                             target_sizes=size)[0]
    else:
        r = processor.post_process_grounded_object_detection(out, threshold=threshold, target_sizes=size,
                                                             text_labels=[list(PHRASES)])[0]
    return r


@pytest.mark.parametrize("family", ZERO_SHOT)
def test_records_equal_transformers_and_labels_are_the_phrases(family, models, images):
    from visiontool.models.registry import load_detector

    path = models(family)
    det = load_detector(str(path), "cpu", "float32", text=True)
    info = det.info
    assert (info.paradigm, info.backend, info.class_names) == ("open-vocabulary", "transformers", {})
    assert info.needs_nms is (family == "omdet-turbo")  # OmDet-Turbo's post-processing runs NMS
    grounding = family in ("grounding-dino", "mm-grounding-dino")
    text_threshold = 0.0 if family == "mm-grounding-dino" else 0.25
    opts = DetectOptions(threshold=0.05, max_det=None, text=PHRASES, text_threshold=text_threshold)
    batch = det.predict(images, opts)
    for im, ours in zip(images[:2], batch[:2]):
        ref = native(path, family, im, 0.05, text_threshold)
        assert set(ours.names) <= set(PHRASES) and list(ours.data["phrase"]) == list(ours.names)
        assert [PHRASES[int(c)] for c in ours.class_ids] == list(ours.names)
        if grounding:
            # a box is reported with the phrase of its best token above the text threshold; transformers
            # labels it with every such token: our phrase's words are among them
            # labels with every such token ("[SEP]" and "." included): a box whose label holds a word
            # of a phrase is one of ours, with that phrase or another whose token scored higher
            named = [i for i, t in enumerate(ref["text_labels"]) if _words(t) & set().union(*map(_words, PHRASES))]
            assert_same_detections(ours, ref["boxes"][named].numpy(), ref["scores"][named].numpy())
        else:
            assert_same_detections(ours, ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy())
        assert len(ours) > 0
    for im, ours in zip(images, batch):
        alone = det.predict([im], opts)[0]
        assert_same_detections(alone, ours.xyxy, ours.scores, ours.class_ids, box_tol=1e-3)


def test_text_threshold_decides_which_boxes_are_named(models, images):
    from visiontool.models.registry import load_detector

    det = load_detector(str(models("grounding-dino")), "cpu", "float32", text=True)
    counts = [len(det.predict(images[:1], DetectOptions(threshold=0.0, max_det=None, text=PHRASES,
                                                         text_threshold=t))[0]) for t in (0.0, 0.5, 0.99999)]
    assert counts[0] >= counts[1] >= counts[2] and counts[0] > counts[2]


def test_cli_text_records_csv_and_errors(models, photos, tmp_path):
    path = str(models("owlv2"))
    photo = str(sorted(photos.glob("*.png"))[0])
    r = runner.invoke(app, ["detect", photo, "-m", path, "--text", "cat, dog", "--text", "person in a hi-vis vest",
                            "-t", "0.1", "--device", "cpu", "-f", "json", "-q"])
    assert r.exit_code == 0, r.stderr
    dets = json.loads(r.stdout)[0]["detections"]
    assert dets and all(d["label"] == d["phrase"] and d["label"] in PHRASES for d in dets)
    assert all(d["category_id"] == PHRASES.index(d["label"]) for d in dets)
    c = runner.invoke(app, ["detect", photo, "-m", path, "--text", "cat, dog", "-t", "0.1", "--device", "cpu", "-f",
                            "csv", "-q"])
    rows = list(csv.DictReader(io.StringIO(c.stdout)))
    assert rows and all(row["phrase"] == row["label"] for row in rows)
    # usage errors: an empty phrase, --classes with --text, a zero-shot model without --text
    for args, needle in ((["--text", "cat,,dog"], "empty phrase"), (["--text", " "], "empty phrase"),
                         (["--text", "cat", "--classes", "cat"], "--classes")):
        bad = runner.invoke(app, ["detect", photo, "-m", path, *args, "--device", "cpu"])
        assert needle in one_error_line(bad, 2)
    bad = runner.invoke(app, ["detect", photo, "-m", path, "--device", "cpu"])
    assert "open-vocabulary model" in one_error_line(bad, 2) and "--text" in bad.stderr
    # --text without --model: Grounding DINO tiny from the hub (not cached here: one line naming it)
    default = runner.invoke(app, ["detect", photo, "--text", "cat", "--device", "cpu"])
    assert "IDEA-Research/grounding-dino-tiny" in one_error_line(default, 1)


@pytest.mark.parametrize("family,flag,warned", [("owlv2", ["--text-threshold", "0.9"], True),
                                                ("grounding-dino", ["--text-threshold", "0.9"], False),
                                                ("owlv2", ["--nms-iou", "0.3"], True),
                                                ("omdet-turbo", ["--nms-iou", "0.3"], False)])
def test_an_option_the_loaded_model_has_no_use_for_is_one_warning(models, photos, family, flag, warned):
    """OWLv2 has no phrase-token threshold and no NMS: the flags changed nothing, without a word."""
    photo = str(sorted(photos.glob("*.png"))[0])
    base = ["detect", photo, "-m", str(models(family)), "--text", "cat, dog", "-t", "0.1", "--device", "cpu",
            "-f", "json", "-q"]
    r = runner.invoke(app, [*base, *flag])
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("visiontool: warning:")]
    assert lines == ([f"visiontool: warning: {flag[0]} changes nothing: " + lines[0].split("nothing: ", 1)[1]]
                     if warned else []), r.stderr
    if warned:  # and the records are those without the flag
        assert json.loads(r.stdout) == json.loads(runner.invoke(app, base).stdout)
