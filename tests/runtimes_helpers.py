"""Shared by the runtime tests: a tiny DETR with a small processor size, and record comparison."""
from __future__ import annotations

import json
from pathlib import Path

BOX_TOL = 0.05  # px, the bound for fp32 exports
SCORE_TOL = 1e-4


def tiny_detr_small(path: Path) -> Path:
    """The tiny DETR of detr_helpers, its processor resizing to 160-256 px (fast on 2 cores)."""
    from transformers import DetrImageProcessor

    from detr_helpers import build_tiny_detr

    build_tiny_detr(path)
    DetrImageProcessor(size={"shortest_edge": 160, "longest_edge": 256}).save_pretrained(path)
    return path


def detect_cli(photos, model, *extra, cache: Path, batch_size: int = 2):
    """``visiontool detect`` of ``photos`` with ``model`` through Typer's CliRunner, as a new
    command would run it (the loaded-model cache released), every detection kept (threshold 0),
    JSONL, with its own ``VISIONTOOL_CACHE``."""
    from typer.testing import CliRunner

    from visiontool.cli.main import app
    from visiontool.models import loader

    loader.release()  # each run loads (and finds its export) as a new command would
    return CliRunner().invoke(app, ["detect", *photos, "--model", str(model), "--device", "cpu", "-f", "jsonl",
                                    "--threshold", "0.0", "--batch-size", str(batch_size), *extra],
                              env={"VISIONTOOL_CACHE": str(cache)})


def torch_path_records(models: dict, photos, cache: Path) -> dict:
    """Each model's records on the torch path (``models``: key -> model directory)."""
    out = {}
    for key, model in models.items():
        r = detect_cli(photos, model, cache=cache)
        assert r.exit_code == 0, (key, r.stderr)
        out[key] = records(r.stdout)
    return out


def assert_same_unordered(want: list[dict], got: list[dict], least: int) -> int:
    """The same images, and each image's detections matched in any order
    (:func:`assert_same_detections_unordered`); at least ``least`` detections compared."""
    assert [r["image"] for r in want] == [r["image"] for r in got]
    n = sum(assert_same_detections_unordered(a["detections"], b["detections"]) for a, b in zip(want, got))
    assert n >= least, n
    return n


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def assert_same_records(a: list[dict], b: list[dict], box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL) -> int:
    """Same images, same detections (label, category) with boxes within ``box_tol`` px and
    scores within ``score_tol``, in order; returns how many detections were compared."""
    assert [r["image"] for r in a] == [r["image"] for r in b]
    n = 0
    for ra, rb in zip(a, b):
        da, db = ra["detections"], rb["detections"]
        assert len(da) == len(db), (ra["image"], len(da), len(db))
        for x, y in zip(da, db):
            assert (x["label"], x["category_id"]) == (y["label"], y["category_id"]), (x, y)
            assert abs(x["score"] - y["score"]) <= score_tol, (x, y)
            assert max(abs(p - q) for p, q in zip(x["box"], y["box"])) <= box_tol, (x, y)
            n += 1
    return n


def assert_same_detections_unordered(a: list[dict], b: list[dict], box_tol: float = BOX_TOL,
                                     score_tol: float = SCORE_TOL) -> int:
    """As :func:`assert_same_records` for one image's detections, each matched to one of the
    other's (same class, box and score within tolerance) whatever their order: random-weight
    dense detectors give near-tied scores whose order float rounding may swap."""
    assert len(a) == len(b), (len(a), len(b))
    left = list(b)
    for x in a:
        for j, y in enumerate(left):
            if (x["category_id"] == y["category_id"] and abs(x["score"] - y["score"]) <= score_tol
                    and max(abs(p - q) for p, q in zip(x["box"], y["box"])) <= box_tol):
                del left[j]
                break
        else:
            raise AssertionError(f"no counterpart for {x}")
    return len(a)


def detections_as_dicts(det) -> list[dict]:
    """A Detections (Python API) as record-like dicts."""
    return [{"category_id": int(c), "score": float(s), "box": [float(v) for v in box]}
            for box, s, c in zip(det.xyxy, det.scores, det.class_ids)]


def gt_from_records(recs: list[dict], path: Path) -> Path:
    """A COCO ground truth at ``path`` holding every other detection of ``recs`` (so a model
    scored on it gets an AP strictly between 0 and 1); categories are the labels, sorted."""
    names = sorted({d["label"] for r in recs for d in r["detections"]})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    cat_of = {c["name"]: c["id"] for c in cats}
    images, anns = [], []
    for i, r in enumerate(recs, 1):
        images.append({"id": i, "file_name": Path(r["image"]).name, "width": r["width"], "height": r["height"]})
        for d in r["detections"][::2]:
            x1, y1, x2, y2 = d["box"]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat_of[d["label"]],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path
