"""Ultralytics YOLO models: ``--model ultralytics:NAME|PATH`` (optional extra ``[yolo]``).

* ``ultralytics:yolov8n.pt`` (any name of Ultralytics' release assets): the file in
  visiontool's cache (``<cache>/checkpoints/ultralytics``), downloaded there by Ultralytics'
  own ``attempt_download_asset`` when missing — never into the working directory. Offline
  (``VISIONTOOL_OFFLINE``/``HF_HUB_OFFLINE``), a missing file is one line naming it and the
  directory to put it in.
* ``ultralytics:PATH.pt`` — a trained model (``runs/train/weights/best.pt``); ``ultralytics:
  yolov8n.yaml`` builds the architecture with random weights (benchmarks, tests).

Ultralytics is AGPL-3.0; visiontool does not depend on it (``pip install 'visiontool[yolo]'``).
Its ``.pt`` files are pickles (Ultralytics loads them with ``weights_only=False``): load only
files you trust.

Kept from reaching the network or writing where it should not: its settings live in
visiontool's cache (``YOLO_CONFIG_DIR``, unless you set it), ``YOLO_OFFLINE`` stops its
start-up connectivity probe and telemetry, ``YOLO_AUTOINSTALL=False`` its pip calls,
``verbose=False`` and ``save=False`` its console output and ``runs/`` directory; its log lines
go to stderr (stdout carries data); its plotting (which fetches a font) is never called.

Detection, instance segmentation (``-seg``: masks at the original resolution, Ultralytics'
``retina_masks``) and pose (``-pose``: the ``keypoints`` column). YOLOv5u/v8/9/11/12 heads are
anchor-free and need NMS (``--nms-iou``, default Ultralytics' 0.7); end-to-end heads (YOLOv10,
YOLO26) and RT-DETR need none. Batching: Ultralytics letterboxes a batch of equal-sized images
to a minimal rectangle but a mixed batch to a square, so only images of the same size share a
``predict`` call (results never depend on batch-mates).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from visiontool.errors import MissingExtraError, ModelLoadError, UsageError
from visiontool.models.protocol import DetectOptions, ModelInfo
from visiontool.types import Detections, Timings

PREFIX = "ultralytics"
DEFAULT_IOU = 0.7  # Ultralytics' predict default
DEFAULT_MAX_DET = 300
TASKS = ("detect", "segment", "pose")
ASSETS_URL = "https://github.com/ultralytics/assets/releases/download"


def parse(spec: str) -> str:
    return spec.split(":", 1)[1].strip() if ":" in spec else spec.strip()


def is_installed() -> bool:
    try:
        return importlib.util.find_spec("ultralytics") is not None
    except (ImportError, ValueError):
        return False


def check(spec: str) -> None:
    """The extra is installed, a path exists, a name looks like a model file (UsageError, exit 2)."""
    target = parse(spec)
    if not target:
        raise UsageError(f"--model '{spec}': name an Ultralytics model, e.g. ultralytics:yolov8n.pt or "
                         "ultralytics:runs/train/weights/best.pt")
    if not is_installed():
        raise MissingExtraError(f"--model '{spec}'", "yolo", "ultralytics")
    p = Path(target).expanduser()
    if p.exists():
        if p.is_dir():
            raise UsageError(f"--model '{spec}': '{target}' is a directory; expected a .pt file")
        return
    if "/" in target or os.sep in target or target.startswith((".", "~")):
        raise UsageError(f"--model '{spec}': model file '{target}' not found")
    if not target.lower().endswith((".pt", ".yaml", ".yml")):
        raise UsageError(f"--model '{spec}': expected a .pt file or an Ultralytics model name such as yolov8n.pt, "
                         "yolo11s-seg.pt (or an architecture yaml such as yolov8n.yaml)")


def weights_dir() -> Path:
    from visiontool.models.cache import checkpoints_dir

    return checkpoints_dir() / "ultralytics"


def configure() -> None:
    """Environment Ultralytics reads when it is first imported (see the module doc)."""
    from visiontool.models.cache import visiontool_cache_dir

    os.environ.setdefault("YOLO_CONFIG_DIR", str(visiontool_cache_dir() / "ultralytics"))
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ["YOLO_VERBOSE"] = "False"


def import_ultralytics():
    """Import Ultralytics configured as above, and undo what its import changes in other
    libraries: it replaces ``PIL.Image.open`` (an unidentifiable file then makes it import, or
    pip-install, pi-heif instead of raising PIL's error) and ``torch.save``, and sets OpenCV's
    thread count, NumPy's print options and ``OMP_NUM_THREADS``."""
    from visiontool.errors import require

    configure()
    first = "ultralytics" not in sys.modules
    saved = _globals() if first else None
    with contextlib.redirect_stdout(sys.stderr):  # first import may announce its settings file on stdout
        mod = require("ultralytics", "ultralytics: models", "yolo")
        from ultralytics.utils import LOGGER, SETTINGS
    if saved is not None:
        _restore(saved)

    import logging

    LOGGER.setLevel(logging.ERROR)
    for h in LOGGER.handlers:  # its own handler writes to the stdout it found at import
        if h.get_name() == "ultralytics.utils.set_logging" and getattr(h, "stream", None) in (sys.stdout,
                                                                                              sys.__stdout__):
            h.setStream(sys.stderr)
    with contextlib.suppress(Exception):
        if SETTINGS.get("sync") or SETTINGS.get("hub"):
            SETTINGS.update(sync=False, hub=False)
    return mod


def _globals() -> dict:
    import numpy as np
    from PIL import Image

    # OMP_NUM_THREADS: Ultralytics sets it to 1 when unset ("reduced CPU utilization during
    # training"); torch, imported here first, has read it already, but the processes visiontool
    # starts (a local Ray cluster, its replicas) would run on one thread
    saved = {"pil_open": Image.open, "np_print": np.get_printoptions(), "omp": os.environ.get("OMP_NUM_THREADS")}
    with contextlib.suppress(ImportError):
        import torch

        saved["torch_save"] = torch.save
    with contextlib.suppress(ImportError):
        import cv2

        saved["cv2_threads"] = cv2.getNumThreads()
    return saved


def _restore(saved: dict) -> None:
    import numpy as np
    from PIL import Image

    Image.open = saved["pil_open"]
    np.set_printoptions(**saved["np_print"])
    if saved["omp"] is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = saved["omp"]
    if "torch_save" in saved:
        import torch

        torch.save = saved["torch_save"]
    if "cv2_threads" in saved:
        import cv2

        cv2.setNumThreads(saved["cv2_threads"])


@contextlib.contextmanager
def torch_threads_kept():
    """Ultralytics' predictor, when it sets itself up (``select_device``), sets torch's thread
    count to ``min(8, cores - 1)`` (a core left for training's data loaders) and leaves it so: on
    this repository's 2-core machine one thread, YOLO11n 76-89 ms an image instead of 51-52 ms
    (640 px, float32), and every model used after it in the process (``compare``) on one thread
    too. Inside the block Ultralytics uses torch's count as it was; after it the count is that."""
    import torch

    before = torch.get_num_threads()
    utils = sys.modules.get("ultralytics.utils.torch_utils")
    default = getattr(utils, "NUM_THREADS", None)
    if default is not None:
        utils.NUM_THREADS = before
    try:
        yield
    finally:
        if default is not None:
            utils.NUM_THREADS = default
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def warm(spec: str) -> None:
    import_ultralytics()
    import ultralytics.models.yolo  # noqa: F401


def resolve(spec: str, quiet: bool = False) -> str:
    """The file (or packaged yaml) Ultralytics should load for ``spec``."""
    from visiontool.models.hf_hub import endpoint_reachable, is_offline

    target = parse(spec)
    p = Path(target).expanduser()
    if p.exists() or target.lower().endswith((".yaml", ".yml")):
        return str(p) if p.exists() else target
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    name = Path(target).name
    cached = weights_dir() / name
    if cached.is_file():
        return str(cached)
    if name not in GITHUB_ASSETS_NAMES:
        import difflib

        close = difflib.get_close_matches(name, sorted(GITHUB_ASSETS_NAMES), n=1, cutoff=0.6)
        hint = f"; did you mean 'ultralytics:{close[0]}'?" if close else " (e.g. yolov8n.pt, yolo11s-seg.pt)"
        raise UsageError(f"--model '{spec}': no such file, and '{name}' is not an Ultralytics model name{hint}")
    how = f"download it on a connected machine ({ASSETS_URL}/…/{name}) and put it in {cached.parent}, or pass " \
          "ultralytics:PATH"
    if is_offline():
        raise ModelLoadError(f"cannot load model '{spec}': {name} is not in visiontool's cache and downloads are off "
                             f"(VISIONTOOL_OFFLINE/HF_HUB_OFFLINE); {how}")
    if not endpoint_reachable("https://github.com/"):
        raise ModelLoadError(f"cannot load model '{spec}': {name} is not in visiontool's cache and github.com cannot "
                             f"be reached; {how}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            attempt_download_asset(str(cached), progress=not quiet)
    except Exception as exc:  # noqa: BLE001 - network or disk: one line
        raise ModelLoadError(f"cannot load model '{spec}': downloading {name} failed ({exc}); {how}") from exc
    if not cached.is_file():
        raise ModelLoadError(f"cannot load model '{spec}': downloading {name} failed; {how}")
    return str(cached)


def load(spec: str, device: str, precision, text: bool = False, quiet: bool = False, imgsz: int | None = None,
         **_ignored: Any):
    """An :class:`UltralyticsDetector` for ``spec`` (``imgsz``: inference size, default the model's)."""
    if text:
        raise UsageError(f"--text needs an open-vocabulary model (Grounding DINO, OWLv2, OWL-ViT, OmDet-Turbo); "
                         f"'{spec}' has a fixed class list: use --classes, or drop --model for the default "
                         "IDEA-Research/grounding-dino-tiny")
    check(spec)
    import_ultralytics()
    from ultralytics import YOLO

    path = resolve(spec, quiet)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            model = YOLO(path)
    except Exception as exc:  # noqa: BLE001 - not an Ultralytics file, corrupt, wrong version
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"cannot load model '{spec}': not a model Ultralytics can load ({first[:200]})") from exc
    if model.task not in TASKS:
        raise UsageError(f"--model '{spec}': an Ultralytics '{model.task}' model; visiontool runs "
                         f"{', '.join(TASKS)} models")
    return UltralyticsDetector(spec, model, device, precision, imgsz)


def family_of(model) -> str:
    yaml = getattr(model.model, "yaml", None) or {}
    stem = Path(str(yaml.get("yaml_file") or "")).stem.lower()
    m = re.match(r"(yolov\d+|yolo\d+|yoloe|rtdetr)", stem)
    return m.group(1) if m else type(model.model).__name__.lower().replace("model", "") or "yolo"


class UltralyticsDetector:
    """A loaded Ultralytics model; ``predict`` goes through Ultralytics' own ``predict``."""

    def __init__(self, spec: str, model, device: str, precision, imgsz: int | None = None):
        self.model = model
        head = model.model.model[-1] if hasattr(model.model, "model") else None
        head_name = type(head).__name__
        query = "RTDETR" in head_name
        end2end = bool(getattr(head, "end2end", False))
        self.half = precision.name == "float16" and not str(device).startswith("cpu")
        self.device = device
        self.imgsz = imgsz
        caps = {"batch"}
        if model.task == "segment":
            caps.add("masks")
        if model.task == "pose":
            caps.add("keypoints")
        names = {int(k): str(v) for k, v in (model.names or {}).items()}
        self.info = ModelInfo(name=spec, family=family_of(model), backend="ultralytics", task="detect",
                              paradigm="query-based" if query else "anchor-free", needs_nms=not (query or end2end),
                              params=sum(p.numel() for p in model.model.parameters()), class_names=names,
                              device=device, dtype="float16" if self.half else "float32",
                              capabilities=frozenset(caps), runtime="torch",
                              extra={"task": model.task, "head": head_name, "end2end": end2end})

    def predict_kwargs(self, options: DetectOptions) -> dict:
        kw = dict(conf=float(options.threshold), iou=DEFAULT_IOU if options.nms_iou is None else float(options.nms_iou),
                  max_det=DEFAULT_MAX_DET if options.max_det is None else max(1, int(options.max_det)),
                  device=self.device, half=self.half, verbose=False, save=False, retina_masks=True)
        if self.imgsz:
            kw["imgsz"] = int(self.imgsz)
        return kw

    def predict(self, images: Sequence[Any], options: DetectOptions = DetectOptions(),
                timings: Timings | None = None) -> list[Detections]:
        timings = timings if timings is not None else Timings()
        kw = self.predict_kwargs(options)
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.size), []).append(i)
        out: list[Detections | None] = [None] * len(images)
        for idxs in groups.values():
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr), torch_threads_kept():
                results = self.model.predict([images[i] for i in idxs], **kw)
            spent = time.perf_counter() - t0
            speed = results[0].speed if results else {}
            inf = len(idxs) * (speed.get("inference") or 0.0) / 1000
            post = len(idxs) * (speed.get("postprocess") or 0.0) / 1000
            timings.inference += inf
            timings.postprocess += post
            timings.preprocess += max(0.0, spent - inf - post)  # letterbox, loading, set-up
            t1 = time.perf_counter()
            for i, r in zip(idxs, results):
                out[i] = self.to_detections(r)
            timings.postprocess += time.perf_counter() - t1
        return out  # type: ignore[return-value]

    def to_detections(self, r) -> Detections:
        from visiontool.convert import from_arrays
        from visiontool.masks import encode_many

        b = r.boxes
        masks = None
        columns: dict[str, Any] = {}
        if r.masks is not None:
            masks = encode_many((r.masks.data > 0.5).cpu().numpy())
        elif "masks" in self.info.capabilities:
            masks = []
        if r.keypoints is not None and r.keypoints.data is not None and len(b):
            columns["keypoints"] = r.keypoints.data.float().cpu().double().numpy()
        return from_arrays(b.xyxy.float(), b.conf.float(), b.cls.long(), self.info.class_names, masks=masks,
                           **columns).sorted_by_score()
