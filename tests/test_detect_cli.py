"""visiontool detect through the CLI: formats, sources, filters, batching, bad input."""
from __future__ import annotations

import csv
import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli_helpers import assert_user_error, entry_point, fifo, file_size_limit
from detr_helpers import COCO_SUBSET, build_tiny_detr
from visiontool.cli.main import app

REPO = Path(__file__).resolve().parents[1]
COCO_LABELS = {i: COCO_SUBSET.get(i, "N/A") for i in range(max(COCO_SUBSET) + 1)}  # the tiny DETR's id2label
runner = CliRunner()


@pytest.fixture(scope="session")
def tiny_detr(tmp_path_factory) -> str:
    return str(build_tiny_detr(tmp_path_factory.mktemp("tiny-detr")))


@pytest.fixture()
def photos(tmp_path, images_dir) -> Path:
    """A private copy of two real photos (dog.jpg and groceries.jpg share a size)."""
    d = tmp_path / "photos"
    d.mkdir()
    for name in ("dog.jpg", "groceries.jpg", "dogs.jpg"):
        shutil.copy(images_dir / name, d / name)
    return d


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def records(result) -> list[dict]:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# -- formats -------------------------------------------------------------------------------------------

def test_json_records_match_the_contract(tiny_detr, photos):
    res = invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-t", "0", "-f", "json", "-q")
    recs = records(res)
    assert len(recs) == 1
    r = recs[0]
    assert set(r) == {"image", "image_id", "width", "height", "model", "detections"}
    assert (r["width"], r["height"]) == (800, 534)
    assert r["model"] == tiny_detr
    assert len(r["detections"]) == 12  # every query at threshold 0 (max-det 100)
    for d in r["detections"]:
        assert set(d) == {"label", "category_id", "score", "box"}
        assert all(isinstance(v, float) for v in d["box"])
        assert d["box"][0] <= d["box"][2] and d["box"][1] <= d["box"][3]
        assert d["label"] == COCO_LABELS[d["category_id"]]  # the config's name for its id
    scores = [d["score"] for d in r["detections"]]
    assert scores == sorted(scores, reverse=True)
    # boxes are not rounded to whole pixels
    assert any(abs(v - round(v)) > 1e-6 for d in r["detections"] for v in d["box"])
    assert res.stdout.lstrip().startswith("[")


def test_jsonl_one_line_per_image_and_nothing_else_on_stdout(tiny_detr, photos):
    res = invoke("detect", photos, "-m", tiny_detr, "-t", "0.2", "-f", "jsonl")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert [json.loads(ln)["image"] for ln in lines] == [str(photos / n) for n in
                                                         ("dog.jpg", "dogs.jpg", "groceries.jpg")]
    assert "images/s" in res.stderr  # the closing speed line goes to stderr
    assert "preprocess" in res.stderr and "inference" in res.stderr and "postprocess" in res.stderr


def test_csv_rows(tiny_detr, photos):
    res = invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-t", "0.3", "-f", "csv", "-q")
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    jres = records(invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-t", "0.3", "-f", "json", "-q"))
    assert len(rows) == len(jres[0]["detections"]) > 0
    assert float(rows[0]["x1"]) == pytest.approx(jres[0]["detections"][0]["box"][0])
    assert rows[0]["label"] == jres[0]["detections"][0]["label"]


def test_table_lists_labels_and_scores(tiny_detr, photos):
    res = invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-t", "0.3", "-f", "table", "-q")
    assert res.exit_code == 0, res.stderr
    jres = records(invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-t", "0.3", "-f", "json", "-q"))
    top = jres[0]["detections"][0]
    assert top["label"] in res.stdout and f"{top['score']:.3f}" in res.stdout


def test_piped_table_has_whole_rows(tiny_detr, photos, tmp_path):
    # off a terminal rich would assume 80 columns and fold a long path and the box column
    deep = tmp_path / ("a_rather_long_folder_name_" * 3)
    deep.mkdir()
    (deep / "dog.jpg").write_bytes((photos / "dog.jpg").read_bytes())
    res = invoke("detect", deep / "dog.jpg", "-m", tiny_detr, "-t", "0.3", "-f", "table", "-q")
    assert res.exit_code == 0, res.stderr
    top = records(invoke("detect", deep / "dog.jpg", "-m", tiny_detr, "-t", "0.3", "-f", "json", "-q"))[0]
    row = next(line for line in res.stdout.splitlines() if "dog.jpg" in line)
    d = top["detections"][0]
    assert d["label"] in row and f"{d['score']:.3f}" in row and f"{d['box'][2]:.1f}" in row


def test_output_file_is_written_and_stdout_stays_empty(tiny_detr, photos, tmp_path):
    out = tmp_path / "sub" / "dets.json"
    res = invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-t", "0", "-o", out, "-q")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    assert json.loads(out.read_text())[0]["width"] == 800  # format from the extension
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_coco_with_gt_maps_ids_by_file_name_and_category_name(tiny_detr, photos, tmp_path):
    from pycocotools.coco import COCO

    # a GT that numbers categories differently from the model (cat is 17 in DETR)
    gt = {
        "images": [{"id": 501, "file_name": "val/dog.jpg", "width": 800, "height": 534},
                   {"id": 502, "file_name": "groceries.jpg", "width": 800, "height": 534}],
        "annotations": [{"id": 1, "image_id": 501, "category_id": 7, "bbox": [10, 10, 100, 100],
                         "area": 10000, "iscrowd": 0}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 8, "name": "Dog"}, {"id": 9, "name": "chair"},
                       {"id": 10, "name": "cup"}],
    }
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    res = invoke("detect", photos, "-m", tiny_detr, "-t", "0", "-f", "coco", "--gt", gt_path, "-q")
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert rows and {r["image_id"] for r in rows} <= {501, 502}
    assert {r["category_id"] for r in rows} <= {7, 8, 9, 10}
    assert "not in the ground truth" in res.stderr  # dogs.jpg is not in the GT
    for r in rows:
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0
    coco = COCO(str(gt_path))
    dets = coco.loadRes(str(_write(tmp_path / "res.json", res.stdout)))
    assert len(dets.getAnnIds()) == len(rows)
    # xywh in the COCO file is xyxy of the record
    jres = records(invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-t", "0", "-f", "json", "-q"))
    first = [r for r in rows if r["image_id"] == 501]
    recs = [d for d in jres[0]["detections"] if d["label"] in ("cat", "dog", "chair", "cup")]
    assert len(first) == len(recs)
    x1, y1, x2, y2 = recs[0]["box"]
    assert first[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


# -- sources -------------------------------------------------------------------------------------------

def test_two_photos_with_one_coco_image_id_are_one_warning(tiny_detr, photos, tmp_path):
    """a/000000000001.jpg and b/000000000001.jpg both became image_id 1: one image's results, silently."""
    for sub, name in (("a", "dog.jpg"), ("b", "groceries.jpg")):
        (tmp_path / sub).mkdir()
        shutil.copy(photos / name, tmp_path / sub / "000000000001.jpg")
    res = invoke("detect", tmp_path / "a", tmp_path / "b", "-m", tiny_detr, "-t", "0", "-f", "coco", "-q")
    assert res.exit_code == 0, res.stderr
    assert {r["image_id"] for r in json.loads(res.stdout)} == {1}
    (line,) = [ln for ln in res.stderr.splitlines() if "warning" in ln]
    assert "1 photo(s) got an image id another photo has (image_id 1: " in line and "give --gt" in line
    alone = invoke("detect", tmp_path / "a", "-m", tiny_detr, "-t", "0", "-f", "coco", "-q")
    assert alone.exit_code == 0 and "warning" not in alone.stderr


def test_the_shared_id_check_remembers_photos_only():
    """A stream's frames have ids unique by construction: remembering each one grew memory without end."""
    from visiontool.convert import to_coco_results
    from visiontool.types import ImageResult

    stats: dict = {}
    for k in range(3):
        to_coco_results(ImageResult("rtsp://cam/1", 4, 3, "m", image_id=k, frame=k), None, stats)
    assert "image_owners" not in stats and "shared_image_ids" not in stats
    to_coco_results(ImageResult("a/1.jpg", 4, 3, "m", image_id=1), None, stats)
    to_coco_results(ImageResult("b/1.jpg", 4, 3, "m", image_id=1), None, stats)
    assert stats["shared_image_ids"] == [(1, "a/1.jpg", "b/1.jpg")]


def test_a_label_two_gt_categories_share_stops_coco_output_before_the_model(tiny_detr, photos, tmp_path,
                                                                          monkeypatch):
    from visiontool.models import registry

    gt = {"images": [{"id": 1, "file_name": "dog.jpg", "width": 800, "height": 534}], "annotations": [],
          "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "Cat"}, {"id": 1, "name": "person"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    monkeypatch.setattr(registry, "load_detector", lambda *a, **k: pytest.fail("the model was loaded"))
    res = invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-f", "coco", "--gt", tmp_path / "gt.json")
    assert_user_error(res, 2, "categories 5 and 9 are both named 'cat', so a label 'cat' cannot say which")
    assert res.stdout == ""


def test_sources_glob_stdin_recursive(tiny_detr, photos):
    nested = photos / "more" / "deeper"
    nested.mkdir(parents=True)
    shutil.copy(photos / "dog.jpg", nested / "dog2.jpg")
    flat = records(invoke("detect", photos, "-m", tiny_detr, "-f", "json", "-q"))
    assert len(flat) == 3
    rec = records(invoke("detect", photos, "-r", "-m", tiny_detr, "-f", "json", "-q"))
    assert len(rec) == 4
    assert [Path(r["image"]).name for r in rec].count("dog2.jpg") == 1
    globbed = records(invoke("detect", str(photos / "d*.jpg"), "-m", tiny_detr, "-f", "json", "-q"))
    assert [Path(r["image"]).name for r in globbed] == ["dog.jpg", "dogs.jpg"]
    stdin = f"{photos / 'groceries.jpg'}\n\n{photos / 'dog.jpg'}\n"
    piped = records(invoke("detect", "-", "-m", tiny_detr, "-f", "json", "-q", input=stdin))
    assert [Path(r["image"]).name for r in piped] == ["groceries.jpg", "dog.jpg"]


def test_a_file_url_is_its_local_path(tiny_detr, photos, tmp_path):
    """``file:///…/a%20b.jpg`` (copied from a browser or a manifest) was 'no such file or directory'."""
    spaced = tmp_path / "a dog.jpg"
    shutil.copy(photos / "dog.jpg", spaced)
    local = records(invoke("detect", spaced, "-m", tiny_detr, "-t", "0", "-f", "json", "-q"))
    res = invoke("detect", spaced.as_uri(), "-m", tiny_detr, "-t", "0", "-f", "json", "-q")
    assert "%20" in spaced.as_uri() and records(res) == local
    assert_user_error(invoke("detect", "file://nas/photos/dog.jpg", "-m", tiny_detr), 2,
                      "names a file on the host 'nas'")


class _Server:
    def __init__(self, root: Path):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *a, **k: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture()
def http_photos(photos):
    (photos / "broken.jpg").write_bytes(b"<html>not an image</html>")
    srv = _Server(photos)
    yield srv.url
    srv.close()


def test_url_source_equals_file_source_and_bad_urls_are_reported(tiny_detr, photos, http_photos):
    res = invoke("detect", f"{http_photos}/dog.jpg", f"{http_photos}/missing.jpg", f"{http_photos}/broken.jpg",
                 photos / "groceries.jpg", "-m", tiny_detr, "-t", "0", "-f", "json")
    assert res.exit_code == 1
    recs = json.loads(res.stdout)
    assert [Path(r["image"]).name for r in recs] == ["dog.jpg", "groceries.jpg"]
    local = records(invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-t", "0", "-f", "json", "-q"))
    assert recs[0]["detections"] == local[0]["detections"]
    assert "missing.jpg: HTTP 404" in res.stderr
    assert "broken.jpg: not an image" in res.stderr
    assert "2 of 4 images" in res.stderr and "Traceback" not in res.stderr


# -- images: orientation and modes ----------------------------------------------------------------------

def test_exif_orientation_is_applied(tiny_detr, photos, tmp_path):
    img = Image.open(photos / "dog.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    rotated_file = tmp_path / "rot.jpg"
    img.save(rotated_file, exif=exif.tobytes(), quality=95)
    upright = tmp_path / "upright.png"
    Image.open(rotated_file).transpose(Image.Transpose.ROTATE_270).save(upright)
    a = records(invoke("detect", rotated_file, "-m", tiny_detr, "-t", "0", "-f", "json", "-q"))[0]
    b = records(invoke("detect", upright, "-m", tiny_detr, "-t", "0", "-f", "json", "-q"))[0]
    assert (a["width"], a["height"]) == (534, 800)
    assert np.allclose([d["box"] for d in a["detections"]], [d["box"] for d in b["detections"]], atol=1e-3)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1"])
def test_any_pil_mode_is_converted(tiny_detr, photos, tmp_path, mode):
    img = Image.open(photos / "dog.jpg").resize((200, 150))
    if mode == "I;16":
        arr = (np.asarray(img.convert("L"), dtype=np.uint16) * 257)
        conv = Image.fromarray(arr.astype("<u2"))
        assert conv.mode == "I;16"
        path = tmp_path / "x.png"
    elif mode == "CMYK":
        conv, path = img.convert("CMYK"), tmp_path / "x.jpg"
    elif mode == "RGBA":
        conv = img.convert("RGBA")
        conv.putalpha(128)
        path = tmp_path / "x.png"
    else:
        conv, path = img.convert(mode), tmp_path / "x.png"
    conv.save(path)
    r = records(invoke("detect", path, "-m", tiny_detr, "-t", "0", "-f", "json", "-q"))[0]
    assert (r["width"], r["height"]) == (200, 150)
    assert len(r["detections"]) == 12


# -- thresholds, classes, max-det ----------------------------------------------------------------------

def test_threshold_is_inclusive_and_monotone(tiny_detr, photos):
    everything = records(invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-t", "0", "-f", "json",
                                "-q"))[0]["detections"]
    cut = everything[4]["score"]
    kept = records(invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-t", repr(cut), "-f", "json",
                          "-q"))[0]["detections"]
    assert all(d["score"] >= cut for d in kept)
    assert kept == [d for d in everything if d["score"] >= cut]
    assert kept[-1]["score"] == cut  # a score equal to the threshold is kept


def test_classes_by_name_and_id_and_max_det(tiny_detr, photos):
    allr = records(invoke("detect", photos / "dogs.jpg", "-m", tiny_detr, "-t", "0", "-f", "json",
                          "-q"))[0]["detections"]
    labels = {d["label"] for d in allr}
    name = sorted(labels)[0]
    by_name = records(invoke("detect", photos / "dogs.jpg", "-m", tiny_detr, "-t", "0", "-c", name.upper(),
                             "-f", "json", "-q"))[0]["detections"]
    assert by_name and {d["label"] for d in by_name} == {name}
    cid = by_name[0]["category_id"]
    by_id = records(invoke("detect", photos / "dogs.jpg", "-m", tiny_detr, "-t", "0", "-c", str(cid),
                           "-f", "json", "-q"))[0]["detections"]
    assert by_id == by_name
    top3 = records(invoke("detect", photos / "dogs.jpg", "-m", tiny_detr, "-t", "0", "--max-det", "3",
                          "-f", "json", "-q"))[0]["detections"]
    assert top3 == allr[:3]
    res = invoke("detect", photos / "dogs.jpg", "-m", tiny_detr, "-c", "giraffe")
    assert_user_error(res, 2, "giraffe")


def test_classes_refuse_detrs_placeholder_for_unused_ids():
    """DETR's id2label names its 11 unused COCO ids 'N/A': '-c N/A' (or '-c 12') selected nothing, exit 0."""
    from visiontool.errors import UsageError
    from visiontool.services.detect import parse_classes

    id2label = {0: "N/A", 1: "person", 12: "N/A", 17: "cat"}
    assert parse_classes("CAT,1", id2label) == {17, 1}
    for spec, needle in (("N/A", "'N/A' is the label this model gives its unused ids"),
                         ("cat,12", "'12' is an id this model leaves unused (label 'N/A')"), ("n/a", "unused")):
        with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            parse_classes(spec, id2label)


# -- batching ------------------------------------------------------------------------------------------

def test_batch_does_not_change_any_image_result(tiny_detr, photos, images_dir):
    shutil.copy(images_dir / "truck.jpg", photos / "truck.jpg")
    one = records(invoke("detect", photos, "-m", tiny_detr, "-t", "0", "-b", "1", "-f", "json", "-q"))
    four = records(invoke("detect", photos, "-m", tiny_detr, "-t", "0", "-b", "4", "-f", "json", "-q"))
    assert [r["image"] for r in one] == [r["image"] for r in four]
    for a, b in zip(one, four):
        assert len(a["detections"]) == len(b["detections"])
        for da, db in zip(a["detections"], b["detections"]):
            assert da["label"] == db["label"]
            assert da["score"] == pytest.approx(db["score"], abs=1e-5)
            assert np.allclose(da["box"], db["box"], atol=1e-3)  # pixels


def test_batched_forward_groups_only_equal_shapes(tiny_detr, photos, monkeypatch):
    from visiontool.models.registry import load_detector

    calls = []
    det = load_detector(tiny_detr, "cpu", "float32")  # the instance the CLI below reuses
    original = det.model.forward

    def spy(*args, **kwargs):
        calls.append(tuple(kwargs["pixel_values"].shape))
        return original(*args, **kwargs)

    monkeypatch.setattr(det.model, "forward", spy)
    records(invoke("detect", photos, "-m", tiny_detr, "-b", "3", "-f", "json", "-q", "--device", "cpu"))
    # dog.jpg and groceries.jpg (800x534) share one pass; dogs.jpg (1072x603) runs alone; no padding
    assert sorted(c[0] for c in calls) == [1, 2]
    assert all(c[2:] in ((800, 1198), (750, 1333)) for c in calls)


# -- viz -----------------------------------------------------------------------------------------------

def test_save_viz_writes_annotated_copies_without_touching_inputs(tiny_detr, photos, tmp_path):
    before = (photos / "dog.jpg").read_bytes()
    res = invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-t", "0.3", "--save-viz", photos, "-q")
    assert res.exit_code == 0, res.stderr
    assert (photos / "dog.jpg").read_bytes() == before
    out = photos / "dog-1.jpg"
    assert out.is_file()
    a = np.asarray(Image.open(out), dtype=np.int16)
    b = np.asarray(Image.open(photos / "dog.jpg"), dtype=np.int16)
    assert a.shape == b.shape and np.abs(a - b).mean() > 0.5  # something was drawn


# -- bad input -----------------------------------------------------------------------------------------

def test_missing_path_fails_before_any_model_loads(photos):
    res = invoke("detect", photos / "nope.jpg", "-m", "not-a-real-org/not-a-model")
    assert_user_error(res, 2, "nope.jpg")


@pytest.mark.parametrize("args, needle", [
    (["--threshold", "1.5"], "threshold"),
    (["--format", "xml"], "xml"),
    (["--device", "tpu"], "tpu"),
    (["--device", "cuda:3"], "available"),
    (["--dtype", "int8"], "int8"),
    (["--batch-size", "0"], "batch-size"),
    (["--bogus"], "bogus"),
    (["-m", "./no/such/dir"], "no/such/dir"),
])
def test_bad_flags_exit_2(photos, args, needle):
    res = invoke("detect", photos / "dog.jpg", *args)
    assert_user_error(res, 2, needle)


def test_corrupt_truncated_and_non_images_among_many(tiny_detr, photos, tmp_path):
    data = (photos / "dog.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (photos / "zero.png").write_bytes(b"")
    (photos / "text.jpg").write_text("hello")
    out = tmp_path / "out.jsonl"
    res = invoke("detect", photos, "-m", tiny_detr, "-f", "jsonl", "-o", out)
    assert res.exit_code == 1
    names = [Path(json.loads(ln)["image"]).name for ln in out.read_text().splitlines()]
    assert names == ["dog.jpg", "dogs.jpg", "groceries.jpg"]
    for bad in ("truncated.jpg", "zero.png", "text.jpg"):
        assert sum(bad in ln for ln in res.stderr.splitlines()) == 1
    assert "Traceback" not in res.stderr


def test_decompression_bomb_is_refused(tiny_detr, photos, monkeypatch):
    monkeypatch.setenv("VISIONTOOL_MAX_PIXELS", "10000")
    res = invoke("detect", photos / "dog.jpg", "-m", tiny_detr)
    assert_user_error(res, 1, "decompression bomb", "dog.jpg")


def test_offline_hub_model_is_one_line_exit_1(photos, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = invoke("detect", photos / "dog.jpg", "-m", "facebook/detr-resnet-50")
    assert_user_error(res, 1, "facebook/detr-resnet-50", "HF_HUB_OFFLINE", "--model PATH")
    assert len(res.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback(photos):
    res = invoke("--debug", "detect", photos / "dog.jpg", "-m", "./missing-model")
    assert res.exit_code == 2 and "Traceback" in res.stderr


# -- Python API ----------------------------------------------------------------------------------------

def test_python_api_returns_the_cli_records(tiny_detr, photos):
    import visiontool

    api = visiontool.detect(str(photos / "dog.jpg"), tiny_detr, threshold=0.0)
    cli = records(invoke("detect", photos / "dog.jpg", "-m", tiny_detr, "-t", "0", "-f", "json", "-q"))
    assert [r.to_dict() for r in api] == cli
    pil = visiontool.detect(Image.open(photos / "dog.jpg"), tiny_detr, threshold=0.0)
    assert np.allclose(pil[0].detections.xyxy, api[0].detections.xyxy)


# -- the installed executable and lazy imports ----------------------------------------------------------

def test_installed_entry_point_detects(tiny_detr, photos, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", VISIONTOOL_CACHE=str(tmp_path / "c"))
    p = subprocess.run([entry_point(), "detect", str(photos / "dog.jpg"), "-m", tiny_detr, "-t", "0"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout.splitlines()[0])  # piped stdout -> jsonl by default
    assert rec["width"] == 800 and len(rec["detections"]) == 12
    bad = subprocess.run([entry_point(), "detect", str(photos / "nope.jpg")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("visiontool: error:") and bad.stdout == ""
    mod = subprocess.run([sys.executable, "-m", "visiontool", "--version"], capture_output=True, text=True)
    assert mod.returncode == 0 and mod.stdout.startswith("visiontool ")


def test_a_reader_that_goes_away_ends_the_run_with_exit_0(tiny_detr, photos, tmp_path):
    """`visiontool detect DIR 2>&1 | head -1` (the reader gone before the first record): exit 0
    and no traceback -- click made it a silent exit 1, which fails a `set -o pipefail` script.
    (A table, and stderr alone going away: test_evaluate_cli.)"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", VISIONTOOL_CACHE=str(tmp_path / "c"))
    p = subprocess.Popen([entry_point(), "detect", str(photos), "-m", tiny_detr, "-t", "0", "-f", "jsonl"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    p.stdout.close()  # the reader is gone before anything is written: the first write breaks the pipe
    assert p.wait(timeout=300) == 0


def test_detect_takes_its_ground_truth_from_a_pipe(tiny_detr, tmp_path, images_dir):
    model = tiny_detr
    cats = [{"id": 100 + k, "name": name} for k, name in COCO_SUBSET.items()]
    gt = json.dumps({"images": [{"id": 42, "file_name": "dog.jpg", "height": 534, "width": 800}],
                     "categories": cats, "annotations": []})
    (tmp_path / "gt.json").write_text(gt)
    args = ["detect", images_dir / "dog.jpg", "-m", model, "-t", "0", "-f", "coco", "-q", "--gt"]
    files = invoke(*args, tmp_path / "gt.json")
    assert files.exit_code == 0, files.stderr
    with fifo(tmp_path, gt.encode(), "gt") as g:
        piped = invoke(*args, g)
    assert piped.exit_code == 0, piped.stderr
    coco = json.loads(files.stdout)
    assert coco and {r["image_id"] for r in coco} == {42}
    assert {r["category_id"] for r in coco} <= {c["id"] for c in cats}
    assert json.loads(piped.stdout) == coco


@pytest.mark.parametrize("flag", ["-o", "--save-viz"])
def test_a_file_that_cannot_grow_is_named_and_the_old_output_kept(tiny_detr, photos, tmp_path, flag):
    """A write that fails for lack of space (here a 1 KiB file-size limit) stops the run with one
    line naming the file, exit 1 -- not "unexpected OSError"; -o's previous file survives whole."""
    out = tmp_path / "out"
    out.mkdir()
    target = out / "dets.jsonl" if flag == "-o" else out / "viz"
    if flag == "-o":
        target.write_text("the previous run\n")
    with file_size_limit(1024):
        res = invoke("detect", photos, "-m", tiny_detr, "-t", "0", "-q", flag, target)
    named = target if flag == "-o" else target / "dog.jpg"
    assert res.exit_code == 1, res.stderr
    assert res.stderr == f"visiontool: error: cannot write '{named}': File too large\n"
    if flag == "-o":
        assert target.read_text() == "the previous run\n"
        assert sorted(x.name for x in out.iterdir()) == ["dets.jsonl"]  # no temp file left behind
    else:
        assert list(target.iterdir()) == []


@pytest.mark.parametrize("argv", [["--help"], ["detect", "--help"], ["segment", "--help"], ["evaluate", "--help"],
                                  ["compare", "--help"], ["export", "--help"], ["merge", "--help"]])
def test_help_does_not_import_torch(argv):
    if argv[0] in ("export", "merge"):
        pytest.importorskip(f"visiontool.cli.{argv[0]}")
    code = ("import sys\nfrom visiontool.cli.main import run\nsys.argv = ['visiontool'] + %r\n"
            "try:\n    run()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'segment_anything', 'matplotlib', 'ultralytics', 'ray', "
            "'openvino', 'onnxruntime', 'av', 'cv2', 'pyarrow') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n" % argv)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stderr, p.stderr
    assert "detect" in p.stdout


def test_env_command_reports_versions_and_devices():
    res = invoke("env", "--format", "json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["versions"]["torch"] and info["device"] in info["available"] and "cpu" in info["available"]
    assert info["dtype"] == ("float32" if info["device"] == "cpu" else "float16")
    assert "huggingface hub" in info["caches"]


# -- examples ------------------------------------------------------------------------------------------

def _run_example(name, *args, tiny_detr, tmp_path, **env):
    e = dict(os.environ, MODEL=tiny_detr, VISIONTOOL=entry_point(), HF_HUB_OFFLINE="1",
             VISIONTOOL_CACHE=str(tmp_path / "c"), THRESHOLD="0.0", **env)
    return subprocess.run(["bash", str(REPO / "examples" / name), *map(str, args)], capture_output=True,
                          text=True, env=e, cwd=tmp_path, timeout=300)


def test_example_single_image(tiny_detr, photos, tmp_path):
    p = _run_example("single_image.sh", photos / "dog.jpg", tiny_detr=tiny_detr, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "score" in p.stdout and (tmp_path / "viz" / "dog.jpg").is_file()


def test_example_folder_to_coco(tiny_detr, photos, tmp_path, coco_dir):
    from pycocotools.coco import COCO

    gt = {"images": [{"id": 3, "file_name": "dog.jpg", "width": 800, "height": 534}], "annotations": [],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "chair"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    p = _run_example("folder_to_coco.sh", photos, tmp_path / "gt.json", tmp_path / "preds.json",
                     tiny_detr=tiny_detr, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    res = COCO(str(tmp_path / "gt.json")).loadRes(str(tmp_path / "preds.json"))
    assert res.getImgIds() == [3] and len(res.getAnnIds()) > 0


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_example_jq_pipeline(tiny_detr, photos, tmp_path):
    p = _run_example("jq_pipeline.sh", photos / "dog.jpg", photos / "dogs.jpg", tiny_detr=tiny_detr,
                     tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    counts = {ln.split()[1]: int(ln.split()[0]) for ln in p.stdout.strip().splitlines()}
    assert sum(counts.values()) == 24  # 12 queries per image at threshold 0
