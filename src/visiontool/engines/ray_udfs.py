"""What runs on the cluster's workers: decode and the model actors.

The Ray Data pipeline (:mod:`visiontool.engines.ray`) is::

    chunk ids -> DetectUDF | SegmentUDF (model actors: input rows, decode, model, shards) -> summary rows
    chunk ids -> expand_chunk -> decode_rows (CPU tasks) -> DetectUDF (detect on GPU replicas)

A replica reads its own input rows and writes its own shards (:mod:`visiontool.engines.ray_chunks`);
its ``records`` method is the model part: input rows in, one record per row out.

Every function takes and returns ``pyarrow.Table`` batches (nullable columns stay nullable).
The actors run the local commands' own code: :func:`visiontool.services.detect.prepare_detector`
once and :func:`~visiontool.services.detect.iter_detect` (``detector.predict`` +
``filter_detections``) per window; :func:`visiontool.models.registry.load_segmenter` once and
:func:`~visiontool.services.segment.iter_segment` (``masks_for_image``) per image — so a row
is byte for byte the record ``visiontool detect|segment --format jsonl`` prints.

Nothing an image does stops the job: a decode error, a prompt outside the image, an
exception from the model on one image, all become that image's row with ``error``. Running
out of memory (CUDA OOM, or host ``MemoryError``) halves the forward-pass batch and retries
(the smaller batch is kept by that actor); at batch 1 the image gets an ``error`` row.
"""
from __future__ import annotations

import gc
import json
import pickle
import sys
from dataclasses import dataclass
from typing import Any

from visiontool.convert import to_record
from visiontool.services.image_failures import is_oom
from visiontool.types import ImageResult


@dataclass(frozen=True)
class DetectSpec:
    """Everything a detect actor needs (plain values: it is pickled to every replica)."""

    model: str | None
    threshold: float
    classes: tuple[str, ...] | None = None
    max_det: int | None = 100
    nms_iou: float | None = None
    text: tuple[str, ...] | None = None
    text_threshold: float | None = None
    batch_size: int = 1
    device: str = "auto"
    dtype: str = "auto"
    load_options: tuple = ()
    cwd: str = ""  # the driver's working directory: relative paths mean the same on every node


@dataclass(frozen=True)
class SegmentSpec:
    """Everything a segment actor needs; the per-image prompts travel with the rows."""

    model: str | None
    multimask: bool | None = None
    auto_options: Any = None  # models.protocol.AutoOptions
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: str | None = None
    use_cache: bool = True
    load_options: tuple = ()
    cwd: str = ""


class _Ids:
    """The image ids the driver computed (GT file names, else the local default), in the
    shape ``iter_detect``/``iter_segment`` ask a ground truth for them."""

    def __init__(self, names, ids):
        self._ids = dict(zip(names, ids))

    def image_id_for(self, name: str):
        return self._ids.get(name)


# ----------------------------------------------------------------------------- inputs
def load(name: str):
    """Decode one input (file, http(s) URL or object-store URI) to an RGB PIL image, exactly as
    the local commands do (ImageLoadError on failure)."""
    from visiontool.engines.ray_sources import is_object_url, load_object
    from visiontool.io.images import ImageSource, is_url, load_image

    if is_object_url(name):
        return load_object(name)
    return load_image(ImageSource(name, is_url(name)))


def use_cwd(cwd: str) -> None:
    """Relative inputs and model paths resolve against the driver's working directory (on a
    shared filesystem it exists on every node; a worker process only runs this job's tasks)."""
    import os

    if cwd and os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)


def decode_rows(table, *, cwd: str = ""):
    """The CPU decode stage (detect on GPU replicas): adds ``pixels`` (RGB bytes), ``width``,
    ``height`` and ``load_error`` so the model actors receive pixels, not paths."""
    import pyarrow as pa

    from visiontool.errors import ImageLoadError

    use_cwd(cwd)

    pixels, widths, heights, errors = [], [], [], []
    for name in table.column("image").to_pylist():
        try:
            img = load(name)
        except ImageLoadError as exc:
            pixels.append(None)
            widths.append(0)
            heights.append(0)
            errors.append(str(exc))
            continue
        pixels.append(img.tobytes())
        widths.append(img.width)
        heights.append(img.height)
        errors.append(None)
    return (table.append_column("pixels", pa.array(pixels, pa.large_binary()))
            .append_column("width", pa.array(widths, pa.int32()))
            .append_column("height", pa.array(heights, pa.int32()))
            .append_column("load_error", pa.array(errors, pa.string())))


def _items(table, lazy: bool = False):
    """Rows -> :class:`visiontool.io.sources.Item` s (decoded here unless a decode stage did it).
    ``lazy``: a generator decoding each image as it is drawn (for :func:`prefetch`)."""
    from PIL import Image

    from visiontool.io.sources import Item

    names = table.column("image").to_pylist()
    positions = table.column("position").to_pylist()
    if "pixels" in table.column_names:  # a decode stage ran before this actor
        cols = [table.column(c).to_pylist() for c in ("pixels", "width", "height", "load_error")]
        return [Item(name, None, pos, error=err) if err is not None else
                Item(name, Image.frombytes("RGB", (w, h), px), pos)
                for name, pos, px, w, h, err in zip(names, positions, *cols)]
    decoded = (_decode(name, pos) for name, pos in zip(names, positions))
    return decoded if lazy else list(decoded)


def _decode(name: str, position: int):
    from visiontool.errors import ImageLoadError
    from visiontool.io.sources import Item

    try:
        return Item(name, load(name), position)
    except ImageLoadError as exc:
        return Item(name, None, position, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - an image never stops the job: it gets an error row
        return Item(name, None, position, error=f"{name}: {type(exc).__name__}: {exc}")


def actor_iter_detect(items, actor: "DetectUDF", ids, batch_size: int | None = None):
    """The local command's ``iter_detect`` with the actor's model and options."""
    from visiontool.services.detect import iter_detect

    return iter_detect(items, actor.detector, actor.options, classes=actor.classes,
                       batch_size=actor.batch_size if batch_size is None else batch_size, gt=ids)


# ----------------------------------------------------------------------------- memory
def free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _failure(name: str, exc: BaseException) -> str:
    from visiontool.errors import VisionToolError

    msg = str(exc) if isinstance(exc, VisionToolError) else f"{type(exc).__name__}: {exc}"
    return msg if name in msg else f"{name}: {msg}"


class _Actor:
    """What both model actors share: their input and output (:class:`~visiontool.engines.ray_chunks.ChunkIO`),
    the node they run on, warnings to pass on, the records table, and the one thread the model
    runs on.

    **One model thread.** Ray Data runs an actor's ``__init__`` on the worker's main thread and
    every call on a thread of its own (``make_callable_class_single_threaded``). With torch's
    OpenMP (libgomp), each thread that enters a parallel region gets its own team of worker
    threads, and once the teams hold more threads than the cores libgomp stops spinning at its
    barriers (the spin count drops from 300,000 to 100) and sleeps on a futex at every one: a
    replica loading its model on one thread and inferring on another ran DETR-R50 at 1.52 of 2
    cores, against 1.95 for the local command (measured: a conv stack, main thread then a
    second thread, 1.48 cores). So loading and every call run on one thread of the actor's
    own (:meth:`on_model_thread`), whichever threads Ray uses. From there ``iter_detect`` runs a
    ``concurrent`` detector's passes on single-threaded forward streams, as the local command
    does (:mod:`visiontool.services.forward_streams`): no OpenMP team at all then."""

    def __init__(self, spec, io=None):
        from concurrent.futures import ThreadPoolExecutor

        use_cwd(spec.cwd)
        self.spec = spec
        ray = sys.modules.get("ray")  # never start Ray here (get_runtime_context() would)
        self.node = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else ""
        self.io = io
        self.warnings: list[str] = []
        self._said: set[str] = set()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visiontool-model")
        self.on_model_thread(self._load, spec)

    def _load(self, spec) -> None:
        """Load the model (on the model thread)."""
        raise NotImplementedError

    def on_model_thread(self, fn, *args):
        """``fn(*args)`` on the actor's model thread (its result, or its exception)."""
        return self._model_thread.submit(fn, *args).result()

    def __call__(self, table):
        """One Ray Data call: chunk ids (or decoded rows) in, the shards written, one summary
        row per shard out."""
        return self.on_model_thread(self._call, table)

    def _call(self, table):
        records = self.records(self.io.expand(table))
        warnings = [w for w in records.column("warning").to_pylist() if w]
        return self.io.write(records, self.node, warnings)

    def records(self, table):
        raise NotImplementedError

    def warn(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            self.warnings.append(message)

    def output(self, results: list[tuple[int, ImageResult]]):
        """The records table: ``position``, ``record`` (the local command's JSON), ``error``,
        ``node``, ``warning`` (new warnings, on the first row), sorted by position."""
        import pyarrow as pa

        results.sort(key=lambda t: t[0])
        warnings = [None] * len(results)
        if self.warnings and results:
            warnings[0] = "\n".join(self.warnings)
            self.warnings = []
        return pa.table({
            "position": pa.array([p for p, _ in results], pa.int64()),
            "record": pa.array([json.dumps(to_record(r)) for _, r in results], pa.string()),
            "error": pa.array([r.error for _, r in results], pa.string()),
            "node": pa.array([self.node] * len(results), pa.string()),
            "warning": pa.array(warnings, pa.string()),
        })


# ----------------------------------------------------------------------------- detect
class DetectUDF(_Actor):
    """A detect replica: the model is prepared once, each call runs ``iter_detect`` over the
    batch in forward passes of ``batch_size`` images (halved on out-of-memory)."""

    def _load(self, spec: DetectSpec) -> None:
        from visiontool.models.protocol import DetectOptions
        from visiontool.services.detect import prepare_detector

        self.detector, self.classes, phrases = prepare_detector(
            spec.model, classes=list(spec.classes) if spec.classes else None, text=spec.text, device=spec.device,
            dtype=spec.dtype, warn=self.warn, **dict(spec.load_options))
        self.options = DetectOptions(threshold=float(spec.threshold), max_det=spec.max_det, nms_iou=spec.nms_iou,
                                     text=phrases, text_threshold=spec.text_threshold)
        self.batch_size = max(1, int(spec.batch_size))

    def records(self, table):
        """Input rows (``position``, ``image``, ``image_id``, or decoded ``pixels``) -> records."""
        ids = _Ids(table.column("image").to_pylist(), table.column("image_id").to_pylist())
        return self.output(self.detect_items(_items(table, lazy=True), ids))

    def run_window(self, window, batch_size: int, ids) -> list[ImageResult]:
        return [r for r, _ in actor_iter_detect(window, self, ids, batch_size)]

    def detect_items(self, items, ids) -> list[tuple[int, ImageResult]]:
        """``(position, result)`` for every item, whatever fails.

        The batch streams through ``iter_detect`` with the images decoded in a background
        thread (as the local command does), so decoding overlaps the forward passes; a window
        that raises is then retried as below (smaller passes on out-of-memory, else one by one)."""
        from visiontool.io.video import prefetch

        drawn: list = []
        source = prefetch(iter(items), depth=4)

        def draw():
            for x in source:
                drawn.append(x)
                yield x

        out: list[tuple[int, ImageResult]] = []
        try:
            for r, _ in actor_iter_detect(draw(), self, ids):
                out.append((drawn[len(out)].position, r))
            return out
        except Exception as exc:  # noqa: BLE001 - the failing window is handled below
            failed: BaseException | None = exc
        items = drawn[len(out):] + list(source)
        i = 0
        while i < len(items):
            b = self.batch_size
            window = items[i:i + b]
            try:
                if failed is not None:  # the streaming pass's failure, on this same window
                    exc, failed = failed, None
                    raise exc
                results = self.run_window(window, b, ids)
            except Exception as exc:  # noqa: BLE001 - one image must not stop the job
                if is_oom(exc) and b > 1:
                    free_memory()
                    self.batch_size = max(1, b // 2)
                    self.warn(f"out of memory at --batch-size {b}: this replica continues with batch size "
                              f"{self.batch_size}")
                    continue  # the same window again, in smaller passes
                results = self._one_by_one(window, ids, exc)
            out.extend((x.position, r) for x, r in zip(window, results))
            i += len(window)
        return out

    def _one_by_one(self, window, ids, first: BaseException) -> list[ImageResult]:
        """A window failed: find the image(s) responsible, the others keep their records."""
        if len(window) == 1:
            return [self._error(window[0], ids, first)]
        results = []
        for x in window:
            try:
                results += self.run_window([x], 1, ids)
            except Exception as exc:  # noqa: BLE001
                if is_oom(exc):
                    free_memory()
                results.append(self._error(x, ids, exc))
        return results

    def _error(self, item, ids, exc: BaseException) -> ImageResult:
        if is_oom(exc):
            free_memory()
            msg = f"{item.name}: out of memory at batch size 1 ({type(exc).__name__})"
        else:
            msg = _failure(item.name, exc)
        return ImageResult(image=item.name, width=0, height=0, model=self.detector.info.name,
                           image_id=ids.image_id_for(item.name), error=msg)


# ----------------------------------------------------------------------------- segment
class SegmentUDF(_Actor):
    """A segment replica: the segmenter is loaded once; each image goes through
    ``iter_segment`` with the prompts its row carries (a pickled ``SegmentJob``)."""

    def _load(self, spec: SegmentSpec) -> None:
        from visiontool.models.registry import load_segmenter

        self.model = load_segmenter(spec.model, spec.device, spec.dtype, warn=self.warn, cache_dir=spec.cache_dir,
                                    use_cache=spec.use_cache, quiet=True, **dict(spec.load_options))

    def records(self, table):
        """Input rows (``position``, ``image``, ``image_id``, ``job``: a pickled SegmentJob) -> records."""
        names = table.column("image").to_pylist()
        ids = _Ids(names, table.column("image_id").to_pylist())
        jobs = table.column("job").to_pylist()
        results = [(pos, self.segment_one(pickle.loads(job), name, ids))
                   for pos, name, job in zip(table.column("position").to_pylist(), names, jobs)]
        return self.output(results)

    def segment_one(self, job, name: str, ids, attempts: int = 2) -> ImageResult:
        from visiontool.services.segment import iter_segment

        for attempt in range(attempts):
            try:
                result, _ = next(iter_segment(self.model, [job], self.spec.multimask, self.spec.auto_options, gt=ids))
                return result
            except Exception as exc:  # noqa: BLE001 - one image must not stop the job
                oom = is_oom(exc)
                if oom:
                    free_memory()
                    if attempt + 1 < attempts:
                        continue
                msg = f"{name}: out of memory ({type(exc).__name__})" if oom else _failure(name, exc)
                return ImageResult(image=name, width=0, height=0, model=self.model.info.name,
                                   image_id=ids.image_id_for(name), kind="segment", error=msg)
        raise AssertionError("unreachable")


def job_bytes(job) -> bytes:
    """A SegmentJob as its input row carries it (whatever fields the job has, they travel)."""
    return pickle.dumps(job, protocol=4)

