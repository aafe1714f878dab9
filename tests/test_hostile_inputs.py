"""The hostile run of issue 8: bad destinations, odd file names, signals, modes, messages.

Every case is exit 2 (or the documented code) with one `visiontool: error:` line, before any
model loads where the mistake is visible on the command line, and nothing computed is lost.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli_helpers import assert_user_error, one_error_line
from detr_helpers import build_tiny_detr
from visiontool.cli.main import app
from visiontool.errors import UsageError

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def tiny_detr(tmp_path_factory) -> str:
    return str(build_tiny_detr(tmp_path_factory.mktemp("tiny-detr-hostile")))


@pytest.fixture
def photo(tmp_path, images_dir) -> Path:
    p = tmp_path / "dog.jpg"
    shutil.copy(images_dir / "dog.jpg", p)
    return p


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if any model loads (the error must come first)."""
    from visiontool.models import registry

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the bad destination was found")

    monkeypatch.setattr(registry, "load_detector", boom)
    monkeypatch.setattr(registry, "load_segmenter", boom)


# -- 1. a bad output destination is found before any model loads ----------------------------------

def test_output_destinations_checked_before_the_model(photo, tmp_path, no_model, coco_dir):
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("keep me")
    gt = coco_dir / "instances_val2014_100.json"
    pred = coco_dir / "instances_val2014_fakebbox100_results.json"
    cases = [
        (["detect", photo, "-o", tmp_path], "is a directory"),
        (["evaluate", "--gt", gt, "--pred", pred, "-o", tmp_path], "is a directory"),
        (["detect", photo, "--save-viz", a_file], "is a file"),
        (["segment", photo, "--point", "1,1", "--masks-dir", a_file], "is a file"),
        (["segment", photo, "--point", "1,1", "--save-viz", a_file], "is a file"),
        (["evaluate", "--gt", gt, "--pred", pred, "--plot", a_file], "without an image extension"),
        (["detect", photo, "-o", "/proc/visiontool-out.json"], "/proc"),
        (["detect", photo, "-o", "/sys/visiontool-out.json"], "/sys"),
        (["detect", photo, "-o", a_file / "out.json"], "not a directory"),
        (["compare", "--gt", gt, pred, "--plot", "/proc/self/plot.png"], "/proc"),
    ]
    for args, needle in cases:
        res = invoke(*args)
        line = one_error_line(res, 2)
        assert needle in line, (args, line)
    assert a_file.read_text() == "keep me"


def test_dev_null_and_named_outputs_are_written_through(photo, tiny_detr):
    res = invoke("detect", photo, "-m", tiny_detr, "-f", "json", "-o", os.devnull, "-q")
    assert res.exit_code == 0, res.stderr
    assert Path(os.devnull).exists() and not Path(os.devnull).is_file()  # still the device


# -- 2. file names that are not UTF-8 ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "coco", "table"])
def test_non_utf8_file_names_in_every_format(tmp_path, images_dir, tiny_detr, fmt):
    d = tmp_path / "in"
    d.mkdir()
    raw = os.path.join(os.fsencode(d), b"caf\xe9.jpg")  # Latin-1 bytes: not valid UTF-8
    shutil.copy(images_dir / "dog.jpg", raw)
    out = tmp_path / f"out.{fmt}"
    res = invoke("detect", d, "-m", tiny_detr, "-t", "0.5", "-f", fmt, "-o", out, "-q")
    assert res.exit_code == 0, res.stderr
    data = out.read_bytes()
    if fmt in ("csv", "table"):
        assert b"caf\xe9.jpg" in data  # the original bytes, usable to open the file again
    elif fmt == "coco":
        assert json.loads(data) and all(r["image_id"] == 1 for r in json.loads(data))
    else:
        text = data.decode("utf-8")  # valid UTF-8 JSON; the name is escaped and round-trips
        rec = json.loads(text.splitlines()[0] if fmt == "jsonl" else text)
        rec = rec if fmt == "jsonl" else rec[0]
        assert os.fsencode(rec["image"]) == raw


# -- 8. signals: one line, exit 130, every finished record kept, no temp file ------------------------

@pytest.mark.parametrize("sig, word", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")])
@pytest.mark.parametrize("to_file", [False, True])
def test_signal_keeps_finished_records(tmp_path, images_dir, tiny_detr, sig, word, to_file):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(60):
        shutil.copy(images_dir / "dog.jpg", d / f"img{i:03d}.jpg")
    out = tmp_path / "out.jsonl"
    exe = Path(sys.executable).with_name("visiontool")
    args = [str(exe), "detect", str(d), "-m", tiny_detr, "-f", "jsonl", "-q"] + (["-o", str(out)] if to_file else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 240
    if to_file:  # the temp file grows as records are flushed
        while time.time() < deadline and not any(p.stat().st_size for p in tmp_path.glob(".out.jsonl.*.tmp")):
            time.sleep(0.1)
    else:
        first = proc.stdout.readline()
        assert first, proc.stderr.read()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    stderr = stderr.decode()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == f"visiontool: error: {word}", stderr
    assert "Traceback" not in stderr
    lines = (out.read_text() if to_file else (first + stdout).decode()).splitlines()
    assert 1 <= len(lines) < 60
    assert all(json.loads(ln)["image"].endswith(".jpg") for ln in lines)  # every line complete
    assert not list(tmp_path.glob(".out.jsonl.*"))  # no hidden temp file left behind


# -- 9. output file modes ---------------------------------------------------------------------------

def test_output_modes_follow_umask_and_existing_files(photo, tiny_detr, tmp_path):
    old = os.umask(0o022)
    try:
        new = tmp_path / "new.json"
        assert invoke("detect", photo, "-m", tiny_detr, "-f", "json", "-o", new, "-q").exit_code == 0
        assert new.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        kept.chmod(0o640)
        assert invoke("detect", photo, "-m", tiny_detr, "-f", "json", "-o", kept, "-q").exit_code == 0
        assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_text() != "old"
    finally:
        os.umask(old)


# -- 11. accepted silently before: multi-frame images, unreadable subdirectories ---------------------

def test_multi_frame_images_are_reported_once(tmp_path, tiny_detr):
    d = tmp_path / "anim"
    d.mkdir()
    for name in ("a.gif", "b.gif"):
        frames = [Image.new("RGB", (64, 48), (i * 40, 0, 0)) for i in range(3)]
        frames[0].save(d / name, save_all=True, append_images=frames[1:])
    res = invoke("detect", d, "-m", tiny_detr, "-f", "json", "-q")
    assert res.exit_code == 0, res.stderr
    notes = [ln for ln in res.stderr.splitlines() if "frames" in ln]
    assert len(notes) == 1 and "only the first is used" in notes[0] and "3 frames" in notes[0]
    assert len(json.loads(res.stdout)) == 2


def test_unreadable_subdirectories_are_reported_once(tmp_path, images_dir, tiny_detr, monkeypatch):
    root = tmp_path / "tree"
    (root / "ok").mkdir(parents=True)
    (root / "locked").mkdir()
    (root / "locked2").mkdir()
    shutil.copy(images_dir / "dog.jpg", root / "ok" / "dog.jpg")
    real = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)).startswith("locked"):  # root reads everything: simulate it
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    res = invoke("detect", root, "-r", "-m", tiny_detr, "-f", "json", "-q")
    assert res.exit_code == 0, res.stderr
    notes = [ln for ln in res.stderr.splitlines() if "cannot read" in ln]
    assert len(notes) == 1 and "2 subdirectories" in notes[0] and "Permission denied" in notes[0]
    assert [Path(r["image"]).name for r in json.loads(res.stdout)] == ["dog.jpg"]


# -- 12. messages that say what is wrong ---------------------------------------------------------------

def test_bomb_message_quotes_our_limit(photo, monkeypatch, tiny_detr):
    monkeypatch.setenv("VISIONTOOL_MAX_PIXELS", "100000")
    res = invoke("detect", photo, "-m", tiny_detr)
    line = assert_user_error(res, 1, "exceeds the limit of 100,000", "VISIONTOOL_MAX_PIXELS")
    assert "200000" not in line and "200,000" not in line  # not PIL's own (2x) figure


def test_decoding_leaves_other_threads_warning_filters_and_pil_limit_alone(photo, monkeypatch):
    """Images decode in a prefetch thread while the main thread may be exporting a model under
    its own warning filters: a filter added while a decode is in flight survives it, and PIL's
    limit is back to its value once concurrent decodes are done."""
    import threading
    import warnings

    from visiontool.io import images

    real_open = Image.open
    added = []

    def open_and_add_a_filter(*a, **k):  # what another thread does meanwhile
        warnings.filterwarnings("ignore", message="visiontool-test-filter")
        added.append(True)
        return real_open(*a, **k)

    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        monkeypatch.setattr(Image, "open", open_and_add_a_filter)
        images.load_image(str(photo))
        assert added and any(f[1] is not None and f[1].pattern == "visiontool-test-filter"
                             for f in warnings.filters)
        monkeypatch.setattr(Image, "open", real_open)
    threads = [threading.Thread(target=lambda: [images.load_image(str(photo)) for _ in range(5)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Image.MAX_IMAGE_PIXELS == before


@pytest.mark.parametrize("value", ["abc", "-5", "0"])
def test_bad_max_pixels_setting_is_exit_2(photo, monkeypatch, value, no_model):
    monkeypatch.setenv("VISIONTOOL_MAX_PIXELS", value)
    one_error_line(invoke("detect", photo), 2)


def test_escape_sequences_in_names_are_not_sent_to_the_terminal(tmp_path, tiny_detr):
    evil = tmp_path / "evil\x1b[2J\x1b[31mred.jpg"
    evil.write_bytes(b"not an image")
    res = invoke("detect", evil, "-m", tiny_detr)
    assert res.exit_code == 1
    assert "\x1b" not in res.stderr and "\\x1b[2J" in res.stderr


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.symlink_to(p), "symbolic link loop"),
    (lambda p: p.symlink_to(p.parent / "nowhere"), "dangling symbolic link"),
])
def test_input_files_say_what_they_are(tmp_path, photo, no_model, make, needle):
    target = tmp_path / "input.json"
    make(target)
    for flag in ("--boxes-from", "--prompts"):
        line = one_error_line(invoke("segment", photo, flag, target), 2)
        assert needle in line and flag in line
    assert needle in one_error_line(invoke("segment", photo, "--boxes-from", os.devnull), 2) or \
        "device" in one_error_line(invoke("segment", photo, "--boxes-from", os.devnull), 2)


def test_lone_visiontool_prints_help_and_exits_2():
    res = invoke()
    assert res.exit_code == 2 and "Commands" in res.stderr and res.stdout == ""


# -- 13. the download probes go through the proxy the environment names ----------------------------

def test_download_probes_honour_http_proxy(monkeypatch):
    """Both probes (urllib's, which torch.hub downloads with, and the hub client's session) reach
    a host that does not resolve through HTTP_PROXY, and not when NO_PROXY names it."""
    import http.server
    import threading

    from huggingface_hub.utils import close_session

    from visiontool.models import hf_hub

    seen = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_HEAD(self):  # noqa: N802 - a forward proxy receives the absolute URL
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def forget():
        close_session()
        hf_hub.endpoint_reachable.cache_clear()
        hf_hub._hub_answers.cache_clear()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        for var in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
            monkeypatch.delenv(var, raising=False)
        # the suite runs with HF_HUB_OFFLINE=1, under which huggingface_hub's session refuses every
        # request; the hub reads it once, at import, which may have happened under this test's own env
        from huggingface_hub import constants as hub_constants

        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{srv.server_address[1]}")
        monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
        forget()
        # the host does not resolve: only the proxy can answer for it
        assert hf_hub.endpoint_reachable("http://weights.invalid/") is True
        assert seen and seen[-1].startswith("http://weights.invalid")
        assert hf_hub.hub_reachable() is True
        assert seen[-1].startswith("http://hub.invalid")
        monkeypatch.setenv("NO_PROXY", "hub.invalid,weights.invalid")
        forget()
        assert hf_hub.endpoint_reachable("http://weights.invalid/") is False
        assert hf_hub.hub_reachable() is False
    finally:
        srv.shutdown()
        srv.server_close()
        forget()


def test_the_weights_probe_ignores_the_hub_clients_offline_mode(monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE once, at import; a process that imported it under
    HF_HUB_OFFLINE=1 and unset it since still downloads torchvision weights: their probe is
    urllib's, not the hub session's (which would refuse)."""
    from huggingface_hub import constants as hub_constants

    from segment_helpers import loopback_server
    from visiontool.models import hf_hub

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hf_hub.endpoint_reachable.cache_clear()
    try:
        with loopback_server({}) as url:
            assert hf_hub.endpoint_reachable(url) is True  # its error status for a HEAD is an answer
        hf_hub.endpoint_reachable.cache_clear()
        assert hf_hub.endpoint_reachable(url) is False  # nothing listens there now
    finally:
        hf_hub.endpoint_reachable.cache_clear()


def test_hub_errors_are_classified_by_type():
    from huggingface_hub.errors import LocalEntryNotFoundError

    from visiontool.models.hf_hub import classify

    wrapped = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    wrapped.__cause__ = LocalEntryNotFoundError("not cached")
    assert "not in the Hugging Face cache" in str(classify("org/model", wrapped))
    assert "not in the Hugging Face cache" not in str(classify("org/model", ValueError("something else")))


# -- an empty value (an unset shell variable) never means "not given" or the current directory --

EMPTY = {
    "source": (["detect", ""], "an empty source was given ('')"),
    "source blank": (["segment", " ", "--point", "1,1"], "an empty source was given (' ')"),
    "--gt": (["detect", "{photo}", "--gt", ""], "--gt was given an empty value"),
    "--pred=": (["evaluate", "--gt", "{photo}", "--pred="], "--pred was given an empty value"),
    "-o": (["detect", "{photo}", "-o", ""], "-o was given an empty value"),
    "--save-viz": (["detect", "{photo}", "--save-viz", ""], "--save-viz was given an empty value"),
    "--masks-dir": (["segment", "{photo}", "--point", "1,1", "--masks-dir", " "], "--masks-dir was given an empty"),
    "--images": (["compare", "--gt", "{photo}", "--images", "", "-m", "x"], "--images was given an empty value"),
    "--classes": (["detect", "{photo}", "-m", "{detr}", "--classes", ""], "--classes '' names no class"),
    "--classes ,,": (["detect", "{photo}", "-m", "{detr}", "--classes", ",,"], "--classes ',,' names no class"),
    "detect -m": (["detect", "{photo}", "-m", ""], "--model is empty"),
    "segment -m": (["segment", "{photo}", "-m", "", "--point", "1,1"], "--model is empty"),
}


@pytest.mark.parametrize("case", list(EMPTY))
def test_an_empty_value_is_a_usage_error_before_any_model(case, photo, tiny_detr, no_model):
    args, words = EMPTY[case]
    args = [a.format(photo=photo, detr=tiny_detr) for a in args]
    assert_user_error(invoke(*args), 2, words)


# click's ranges let nan through (every comparison with it is false), and inf where there is no upper bound
NOT_FINITE = {
    "detect --nms-iou nan": ["detect", "{photo}", "-m", "{detr}", "--nms-iou", "nan"],
    "detect --text-threshold NaN": ["detect", "{photo}", "--text", "dog", "--text-threshold", "NaN"],
    "detect --cpus-per-replica inf": ["detect", "{photo}", "--engine", "ray", "--cpus-per-replica", "inf"],
    "segment --gpus-per-replica inf": ["segment", "{photo}", "--point", "1,1", "--gpus-per-replica", "inf"],
    "segment --pred-iou-thresh -inf": ["segment", "{photo}", "--auto", "--pred-iou-thresh", "-inf"],
    "compare --dup-score nan": ["compare", "--gt", "{photo}", "{photo}", "--dup-score", "nan"],
}


@pytest.mark.parametrize("case", list(NOT_FINITE))
def test_a_number_that_is_not_finite_is_a_usage_error_before_any_model(case, photo, tiny_detr, no_model):
    args = [a.format(photo=photo, detr=tiny_detr) for a in NOT_FINITE[case]]
    value = args[-1]
    assert_user_error(invoke(*args), 2, f"'{value}' is not a finite number")


@pytest.mark.parametrize("command", ["detect", "segment"])
def test_a_source_that_is_a_pipe_or_a_device_is_named_for_what_it_is(command, tmp_path, tiny_detr, no_model):
    """`detect <(curl URL)` said "no such file or directory" of a path that exists."""
    pipe = tmp_path / "photo.jpg"
    os.mkfifo(pipe)
    extra = ["-m", tiny_detr] if command == "detect" else ["--point", "1,1"]
    line = assert_user_error(invoke(command, pipe, *extra), 2)
    assert line == (f"visiontool: error: source '{pipe}' is a pipe; give the file or URL itself (photos and videos "
                    "are read from files, http(s) URLs and stream URLs such as rtsp://)")
    assert_user_error(invoke(command, os.devnull, *extra), 2, "'/dev/null' is not a regular file (a character device)")


def test_a_camera_device_path_is_its_webcam(tmp_path, monkeypatch):
    from visiontool.io import sources

    camera = tmp_path / "video3"
    os.mkfifo(camera)  # stands in for the character device: only its resolved name counts
    real = os.path.realpath
    monkeypatch.setattr(sources.os.path, "realpath", lambda p: "/dev/video3" if str(p) == str(camera) else real(p))
    assert sources.expand_media([str(camera)]) == [sources.Source("webcam:3", "stream")]
    with pytest.raises(UsageError, match="is a pipe"):  # photos only: a camera is no photo
        sources.expand_media([str(camera)], source_type="image")


def _coco_pair(tmp_path, coco_dir):
    gt = tmp_path / "gt.json"
    pred = tmp_path / "pred.json"
    shutil.copy(coco_dir / "instances_val2014_100.json", gt)
    shutil.copy(coco_dir / "instances_val2014_fakebbox100_results.json", pred)
    return gt, pred


OUTPUT_IS_INPUT = {  # (argv, the flag, the input it names); {link} is a symbolic link to the photo
    "detect -o": (["detect", "{photo}", "-m", "{detr}", "-o", "{photo}"], "--output", "{photo}"),
    "detect -o a link": (["detect", "{photo}", "-m", "{detr}", "-o", "{link}"], "--output", "{photo}"),
    "detect --gt -o": (["detect", "{photo}", "-m", "{detr}", "--gt", "{gt}", "-o", "{gt}"], "--output", "{gt}"),
    "segment -o": (["segment", "{photo}", "--point", "1,1", "-o", "{photo}"], "--output", "{photo}"),
    "evaluate -o": (["evaluate", "--gt", "{gt}", "--pred", "{pred}", "-o", "{pred}"], "--output", "{pred}"),
    "compare -o": (["compare", "--gt", "{gt}", "{pred}", "-o", "{gt}"], "--output", "{gt}"),
}


@pytest.mark.parametrize("case", list(OUTPUT_IS_INPUT))
def test_an_output_that_is_an_input_is_refused(case, photo, tiny_detr, tmp_path, coco_dir, no_model):
    """`detect photo.jpg -o photo.jpg` replaced the photo with JSON; `evaluate --pred p.json -o
    p.json` the predictions with the scores."""
    gt, pred = _coco_pair(tmp_path, coco_dir)
    link = tmp_path / "link.jpg"
    link.symlink_to(photo)
    names = dict(photo=photo, detr=tiny_detr, gt=gt, pred=pred, link=link)
    argv, flag, named = OUTPUT_IS_INPUT[case]
    args = [a.format(**names) for a in argv]
    before = {p: p.read_bytes() for p in (photo, gt, pred)}
    line = assert_user_error(invoke(*args), 2, f"{flag} '", f"is also an input ('{named.format(**names)}')")
    assert line.endswith("writing it would replace that input; give another file name")
    assert {p: p.read_bytes() for p in (photo, gt, pred)} == before


# -- a segment model (or weights file) where a detector is wanted: one line pointing the right way --

@pytest.mark.parametrize("command", ["detect", "compare", "export"])
@pytest.mark.parametrize("spec, needle", [
    ("{sam2}", "is a SAM-family mask generator ('sam2_video'): `visiontool segment --model {sam2}` runs it"),
    ("vit_b", "'vit_b' is a segment-anything checkpoint: `visiontool segment --model vit_b` runs it"),
    ("yolov8n.pt", "'yolov8n.pt' is a weights file: name an Ultralytics model ultralytics:yolov8n.pt"),
    ("{photo}.pth", "is a weights file"),
])
def test_a_segmenter_or_weights_file_as_a_detector_is_one_line_before_any_model(command, spec, needle, photo,
                                                                              tmp_path, coco_dir, no_model):
    """They were a transformers AutoModel error after loading (a SAM dir, exit 1), a hub lookup (vit_b,
    yolov8n.pt: 'not in the Hugging Face cache', exit 1) or 'is a file; expected a directory'."""
    sam2 = tmp_path / "sam2v"
    sam2.mkdir()
    (sam2 / "config.json").write_text(json.dumps({"model_type": "sam2_video"}))
    Path(f"{photo}.pth").write_bytes(b"\0")
    spec, needle = (s.format(sam2=sam2, photo=photo) for s in (spec, needle))
    args = {"detect": ["detect", str(photo), "-m", spec],
            "compare": ["compare", "--gt", str(coco_dir / "instances_val2014_100.json"), "--images", str(photo),
                        "-m", spec],
            "export": ["export", spec, "--runtime", "onnx", "-o", str(tmp_path / "out")]}[command]
    assert_user_error(invoke(*args), 2, needle)


@pytest.mark.parametrize("typo, meant", [("detecc", "detect"), ("Segment", "segment"), ("evalute", "evaluate")])
def test_a_mistyped_command_suggests_the_command(typo, meant):
    line = one_error_line(invoke(typo, "x"))
    assert f"No such command '{typo}'; did you mean '{meant}'?" in line
    assert "did you mean" not in one_error_line(invoke("frobnicate"))
