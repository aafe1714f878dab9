"""Benchmark `visiontool segment` with transformers SAM-family models: real architectures, random weights.

Models (built once into --work, PyTorch's default initialisation so masks are neither empty nor
full): SAM 2.1 hiera-tiny (``Sam2VideoConfig()``, the ``facebook/sam2.1-hiera-tiny`` layout)
and SAM 3 (``Sam3VideoConfig()``: ViT-L backbone, CLIP text encoder, detector, tracker; 3.4 GB).

1. **Cache hit vs cold, end to end as processes** (truck.jpg, 1800x1200): the same command
   line with a new point prompt, cold (empty cache: weights hashed, model loaded, encoder run)
   vs a cache hit (numpy heads only: neither torch nor transformers is imported). SAM 3 also:
   a text prompt on an image whose backbone output is cached.
2. **64 box prompts on one image** vs transformers' own batched call on the same image
   features (``model(image_embeddings=..., input_boxes=64 boxes, multimask_output=False)`` +
   ``processor.post_process_masks``); every mask's IoU with transformers' is checked.
3. **Video propagation** of one object through a 120-frame 640x360 clip (SAM 2.1 hiera-tiny):
   visiontool's streaming propagation vs a straightforward loop over transformers' documented
   ``Sam2VideoModel`` recipe (decode the clip, ``init_video_session(video=frames)``,
   ``add_inputs_to_inference_session``, ``propagate_in_video_iterator``, ``post_process_masks``),
   both timed from the first decoded frame to the last mask (model loading excluded), each in
   its own process; mean mask IoU between the two. ``--runtime torch openvino``: visiontool once
   per runtime against the same recipe run (the image encoder's export made before timing).
4. **Peak RSS** of visiontool's propagation through 480 frames vs 120 frames (separate processes).

Every measurement runs in a child process (a parent's peak RSS would be inherited), so the
parent stays small. The machine is shared: run it quiet (``uptime`` load < ~0.7) and read
ratios, not seconds. Usage::

    .venv/bin/python benchmarks/segment_family.py                 # everything (~1.5 h on 2 cores)
    .venv/bin/python benchmarks/segment_family.py --only cache boxes --work /tmp/vt-bench
    .venv/bin/python benchmarks/segment_family.py --only video --frames 24   # a quick look
    .venv/bin/python benchmarks/segment_family.py --only video --runtime torch openvino   # both ratios
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
IMAGES = (REPO.parent / "shared" / "data" / "images").resolve()
SAM21 = "sam2.1-hiera-tiny"
SAM3 = "sam3"


# ----------------------------------------------------------------------------- models (built in children)
def _reinit(model, seed: int = 0) -> None:
    """PyTorch's default initialisation (transformers' N(0, 0.02) gives masks that ignore the
    prompt), so the masks compared below are informative."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
                mod.reset_parameters()


def build_sam21(path: Path) -> None:
    import torch
    import transformers as T
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    torch.manual_seed(0)
    model = T.Sam2VideoModel(T.Sam2VideoConfig()).eval()
    _reinit(model)
    model.save_pretrained(path)
    T.Sam2VideoProcessor(image_processor=T.Sam2ImageProcessor(),
                         video_processor=Sam2VideoVideoProcessor()).save_pretrained(path)


def build_sam3(path: Path) -> None:
    import torch
    import transformers as T
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = T.Sam3VideoModel(T.Sam3VideoConfig()).eval()
    _reinit(model)
    model.save_pretrained(path)
    f = path / "model.safetensors"
    if f.is_file():  # transformers 5.24 saves the tracker under a doubled prefix; the hub has one
        sd = load_file(str(f))
        save_file({k.replace("tracker_model.tracker_model.", "tracker_model."): v for k, v in sd.items()}, str(f),
                  metadata={"format": "pt"})
    tok = _clip_tokenizer(path)
    T.Sam3Processor(image_processor=T.Sam3ImageProcessor(), tokenizer=tok).save_pretrained(path)


def _clip_tokenizer(tmp: Path):
    """A small byte-level CLIP BPE vocabulary (the real one cannot be downloaded here)."""
    import transformers as T

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(letters)})
    merges = ["t r", "u c", "tr uc", "k </w>", "c k</w>"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    d = Path(tempfile.mkdtemp(dir=tmp))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return T.CLIPTokenizer(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt"),
                           pad_token="<|endoftext|>")


def ensure_models(work: Path, which: list[str]) -> dict[str, Path]:
    out = {}
    for name, fn in ((SAM21, "build_sam21"), (SAM3, "build_sam3")):
        if name not in which:
            continue
        path = work / name
        if not (path / "config.json").is_file():
            print(f"building {name} (random weights)…", file=sys.stderr, flush=True)
            child(f"import segment_family as B; from pathlib import Path; B.{fn}(Path({str(path)!r}))")
        out[name] = path
    return out


# ----------------------------------------------------------------------------- child processes
def child(code: str, env: dict | None = None, timeout: float = 4 * 3600) -> dict:
    """Run ``code`` in a fresh interpreter (benchmarks/ and src/ on the path); it may print
    one JSON object as its last stdout line, which is returned."""
    e = dict(os.environ, PYTHONPATH=f"{REPO / 'benchmarks'}{os.pathsep}{REPO / 'src'}", PYTHONWARNINGS="ignore",
             HF_HUB_OFFLINE="1")
    e.update(env or {})
    p = subprocess.run([PY, "-c", code], env=e, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"child failed:\n{p.stderr[-3000:]}")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def run_cli(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    p = subprocess.run([PY, "-m", "visiontool", "segment", *args], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"visiontool failed: {p.stderr}")
    return dt


# ----------------------------------------------------------------------------- [1] cache
def bench_cache(model: Path, image: Path, work: Path, reps: int, text: bool = False) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="vtcache-", dir=work))
    env = dict(os.environ, VISIONTOOL_CACHE=str(cache), PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO / "src"))
    base = [str(image), "--model", str(model), "--format", "json", "-q", "--device", "cpu"]
    cold = run_cli(base + ["--point", "600,400"], env)
    hits = [run_cli(base + ["--point", f"{700 + 10 * i},{450 + 5 * i}"], env) for i in range(max(reps, 3))]
    out = {"cold_s": cold, "hit_s": min(hits), "hits_s": hits, "cold_over_hit": cold / min(hits)}
    if text:
        out["text_after_point_s"] = min(run_cli(base + ["--text", "truck", "--threshold", "0.5"], env)
                                        for _ in range(2))
    return out


# ----------------------------------------------------------------------------- [2] 64 boxes
BOXES_CODE = r"""
import json, time, numpy as np, torch, transformers as T
from visiontool.io.images import load_image, ImageSource
from visiontool.models.registry import load_segmenter
from visiontool.types import Prompt
import segment_family as B
rgb = np.asarray(load_image(ImageSource({image!r}, False)))
h, w = rgb.shape[:2]
eng = load_segmenter({model!r}, "cpu", "float32", use_cache=False, quiet=True)
feats = eng.embedding(rgb)
boxes = B.random_boxes(h, w)
prompts = [Prompt(box=b) for b in boxes]
cls = {{"sam2": "Sam2Model", "sam3": "Sam3TrackerModel"}}[eng.s.family]
model = eng.torch_model(cls)
ip = eng.image_processor()
proc = T.Sam3TrackerProcessor(image_processor=ip) if eng.s.family == "sam3" else T.Sam2Processor(image_processor=ip)
emb = [torch.from_numpy(np.array(f))[None] for f in feats]
def theirs():
    inputs = proc(images=None, original_sizes=[[h, w]], input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.inference_mode():
        out = model(image_embeddings=emb, input_boxes=inputs["input_boxes"], multimask_output=False)
    return proc.post_process_masks(out.pred_masks, [[h, w]])[0][:, 0].numpy()
def ours():
    preds = eng.predict(feats, prompts, (h, w), multimask=False)
    return eng.masks_from_predictions(preds, prompts, (h, w))
t_ref, t_ours = [], []
for _ in range({reps}):
    t = time.perf_counter(); ref = theirs(); t_ref.append(time.perf_counter() - t)
    t = time.perf_counter(); dets = ours(); t_ours.append(time.perf_counter() - t)
from pycocotools import mask as mu
ious = []
for i in range(len(boxes)):
    a = mu.decode({{"size": dets.masks[i]["size"], "counts": dets.masks[i]["counts"].encode()}}).astype(bool)
    b = ref[i]
    ious.append(float((a & b).sum() / max((a | b).sum(), 1)))
print(json.dumps({{"transformers_s": min(t_ref), "ours_s": min(t_ours), "transformers_runs_s": t_ref,
                  "ours_runs_s": t_ours, "speedup": min(t_ref) / min(t_ours), "min_iou": min(ious),
                  "mean_fg_fraction": float(np.mean(dets.areas()) / (h * w))}}))
"""


def random_boxes(h: int, w: int, n: int = 64, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    bw, bh = rng.uniform(40, 600, n), rng.uniform(40, 600, n)
    x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return np.stack([x1, y1, x1 + bw, y1 + bh], 1).round(1)


def bench_boxes(model: Path, image: Path, reps: int) -> dict:
    return child(BOXES_CODE.format(model=str(model), image=str(image), reps=reps))


# ----------------------------------------------------------------------------- [3, 4] video
OURS_VIDEO = r"""
import json, resource, time, numpy as np
from visiontool.io.video import iter_frames, prefetch
from visiontool.models.registry import load_segmenter
from visiontool.types import Prompt
eng = load_segmenter({model!r}, "cpu", "float32", use_cache=False, quiet=True, runtime={runtime!r})
eng.torch_model(eng.s.video_class)
t = time.perf_counter()
if eng.runtime != "torch":  # the image encoder's export: made (or found in the cache) and compiled, not timed
    eng.runtime_encoder(eng.s.image_size)
setup_s = time.perf_counter() - t
t = time.perf_counter()
frames = ((f.index, f.time_s, np.asarray(f.image)) for f in prefetch(iter_frames({clip!r}), 2))
rles = []
for fm in eng.propagate(frames, [Prompt(points=[{point}], labels=[1], frame=0)]):
    rles.append([m["counts"] for m in fm[2].masks])
dt = time.perf_counter() - t
if {save!r}:
    json.dump(rles, open({save!r}, "w"))
print(json.dumps({{"seconds": dt, "frames": len(rles), "fps": len(rles) / dt, "runtime": eng.runtime,
                  "export_setup_s": setup_s,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

RECIPE_VIDEO = r"""
import json, resource, time, numpy as np, torch, transformers as T
from visiontool.io.video import iter_frames
model = T.Sam2VideoModel.from_pretrained({model!r}).eval()
processor = T.Sam2VideoProcessor.from_pretrained({model!r})
t = time.perf_counter()
video = [np.asarray(f.image) for f in iter_frames({clip!r})]  # load_video (PyAV)
session = processor.init_video_session(video=video, inference_device="cpu", dtype=torch.float32)
processor.add_inputs_to_inference_session(inference_session=session, frame_idx=0, obj_ids=1,
                                          input_points=[[[{point}]]], input_labels=[[[1]]])
masks = {{}}
with torch.inference_mode():
    model(inference_session=session, frame_idx=0)
    for out in model.propagate_in_video_iterator(session):
        m = processor.post_process_masks([out.pred_masks], original_sizes=[[session.video_height,
                                         session.video_width]], binarize=False)[0]
        masks[out.frame_idx] = (m[0, 0] > 0.0).numpy()
dt = time.perf_counter() - t
from pycocotools import mask as mu
rles = [mu.encode(np.asfortranarray(masks[i].astype(np.uint8)))["counts"].decode() for i in sorted(masks)]
json.dump(rles, open({save!r}, "w"))
print(json.dumps({{"seconds": dt, "frames": len(masks), "fps": len(masks) / dt,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def make_clip(path: Path, frames: int) -> list:
    return child(f"from visiontool.io.video import write_test_video; import json; "
                 f"b = write_test_video({str(path)!r}, frames={frames}, size=(640, 360), fps=30, squares=2); "
                 f"print(json.dumps({{'boxes': b[0]}}))")["boxes"]


def _mean_iou(a_path: Path, b_path: Path, size=(360, 640)) -> float:
    import numpy as np
    from pycocotools import mask as mu

    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    ious = []
    for x, y in zip(a, b):
        mx = mu.decode({"size": list(size), "counts": x[0].encode()}).astype(bool) if x else np.zeros(size, bool)
        my = mu.decode({"size": list(size), "counts": y.encode()}).astype(bool)
        union = (mx | my).sum()
        ious.append(1.0 if union == 0 else float((mx & my).sum() / union))
    return float(np.mean(ious)) if len(a) == len(b) else float("nan")


def make_export(model: Path, runtime: str, env: dict) -> float:
    """Make the image encoder's ``runtime`` export in a process of its own (kept in ``env``'s
    ``VISIONTOOL_CACHE``, where the timed runs find it); its seconds."""
    t = time.perf_counter()
    child(f"from visiontool.models.registry import load_segmenter; "
          f"e = load_segmenter({str(model)!r}, 'cpu', 'float32', use_cache=False, quiet=True, runtime={runtime!r}); "
          f"e.runtime_encoder(e.s.image_size)", env=env)
    return time.perf_counter() - t


def bench_video(model: Path, work: Path, frames: int, runtimes: list[str] = ("torch",)) -> dict:
    """The recipe once, then visiontool once per runtime (``torch``: transformers' own image
    encoder; ``openvino`` / ``onnxruntime`` / ``auto``: the image encoder's export, made first in
    a process of its own (``export_s``, kept in ``work``'s ``VISIONTOOL_CACHE`` for later runs),
    then loaded and compiled before the clock starts: ``export_setup_s``), each in its own
    process, so the timed run's peak RSS is that of a run finding the export in the cache."""
    clip = work / f"clip{frames}.mp4"
    boxes = make_clip(clip, frames)
    b = boxes[0]
    point = f"[{(b[0] + b[2]) / 2}, {(b[1] + b[3]) / 2}]"
    env = {"VISIONTOOL_CACHE": str(work / "vt-cache")}
    recipe = child(RECIPE_VIDEO.format(model=str(model), clip=str(clip), point=point,
                                       save=str(work / "recipe.json")))
    out: dict = {"frames": frames, "recipe": recipe, "runs": {}, "load": [os.getloadavg()]}
    for rt in runtimes:
        if rt != "torch":  # the export is made once in its own process: the timed run finds it (as any later run)
            out.setdefault("export_s", {})[rt] = make_export(model, rt, env)
        save = work / f"ours-{rt}.json"
        ours = child(OURS_VIDEO.format(model=str(model), clip=str(clip), point=point, save=str(save),
                                       runtime=rt), env=env)
        out["runs"][rt] = {"ours": ours, "speedup": ours["fps"] / recipe["fps"],
                           "mean_iou": _mean_iou(save, work / "recipe.json")}
        out["load"].append(os.getloadavg())
    first = out["runs"][runtimes[0]]
    out.update(ours=first["ours"], speedup=first["speedup"], mean_iou=first["mean_iou"])  # the old keys
    return out


def bench_rss(model: Path, work: Path, short: int, long: int, runtime: str = "torch",
              reuse: dict | None = None) -> dict:
    """Peak RSS of visiontool's propagation through a ``short`` and a ``long`` clip, each in its
    own process, with the image encoder in ``runtime`` (its export made first, as in
    ``bench_video``). ``reuse``: the ``bench_video`` run of the same runtime on ``short`` frames,
    taken as the short run."""
    env = {"VISIONTOOL_CACHE": str(work / "vt-cache")}
    if runtime != "torch":
        make_export(model, runtime, env)
    out = {}
    for n in (short, long):
        if n == short and reuse is not None:
            out[n] = reuse
            continue
        clip = work / f"clip{n}.mp4"
        boxes = make_clip(clip, n)
        b = boxes[0]
        point = f"[{(b[0] + b[2]) / 2}, {(b[1] + b[3]) / 2}]"
        out[n] = child(OURS_VIDEO.format(model=str(model), clip=str(clip), point=point, save="", runtime=runtime),
                       env=env)
    return {"short": short, "long": long, "runtime": runtime, "runs": out,
            "rss_ratio": out[long]["peak_rss_mb"] / out[short]["peak_rss_mb"]}


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default=str(IMAGES / "truck.jpg"))
    ap.add_argument("--work", default=None, help="where the models and clips are kept (default: a temp dir)")
    ap.add_argument("--only", nargs="*", default=["cache", "boxes", "video", "rss"],
                    choices=["cache", "boxes", "video", "rss"])
    ap.add_argument("--models", nargs="*", default=[SAM21, SAM3], choices=[SAM21, SAM3])
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--long-frames", type=int, default=480)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runtime", nargs="+", default=["torch"], choices=["torch", "openvino", "onnxruntime", "auto"],
                    help="visiontool's image encoder in the video benchmark, one run each (e.g. torch openvino)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="vt-family-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    image = Path(args.image)
    need = list(args.models) if {"cache", "boxes"} & set(args.only) else []
    if {"video", "rss"} & set(args.only) and SAM21 not in need:
        need.append(SAM21)
    models = ensure_models(work, need)
    out: dict = {"image": str(image), "cpu_count": os.cpu_count(), "load_before": os.getloadavg()}
    for name in args.models:
        if "cache" in args.only:
            r = bench_cache(models[name], image, work, args.reps, text=name == SAM3)
            out[f"cache_{name}"] = r
            extra = f"; text after a point {r['text_after_point_s']:.2f} s" if "text_after_point_s" in r else ""
            print(f"[1] {name}: cold {r['cold_s']:.2f} s, new prompt on the cached image {r['hit_s']:.2f} s -> "
                  f"{r['cold_over_hit']:.1f}x{extra}", flush=True)
        if "boxes" in args.only:
            r = bench_boxes(models[name], image, args.reps)
            out[f"boxes_{name}"] = r
            print(f"[2] {name}: 64 boxes: transformers {r['transformers_s']:.2f} s, visiontool {r['ours_s']:.2f} s "
                  f"-> {r['speedup']:.2f}x; min mask IoU {r['min_iou']:.5f}", flush=True)
    if "video" in args.only:
        r = bench_video(models[SAM21], work, args.frames, args.runtime)
        out["video"] = r
        for rt, run in r["runs"].items():
            o = run["ours"]
            print(f"[3] {SAM21} video, {r['frames']} frames 640x360: documented recipe {r['recipe']['fps']:.3f} "
                  f"frames/s, visiontool --runtime {rt} {o['fps']:.3f} frames/s -> {run['speedup']:.2f}x; mean IoU "
                  f"{run['mean_iou']:.5f}; peak RSS recipe {r['recipe']['peak_rss_mb']:.0f} MB, visiontool "
                  f"{o['peak_rss_mb']:.0f} MB" + (f" (cached export loaded and compiled before timing: "
                                                  f"{o['export_setup_s']:.1f} s)" if rt != "torch" else ""),
                  flush=True)
        print(f"    load averages (before, after each run): {r['load']}", flush=True)
    if "rss" in args.only:
        rt = args.runtime[-1]
        reuse = out["video"]["runs"][rt]["ours"] if "video" in out else None
        r = bench_rss(models[SAM21], work, args.frames, args.long_frames, rt, reuse)
        out["rss"] = r
        runs = r["runs"]
        print(f"[4] peak RSS (--runtime {rt}): {r['short']} frames {runs[r['short']]['peak_rss_mb']:.0f} MB, "
              f"{r['long']} frames {runs[r['long']]['peak_rss_mb']:.0f} MB -> {r['rss_ratio']:.2f}x", flush=True)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
