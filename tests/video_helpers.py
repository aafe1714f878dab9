"""Helpers for the video, tracking and MOT tests: generated clips with known trajectories, a
detector whose boxes follow the clip's squares, a loopback HTTP server for the stream path,
broken media files, and CLI plumbing."""
from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
from typer.testing import CliRunner

from visiontool.cli.main import app
from visiontool.io.video import write_test_video
from visiontool.models.protocol import DetectOptions, ModelInfo
from visiontool.types import Detections, Timings

runner = CliRunner()
BACKGROUND = 96  # write_test_video's grey


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def jsonl(text: str) -> list[dict]:
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def make_clip(path: Path, frames: int = 12, size=(160, 120), fps: int = 12, squares: int = 2,
              speed: float | None = None):
    """Write a clip of moving squares; returns each frame's square boxes (x1, y1, x2, y2)."""
    return write_test_video(path, frames=frames, size=size, fps=fps, squares=squares, speed=speed)


# ----------------------------------------------------------------------------- a detector for the squares
class SquareDetector:
    """A Detector (the adapter protocol) that finds write_test_video's squares: connected
    regions that differ from the grey background. White squares are class 0 "square", red
    ones class 1 "red square"; with ``--text`` the label is the first phrase. ``score(n, k)``
    gives the score of square ``k`` (left to right by row) in the ``n``-th image seen."""

    def __init__(self, score: Callable[[int, int], float] | None = None, name: str = "squares"):
        self.info = ModelInfo(name=name, family="squares", backend="test", task="detect", paradigm="one-stage",
                              needs_nms=False, class_names={0: "square", 1: "red square"},
                              capabilities=frozenset({"text", "batch"}))
        self.score = score or (lambda n, k: 0.9)
        self.seen = 0

    def predict(self, images, options: DetectOptions, timings: Timings | None = None) -> list[Detections]:
        from scipy import ndimage

        out = []
        for im in images:
            a = np.asarray(im.convert("RGB"), dtype=np.int16)
            mask = np.abs(a - BACKGROUND).max(axis=2) > 48
            lab, _ = ndimage.label(mask)
            boxes, cls, scores = [], [], []
            objs = [sl for sl in ndimage.find_objects(lab) if sl is not None]
            objs.sort(key=lambda sl: sl[0].start)  # by row: square k is the k-th from the top
            for k, sl in enumerate(objs):
                if (sl[0].stop - sl[0].start) < 4 or (sl[1].stop - sl[1].start) < 4:
                    continue
                patch = a[sl]
                red = patch[..., 0].mean() - patch[..., 1].mean() > 60
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
                cls.append(1 if red else 0)
                scores.append(float(self.score(self.seen, k)))
            self.seen += 1
            names = [options.text[0] if options.text else self.info.class_names[c] for c in cls]
            d = Detections(np.asarray(boxes, np.float64).reshape(-1, 4), scores, cls, names)
            out.append(d[d.scores >= options.threshold].sorted_by_score())
        return out


def install_detector(monkeypatch, detector: SquareDetector, spec: str = "squares") -> SquareDetector:
    """Make ``--model squares`` load ``detector`` (the registry's check and loader patched)."""
    from visiontool.models import registry

    real_check, real_load = registry.check_detector_spec, registry.load_detector

    def check(s):
        return None if s == spec else real_check(s)

    def load(s, *a, **k):
        return detector if s == spec else real_load(s, *a, **k)

    monkeypatch.setattr(registry, "check_detector_spec", check)
    monkeypatch.setattr(registry, "load_detector", load)
    monkeypatch.setattr(registry, "peek_class_names", lambda s: detector.info.class_names)
    return detector


# ----------------------------------------------------------------------------- a loopback HTTP server
class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /NAME serves a file; /drop/NAME sends half of it and closes the connection on the
    first request; /stall/NAME sends half and then goes silent (first request only)."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        server = self.server
        parts = self.path.split("?")[0].strip("/").split("/")
        mode, name = (parts[0], parts[-1]) if len(parts) > 1 else ("plain", parts[0])
        path = Path(server.root) / name
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        server.hits[self.path] = server.hits.get(self.path, 0) + 1
        first = server.hits[self.path] == 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        try:
            if mode in ("drop", "stall") and first:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                if mode == "stall":
                    server.release.wait(30)
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass


class FileServer:
    """``with FileServer(dir) as srv: srv.url("clip.ts")`` — a threaded loopback server."""

    def __init__(self, root: Path):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.root = str(root)
        self.httpd.hits = {}
        self.httpd.release = threading.Event()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str, mode: str | None = None) -> str:
        port = self.httpd.server_address[1]
        return f"http://127.0.0.1:{port}/{mode + '/' if mode else ''}{name}"

    @property
    def hits(self) -> dict:
        return self.httpd.hits

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ----------------------------------------------------------------------------- broken media
def write_audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def write_zero_frame_video(path: Path) -> Path:
    """A Matroska file with a video stream declared and no frame in it."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=12)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()
    return path


def decoded_frames(path: Path) -> int:
    """How many frames PyAV decodes from ``path`` (a playable file's frame count)."""
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def build_video_detr(path: Path) -> str:
    """The tiny DETR of detr_helpers with a small input size (128 px shortest edge): real
    transformers inference on the decoding path, fast enough for every frame of a test clip."""
    from transformers import DetrImageProcessor

    from detr_helpers import build_tiny_detr

    build_tiny_detr(path)
    DetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 192}).save_pretrained(path)
    return str(path)


def session_video_detr(tmp_path_factory) -> str:
    """One tiny video DETR per test session, shared by every module that asks for it."""
    path = tmp_path_factory.getbasetemp() / "video-detr"
    if not (path / "config.json").is_file():
        build_video_detr(path)
    return str(path)


# ----------------------------------------------------------------------------- MOTChallenge data
def synthetic_sequence(seed: int, frames: int = 40, objects: int = 4, mot17: bool = True):
    """(gt rows, prediction rows) of a made-up sequence: objects on straight paths; the
    predictions jitter, miss some boxes, swap one id half-way and add false positives. With
    ``mot17`` the ground truth has MOTChallenge columns (consider flag, class, visibility),
    one distractor (class 8) and one zero-marked object; else MOT15's -1 columns."""
    rng = np.random.default_rng(seed)
    gt, pred = [], []
    for f in range(1, frames + 1):
        for k in range(objects):
            x, y = 20 + 7 * f + 90 * k, 30 + 40 * k + 3 * np.sin(f / 5 + k)
            w, h = 40 + 4 * k, 80
            if mot17:
                cls = 8 if k == objects - 1 else 1
                flag = 0 if k == 0 and f % 7 == 0 else 1
                gt.append(f"{f},{k + 1},{x:.2f},{y:.2f},{w},{h},{flag},{cls},{rng.uniform(0.3, 1):.3f}")
            else:
                gt.append(f"{f},{k + 1},{x:.2f},{y:.2f},{w},{h},1,-1,-1,-1")
            if rng.random() < 0.85:
                tid = k + 1
                if k == 1 and f > frames // 2:
                    tid = 50  # an id switch
                jx, jy = rng.normal(0, 3, 2)
                pred.append(f"{f},{tid},{x + jx:.2f},{y + jy:.2f},{w + rng.normal(0, 2):.2f},{h},"
                            f"{rng.uniform(0.3, 1):.4f},-1,-1,-1")
        if rng.random() < 0.3:
            pred.append(f"{f},{90 + f % 3},{rng.uniform(0, 500):.1f},{rng.uniform(0, 300):.1f},30,60,0.4,-1,-1,-1")
    return gt, pred


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(ln + "\n" for ln in lines))
    return path


def trackeval_reference(gt_folder: Path, trackers_folder: Path, tracker: str, benchmark: str,
                        split: str = "train", preproc: bool = True) -> dict:
    """TrackEval run the way its own docs run it (MotChallenge2DBox on the standard folder
    layout with seqmaps and seqinfo.ini): {seq or COMBINED_SEQ: {metric: {field: value}}}."""
    import contextlib
    import io

    import trackeval

    eval_cfg = {"USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_CONFIG": False, "TIME_PROGRESS": False,
                "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False, "LOG_ON_ERROR": None}
    ds_cfg = {"GT_FOLDER": str(gt_folder), "TRACKERS_FOLDER": str(trackers_folder), "TRACKERS_TO_EVAL": [tracker],
              "BENCHMARK": benchmark, "SPLIT_TO_EVAL": split, "DO_PREPROC": preproc, "PRINT_CONFIG": False}
    with contextlib.redirect_stdout(io.StringIO()):
        ev = trackeval.Evaluator(eval_cfg)
        ds = trackeval.datasets.MotChallenge2DBox(ds_cfg)
        metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(), trackeval.metrics.Identity()]
        res, _ = ev.evaluate([ds], metrics)
    return {seq: r["pedestrian"] for seq, r in res["MotChallenge2DBox"][tracker].items()}


def mot_layout(root: Path, benchmark: str, seqs: dict[str, tuple[list[str], list[str]]], tracker: str = "mine",
               split: str = "train") -> tuple[Path, Path]:
    """Write TrackEval's standard layout: gt/<BENCH>-<split>/<seq>/{gt/gt.txt,seqinfo.ini},
    gt/seqmaps/<BENCH>-<split>.txt and trackers/<BENCH>-<split>/<tracker>/data/<seq>.txt."""
    gt_root, tr_root = root / "gt", root / "trackers"
    split_dir = f"{benchmark}-{split}"
    for name, (gt, pred) in seqs.items():
        n = max(int(ln.split(",")[0]) for ln in gt + pred)
        write_lines(gt_root / split_dir / name / "gt" / "gt.txt", gt)
        (gt_root / split_dir / name / "seqinfo.ini").write_text(f"[Sequence]\nname={name}\nseqLength={n}\n")
        write_lines(tr_root / split_dir / tracker / "data" / f"{name}.txt", pred)
    write_lines(gt_root / "seqmaps" / f"{split_dir}.txt", ["name"] + list(seqs))
    return gt_root, tr_root
