"""``--model ultralytics:NAME|PATH``: Ultralytics models built from the package's own yaml,
against Ultralytics' own ``predict`` on the same file; -seg masks; no network, no files
written outside visiontool's cache; the missing extra and every bad spec."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli_helpers import one_error_line
from detector_helpers import assert_same_detections, build_yolo, load_coco_results, small_photos, write_gt
from visiontool.cli.main import app
from visiontool.models.protocol import DetectOptions

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> Path:
    return small_photos(tmp_path_factory.mktemp("yolophotos"), images_dir)


@pytest.fixture(scope="module")
def images(photos):
    return [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.png"))]


@pytest.fixture(scope="module")
def yolo(tmp_path_factory, images) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("yolo")
    return {"detect": build_yolo("yolov8n.yaml", d / "yolov8n-tiny.pt", images),
            "segment": build_yolo("yolov8n-seg.yaml", d / "yolov8n-seg-tiny.pt", images, seed=1)}


def native(path: Path):
    from ultralytics import YOLO

    return YOLO(str(path))


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_records_equal_ultralytics_predict_and_do_not_depend_on_the_batch(task, yolo, images):
    from visiontool.models.registry import load_detector

    det = load_detector(f"ultralytics:{yolo[task]}", "cpu", "float32")
    info = det.info
    assert (info.backend, info.family, info.paradigm, info.needs_nms) == ("ultralytics", "yolov8", "anchor-free", True)
    assert info.class_names[0] == "person" and len(info.class_names) == 80
    assert ("masks" in info.capabilities) == (task == "segment")
    ref = native(yolo[task])
    assert info.params == sum(p.numel() for p in ref.model.parameters())
    opts = DetectOptions(threshold=0.3, max_det=50, nms_iou=0.6)
    batch = det.predict(images, opts)
    for im, ours in zip(images, batch):
        r = ref.predict(im, conf=0.3, iou=0.6, max_det=50, verbose=False, retina_masks=True)[0]
        assert len(ours) > 3
        alone = det.predict([im], opts)[0]
        # one image alone goes through exactly Ultralytics' own call: identical numbers
        assert_same_detections(alone, r.boxes.xyxy.numpy(), r.boxes.conf.numpy(), r.boxes.cls.numpy(), box_tol=0,
                               score_tol=0)
        assert_same_detections(ours, r.boxes.xyxy.numpy(), r.boxes.conf.numpy(), r.boxes.cls.numpy(), box_tol=1e-3)
        assert list(ours.names[:3]) == [r.names[int(c)] for c in ours.class_ids[:3]]
        if task == "segment":
            assert ours.masks is not None and len(ours.masks) == len(ours)
            order = np.argsort(-r.boxes.conf.numpy(), kind="stable")
            for i in range(min(3, len(ours))):
                mask = alone.mask(i)
                assert mask.shape == (im.height, im.width)
                assert np.array_equal(mask, r.masks.data.numpy()[order[i]] > 0.5)
        else:
            assert ours.masks is None


def test_cli_coco_and_segmentation_output(yolo, photos, tmp_path):
    from visiontool.services.detect import run_detect

    pngs = sorted(str(p) for p in photos.glob("*.png"))
    spec = f"ultralytics:{yolo['segment']}"
    run = run_detect(pngs, spec, threshold=0.3, device="cpu")
    gt = write_gt(tmp_path / "gt.json", run.results)
    r = runner.invoke(app, ["detect", *pngs, "-m", spec, "-t", "0.3", "--device", "cpu", "-f", "coco", "--gt",
                            str(gt), "-q"])
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows and all("segmentation" in x for x in rows)
    coco, res = load_coco_results(gt, rows)
    assert len(res.getAnnIds()) == len(rows)
    r = runner.invoke(app, ["detect", pngs[0], "-m", spec, "-t", "0.3", "--device", "cpu", "-f", "json", "-q"])
    rec = json.loads(r.stdout)[0]
    seg = rec["detections"][0]["segmentation"]
    assert seg["size"] == [rec["height"], rec["width"]]


def test_no_network_and_nothing_written_outside_the_cache(yolo, photos, tmp_path):
    """A subprocess with an audit hook: Ultralytics' import, load and predict make no socket
    call (no DNS probe, no telemetry, no font download), write nothing into the working
    directory or the home config (settings go to visiontool's cache), print nothing on stdout
    but the records."""
    work, home, cache = tmp_path / "work", tmp_path / "home", tmp_path / "cache"
    for d in (work, home):
        d.mkdir()
    log = tmp_path / "net.log"
    code = (
        "import sys\n"
        f"log = open({str(log)!r}, 'w')\n"
        "def hook(event, args):\n"
        "    if event in ('socket.connect', 'socket.getaddrinfo', 'socket.gethostbyname', 'urllib.Request'):\n"
        "        log.write(event + ' ' + repr(args)[:200] + '\\n'); log.flush()\n"
        "sys.addaudithook(hook)\n"
        "from visiontool.cli.main import run\n"
        f"sys.argv = ['visiontool', 'detect', {str(sorted(photos.glob('*.png'))[0])!r}, '-m', "
        f"'ultralytics:{yolo['detect']}', '--device', 'cpu', '-t', '0.3', '-f', 'jsonl']\n"
        "run()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "XDG_"))}
    env.update(HOME=str(home), VISIONTOOL_CACHE=str(cache), PYTHONPATH=str(REPO / "src"))
    env.pop("HF_HUB_OFFLINE", None)  # not offline by configuration: visiontool itself must keep Ultralytics quiet
    p = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)  # one record: nothing else on stdout
    assert rec["detections"]
    assert log.read_text() == ""
    assert list(work.iterdir()) == []
    assert not (home / ".config" / "Ultralytics").exists()
    assert (cache / "ultralytics" / "Ultralytics" / "settings.json").is_file()


def test_missing_extra_is_exit_2_with_the_install_line(photos, monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # as if the package were not installed
    r = runner.invoke(app, ["detect", str(sorted(photos.glob("*.png"))[0]), "-m", "ultralytics:yolov8n.pt"])
    line = one_error_line(r, 2)
    assert "pip install 'visiontool[yolo]'" in line


def test_bad_specs(yolo, photos, tmp_path, monkeypatch):
    photo = str(sorted(photos.glob("*.png"))[0])
    r = runner.invoke(app, ["detect", photo, "-m", "ultralytics:"])
    assert "name an Ultralytics model" in one_error_line(r, 2)
    r = runner.invoke(app, ["detect", photo, "-m", f"ultralytics:{tmp_path / 'nope.pt'}"])
    assert "not found" in one_error_line(r, 2)
    r = runner.invoke(app, ["detect", photo, "-m", "ultralytics:yolov8q.pt", "--device", "cpu"])
    assert "did you mean 'ultralytics:yolov8" in one_error_line(r, 2)
    # a real name that is not in the cache, offline: the file and where to put it
    r = runner.invoke(app, ["detect", photo, "-m", "ultralytics:yolo11s-seg.pt", "--device", "cpu"])
    line = one_error_line(r, 1)
    where = Path(os.environ["VISIONTOOL_CACHE"]) / "checkpoints" / "ultralytics"
    assert "yolo11s-seg.pt" in line and str(where) in line
    # a .pt that is not an Ultralytics model (a plain state dict)
    import torch

    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    r = runner.invoke(app, ["detect", photo, "-m", f"ultralytics:{tmp_path / 'plain.pt'}", "--device", "cpu"])
    assert "not a model Ultralytics can load" in one_error_line(r, 1)
    r = runner.invoke(app, ["detect", photo, "-m", f"ultralytics:{yolo['detect']}", "--text", "dog"])
    assert "--text needs an open-vocabulary model" in one_error_line(r, 2)


def test_importing_ultralytics_leaves_other_libraries_alone(yolo):
    """Ultralytics replaces PIL.Image.open (unidentifiable files then import or install pi-heif)
    and torch.save on import; visiontool puts them back."""
    import torch
    from PIL import Image

    from visiontool.models.registry import load_detector

    load_detector(f"ultralytics:{yolo['detect']}", "cpu", "float32")
    assert Image.open.__module__ == "PIL.Image" and torch.save.__module__ == "torch.serialization"


def test_importing_ultralytics_keeps_the_thread_settings():
    """Ultralytics sets OMP_NUM_THREADS=1 on import when it is unset; visiontool imports torch
    first (so torch keeps its threads) and takes the variable back out (so the processes it
    starts, a local Ray cluster and its replicas, are not held to one thread)."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    code = ("import os\n"
            "from visiontool.models.ultralytics import import_ultralytics\n"
            "import_ultralytics()\n"
            "import torch, ultralytics\n"
            "print(os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads())")
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    plain = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert ours.returncode == 0 and plain.returncode == 0, ours.stderr[-2000:] + plain.stderr[-2000:]
    assert ours.stdout.split() == ["None", plain.stdout.strip()]


def test_predicting_keeps_torchs_thread_count(yolo, images, monkeypatch):
    """Ultralytics' predictor sets torch's thread count to min(8, cores - 1) when it sets itself
    up, and leaves it so (on 2 cores: one thread, for YOLO and every model after it). The
    forward pass runs with the caller's count, and the count is the same afterwards."""
    import torch
    from ultralytics.engine.predictor import BasePredictor

    from visiontool.models.registry import load_detector

    before = torch.get_num_threads()
    ours = 3 if before != 3 else 4  # a count Ultralytics' own choice would change
    seen: list[int] = []
    try:
        torch.set_num_threads(ours)
        det = load_detector(f"ultralytics:{yolo['detect']}", "cpu", "float32")
        det.model.predictor = None  # set up afresh by the predict below (where Ultralytics sets the count)
        real = BasePredictor.inference
        monkeypatch.setattr(BasePredictor, "inference",
                            lambda self, *a, **k: seen.append(torch.get_num_threads()) or real(self, *a, **k))
        det.predict(images[:2], DetectOptions(threshold=0.2))
        assert seen and set(seen) == {ours} and torch.get_num_threads() == ours
    finally:
        torch.set_num_threads(before)


def test_pose_models_fill_the_keypoints_column(images, tmp_path):
    from visiontool.convert import to_coco_results
    from visiontool.models.registry import load_detector
    from visiontool.types import ImageResult

    path = build_yolo("yolov8n-pose.yaml", tmp_path / "pose.pt", images)
    det = load_detector(f"ultralytics:{path}", "cpu", "float32")
    assert "keypoints" in det.info.capabilities and det.info.extra["task"] == "pose"
    ours = det.predict(images[:1], DetectOptions(threshold=0.2, max_det=5))[0]
    ref = native(path).predict(images[0], conf=0.2, max_det=5, verbose=False)[0]
    kp = ours.data["keypoints"]
    assert kp.shape == (len(ours), 17, 3) and len(ours) == len(ref.boxes) > 0
    order = np.argsort(-ref.boxes.conf.numpy(), kind="stable")
    assert np.abs(kp - ref.keypoints.data.numpy()[order]).max() <= 1e-4
    rows = to_coco_results(ImageResult("a.png", images[0].width, images[0].height, "m", image_id=1, detections=ours))
    assert all(len(r["keypoints"]) == 51 for r in rows)
