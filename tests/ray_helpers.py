"""Shared pieces for the --engine ray tests: one local Ray cluster for the whole session, a test
image set, a fast tiny DETR, processes found and stopped by id.

The session cluster (``ray_cluster``) is started once in the pytest process (starting Ray
costs seconds): ``num_cpus=2``, a small object store, no dashboard, usage stats and token
auth off (loopback only). In-process CLI runs use it as they find it; subprocess drivers
join it with ``--address`` (its GCS address). It is shut down at the end of the session.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
N_IMAGES = 220
CORRUPT = {"bad_bytes.jpg": b"this is not a jpeg", "bad_empty.png": b"",
           "bad_truncated.jpg": None}  # None: the first 300 bytes of a real JPEG
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}


def child_env(**extra) -> dict:
    """The environment for subprocesses (drivers, `ray start`): this checkout's sources first."""
    env = dict(os.environ)
    env.update(RAY_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """The session's local cluster; yields its GCS address for subprocess drivers."""
    ray = pytest.importorskip("ray")
    cache = tmp_path_factory.mktemp("ray-worker-cache")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in child_env(VISIONTOOL_CACHE=cache).items():  # the workers inherit this environment
            mp.setenv(k, v)
        import logging

        ray.init(address="local", num_cpus=2, object_store_memory=150 * 2**20, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="session")
def tiny_detr_fast(tmp_path_factory) -> str:
    """The tests' tiny DETR with an image processor that resizes to 64-96 px (the default 800
    px would make 200 images take minutes here)."""
    from detr_helpers import build_tiny_detr
    from transformers import DetrImageProcessor

    path = build_tiny_detr(tmp_path_factory.mktemp("tiny-detr-fast"))
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(path)
    return str(path)


def make_images(folder: Path, n: int = N_IMAGES) -> Path:
    """``n`` small copies of the shared photos (64-96 px, two orientations) plus corrupt files."""
    from PIL import Image

    shared = sorted((REPO.parent / "shared" / "data" / "images").glob("*.jpg"))
    assert shared, "shared photos missing"
    folder.mkdir(parents=True, exist_ok=True)
    bases = [Image.open(p).convert("RGB") for p in shared]
    for i in range(n):
        im = bases[i % len(bases)].copy()
        side = 64 + (i * 7) % 33
        im.thumbnail((side, side) if i % 3 else (side, side // 2 + 8))
        im.save(folder / f"img{i:03d}.jpg", quality=85)
    raw = (folder / "img000.jpg").read_bytes()
    for name, data in CORRUPT.items():
        (folder / name).write_bytes(raw[:300] if data is None else data)
    return folder


def records_by_image(lines) -> dict[str, dict]:
    recs = [json.loads(ln) if isinstance(ln, str) else ln for ln in lines if not isinstance(ln, str) or ln.strip()]
    out = {}
    for r in recs:
        assert r["image"] not in out, f"two records for {r['image']}"
        out[r["image"]] = r
    return out


def assert_same_records(ray_recs: dict, local_recs: dict, tol: float = 1e-3) -> None:
    """Same images, sizes, ids, labels and order of detections; boxes and scores to float
    rounding (a replica's torch runs on fewer threads than the local process, so the last
    bits of a float32 sum may differ)."""
    assert sorted(ray_recs) == sorted(local_recs)
    for name, a in local_recs.items():
        b = ray_recs[name]
        key = "masks" if "masks" in a else "detections"
        if key not in a:  # a failed image: the same error record
            assert a == b, name
            continue
        assert {k: v for k, v in a.items() if k != key} == {k: v for k, v in b.items() if k != key}, name
        assert len(a[key]) == len(b[key]), name
        for da, db in zip(a[key], b[key]):
            assert set(da) == set(db), (name, da, db)
            for k in da:
                if k in ("box", "score", "predicted_iou", "stability_score"):
                    va, vb = (da[k] if isinstance(da[k], list) else [da[k]]), (db[k] if isinstance(db[k], list)
                                                                              else [db[k]])
                    assert all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(va, vb)), (name, k, da, db)
                elif k != "segmentation":
                    assert da[k] == db[k], (name, k, da[k], db[k])


# ----------------------------------------------------------------------------- processes
def _procs() -> dict[int, tuple[int, str]]:
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{p}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(p)] = (ppid, cmd)
    return out


def descendants(root_pids: set[int], procs=None) -> set[int]:
    procs = procs if procs is not None else _procs()
    tree = set(root_pids)
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def find_actor_pids(needle: str = "DetectUDF") -> list[int]:
    """Model-actor processes of this test session's clusters (descendants of pytest)."""
    procs = _procs()
    mine = descendants({os.getpid()}, procs)
    return sorted(p for p in mine if needle in procs[p][1] and procs[p][1].startswith("ray::"))


def kill_tree_by_marker(marker: str) -> list[int]:
    """SIGKILL every process whose command line names ``marker`` (a cluster's own temp dir),
    with its descendants: the processes of one `ray start` cluster, by id."""
    procs = _procs()
    roots = {p for p, (_, cmd) in procs.items() if marker in cmd and p != os.getpid()}
    pids = descendants(roots, procs) - {os.getpid()}
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(pids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_exe() -> str:
    exe = shutil.which("ray", path=os.path.dirname(sys.executable))
    assert exe, "the ray command is missing next to this interpreter"
    return exe


def visiontool_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "visiontool", *[str(a) for a in args]]


def committed_rows(out_dir: Path) -> int:
    total = 0
    for p in (out_dir / "_manifest").glob("*.json"):
        try:
            total += json.loads(p.read_text())["rows"]
        except (ValueError, KeyError, OSError):
            pass  # being written
    return total


def wait_for(cond, timeout: float, interval: float = 0.02, proc: subprocess.Popen | None = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return cond()
        time.sleep(interval)
    return False
