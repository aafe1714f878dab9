"""``--engine ray``: detect and segment over millions of images on a Ray cluster, resumable.

The driver (this module) lists the inputs, freezes them in ``DIR/_inputs.parquet``, subtracts
what ``DIR`` already holds, and streams the rest through a Ray Data pipeline::

    chunk ids -> model actors (--replicas: input rows, decode, model, shard files in DIR/_tmp)
                                                                                     |
    driver  <- one summary row per shard (rows, failures, positions) -- commits it --+

(with GPU replicas, CPU tasks on the nodes' other cores decode the images before the actors).

It keeps only counters and a bitmap of done positions (one byte per input), never records,
so its memory does not grow with the number of images; progress (rows done, rows/s,
failures) goes to stderr as shards are committed. The records are the local commands' own
(see :mod:`visiontool.engines.ray_udfs`); the layout of DIR and its commit protocol are in
:mod:`visiontool.io.shards`.

**Resume.** Rerunning the same command with ``--resume`` after a crash, Ctrl-C or a killed
driver skips every image whose row is in a committed shard, finishes or deletes what a dead
driver left half-committed, and runs the rest; an image's stable id is its position in the
frozen input list (the sources must still list the same images: a digest is checked). We do
the manifest difference on the driver rather than use Ray Data's checkpointing
(``DataContext.checkpoint_config``) because that (1) needs a plan ending in a Ray ``Write``
datasink, which leaves the driver blind until the very end — no per-shard progress, failure
lines or commit of our own; (2) only filters ``Read`` sources, while ours also come from
URLs, stdin and globs expanded on the driver; (3) is beta in Ray 2.60 and absent from the
2.40 the extra allows; (4) reserves 1 GiB of memory per checkpoint-filter actor.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from visiontool.errors import Interrupted, PartialFailure, UsageError, VisionToolError
from visiontool.settings import whole_number_env

SHARD_ROWS_ENV = "VISIONTOOL_RAY_SHARD_ROWS"
DEFAULT_SHARD_ROWS = 1000


@dataclass
class RayOptions:
    """The engine options of ``detect``/``segment`` (see :mod:`visiontool.cli.engine_options`)."""

    output_dir: str
    address: str | None = None
    replicas: int | None = None
    gpus_per_replica: float | None = None
    cpus_per_replica: float | None = None
    resume: bool = False
    output_format: str = "jsonl"
    quiet: bool = False


@dataclass
class RunSummary:
    """What a run did (returned to Python callers; the CLI prints it)."""

    output_dir: str
    total: int
    written: int  # rows this run committed
    failed: int  # failed rows in DIR, this run and earlier ones
    seconds: float
    plan: Any = None

    @property
    def rows_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


# ----------------------------------------------------------------------------- entry points
def detect_on_ray(opts: RayOptions, sources: list[str], *, recursive: bool = False, model: str | None = None,
                  threshold: float = 0.5, classes=None, max_det: int | None = 100, nms_iou: float | None = None,
                  batch_size: int = 1, device: str = "auto", dtype: str = "auto", gt=None, text=None,
                  text_threshold: float | None = None, load_options: dict | None = None) -> RunSummary:
    """``visiontool detect SOURCE… --engine ray``: every image's detect record into ``opts.output_dir``.

    Options mean what they mean for :func:`visiontool.services.detect.run_detect`; ``gt`` (a
    path or GroundTruthIndex) gives image ids from its file names. Raises PartialFailure
    (after the run) when some images failed."""
    from visiontool.engines.ray_sources import iter_names
    from visiontool.engines.ray_udfs import DetectSpec
    from visiontool.services.detect import check_detect_options, parse_text

    check_detect_options(threshold, batch_size)
    check_device(device)
    load_options = dict(load_options or {})
    device = check_runtime(model, device, load_options)
    phrases = parse_text(text)
    gt_index = _gt(gt)
    classes_t = tuple(classes) if isinstance(classes, (list, tuple)) else ((classes,) if classes else None)
    spec = DetectSpec(model=model, threshold=float(threshold), classes=classes_t, max_det=max_det, nms_iou=nms_iou,
                      text=phrases, text_threshold=text_threshold, batch_size=int(batch_size), device=device,
                      dtype=dtype, load_options=tuple(sorted((load_options or {}).items())), cwd=os.getcwd())
    options = {"model": model, "threshold": float(threshold), "classes": list(classes_t or []) or None,
               "max_det": max_det, "nms_iou": nms_iou, "text": list(phrases) if phrases else None,
               "text_threshold": text_threshold, "device": device, "dtype": dtype,
               "load_options": dict(spec.load_options) or None}

    def rows() -> Iterator[dict]:
        for pos, name in enumerate(iter_names(list(sources), recursive), 1):
            yield {"position": pos, "image": name, "image_id": _image_id(name, pos, gt_index)}

    return _Run(opts, "detect", spec, options, rows, int(batch_size)).execute()


def segment_on_ray(opts: RayOptions, jobs: list, *, records: dict | None = None, model: str | None = None,
                   multimask: bool | None = None, auto_options=None, gt=None, device: str = "auto",
                   dtype: str = "auto", cache_dir: str | None = None, use_cache: bool = True,
                   load_options: dict | None = None) -> RunSummary:
    """``visiontool segment … --engine ray``: the CLI's :class:`~visiontool.services.segment.SegmentJob`
    list (its prompts, or ``--auto``) run on the cluster. A job whose source is a manifest
    becomes one job per entry (its prompts, plus the ``--boxes-from`` record of that entry)."""
    from visiontool.engines.ray_udfs import SegmentSpec, job_bytes

    check_device(device)
    load_options = dict(load_options or {})
    device = check_runtime(None, device, load_options)  # the SAM image encoder's runtime
    gt_index = _gt(gt)
    spec = SegmentSpec(model=model, multimask=multimask, auto_options=auto_options, device=device, dtype=dtype,
                       cache_dir=cache_dir, use_cache=use_cache,
                       load_options=tuple(sorted((load_options or {}).items())), cwd=os.getcwd())
    options = {"model": model, "multimask": multimask, "device": device, "dtype": dtype,
               "auto": dataclasses.asdict(auto_options) if dataclasses.is_dataclass(auto_options) else None,
               "load_options": dict(spec.load_options) or None}

    def rows() -> Iterator[dict]:
        for pos, job in enumerate(_expand_jobs(jobs, records), 1):
            name = job.source.name
            yield {"position": pos, "image": name, "image_id": _image_id(name, pos, gt_index), "job": job_bytes(job)}

    return _Run(opts, "segment", spec, options, rows, 1).execute()


def check_device(device: str) -> None:
    if ":" in device and device.split(":")[0] == "cuda":
        raise UsageError(f"--device {device} picks one GPU of one machine; on a cluster each replica is given its "
                         "own GPU(s): use --device cuda (or auto) and --gpus-per-replica")


def check_runtime(model: str | None, device: str, load_options: dict) -> str:
    """``--runtime openvino|onnxruntime`` (or an export directory as ``--model``) on a cluster:
    checked on the driver (the extra is installed here, the device is the CPU) and the device
    ``auto`` made ``cpu``, so no replica asks for a GPU it would not use. Each replica then
    loads the detector (``model``; None: segment's SAM image encoder) with the runtime; the
    export cache (``VISIONTOOL_CACHE``) serialises their exports of one model, so replicas
    sharing a disk export it once. Returns the device."""
    from visiontool.models import registry, runtimes

    runtime = load_options.get("runtime")
    exported = bool(model) and registry.detector_module(model).__name__ == registry.EXPORTED
    if runtime is None and not exported:
        return device
    name = runtimes.validate(runtime) if runtime is not None else None
    if name in ("torch", "auto") and not exported:
        return device  # torch, or decided on each replica (OpenVINO where it imports on a CPU)
    cpu = "cpu" if device == "auto" else device
    if exported:
        from visiontool.models.runtimes import exported as export_dir

        manifest = export_dir.read_manifest(model)
        export_dir.check_runtime(model, manifest, runtime)
        name = manifest["runtime"]
    runtimes.resolve(name, cpu)  # the extra (exit 2 with the install line); a GPU device is one line
    return cpu


def _gt(gt):
    if gt is None:
        return None
    from visiontool.io.coco import GroundTruthIndex

    return gt if isinstance(gt, GroundTruthIndex) else GroundTruthIndex.load(gt)


def _image_id(name: str, position: int, gt_index) -> int | None:
    """The record's image_id, as the local commands compute it."""
    from visiontool.convert import default_image_id

    return gt_index.image_id_for(name) if gt_index is not None else default_image_id(name, position)


def _expand_jobs(jobs: list, records: dict | None) -> Iterator:
    from visiontool.engines.ray_sources import is_manifest, manifest_entries
    from visiontool.io.images import ImageSource, is_url
    from visiontool.io.prompts import match_record, prompts_for_detections

    seen: set[str] = set()
    for job in jobs:
        name = job.source.name
        if not is_manifest(name):
            if name not in seen:
                seen.add(name)
                yield job
            continue
        for entry in manifest_entries(name):
            if entry in seen:
                continue
            seen.add(entry)
            found = match_record(records, entry)
            extra = prompts_for_detections(found.detections, "--boxes-from") if found is not None else []
            yield dataclasses.replace(job, source=ImageSource(entry, is_url(entry)), prompts=list(job.prompts) + extra)


# ----------------------------------------------------------------------------- the run
class _Run:
    def __init__(self, opts: RayOptions, kind: str, spec, options: dict, rows: Callable[[], Iterable[dict]],
                 batch_size: int):
        from visiontool.io.shards import FORMATS

        if opts.output_format not in FORMATS:
            raise UsageError(f"invalid --output-format '{opts.output_format}': expected jsonl|parquet")
        self.opts, self.kind, self.spec, self.rows, self.batch_size = opts, kind, spec, rows, batch_size
        self.options = json.loads(json.dumps(options, default=str))
        self.shard_rows = _shard_rows()

    # -- before Ray: the directory, the input list, what is left to do
    def prepare(self):
        import numpy as np

        from visiontool import __version__
        from visiontool.io.shards import OutputDir

        out = OutputDir(self.opts.output_dir)
        job = {"visiontool": __version__, "kind": self.kind, "format": self.opts.output_format,
               "options": self.options}
        if out.has_job():
            state = out.read_state(repair=False)
            if not self.opts.resume:
                done = "complete" if state.complete else f"{state.rows} of {state.total} images done"
                raise UsageError(f"--output-dir {out.display()} already holds a run ({done}); add --resume to "
                                 "continue it, or choose another directory")
            self._check_same(state.job, job, out)
            digest, total = _digest(self.rows())
            if (digest, total) != (state.job.get("digest"), state.total):
                raise UsageError(f"--resume: the sources no longer list the same images as the run in "
                                 f"{out.display()} ({state.total} then, {total} now); rerun it with the same "
                                 "sources or choose another --output-dir")
            state = out.read_state(repair=True)
            if state.damaged:
                from visiontool.render.console import warn

                warn(f"{out.display()}: {state.damage}; their images are done again")
        else:
            if out.read_state().entries:
                raise UsageError(f"--output-dir {out.display()} holds shards of an earlier run but no _job.json; "
                                 "choose another directory")
            digest = hashlib.sha256()
            total = 0

            def counted():
                nonlocal total
                for row in self.rows():
                    _feed(digest, row)
                    total += 1
                    yield row

            out.start(counted(), self.kind)
            job.update(inputs=total, digest=digest.hexdigest(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            out.store.write_json("_job.json", job)
            state = out.read_state()
        done = np.zeros(state.total + 1, dtype=bool)
        for e in state.entries:
            done[e.positions] = True
        return out, state, done

    def _check_same(self, old: dict, new: dict, out) -> None:
        diffs = []
        for key in ("kind", "format"):
            if old.get(key) != new[key]:
                diffs.append(f"{key} {old.get(key)} then, {new[key]} now")
        before, now = old.get("options", {}), new["options"]
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                diffs.append(f"{key} {before.get(key)!r} then, {now.get(key)!r} now")
        if diffs:
            raise UsageError(f"--resume: the run in {out.display()} was started with other options "
                             f"({'; '.join(diffs)}); rerun it with the same options, or choose another --output-dir")

    # -- the run
    def execute(self) -> RunSummary:
        import numpy as np

        from visiontool.engines.ray_cluster import QuietStderr, Session, chunk_rows, explain, log_path_for, plan
        from visiontool.engines.ray_progress import Reporter

        t0 = time.perf_counter()
        if self.opts.address and self.opts.address != "auto" and not _connected():
            from visiontool.engines.ray_cluster import probe

            probe(self.opts.address)  # before DIR is touched
        out, state, done = self.prepare()
        total = state.total
        todo = np.flatnonzero(~done[1:]) + 1
        report = Reporter(sys.stderr, self.opts.quiet, total, int(done[1:].sum()), state.failed, out.display())
        if len(todo) == 0:
            report.already(state)
            return self.finish(out, report, t0, None)
        log = log_path_for(self.opts.output_dir)
        with QuietStderr(log) as q:
            report.stream = q.out
            try:
                with Session(self.opts.address) as session:
                    p = plan(self.opts.replicas, self.opts.gpus_per_replica, self.opts.cpus_per_replica,
                             getattr(self.spec, "device", "auto"), strict=session.started_local, warn=report.warn)
                    report.start(len(todo), p)
                    k = chunk_rows(len(todo), p.replicas, self.batch_size, most=self.shard_rows)
                    ds = self.dataset(p, out, todo, k)
                    # prefetch_batches=0: with Ray's default (1) a chunk's summary row reaches the
                    # driver only once the next chunk is done too (measured: 1.5 s late with 1.5 s
                    # chunks), so shards were committed, and progress printed, a chunk late
                    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
                        for row in batch.to_pylist():
                            self.commit(out, row, done, report)
            except VisionToolError:
                raise
            except (Interrupted, KeyboardInterrupt) as exc:
                report.warn(f"stopped: {int(done[1:].sum())} of {total} images are in {out.display()}; the same "
                            "command with --resume does the rest")
                if isinstance(exc, Interrupted):
                    raise
                raise Interrupted("interrupted") from None
            except Exception as exc:  # noqa: BLE001 - Ray's failures become one line
                raise explain(exc, log) from None
            finally:
                report.stop()
        report.stream = sys.stderr
        missing = total - int(done[1:].sum())
        if missing:
            raise VisionToolError(f"the Ray job ended with {missing} image(s) without a row; rerun the same command "
                                  f"with --resume (Ray's log: {log})")
        return self.finish(out, report, t0, p)

    def dataset(self, p, out, todo, k: int):
        """The Ray Data pipeline (lazy; runs as the driver iterates it): one block per chunk of
        the positions left to do (the unit a replica takes), and the model actors, which read
        their rows, decode, infer and write the shards themselves (:mod:`visiontool.engines.ray_chunks`),
        so that no other worker process competes with the model for the cores."""
        import ray
        from ray.data import ActorPoolStrategy

        from visiontool.engines.ray_chunks import ChunkIO, expand_chunk
        from visiontool.engines.ray_udfs import DetectUDF, SegmentUDF, decode_rows

        n_chunks = math.ceil(len(todo) / k)
        uri = out.store.uri if not out.store.local else out.store.root
        io = ChunkIO(uri, self.opts.output_format, self.kind, todo, k, self.shard_rows)
        ds = ray.data.from_items([{"chunk": i} for i in range(n_chunks)], override_num_blocks=n_chunks)
        batch = 1  # chunk ids: one chunk per call
        if self.kind == "detect" and p.gpus > 0:
            # GPU replicas: the nodes' other cores decode (CPU tasks) while the GPUs run the model
            ds = ds.map_batches(expand_chunk, batch_size=1, batch_format="pyarrow", num_cpus=0,
                                fn_kwargs={"listing": uri, "todo": todo, "rows": k})
            ds = ds.map_batches(decode_rows, batch_size=k, batch_format="pyarrow", num_cpus=1,
                                fn_kwargs={"cwd": self.spec.cwd})
            io, batch = dataclasses.replace(io, todo=None), k
        udf = DetectUDF if self.kind == "detect" else SegmentUDF
        # replicas: Ray Data restarts a dead actor and retries its tasks (max_restarts and
        # max_task_retries default to -1 for map actors)
        return ds.map_batches(udf, batch_size=batch, batch_format="pyarrow", compute=ActorPoolStrategy(size=p.replicas),
                              num_cpus=p.cpus, num_gpus=p.gpus if p.gpus > 0 else None,
                              fn_constructor_kwargs={"spec": self.spec, "io": io})

    def commit(self, out, row: dict, done, report) -> None:
        from visiontool.io.shards import Entry

        positions = [int(x) for x in row["positions"]]
        entry = Entry(row["shard"], int(row["rows"]), int(row["failed"]), int(row["bytes"]), positions,
                      list(row["errors"] or []), list(row["nodes"] or []))
        if done[positions].any():  # never two rows for one image (a retried task's twin)
            out.discard(entry.shard)
            return
        out.commit(entry)
        done[positions] = True
        report.committed(entry, list(row["warnings"] or []))

    def finish(self, out, report, t0: float, p) -> RunSummary:
        state = out.read_state()
        if state.success is None:
            # every image has its row: what is left in _tmp (a shard a killed replica was writing
            # when Ray retried its chunk) is uncommitted by definition
            state = out.read_state(repair=True)
            out.finish({"kind": self.kind, "format": self.opts.output_format, "inputs": state.total,
                        "rows": state.rows, "failed": state.failed, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "shards": [{"name": e.shard, "rows": e.rows, "failed": e.failed} for e in state.entries]})
        summary = RunSummary(out.display(), state.total, report.rows, state.failed, time.perf_counter() - t0, p)
        report.done(summary)
        if state.failed:
            raise PartialFailure(f"{state.failed} of {state.total} images could not be processed (their rows in "
                                 f"{out.display()} carry \"error\")")
        return summary


def _connected() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _shard_rows() -> int:
    return whole_number_env(SHARD_ROWS_ENV, "a positive whole number of rows per shard") or DEFAULT_SHARD_ROWS


def _feed(digest, row: dict) -> None:
    digest.update(f"{row['position']}\t{row['image']}\t{row['image_id']}\n".encode("utf-8", "surrogateescape"))
    if "job" in row:
        digest.update(hashlib.sha256(row["job"]).digest())


def _digest(rows: Iterable[dict]) -> tuple[str, int]:
    d = hashlib.sha256()
    n = 0
    for row in rows:
        _feed(d, row)
        n += 1
    return d.hexdigest(), n
