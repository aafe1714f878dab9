"""Benchmark: `visiontool detect --engine ray` against the local command, on this machine.

The tiny DETR of the tests and the DETR-R50 architecture (``DetrConfig()``, random weights;
both with a 320-480 px image processor instead of COCO's 800 px, so that 400 images take
minutes on 2 cores) over 400 copies of the shared photos (longest side 320 px). Every run is
a fresh ``visiontool`` process timed from spawn to exit:

* ``local``: the local command (``-f jsonl -o FILE``);
* ``ray 1×2cpu own``: ``--engine ray --replicas 1 --cpus-per-replica 2`` starting its own local
  cluster (what a user without a cluster types; the replica gets the 2 threads local uses);
* ``ray 1×2cpu joined`` / ``ray 2×1cpu joined``: joining a cluster already running on this
  machine (``--address``; what a cluster user does), one replica with 2 CPUs, then two with 1;
  the cluster's first job (``1st job``: it also starts Ray Data's three detached helper actors,
  which later jobs find running) is timed apart;
* the driver's peak resident memory (``VmHWM``) with the tiny model at 400 and 4,000 rows:
  it holds counters and a done bitmap, not records, so it should not grow with the rows.

Timings on a shared machine are only worth something when it is quiet: the benchmark waits
until the 1-minute load average is below ``--max-load`` (default 0.7) and prints the load
before and after every run.

    python benchmarks/scale.py [--models tiny,r50] [--images 400] [--memory-rows 400,4000] [--max-load 0.7]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "data" / "images"
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

# the driver's own high-water mark (VmHWM; ru_maxrss would carry the parent's across fork+exec)
RSS_WRAPPER = """
import atexit, os, sys
def _hwm():
    kb = [int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]
    open(os.environ["VT_RSS_OUT"], "w").write(str(kb[0] if kb else 0))
atexit.register(_hwm)
from visiontool.cli.main import run
sys.argv = ["visiontool"] + sys.argv[1:]
run()
"""
SUMMARY = re.compile(r"^(\d+) images? in ([\d.]+) s \(([\d.]+) images/s(?:, ([\d.]+) once the replicas were up)?")


def load1() -> float:
    return os.getloadavg()[0]


def wait_quiet(max_load: float, wait_s: float) -> float:
    end = time.monotonic() + wait_s
    while load1() >= max_load and time.monotonic() < end:
        print(f"  (load {load1():.2f} >= {max_load}: waiting)", file=sys.stderr, flush=True)
        time.sleep(30)
    return load1()


def build_models(root: Path, which: list[str]) -> dict[str, str]:
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

    from detr_helpers import build_tiny_detr

    size = {"shortest_edge": 320, "longest_edge": 480}
    out = {}
    if "tiny" in which:
        p = build_tiny_detr(root / "tiny-detr")
        DetrImageProcessor(size=size).save_pretrained(p)
        out["tiny"] = str(p)
    if "r50" in which:
        torch.manual_seed(0)
        p = root / "detr-r50-random"
        DetrForObjectDetection(DetrConfig()).eval().save_pretrained(p)
        DetrImageProcessor(size=size).save_pretrained(p)
        out["r50"] = str(p)
    return out


def make_images(folder: Path, n: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    bases = []
    for p in sorted(IMAGES.glob("*.jpg")):
        im = Image.open(p).convert("RGB")
        im.thumbnail((320, 320))
        bases.append(im)
    for i in range(n):
        bases[i % len(bases)].save(folder / f"img{i:05d}.jpg", quality=90)
    return folder


def run(args: list[str], env: dict, label: str, max_load: float, wait_s: float) -> dict:
    before = wait_quiet(max_load, wait_s)
    rss_file = tempfile.mktemp(prefix="vt-rss-")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *args], env=dict(env, VT_RSS_OUT=rss_file),
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = load1()
    rss = None
    if os.path.exists(rss_file):
        rss = int(Path(rss_file).read_text()) / 1024
        os.unlink(rss_file)
    if p.returncode != 0:
        raise SystemExit(f"{label} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rate = steady = None
    for line in p.stderr.splitlines():
        m = SUMMARY.match(line.strip())
        if m:
            rate = float(m.group(3))
            steady = float(m.group(4)) if m.group(4) else None
    print(f"  {label:<28} wall {wall:7.1f} s  engine rate {rate if rate is not None else float('nan'):7.2f} img/s  "
          f"steady {steady or float('nan'):7.2f} img/s  driver peak {rss or 0:6.0f} MB  load {before:.2f} -> "
          f"{after:.2f}", flush=True)
    return {"label": label, "wall": wall, "rate": rate, "steady": steady, "rss_mb": rss, "load": (before, after)}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,r50")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--memory-rows", default="400,4000")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every configuration; the best wall counts")
    ap.add_argument("--max-load", type=float, default=0.7)
    ap.add_argument("--wait-s", type=float, default=1800.0, help="longest wait for a quiet machine per run")
    ap.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = ap.parse_args()


    import ray

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows_for_memory = [int(x) for x in args.memory_rows.split(",") if x.strip()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", VISIONTOOL_RAY_SHARD_ROWS="100")
    os.environ.update({k: env[k] for k in ("PYTHONPATH", "RAY_USAGE_STATS_ENABLED", "HF_HUB_OFFLINE")})
    results: dict = {"cpus": os.cpu_count(), "ray": ray.__version__, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="vt-scale-") as tmp:
        root = Path(tmp)
        paths = build_models(root, models + (["tiny"] if rows_for_memory and "tiny" not in models else []))
        photos = make_images(root / "photos", max([args.images] + rows_for_memory))
        subsets = {}
        for n in sorted({args.images, *rows_for_memory}):
            d = root / f"set{n}"
            d.mkdir()
            for i in range(n):
                os.symlink(photos / f"img{i:05d}.jpg", d / f"img{i:05d}.jpg")
            subsets[n] = d
        print(f"{os.cpu_count()} CPUs, ray {ray.__version__}; {args.images} images of <= 320 px, models at "
              f"320-480 px", flush=True)
        for m in models:
            print(f"{m}:", flush=True)
            common = ["detect", str(subsets[args.images]), "-m", paths[m], "-t", "0.5", "--device", "cpu"]
            warm = ["detect", *sorted(map(str, subsets[args.images].iterdir()))[:8], "-m", paths[m], "--device", "cpu"]
            # warm the file cache and the imports, untimed
            subprocess.run([sys.executable, "-m", "visiontool", *warm, "-q", "-f", "jsonl", "-o",
                            str(root / "w.jsonl")], env=env, capture_output=True)
            subprocess.run([sys.executable, "-m", "visiontool", *warm, "-q", "--engine", "ray", "--output-dir",
                            str(root / f"warm-{m}")], env=env, capture_output=True)
            by_label: dict[str, list] = {}
            for k in range(args.rounds):
                rounds = [run(common + ["-f", "jsonl", "-o", str(root / f"{m}-local.jsonl")], env, "local",
                              args.max_load, args.wait_s),
                          run(common + ["--engine", "ray", "--replicas", "1", "--cpus-per-replica", "2",
                                        "--output-dir", str(root / f"{m}-own-{k}")], env, "ray 1x2cpu own cluster",
                              args.max_load, args.wait_s)]
                # a cluster started as a user starts one (`ray start --head`), joined with --address
                port = free_port()
                ray_exe = str(Path(sys.executable).with_name("ray"))
                temp = tempfile.mkdtemp(prefix="vtscale-", dir="/tmp")  # short: Ray's socket paths live under it
                subprocess.run([ray_exe, "start", "--head", "--port", str(port), "--num-cpus", str(os.cpu_count()),
                                "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp],
                               env=env, capture_output=True, check=True, timeout=180)
                address = f"127.0.0.1:{port}"
                try:
                    # the first job on a fresh cluster also starts Ray Data's helper actors (detached:
                    # later jobs find them), so it is timed apart from the jobs that follow
                    for replicas, cpus, label in ((1, 2, "ray 1x2cpu joined, 1st job"), (1, 2, "ray 1x2cpu joined"),
                                                  (2, 1, "ray 2x1cpu joined")):
                        rounds.append(run(common + ["--engine", "ray", "--address", address, "--replicas",
                                                    str(replicas), "--cpus-per-replica", str(cpus), "--output-dir",
                                                    str(root / f"{m}-joined-{replicas}-{k}-{len(rounds)}")], env,
                                          label, args.max_load, args.wait_s))
                finally:
                    # this cluster's processes only (`ray stop` would stop every cluster on the machine)
                    from ray_helpers import kill_tree_by_marker

                    kill_tree_by_marker(temp)
                for r in rounds:
                    by_label.setdefault(r["label"], []).append(r)
            best = {label: min(rs, key=lambda r: r["wall"]) for label, rs in by_label.items()}
            local = best["local"]["wall"]
            print(f"  best of {args.rounds} round(s):", flush=True)
            for label, r in best.items():
                print(f"    {label:<28} wall {r['wall']:7.1f} s ({r['wall'] / local - 1:+.0%} vs local), engine "
                      f"{r['rate'] or float('nan'):.2f} img/s, steady {r['steady'] or float('nan'):.2f} img/s",
                      flush=True)
            one, two = best["ray 1x2cpu joined"], best["ray 2x1cpu joined"]
            print(f"    2 replicas x 1 CPU vs 1 x 2 CPUs (joined): {one['wall'] / two['wall']:.2f}x wall, "
                  f"{(two['rate'] or 0) / max(one['rate'] or 1e-9, 1e-9):.2f}x engine rate", flush=True)
            results["runs"][m] = by_label
        if rows_for_memory:
            print("driver memory (tiny, 2 replicas, own cluster):", flush=True)
            mem = []
            for n in rows_for_memory:
                out = root / f"mem-{n}"
                mem.append(run(["detect", str(subsets[n]), "-m", paths["tiny"], "-t", "0.5", "--device", "cpu",
                                "--engine", "ray", "--replicas", "2", "--output-dir", str(out)], env,
                               f"{n} rows", args.max_load, args.wait_s))
            results["memory"] = mem
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
