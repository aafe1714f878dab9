# ruff: noqa: F811  (fixtures imported from ray_helpers are re-bound as test arguments)
"""--engine ray on a real local Ray cluster: the records equal a local run's, a killed driver
resumes without writing any image twice, a killed model actor is restarted, corrupt images
become error rows, segment --boxes-from equals segment locally."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ray_helpers import (CORRUPT, N_IMAGES, assert_same_records, child_env, committed_rows, find_actor_pids,
                         make_images, records_by_image, visiontool_cmd,
                         wait_for)
from visiontool.cli.main import app

pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")
runner = CliRunner()
TOTAL = N_IMAGES + len(CORRUPT)


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("ray-images") / "photos")


@pytest.fixture(scope="module")
def local_run(images, tiny_detr_fast):
    """The local command's records (jsonl) and its failure lines, for the same images."""
    res = invoke("detect", images, "-m", tiny_detr_fast, "-t", "0.05", "--device", "cpu", "-f", "jsonl", "-q")
    assert res.exit_code == 1, res.stderr  # the corrupt files
    failures = sorted(ln for ln in res.stderr.splitlines() if ln.startswith("visiontool: error:") and "could not"
                      not in ln)
    recs = records_by_image(res.stdout.splitlines())
    assert len(recs) == N_IMAGES and len(failures) == len(CORRUPT)
    assert sum(len(r["detections"]) for r in recs.values()) > N_IMAGES  # something to compare
    return recs, failures


def merged(out_dir, *extra) -> dict:
    res = invoke("merge", out_dir, "-f", "jsonl", *extra)
    assert res.exit_code == 0, res.stderr
    return records_by_image(res.stdout.splitlines())


def shard_positions(out_dir: Path) -> list[int]:
    positions = []
    for p in sorted((out_dir / "_manifest").glob("*.json")):
        entry = json.loads(p.read_text())
        assert (out_dir / entry["shard"]).is_file()
        lines = (out_dir / entry["shard"]).read_text().splitlines()
        assert len(lines) == entry["rows"] == len(entry["positions"])
        positions += entry["positions"]
    return positions


@pytest.fixture(scope="module")
def cluster_run(ray_cluster, images, tiny_detr_fast, tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("ray-out") / "run"
    monkeypatch_module.setenv("VISIONTOOL_RAY_SHARD_ROWS", "25")
    res = invoke("detect", images, "-m", tiny_detr_fast, "-t", "0.05", "--device", "cpu", "--engine", "ray",
                 "--output-dir", out)
    return out, res


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_cluster_records_equal_the_local_run(cluster_run, local_run):
    out, res = cluster_run
    local, failures = local_run
    assert res.exit_code == 1, res.stderr  # some rows failed: a summary and exit 1
    err = res.stderr.splitlines()
    assert err[0].startswith(f"ray: {TOTAL} of {TOTAL} images to do; 2 replicas")
    assert any(ln.startswith(f"ray: {TOTAL}/{TOTAL} images (100%)") and "images/s" in ln and "3 failed" in ln
               for ln in err), res.stderr
    named = sorted(ln for ln in err if ln.startswith("visiontool: error:") and "could not be processed" not in ln)
    assert named == failures  # every failure named, in the local command's words
    assert err[-1] == (f"visiontool: error: {len(CORRUPT)} of {TOTAL} images could not be processed (their rows in "
                       f"{out} carry \"error\")")
    assert res.stdout == ""  # data goes to the shards
    assert (out / "_SUCCESS").is_file() and not list((out / "_tmp").glob("*"))
    positions = shard_positions(out)
    assert sorted(positions) == list(range(1, TOTAL + 1))  # exactly one row per image
    assert_same_records(merged(out), local)
    # the failed images are rows too, with the error the local command printed
    every = merged(out, "--with-errors")
    errors = {n: r for n, r in every.items() if "error" in r}
    assert sorted(errors) == sorted(n for n in every if os.path.basename(n).startswith("bad_"))
    assert len(every) == TOTAL and len(errors) == len(CORRUPT)
    assert sorted(f"visiontool: error: {r['error']}" for r in errors.values()) == failures
    assert all(set(r) == {"image", "image_id", "width", "height", "model", "error"} for r in errors.values())


def test_rerun_without_resume_and_resume_with_other_options_are_refused(cluster_run, images, tiny_detr_fast):
    out, _ = cluster_run
    res = invoke("detect", images, "-m", tiny_detr_fast, "-t", "0.05", "--device", "cpu", "--engine", "ray",
                 "--output-dir", out)
    assert res.exit_code == 2 and "already holds a run (complete); add --resume" in res.stderr
    res = invoke("detect", images, "-m", tiny_detr_fast, "-t", "0.3", "--device", "cpu", "--engine", "ray",
                 "--output-dir", out, "--resume")
    assert res.exit_code == 2 and "threshold 0.05 then, 0.3 now" in res.stderr, res.stderr
    res = invoke("detect", images / "img001.jpg", "-m", tiny_detr_fast, "-t", "0.05", "--device", "cpu",
                 "--engine", "ray", "--output-dir", out, "--resume")
    assert res.exit_code == 2 and f"no longer list the same images as the run in {out} ({TOTAL} then, 1 now)" \
        in res.stderr, res.stderr
    # a finished run resumed: nothing to do, the same exit status
    res = invoke("detect", images, "-m", tiny_detr_fast, "-t", "0.05", "--device", "cpu", "--engine", "ray",
                 "--output-dir", out, "--resume")
    assert res.exit_code == 1 and f"ray: all {TOTAL} images are already in {out} (nothing to do)" in res.stderr


def test_merge_coco_with_gt_equals_the_local_coco_conversion(cluster_run, local_run, images, tmp_path):
    """merge -f coco --gt: the COCO results `detect -f coco --gt` makes of the same records
    (image ids from the GT's file names, categories matched by name), loadable by pycocotools."""
    from pycocotools.coco import COCO

    from detr_helpers import COCO_SUBSET
    from visiontool.convert import from_record, to_coco_results
    from visiontool.io.coco import GroundTruthIndex

    out, _ = cluster_run
    local, _ = local_run
    names = sorted(p.name for p in images.glob("img*.jpg"))
    gt = {"images": [{"id": 1000 + i, "file_name": n, "width": 96, "height": 96} for i, n in enumerate(names)],
          "annotations": [], "categories": [{"id": 500 + k, "name": v} for k, v in COCO_SUBSET.items()]}
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    res = invoke("merge", out, "-f", "coco", "--gt", gt_path, "-o", tmp_path / "preds.json")
    assert res.exit_code == 0, res.stderr
    ray_rows = json.loads((tmp_path / "preds.json").read_text())
    index = GroundTruthIndex.load(gt_path)
    local_rows = []
    for rec in local.values():  # the local run's order is the merge order (input order)
        r = from_record(rec)
        r.image_id = index.image_id_for(r.image)
        local_rows += to_coco_results(r, index)
    assert len(ray_rows) == len(local_rows) > 0
    for a, b in zip(ray_rows, local_rows):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert abs(a["score"] - b["score"]) < 1e-4 and max(abs(x - y) for x, y in zip(a["bbox"], b["bbox"])) < 1e-2
    assert {r["category_id"] for r in ray_rows} <= {500 + k for k in COCO_SUBSET}
    coco = COCO(str(gt_path))
    assert len(coco.loadRes(str(tmp_path / "preds.json")).anns) == len(ray_rows)


def test_evaluate_reads_the_output_directory_like_its_merged_file(cluster_run, local_run, images, tmp_path):
    """evaluate --pred DIR scores the run's records: the numbers of `merge -f coco --gt` + evaluate."""
    out, _ = cluster_run
    local, _ = local_run
    labels = sorted({d["label"] for rec in local.values() for d in rec["detections"]})
    cats = [{"id": 500 + k, "name": v} for k, v in enumerate(labels)]
    cat_of = {c["name"]: c["id"] for c in cats}
    images_, anns = [], []
    for i, rec in enumerate(local.values()):  # the GT: every other image's confident detections
        images_.append({"id": 1000 + i, "file_name": Path(rec["image"]).name, "width": 96, "height": 96})
        for d in rec["detections"][: (2 if i % 2 else 0)]:
            x1, y1, x2, y2 = d["box"]
            anns.append({"id": len(anns) + 1, "image_id": 1000 + i, "category_id": cat_of[d["label"]],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({"images": images_, "annotations": anns, "categories": cats}))
    assert anns
    assert invoke("merge", out, "-f", "coco", "--gt", gt_path, "-o", tmp_path / "p.json").exit_code == 0
    from_dir = invoke("evaluate", "--gt", gt_path, "--pred", out, "-f", "json")
    from_file = invoke("evaluate", "--gt", gt_path, "--pred", tmp_path / "p.json", "-f", "json")
    assert from_dir.exit_code == 0 and from_file.exit_code == 0, from_dir.stderr + from_file.stderr
    a, b = json.loads(from_dir.stdout), json.loads(from_file.stdout)
    assert a == b and a["map"] > 0


def test_killed_driver_resumes_without_writing_any_image_twice(ray_cluster, images, tiny_detr_fast, local_run,
                                                               tmp_path):
    out = tmp_path / "killed"
    cmd = visiontool_cmd("detect", images, "-m", tiny_detr_fast, "-t", "0.05", "--device", "cpu", "--engine", "ray",
                         "--address", ray_cluster, "--output-dir", out, "--batch-size", "1")
    driver = subprocess.Popen(cmd, env=child_env(VISIONTOOL_RAY_SHARD_ROWS=10), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        half = wait_for(lambda: committed_rows(out) >= TOTAL // 2, timeout=180, proc=driver)
        assert driver.poll() is None, f"the run ended before half way: {driver.stderr.read()}"
        assert half
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    done_at_kill = committed_rows(out)
    assert TOTAL // 2 <= done_at_kill < TOTAL
    assert not (out / "_SUCCESS").exists()
    # the same command with --resume: the rest, and nothing twice
    res = invoke("detect", images, "-m", tiny_detr_fast, "-t", "0.05", "--device", "cpu", "--engine", "ray",
                 "--output-dir", out, "--resume")
    assert res.exit_code == 1, res.stderr
    first = res.stderr.splitlines()[0]
    done_before = int(first.split(", ")[1].split()[0])
    assert done_before >= done_at_kill and first.startswith(f"ray: {TOTAL - done_before} of {TOTAL} images to do")
    assert sorted(shard_positions(out)) == list(range(1, TOTAL + 1))
    assert (out / "_SUCCESS").is_file() and not list((out / "_tmp").glob("*"))
    local, _ = local_run
    assert_same_records(merged(out), local)


def test_killed_model_actor_is_restarted_and_the_job_completes(ray_cluster, images, tiny_detr_fast, local_run,
                                                               tmp_path):
    out = tmp_path / "actor-killed"
    cmd = visiontool_cmd("detect", images, "-m", tiny_detr_fast, "-t", "0.05", "--device", "cpu", "--engine", "ray",
                         "--address", ray_cluster, "--output-dir", out, "--batch-size", "1")
    driver = subprocess.Popen(cmd, env=child_env(VISIONTOOL_RAY_SHARD_ROWS=10), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: committed_rows(out) >= 10, timeout=180, proc=driver), driver.stderr.read()
        actors = find_actor_pids("DetectUDF")
        assert actors, "no model actor process found"
        assert driver.poll() is None, "the run ended before an actor could be killed"
        os.kill(actors[0], signal.SIGKILL)
        _, err = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert committed_rows(out) == TOTAL and (out / "_SUCCESS").is_file(), err
    assert driver.returncode == 1, err  # only the corrupt images failed
    assert f"{len(CORRUPT)} of {TOTAL} images could not be processed" in err.splitlines()[-1]
    assert sorted(shard_positions(out)) == list(range(1, TOTAL + 1))
    local, _ = local_run
    assert_same_records(merged(out), local)


def test_segment_boxes_from_on_the_cluster_equals_segment_locally(ray_cluster, images, tiny_detr_fast, tmp_path):
    from segment_helpers import save_tiny_sam

    ckpt = save_tiny_sam(tmp_path / "sam_tiny.pth")
    chosen = [images / f"img{i:03d}.jpg" for i in range(0, 24, 3)] + [images / "bad_bytes.jpg"]
    det = invoke("detect", *chosen, "-m", tiny_detr_fast, "-t", "0.3", "--device", "cpu", "-f", "jsonl", "-q")
    assert det.exit_code == 1  # bad_bytes.jpg
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text(det.stdout)
    assert sum(len(json.loads(ln)["detections"]) for ln in det.stdout.splitlines()) >= 4
    common = ["--boxes-from", boxes, "--checkpoint", ckpt, "--device", "cpu", "--no-cache"]
    local = invoke("segment", *chosen[:-1], *common, "-f", "jsonl", "-q")
    assert local.exit_code == 0, local.stderr
    out = tmp_path / "seg"
    res = invoke("segment", *chosen, *common, "--engine", "ray", "--output-dir", out, "--replicas", "1", "-q")
    assert res.exit_code == 1, res.stderr  # bad_bytes.jpg is a row with error
    assert "bad_bytes.jpg" in res.stderr
    ray_recs = merged(out)
    local_recs = records_by_image(local.stdout.splitlines())
    assert sum(len(r["masks"]) for r in local_recs.values()) >= 4
    assert_same_records(ray_recs, local_recs)
    for name, r in local_recs.items():  # masks: pixel for pixel, or within a float's reach of the threshold
        from segment_helpers import decode

        for a, b in zip(r["masks"], ray_recs[name]["masks"]):
            ma, mb = decode(a["segmentation"]), decode(b["segmentation"])
            assert (ma != mb).sum() <= max(2, ma.size // 10000), name
