"""Concurrent CPU forward passes (services.forward_streams): the same records, in order, from
one forward pass at a time and from parallel single-threaded ones; errors at their turn."""
from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import torch
from typer.testing import CliRunner

from cli_helpers import assert_user_error
from detr_helpers import build_tiny_detr
from visiontool.cli.main import app
from visiontool.models.protocol import ModelInfo
from visiontool.services import forward_streams
from visiontool.types import Timings

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_detr(tmp_path_factory) -> str:
    return str(build_tiny_detr(tmp_path_factory.mktemp("tiny-detr")))


@pytest.fixture()
def folder(tmp_path, images_dir):
    """Nine photos of three sizes and one corrupt file in the middle (an error row)."""
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(9):
        name = ("dog.jpg", "groceries.jpg", "truck.jpg")[i % 3]
        shutil.copy(images_dir / name, d / f"p{i:02d}.jpg")
    (d / "p04b.jpg").write_bytes(b"not a jpeg")
    return d


def run_detect(monkeypatch, streams: str, *args):
    monkeypatch.setenv("VISIONTOOL_CPU_STREAMS", streams)
    res = runner.invoke(app, ["detect", *map(str, args)])
    return res


@pytest.fixture()
def two_torch_threads():
    """torch at two threads for the test (as on this 2-core machine; a test worker may hold
    another count), restored after it."""
    with forward_streams.torch_threads(2):
        yield 2


def test_parallel_streams_give_the_records_of_one_stream(monkeypatch, tiny_detr, folder, two_torch_threads):
    threads = torch.get_num_threads()
    plans = []
    real_plan = forward_streams.plan
    monkeypatch.setattr(forward_streams, "plan", lambda info: plans.append(real_plan(info)) or plans[-1])
    out = {}
    for streams in ("1", "2", "3"):
        res = run_detect(monkeypatch, streams, folder, "-m", tiny_detr, "-t", "0", "--device", "cpu", "-b", "2",
                         "-f", "jsonl")
        assert res.exit_code == 1, res.stderr  # the corrupt file: an error row, exit 1
        out[streams] = [json.loads(line) for line in res.stdout.splitlines()]
        assert torch.get_num_threads() == threads  # restored after the run
        assert "p04b.jpg" in res.stderr  # named on stderr; the others keep their records
    # one stream; two of one thread each; three asked for, capped at the two threads
    assert plans == [(1, 0), (2, 1), (2, 1)]
    one = out["1"]
    assert [r["image"].rsplit("/", 1)[-1] for r in one] == sorted(p.name for p in folder.iterdir()
                                                                 if p.name != "p04b.jpg")
    for streams in ("2", "3"):
        other = out[streams]
        assert [r["image"] for r in other] == [r["image"] for r in one]
        for a, b in zip(one, other):
            assert (a["width"], a["height"]) == (b["width"], b["height"])
            assert len(a["detections"]) == len(b["detections"]) == 12
            for da, db in zip(a["detections"], b["detections"]):
                assert da["category_id"] == db["category_id"]
                assert da["score"] == pytest.approx(db["score"], abs=1e-5)
                assert da["box"] == pytest.approx(db["box"], abs=1e-3)


def test_a_bad_stream_count_is_one_error_before_the_model_loads(monkeypatch, tmp_path, images_dir):
    for bad in ("0", "two", "-1"):
        res = run_detect(monkeypatch, bad, images_dir / "dog.jpg", "-m", str(tmp_path / "no-such-model"))
        assert_user_error(res, 2, "VISIONTOOL_CPU_STREAMS", bad)


def info(**kw) -> ModelInfo:
    base = dict(name="m", family="detr", backend="transformers", task="detect", paradigm="query-based",
                needs_nms=False, capabilities=frozenset({"batch", "concurrent"}))
    return ModelInfo(**{**base, **kw})


def test_only_concurrent_torch_cpu_models_get_streams(monkeypatch):
    monkeypatch.delenv("VISIONTOOL_CPU_STREAMS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert forward_streams.plan(info()) == (2, 4)
    assert forward_streams.plan(info(device="cuda:0")) == (1, 0)
    assert forward_streams.plan(info(runtime="openvino")) == (1, 0)
    assert forward_streams.plan(info(capabilities=frozenset({"batch"}))) == (1, 0)
    monkeypatch.setenv("VISIONTOOL_CPU_STREAMS", "1")
    assert forward_streams.plan(info()) == (1, 0)
    monkeypatch.setenv("VISIONTOOL_CPU_STREAMS", "16")
    assert forward_streams.plan(info()) == (8, 1)  # never more streams than threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.delenv("VISIONTOOL_CPU_STREAMS")
    assert forward_streams.plan(info()) == (1, 0)


def test_a_failing_pass_raises_at_its_turn_and_nothing_runs_after():
    running = []
    started = []
    lock = threading.Lock()

    def forward(window, timings):
        with lock:
            started.append(window[0])
            running.append(window[0])
        time.sleep(0.05 if window[0] == 1 else 0.01)
        timings.inference += 1.0
        with lock:
            running.remove(window[0])
        if window[0] == 2:
            raise ValueError("window 2")
        return [f"r{window[0]}"]

    timings = Timings()
    got = []
    gen = forward_streams.run_in_order(([i] for i in range(10)), forward, timings, streams=2, threads=1)
    with pytest.raises(ValueError, match="window 2"):
        for window, result in gen:
            got.append((window[0], result))
    assert got == [(0, ["r0"]), (1, ["r1"])]  # in order, though window 1 finished after window 2 started
    assert running == []  # every started pass finished before the error reached the caller
    assert max(started) <= 3  # at most one window beyond the failing one was started
    assert timings.inference == 2.0  # the passes handed on, merged


def test_stopping_early_waits_for_running_passes():
    running = []

    def forward(window, timings):
        running.append(window[0])
        time.sleep(0.05)
        running.remove(window[0])
        return window

    gen = forward_streams.run_in_order(([i] for i in range(100)), forward, Timings(), streams=2, threads=1)
    assert next(gen)[0] == [0]
    gen.close()
    assert running == []


class FakeDetector:
    """Records on which threads, and how many at once, ``predict`` ran."""

    def __init__(self, caps):
        self.info = info(capabilities=frozenset(caps))
        self.threads: set[str] = set()
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()

    def predict(self, images, options, timings=None):
        from visiontool.types import Detections

        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.03)
        with self.lock:
            self.now -= 1
        return [Detections.empty() for _ in images]


@pytest.mark.parametrize("caps", [{"batch", "concurrent"}, {"batch"}])
def test_iter_detect_runs_concurrent_adapters_on_forward_threads(monkeypatch, caps):
    from PIL import Image

    from visiontool.io.sources import Item
    from visiontool.models.protocol import DetectOptions
    from visiontool.services.detect import iter_detect

    monkeypatch.delenv("VISIONTOOL_CPU_STREAMS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    det = FakeDetector(caps)
    items = [Item(f"i{i}", Image.new("RGB", (8 + i, 8)), i) for i in range(8)]
    got = [r.image for r, _ in iter_detect(items, det, DetectOptions(threshold=0.0))]
    assert got == [f"i{i}" for i in range(8)]
    if "concurrent" in caps:
        assert det.most == 2 and all(t.startswith("visiontool-forward") for t in det.threads)
    else:
        assert det.most == 1 and det.threads == {threading.current_thread().name}
