# ruff: noqa: F811  (fixtures imported from ray_helpers are re-bound as test arguments)
"""--engine ray pieces that need no cluster: the option checks, the model actor's out-of-memory
retry (a simulated CUDA OOM on the CPU), the shard directory's crash repair and merge order,
manifests and object-store URIs."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_helpers import assert_user_error, one_error_line
from ray_helpers import assert_same_records, make_images
from visiontool.cli.main import app

pa = pytest.importorskip("pyarrow")
runner = CliRunner()


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("ray-units") / "photos", n=12)


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("args, needle", [
    (["--output-dir", "{d}"], "--output-dir applies to --engine ray"),
    (["--replicas", "2", "--resume"], "--replicas, --resume apply to --engine ray"),
    (["--engine", "ray"], "--engine ray needs --output-dir DIR"),
    (["--engine", "spark"], "invalid --engine 'spark': expected local|ray"),
    (["--engine", "ray", "--output-dir", "{d}", "--output", "{d}/x.json"],
     "--engine ray writes its records to --output-dir; --output is for --engine local"),
    (["--engine", "ray", "--output-dir", "{d}", "--save-viz", "{d}/viz", "-f", "json"],
     "--format, --save-viz are for --engine local"),
    (["--engine", "ray", "--output-dir", "{d}", "--address", "not an address"], "invalid --address 'not an address'"),
    (["--engine", "ray", "--output-dir", "{d}", "--output-format", "csv"], "invalid --output-format 'csv'"),
    (["--engine", "ray", "--output-dir", "{d}", "--device", "cuda:1"], "--device cuda:1 picks one GPU of one machine"),
    (["--engine", "ray", "--output-dir", "{d}", "--replicas", "0"], "--replicas"),
])
def test_engine_options_are_checked_before_anything_runs(photos, tmp_path, args, needle):
    args = [a.replace("{d}", str(tmp_path / "out")) for a in args]
    line = one_error_line(invoke("detect", photos / "img001.jpg", *args))
    assert needle in line


def test_segment_takes_the_engine_options_too(photos, tmp_path):
    line = one_error_line(invoke("segment", photos / "img001.jpg", "--box", "1,1,20,20", "--engine", "ray",
                                 "--output-dir", tmp_path / "o", "--masks-dir", tmp_path / "m"))
    assert "--masks-dir is for --engine local" in line
    line = one_error_line(invoke("segment", photos / "img001.jpg", "--box", "1,1,20,20", "--output-dir", tmp_path))
    assert "--output-dir applies to --engine ray" in line


def test_missing_extra_is_exit_2_with_the_install_line(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if `pip install visiontool` without [ray]
    line = one_error_line(invoke("detect", photos / "img001.jpg", "--engine", "ray", "--output-dir", tmp_path))
    assert "--engine ray needs the optional extra 'ray': pip install 'visiontool[ray]'" in line


def test_merge_refuses_a_directory_that_is_not_a_run(tmp_path):
    line = one_error_line(invoke("merge", tmp_path))
    assert "is not the --output-dir of a `visiontool detect|segment --engine ray` run" in line
    assert "no such directory" in one_error_line(invoke("merge", tmp_path / "nope"))


# ----------------------------------------------------------------------------- out of memory
def _table(photos: Path, names: list[str]):
    from visiontool.convert import default_image_id

    paths = [str(photos / n) for n in names]
    return pa.table({"position": pa.array(range(1, len(paths) + 1), pa.int64()), "image": paths,
                     "image_id": pa.array([default_image_id(p, i) for i, p in enumerate(paths, 1)], pa.int64())})


def _records(out) -> dict:
    return {json.loads(r)["image"]: json.loads(r) for r in out.column("record").to_pylist()}


@pytest.fixture()
def udf(tiny_detr_fast):
    from visiontool.engines.ray_udfs import DetectSpec, DetectUDF

    return DetectUDF(DetectSpec(model=tiny_detr_fast, threshold=0.05, batch_size=8, device="cpu", dtype="float32"))


class _RowsAsTheyAre:
    """A ChunkIO stand-in: the rows are given expanded, the records table comes back."""

    def expand(self, table):
        return table

    def write(self, records, node, warnings):
        return records


@pytest.mark.parametrize("streams", ["1", None], ids=["one-stream", "default"])
def test_the_replica_loads_and_infers_on_one_thread(tiny_detr_fast, photos, monkeypatch, streams):
    """Ray Data builds a replica on the worker's main thread and calls it on another thread; were
    the model to load on one and infer on the other, torch's OpenMP would keep two thread teams
    on the cores one team fills and stop spinning at its barriers (the replica ran DETR-R50 at
    1.5 of 2 cores). Load and every call run on the replica's one model thread: the forward
    passes too with one stream; by default a transformers detector on a CPU with two or more
    torch threads runs them on two forward streams started from it, each with its share of the
    threads (one each on two cores: no OpenMP team at all), and the count is restored after."""
    import threading

    import torch

    from visiontool.engines.ray_udfs import DetectSpec, DetectUDF
    from visiontool.services import detect as detect_service
    from visiontool.services.forward_streams import STREAMS_ENV

    if streams:
        monkeypatch.setenv(STREAMS_ENV, streams)
    else:
        monkeypatch.delenv(STREAMS_ENV, raising=False)
    total = torch.get_num_threads()
    threads: dict[str, set] = {"load": set(), "predict": set()}
    real_prepare = detect_service.prepare_detector

    def where() -> tuple:
        t = threading.current_thread()
        return t.ident, t.name.rsplit("_", 1)[0], torch.get_num_threads()

    def prepare(*args, **kwargs):
        threads["load"].add(where())
        detector, classes, phrases = real_prepare(*args, **kwargs)
        real_predict = detector.predict

        def predict(*a, **k):
            threads["predict"].add(where())
            return real_predict(*a, **k)

        detector.predict = predict
        return detector, classes, phrases

    monkeypatch.setattr(detect_service, "prepare_detector", prepare)
    udf = DetectUDF(DetectSpec(model=tiny_detr_fast, threshold=0.05, batch_size=1, device="cpu", dtype="float32"),
                    io=_RowsAsTheyAre())
    out = []
    for _ in range(2):  # two calls, each from a thread of its own (as Ray Data's calls come)
        caller = threading.Thread(target=lambda: out.append(udf(_table(photos, ["img000.jpg", "img001.jpg"]))))
        caller.start()
        caller.join()
    assert [t.num_rows for t in out] == [2, 2]
    [(model_thread, name, _)] = threads["load"]
    assert name == "visiontool-model" and model_thread != threading.get_ident()
    if streams == "1" or total < 2:
        assert threads["predict"] == {(model_thread, "visiontool-model", total)}
    else:
        assert {(n, k) for _, n, k in threads["predict"]} == {("visiontool-forward", total // 2)}
        assert model_thread not in {ident for ident, _, _ in threads["predict"]}
    assert torch.get_num_threads() == total


def test_cuda_oom_halves_the_batch_and_the_records_stay_the_same(udf, photos, monkeypatch):
    import torch

    names = [f"img{i:03d}.jpg" for i in range(12)] + ["bad_bytes.jpg"]
    table = _table(photos, names)
    reference = udf.records(table)
    assert udf.batch_size == 8
    real, sizes = udf.detector.predict, []

    def predict(images, options, timings=None):  # a GPU that holds two images at a time
        sizes.append(len(images))
        if len(images) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(images, options, timings)

    monkeypatch.setattr(udf.detector, "predict", predict)
    out = udf.records(table)
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) <= {1, 2}
    assert udf.batch_size == 2  # the smaller batch is kept by this replica
    assert out.column("position").to_pylist() == list(range(1, 14))
    assert_same_records(_records(out), _records(reference))
    warnings = [w for w in out.column("warning").to_pylist() if w]
    assert warnings == ["out of memory at --batch-size 8: this replica continues with batch size 4\n"
                        "out of memory at --batch-size 4: this replica continues with batch size 2"]
    errors = [e for e in out.column("error").to_pylist() if e]
    assert errors == [f"{photos / 'bad_bytes.jpg'}: not an image (or an unsupported format)"]


def test_oom_at_batch_one_and_a_failing_image_become_error_rows(udf, photos, monkeypatch):
    import torch

    names = [f"img{i:03d}.jpg" for i in range(6)]
    table = _table(photos, names)
    reference = _records(udf.records(table))
    real = udf.detector.predict
    from PIL import Image

    huge = Image.open(photos / "img001.jpg").size
    odd = Image.open(photos / "img002.jpg").size
    assert len({huge, odd} | {Image.open(photos / n).size for n in ("img000.jpg", "img003.jpg")}) >= 3

    def predict(images, options, timings=None):
        if any(im.size == huge for im in images):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        if any(im.size == odd for im in images):
            raise ValueError("boom")
        return real(images, options, timings)

    monkeypatch.setattr(udf.detector, "predict", predict)
    out = _records(udf.records(table))
    assert sorted(out) == sorted(reference)
    for name, rec in out.items():
        size = Image.open(name).size
        if size == huge:
            assert rec["error"] == f"{name}: out of memory at batch size 1 (OutOfMemoryError)"
        elif size == odd:  # iter_detect's own message, as the local command prints it
            assert rec["error"] == f"{name}: {udf.detector.info.name} failed on this {size[0]}x{size[1]} image: " \
                                   "ValueError: boom"
        else:
            assert_same_records({name: rec}, {name: reference[name]})
    assert udf.batch_size == 1


def test_the_gpu_decode_stage_hands_the_actor_the_same_pixels(udf, photos):
    """With GPU replicas, CPU tasks decode and the actor gets RGB bytes: the records are the same."""
    from visiontool.engines.ray_udfs import decode_rows

    table = _table(photos, ["img003.jpg", "bad_truncated.jpg", "img007.jpg"])
    decoded = decode_rows(table)
    assert decoded.column("pixels").to_pylist()[1] is None
    assert decoded.column("load_error").to_pylist()[1].endswith("corrupt or truncated image (Truncated File Read)")
    assert udf.records(decoded).column("record").to_pylist() == udf.records(table).column("record").to_pylist()


def test_a_replica_reads_its_chunk_and_writes_its_shards_itself(udf, photos, tmp_path):
    """A call gets chunk ids: the replica looks its rows up in _inputs.parquet, writes shards of
    at most shard_rows rows to _tmp, and returns one summary row per shard (the driver commits)."""
    import dataclasses

    import numpy as np

    from visiontool.engines.ray_chunks import ChunkIO
    from visiontool.io.shards import OutputDir

    names = [f"img{i:03d}.jpg" for i in range(7)] + ["bad_bytes.jpg"]
    table = _table(photos, names)
    out = OutputDir(str(tmp_path / "run"))
    out.start(table.to_pylist(), "detect")
    todo = np.array([2, 3, 5, 6, 7, 8], dtype=np.int64)  # 1 and 4 already done
    udf.io = ChunkIO(out.store.root, "jsonl", "detect", todo, rows=4, shard_rows=3)
    summary = udf(pa.table({"chunk": [1]})).to_pylist()  # positions 7 and 8
    assert [(s["rows"], s["positions"], s["failed"]) for s in summary] == [(2, [7, 8], 1)]
    assert summary[0]["errors"] == [f"{photos / 'bad_bytes.jpg'}: not an image (or an unsupported format)"]
    summary = udf(pa.table({"chunk": [0]})).to_pylist()  # positions 2, 3, 5, 6: two shards
    assert [(s["rows"], s["positions"]) for s in summary] == [(3, [2, 3, 5]), (1, [6])]
    reference = {json.loads(r)["image"]: r for r in udf.records(table).column("record").to_pylist()}
    for s in summary:
        lines = (tmp_path / "run" / "_tmp" / s["shard"]).read_text().splitlines()
        assert s["bytes"] == (tmp_path / "run" / "_tmp" / s["shard"]).stat().st_size
        assert lines == [reference[str(photos / names[p - 1])] for p in s["positions"]]
    # rows a decode stage already expanded pass through as they are
    decoded = dataclasses.replace(udf.io, todo=None).expand(table)
    assert decoded is table


def test_oom_is_recognised():
    import torch

    from visiontool.engines.ray_udfs import is_oom

    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))


# ----------------------------------------------------------------------------- the shard directory
def _shard(store, name: str, records: list[dict], pending: bool = True) -> int:
    from visiontool.io.shards import encode_shard

    data = encode_shard([json.dumps(r) for r in records], "jsonl" if name.endswith(".jsonl") else "parquet",
                        "detect")
    store.write_bytes(("_tmp/" if pending else "") + name, data, atomic=False)
    return len(data)


def _rec(i: int) -> dict:
    return {"image": f"im{i}.jpg", "image_id": i, "width": 4, "height": 3, "model": "m",
            "detections": [{"label": "cat", "category_id": 17, "score": 0.5 + i / 100, "box": [0.5, 1.0, 2.0, 3.0]}]}


def test_repair_finishes_half_commits_and_drops_partial_shards(tmp_path):
    from visiontool.io.shards import Entry, OutputDir

    out = OutputDir(str(tmp_path / "run"))
    s = out.store
    s.makedirs()
    s.write_json("_job.json", {"kind": "detect", "inputs": 8})
    a = Entry("part-a.jsonl", 2, 0, _shard(s, "part-a.jsonl", [_rec(1), _rec(3)]), [1, 3])
    out.commit(a)  # complete
    b = Entry("part-b.jsonl", 2, 0, _shard(s, "part-b.jsonl", [_rec(2), _rec(5)]), [2, 5])
    s.write_json(f"_manifest/{b.shard}.json", b.to_json())  # the driver died before the move
    _shard(s, "part-c.jsonl", [_rec(4)])  # written, never committed
    s.write_bytes("_tmp/part-d.jsonl", b'{"image": "im6.jpg", "ima')  # a task killed mid-write
    s.write_json("_manifest/part-e.jsonl.json", Entry("part-e.jsonl", 1, 0, 10, [7]).to_json())  # no shard at all
    assert [e.shard for e in out.read_state().entries] == ["part-a.jsonl", "part-b.jsonl"]
    state = out.read_state(repair=True)
    assert [e.shard for e in state.entries] == ["part-a.jsonl", "part-b.jsonl"]
    assert sorted(p.name for p in (tmp_path / "run").glob("part-*")) == ["part-a.jsonl", "part-b.jsonl"]
    assert not list((tmp_path / "run" / "_tmp").iterdir())
    assert sorted(p.name for p in (tmp_path / "run" / "_manifest").iterdir()) == ["part-a.jsonl.json",
                                                                                 "part-b.jsonl.json"]
    from visiontool.io.shards import iter_positioned

    assert [p for p, _ in iter_positioned(str(tmp_path / "run"))] == [1, 2, 3, 5]


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_shard_damaged_after_the_run_is_named_and_redone(tmp_path, damage):
    """A finished run whose committed shard was later truncated or deleted: merge (and evaluate)
    said nothing and wrote fewer images with exit 0, or ended "unexpected JSONDecodeError";
    --resume did nothing. Now merge names the shard (exit 1, the rest written) and the resume's
    repair drops it so its images are redone."""
    from visiontool.io.shards import Entry, OutputDir

    run = tmp_path / "run"
    out = OutputDir(str(run))
    out.store.makedirs()
    out.store.write_json("_job.json", {"kind": "detect", "inputs": 4})
    for name, positions in (("part-a.jsonl", [1, 2]), ("part-b.jsonl", [3, 4])):
        out.commit(Entry(name, 2, 0, _shard(out.store, name, [_rec(i) for i in positions]), positions))
    out.finish({"kind": "detect", "inputs": 4, "rows": 4})
    whole = invoke("merge", run, "-q")
    assert whole.exit_code == 0 and len(whole.stdout.splitlines()) == 4
    if damage == "truncated":
        (run / "part-b.jsonl").write_bytes((run / "part-b.jsonl").read_bytes()[:40])
    else:
        (run / "part-b.jsonl").unlink()
    r = invoke("merge", run, "-q")
    assert r.exit_code == 1, r.stderr
    assert [json.loads(x)["image_id"] for x in r.stdout.splitlines()] == [1, 2]
    state = out.read_state()
    assert not state.complete and [e.shard for e in state.entries] == ["part-a.jsonl"]
    written = Entry.from_json(json.loads((run / "_manifest" / "part-b.jsonl.json").read_text()), "b").bytes
    why = f"part-b.jsonl (40 bytes, {written} when written)" if damage == "truncated" else "part-b.jsonl (deleted)"
    assert state.damaged == [why]
    assert r.stderr == (f"visiontool: error: {run} holds 2 of 4 images: 1 shard(s) changed since they were "
                        f"written: {why}; rerun it with --resume (what is there was merged)\n")
    repaired = out.read_state(repair=True)  # what --resume does first
    assert [e.shard for e in repaired.entries] == ["part-a.jsonl"] and repaired.success is None
    assert sorted(p.name for p in run.glob("part-*")) == ["part-a.jsonl"]
    assert sorted(p.name for p in (run / "_manifest").iterdir()) == ["part-a.jsonl.json"]
    assert out.read_state().damaged == []  # repaired: what is left is an unfinished run


def test_a_shard_garbled_in_place_is_one_line(tmp_path):
    from visiontool.io.shards import Entry, OutputDir

    run = tmp_path / "run"
    out = OutputDir(str(run))
    out.store.makedirs()
    out.store.write_json("_job.json", {"kind": "detect", "inputs": 2})
    out.commit(Entry("part-a.jsonl", 2, 0, _shard(out.store, "part-a.jsonl", [_rec(1), _rec(2)]), [1, 2]))
    data = bytearray((run / "part-a.jsonl").read_bytes())
    data[data.index(b"\n") + 1] = ord("@")  # the second record's opening brace, its size kept
    (run / "part-a.jsonl").write_bytes(bytes(data))
    r = invoke("merge", run, "-q")
    line = assert_user_error(r, 2)
    assert [json.loads(x)["image_id"] for x in r.stdout.splitlines()] == [1]  # streamed before the bad one
    assert line.startswith(f"visiontool: error: {run / 'part-a.jsonl'}: record 2 is not JSON (")
    assert line.endswith("the shard was changed after it was written: delete it and its _manifest entry, then rerun "
                         "with --resume")


@pytest.mark.parametrize("fan_in", [256, 2])
def test_merge_reads_interleaved_shards_in_input_order(tmp_path, monkeypatch, fan_in):
    from visiontool.io import shards
    from visiontool.io.shards import Entry, OutputDir
    from visiontool.services.merge import iter_records

    monkeypatch.setattr(shards, "MERGE_FAN_IN", fan_in)
    out = OutputDir(str(tmp_path / "run"))
    out.store.makedirs()
    out.store.write_json("_job.json", {"kind": "detect", "inputs": 9})
    groups = [[1, 4, 7], [2, 3, 9], [5, 6], [8]]
    for k, g in enumerate(groups):
        name = f"part-{k}.{'parquet' if k % 2 else 'jsonl'}"
        out.commit(Entry(name, len(g), 0, _shard(out.store, name, [_rec(i) for i in g]), g))
    recs = list(iter_records(tmp_path / "run"))
    assert recs == [_rec(i) for i in range(1, 10)]  # parquet shards round-trip exactly too


# ----------------------------------------------------------------------------- sources
def test_manifests_list_their_paths_relative_to_themselves(photos, tmp_path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from visiontool.engines.ray_sources import iter_names

    rel = [f"photos/img00{i}.jpg" for i in range(4)]
    root = photos.parent
    (root / "list.txt").write_text("# my images\n" + "\n".join(rel[:2]) + "\n\n" + str(photos / "img002.jpg") + "\n")
    pq.write_table(pa.table({"path": rel, "other": [1, 2, 3, 4]}), root / "list.parquet")
    (root / "list.jsonl").write_text("".join(json.dumps({"path": p, "n": i}) + "\n" for i, p in enumerate(rel)))
    pacsv.write_csv(pa.table({"id": [1, 2], "path": rel[2:]}), root / "list.csv")
    want = [str(root / p) for p in rel]
    assert list(iter_names([str(root / "list.txt")])) == want[:3]
    assert list(iter_names([str(root / "list.parquet")])) == want
    assert list(iter_names([str(root / "list.jsonl"), str(root / "list.csv")])) == want  # duplicates once
    # with plain sources, in argument order
    assert list(iter_names([str(photos / "img009.jpg"), str(root / "list.csv")])) == [str(photos / "img009.jpg")] + \
        want[2:]


def test_a_bad_manifest_is_a_usage_error(photos, tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"file": ["a.jpg"]}), tmp_path / "m.parquet")
    res = invoke("detect", tmp_path / "m.parquet", "--engine", "ray", "--output-dir", tmp_path / "out")
    assert "manifest" in one_error_line(res) and "has no 'path' column (columns: file)" in res.stderr
    (tmp_path / "empty.txt").write_text("# nothing\n")
    res = invoke("detect", tmp_path / "empty.txt", "--engine", "ray", "--output-dir", tmp_path / "out2")
    assert "lists no images" in one_error_line(res)
    assert not (tmp_path / "out2" / "_inputs.parquet").exists()  # a failed listing leaves nothing


def test_object_store_uris_list_and_decode_like_files(photos):
    import numpy as np

    from visiontool.engines.ray_sources import iter_names, load_object
    from visiontool.errors import ImageLoadError, UsageError
    from visiontool.io.images import load_image

    uris = list(iter_names([f"file://{photos}"]))
    assert uris == [f"file://{p}" for p in sorted(map(str, photos.iterdir()))
                    if p.endswith((".jpg", ".png"))]
    img = load_object(f"file://{photos / 'img004.jpg'}")
    assert np.array_equal(np.asarray(img), np.asarray(load_image(str(photos / "img004.jpg"))))
    with pytest.raises(ImageLoadError) as e:
        load_object(f"file://{photos / 'bad_truncated.jpg'}")
    assert str(e.value).startswith(f"file://{photos / 'bad_truncated.jpg'}: corrupt or truncated image")
    with pytest.raises(ImageLoadError, match="cannot open"):
        load_object(f"file://{photos / 'missing.jpg'}")
    with pytest.raises(UsageError, match="no such object or prefix"):
        list(iter_names([f"file://{photos}/nope"]))


@pytest.mark.parametrize("env, token_file, expected", [
    ({}, True, "token"),  # `ray start` enabled token auth because a token exists: the driver must send it
    ({"RAY_AUTH_TOKEN": "abc"}, False, "token"),
    ({}, False, None),  # no token anywhere: Ray's own default
    ({"RAY_AUTH_MODE": "disabled"}, True, "disabled"),  # the user's choice stands
])
def test_joining_sends_the_token_when_this_machine_has_one(tmp_path, monkeypatch, env, token_file, expected):
    from visiontool.engines.ray_cluster import join_with_token_if_any

    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if token_file:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("x" * 32)
    join_with_token_if_any()
    assert os.environ.get("RAY_AUTH_MODE") == expected


@pytest.mark.parametrize("env, expected", [({}, "local"), ({"RAY_ADDRESS": "10.0.0.5:6379"}, "10.0.0.5:6379")])
def test_without_address_a_new_local_cluster_is_started(monkeypatch, env, expected):
    """No --address: a cluster of its own ("local"), not whatever `ray start` left recorded in
    /tmp/ray/ray_current_cluster (ray.init() alone would join that, or fail when it is gone);
    RAY_ADDRESS still names a cluster to join."""
    import ray

    from visiontool.engines.ray_cluster import Session

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    with Session(None) as session:
        assert session.started_local == (expected == "local")
    assert calls[0]["address"] == expected and calls[-1] == "shutdown"
    # a new cluster gets the short connect retries; joining one, ray.init refuses a _system_config
    assert ("_system_config" in calls[0]) == (expected == "local")


def test_an_output_onto_the_runs_own_files_is_refused_and_a_damaged_job_file_is_one_line(tmp_path, coco_dir):
    """`merge DIR -o DIR/_job.json` replaced the run's description with the merged records (exit 0);
    every later merge then ended "unexpected AttributeError". A new file beside the shards is fine."""
    from visiontool.io.shards import Entry, OutputDir

    run = tmp_path / "run"
    out = OutputDir(str(run))
    out.store.makedirs()
    out.store.write_json("_job.json", {"kind": "detect", "inputs": 2})
    out.commit(Entry("part-a.jsonl", 2, 0, _shard(out.store, "part-a.jsonl", [_rec(1), _rec(2)]), [1, 2]))
    out.finish({"kind": "detect", "inputs": 2, "rows": 2})
    job = (run / "_job.json").read_bytes()
    for target in ("_job.json", "_manifest/part-a.jsonl.json", "part-a.jsonl", "_SUCCESS"):
        line = one_error_line(invoke("merge", run, "-o", run / target))
        assert f"is a file of the run in '{run}'" in line, line
    gt = coco_dir / "instances_val2014_100.json"
    assert "is a file of the run" in one_error_line(invoke("evaluate", "--gt", gt, "--pred", run, "-o",
                                                           run / "_job.json"))
    assert (run / "_job.json").read_bytes() == job
    beside = invoke("merge", run, "-o", run / "merged.jsonl", "-q")
    assert beside.exit_code == 0 and len((run / "merged.jsonl").read_text().splitlines()) == 2
    again = invoke("merge", run, "-q")  # the file beside the shards is not read as one
    assert again.exit_code == 0 and len(again.stdout.splitlines()) == 2
    (run / "_job.json").write_text("[1, 2]")
    assert "_job.json is not the run's description (a JSON list" in one_error_line(invoke("merge", run), 2)
