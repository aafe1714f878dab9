"""Benchmark `visiontool evaluate` against the COCO evaluators it could be built on.

Generates a seeded COCO-val-scale set into a temporary directory (5,000 images, ~35k
ground-truth objects with polygons, 1 % crowd regions as RLE, 80 categories with COCO's
gapped ids, 100 detections per image = 500k), then times each evaluator as a separate
process in the same run, end to end (interpreter start, imports, JSON parsing, evaluation):

* ``visiontool evaluate --format json`` (the installed CLI, this repository's code)
* a pycocotools script, a faster-coco-eval script, a hotcoco script and an
  ultrafast-pycocotools script (each: load GT, loadRes, evaluate, accumulate, summarize)

Wall time comes from the parent, peak RSS from ``os.wait4`` (per child). Linux carries
the parent's high-water RSS into a child it spawns (vfork + exec records the shared
mm's peak), so the parent never holds a data set: generation runs in a child process,
and the table prints the parent's own peak as the floor under every RSS figure. Every
process prints its 12 stats; the table says whether they are bit-identical to pycocotools'.
visiontool's modules are byte-compiled first, as pip did the engines' at install.

Usage::

    .venv/bin/python benchmarks/evaluate.py            # bbox + segm, full size
    .venv/bin/python benchmarks/evaluate.py --quick    # 500 images, for a smoke run
    .venv/bin/python benchmarks/evaluate.py --iou-type bbox --skip pycocotools
    # memory on a large valid input (30,000 images, 3M boxes, a 300 MB results file): compare
    # visiontool's peak RSS with the engine's own and with the file size printed in the header
    .venv/bin/python benchmarks/evaluate.py --images 30000 --iou-type bbox --repeats 1 \
        --skip pycocotools --skip faster-coco-eval
    # before/after a change, interleaved under the same load (this checkout vs the main one)
    PYTHONPATH=$PWD/src .venv/bin/python benchmarks/evaluate.py --baseline /work/main/src \
        --skip pycocotools --skip faster-coco-eval
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
VISIONTOOL = str(Path(PY).with_name("visiontool"))

# COCO's 80 category ids (1-90 with gaps)
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
            31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
            56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
            85, 86, 87, 88, 89, 90]


def _octagon(x, y, w, h):
    """A polygon inside box xywh (flat [x1, y1, x2, y2, ...])."""
    dx, dy = w * 0.25, h * 0.25
    return [x + dx, y, x + w - dx, y, x + w, y + dy, x + w, y + h - dy,
            x + w - dx, y + h, x + dx, y + h, x, y + h - dy, x, y + dy]


def _poly_area(p):
    xs, ys = np.asarray(p[0::2]), np.asarray(p[1::2])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def generate(out_dir: Path, n_images: int = 5000, dets_per_image: int = 100, seed: int = 0,
             masks: bool = False) -> tuple[Path, Path]:
    """Write ``gt.json`` and ``dt_bbox.json`` (or ``dt_segm.json`` with RLE masks) into out_dir.

    Boxes span small/medium/large; 1 % of GT are crowd regions (uncompressed RLE, as in
    COCO); detections are jittered copies of GT (true positives at varied IoU) plus
    random boxes, with scores rounded to 4 decimals so ties occur.
    """
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, anns, dets = [], [], []
    ann_id = 1  # COCO numbers annotations from 1 (id 0 sends evaluate to the reference engine)
    for i in range(n_images):
        iid = i + 1
        w, h = int(rng.integers(320, 641)), int(rng.integers(240, 641))
        images.append({"id": iid, "file_name": f"{iid:012d}.jpg", "width": w, "height": h})
        n_gt = int(rng.poisson(7))
        gts = []
        for _ in range(n_gt):
            scale = rng.choice([rng.uniform(4, 32), rng.uniform(32, 96), rng.uniform(96, min(w, h))])
            bw = float(min(w - 1, max(2.0, scale * rng.uniform(0.5, 1.5))))
            bh = float(min(h - 1, max(2.0, scale * rng.uniform(0.5, 1.5))))
            bx, by = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            bx, by, bw, bh = (round(v, 2) for v in (bx, by, bw, bh))
            cat = int(rng.choice(COCO_IDS))
            crowd = rng.random() < 0.01
            if crowd:
                rle = mask_utils.frPyObjects(np.array([[bx, by, bw, bh]]), h, w)[0]
                m = mask_utils.decode(rle)
                # uncompressed RLE counts, as COCO stores crowd regions
                flat = m.flatten(order="F")
                change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
                counts = np.diff(np.concatenate([[0], change])).tolist()
                seg = {"size": [h, w], "counts": counts}
                area = float(mask_utils.area(rle))
            else:
                poly = [round(v, 2) for v in _octagon(bx, by, bw, bh)]
                seg = [poly]
                area = round(_poly_area(poly), 4)
            anns.append({"id": ann_id, "image_id": iid, "category_id": cat, "bbox": [bx, by, bw, bh],
                         "area": area, "iscrowd": int(crowd), "segmentation": seg})
            gts.append((bx, by, bw, bh, cat))
            ann_id += 1
        boxes, cats = [], []
        for g in gts:
            for _ in range(int(rng.integers(1, 4))):
                if len(boxes) >= dets_per_image:
                    break
                bx, by, bw, bh, cat = g
                j = rng.normal(0, 0.08, 4)
                nb = [bx + j[0] * bw, by + j[1] * bh, bw * (1 + j[2]), bh * (1 + j[3])]
                boxes.append(nb)
                cats.append(cat if rng.random() < 0.9 else int(rng.choice(COCO_IDS)))
        n_jit = len(boxes)
        while len(boxes) < dets_per_image:
            bw, bh = float(rng.uniform(4, w / 2)), float(rng.uniform(4, h / 2))
            boxes.append([float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh])
            cats.append(int(rng.choice(COCO_IDS)))
        boxes = np.clip(np.asarray(boxes, dtype=np.float64), 0.5, None)
        boxes[:, 2] = np.minimum(boxes[:, 2], w - boxes[:, 0])
        boxes[:, 3] = np.minimum(boxes[:, 3], h - boxes[:, 1])
        # jittered copies of GT score higher than random boxes, as a real detector's would
        scores = np.round(rng.random(len(boxes)) * 0.6, 4)
        scores[:n_jit] = np.round(0.3 + 0.7 * rng.random(n_jit), 4)
        if masks:
            polys = [_octagon(*b) for b in boxes.tolist()]
            rles = mask_utils.frPyObjects(polys, h, w)
            for s, c, r in zip(scores.tolist(), cats, rles):
                dets.append({"image_id": iid, "category_id": c, "score": s,
                             "segmentation": {"size": [h, w], "counts": r["counts"].decode("ascii")}})
        else:
            for b, s, c in zip(boxes.tolist(), scores.tolist(), cats):
                dets.append({"image_id": iid, "category_id": c, "bbox": [round(v, 3) for v in b], "score": s})
    gt = {"info": {"description": "visiontool benchmark set", "seed": seed}, "images": images,
          "annotations": anns, "categories": [{"id": c, "name": f"class{c}", "supercategory": "x"}
                                              for c in COCO_IDS]}
    gt_path = out_dir / "gt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path = out_dir / ("dt_segm.json" if masks else "dt_bbox.json")
    dt_path.write_text(json.dumps(dets))
    return gt_path, dt_path


# One script per engine: load, evaluate, print the 12 stats as JSON on the last stdout line.
SCRIPTS = {
    "pycocotools": """
import json, sys, contextlib, io
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1]); dt = gt.loadRes(sys.argv[2]); e = COCOeval(gt, dt, sys.argv[3])
    e.evaluate(); e.accumulate(); e.summarize()
print(json.dumps([float(v) for v in e.stats]))
""",
    "faster-coco-eval": """
import json, sys, contextlib, io
from faster_coco_eval import COCO, COCOeval_faster
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1]); dt = gt.loadRes(sys.argv[2])
    e = COCOeval_faster(gt, dt, sys.argv[3], print_function=lambda *a, **k: None)
    e.evaluate(); e.accumulate(); e.summarize()
print(json.dumps([float(v) for v in e.stats]))
""",
    "hotcoco": """
import json, sys, contextlib, io
from hotcoco import COCO, COCOeval
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1]); dt = gt.load_res(sys.argv[2]); e = COCOeval(gt, dt, sys.argv[3])
    e.evaluate(); e.accumulate(); e.summarize()
print(json.dumps([float(v) for v in e.stats]))
""",
    "ultrafast-pycocotools": """
import json, sys
from ultrafast_pycocotools import COCO, COCOeval
gt = COCO(sys.argv[1], verbose=False); dt = gt.loadRes(sys.argv[2])
e = COCOeval(gt, dt, sys.argv[3], print_function=lambda *a: None)
e.evaluate(); e.accumulate(); e.summarize()
print(json.dumps([float(v) for v in e.stats]))
""",
}
STAT_KEYS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]


def run_timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, str, str, int]:
    """(wall s, peak RSS MB, stdout, stderr, returncode) of one child process."""
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        return wall, usage.ru_maxrss / 1024.0, fo.read().decode(), fe.read().decode(), proc.returncode


def stats_of(name: str, stdout: str) -> list[float] | None:
    try:
        if name.startswith("visiontool"):
            d = json.loads(stdout)
            return [float(d[k]) for k in STAT_KEYS]
        return json.loads(stdout.strip().splitlines()[-1])
    except Exception:  # a crashed engine: reported in the table
        return None


def bench(gt: Path, dt: Path, iou_type: str, engines: list[str], repeats: int,
          baseline: str | None = None) -> list[dict]:
    """Best (minimum) wall of ``repeats`` runs per engine, the runs interleaved round-robin so
    that load from other processes on the machine falls on every engine alike; pycocotools and
    faster-coco-eval (minutes) run once. ``baseline``: another checkout's ``src`` directory,
    timed as "visiontool (baseline)" in the same rounds (before/after a change)."""
    cmds, envs = {}, {}
    vt = [VISIONTOOL, "evaluate", "--gt", str(gt), "--pred", str(dt), "--iou-type", iou_type, "--format", "json"]
    for name in engines:
        if name == "visiontool":
            cmds[name] = vt
            if baseline:
                cmds["visiontool (baseline)"] = vt
                envs["visiontool (baseline)"] = {**os.environ, "PYTHONPATH": baseline}
        else:
            cmds[name] = [PY, "-c", SCRIPTS[name], str(gt), str(dt), iou_type]
    engines = list(cmds)
    best: dict[str, dict] = {}
    for rep in range(repeats):
        for name in engines:
            if rep > 0 and name in ("pycocotools", "faster-coco-eval"):
                continue
            wall, rss, out, errtxt, rc = run_timed(cmds[name], envs.get(name))
            if rc != 0:
                print(f"  {name}: exit {rc}: {errtxt.strip()[-500:]}", file=sys.stderr)
            print(f"  {name}: {wall:.2f} s, {rss:.0f} MB", file=sys.stderr)
            if name not in best or wall < best[name]["wall"]:
                best[name] = {"engine": name, "wall": wall, "rss": max(rss, best.get(name, {}).get("rss", 0)),
                              "stats": stats_of(name, out), "rc": rc, "walls": best.get(name, {}).get("walls", [])}
            else:
                best[name]["rss"] = max(best[name]["rss"], rss)
            best[name]["walls"].append(wall)
    return [best[name] for name in engines]


def table(rows: list[dict], iou_type: str, sizes: str) -> str:
    ref = next((r["stats"] for r in rows if r["engine"] == "pycocotools" and r["stats"]), None)
    natives = [r for r in rows if r["engine"] in ("hotcoco", "ultrafast-pycocotools") and r["rc"] == 0]
    fastest = min(natives, key=lambda r: r["wall"]) if natives else None
    lines = [f"### {iou_type}: {sizes}", "",
             "wall: best of the interleaved runs; median per-round ratio: the engine's wall over the "
             "fastest native engine's in the same round; RSS: the highest seen", "",
             "| engine | wall s | peak RSS MB | wall / fastest native | median per-round wall ratio | "
             "RSS / fastest native | stats == pycocotools |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["stats"] is None:
            same = "failed"
        elif ref is None:
            same = "n/a (pycocotools skipped)"
        else:
            diff = max(abs(a - b) for a, b in zip(r["stats"], ref))
            same = "bit-identical" if r["stats"] == ref else f"max |diff| {diff:.2e}"
        rw = f"{r['wall'] / fastest['wall']:.2f}x" if fastest else "-"
        rr = f"{r['rss'] / fastest['rss']:.2f}x" if fastest else "-"
        paired = [a / b for a, b in zip(r["walls"], fastest["walls"])] if fastest else []
        rm = f"{float(np.median(paired)):.2f}x" if len(paired) > 1 else "-"
        lines.append(f"| {r['engine']} | {r['wall']:.2f} | {r['rss']:.0f} | {rw} | {rm} | {rr} | {same} |")
    if fastest:
        lines.append("")
        lines.append(f"fastest native engine: {fastest['engine']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="500 images instead of 5,000")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--iou-type", choices=["bbox", "segm", "both"], default="both")
    ap.add_argument("--skip", action="append", default=[], help="engine to leave out (repeatable)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="interleaved runs per engine, best wall kept, worst RSS (pycocotools, faster-coco-eval: 1)")
    ap.add_argument("--keep", metavar="DIR", help="generate into DIR and keep it")
    ap.add_argument("--baseline", metavar="SRC",
                    help="also time visiontool from another checkout's src directory (e.g. the main branch's), "
                         "interleaved with this one: a before/after comparison under the same load")
    ap.add_argument("--generate-into", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--masks", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.generate_into:  # the child that writes one set (see the module docstring)
        d = Path(args.generate_into)
        gt, _ = generate(d, n_images=args.images or 5000, masks=args.masks)
        (d / "n_gt").write_text(str(len(json.loads(gt.read_text())["annotations"])))
        return 0
    n = args.images or (500 if args.quick else 5000)
    engines = [e for e in ["visiontool", "pycocotools", "faster-coco-eval", "hotcoco", "ultrafast-pycocotools"]
               if e not in args.skip]
    # the engines' modules were byte-compiled when pip installed them; do the same for this
    # checkout's (an editable install under PYTHONDONTWRITEBYTECODE=1 would otherwise compile
    # them again in every run: ~25 ms of visiontool's time)
    import compileall

    compileall.compile_dir(str(REPO / "src" / "visiontool"), quiet=1)
    if args.baseline:
        compileall.compile_dir(str(Path(args.baseline) / "visiontool"), quiet=1)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vt-bench-eval-"))
    try:
        out = []
        for iou_type in (["bbox", "segm"] if args.iou_type == "both" else [args.iou_type]):
            d = tmp / iou_type
            gt, dt = d / "gt.json", d / f"dt_{iou_type}.json"
            if not (gt.exists() and dt.exists() and (d / "n_gt").exists()):
                print(f"generating {iou_type} set ({n} images) in {d} ...", file=sys.stderr)
                # in a child: a parent grown by the data set would lift every child's peak RSS
                cmd = [PY, __file__, "--generate-into", str(d), "--images", str(n)]
                subprocess.run(cmd + (["--masks"] if iou_type == "segm" else []), check=True)
            n_gt = int((d / "n_gt").read_text())
            sizes = (f"{n} images, {n_gt} GT, {n * 100} detections, 80 classes, "
                     f"dt file {dt.stat().st_size / 1e6:.0f} MB")
            print(f"{iou_type}: {sizes}", file=sys.stderr)
            rows = bench(gt, dt, iou_type, engines, args.repeats, args.baseline)
            out.append(table(rows, iou_type, sizes))
        floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        out.append(f"RSS floor (this script's own peak, inherited by each child): {floor:.0f} MB")
        print("\n\n".join(out))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
