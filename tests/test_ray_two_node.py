# ruff: noqa: F811  (fixtures imported from ray_helpers are re-bound as test arguments)
"""A real two-node Ray cluster on this machine: `ray start --head` plus a second `ray start
--address` with its own resources; `visiontool detect --engine ray --address` joins it, the
replicas run on both nodes, and the records (Parquet shards, from a manifest and a file://
URI) equal the local run's. The cluster's processes are stopped by id afterwards (not with
`ray stop`, which would also stop the session's other cluster and anyone else's Ray)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest
from typer.testing import CliRunner

from ray_helpers import (assert_same_records, child_env, free_port, kill_tree_by_marker, make_images, ray_exe,
                         records_by_image, visiontool_cmd)
from visiontool.cli.main import app

pytest.importorskip("ray")
runner = CliRunner()


@pytest.fixture(scope="module")
def two_nodes():
    """Head (1 CPU) + worker node (1 CPU, resource node2); yields the GCS address."""
    temp = tempfile.mkdtemp(prefix="vt2n-", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    env = child_env()
    store = str(80 * 2**20)
    try:
        head = subprocess.run([ray_exe(), "start", "--head", "--port", str(port), "--num-cpus", "1",
                               "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp,
                               "--object-store-memory", store], env=env, capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stderr[-2000:]
        worker = subprocess.run([ray_exe(), "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                                 "--resources", json.dumps({"node2": 1}), "--object-store-memory", store],
                                env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        killed = kill_tree_by_marker(temp)
        shutil.rmtree(temp, ignore_errors=True)
        assert killed, "no process of the two-node cluster was found to stop"


def test_a_two_node_cluster_shares_the_work_and_the_records_equal_local(two_nodes, tiny_detr_fast, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = make_images(tmp_path / "photos", n=40)
    names = sorted(str(p) for p in images.iterdir())
    uri = f"file://{images / 'img005.jpg'}"  # one entry read through pyarrow.fs
    pq.write_table(pa.table({"path": [uri if n.endswith("img005.jpg") else os.path.relpath(n, tmp_path)
                                      for n in names]}), tmp_path / "inputs.parquet")
    out = tmp_path / "out"
    cmd = visiontool_cmd("detect", tmp_path / "inputs.parquet", "-m", tiny_detr_fast, "-t", "0.05", "--device",
                         "cpu", "--engine", "ray", "--address", two_nodes, "--replicas", "2", "--output-dir", out,
                         "--output-format", "parquet")
    # both replicas up before the first chunk is handed out (Ray Data's own setting): these 43
    # small images take a replica ~1 s, less than a replica's start on a busy machine, so
    # otherwise the first replica up could do them all (seen once in CI, under the other
    # test worker's load)
    env = child_env(VISIONTOOL_RAY_SHARD_ROWS=8, RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S=120)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 1, p.stderr  # the three corrupt files are rows with error
    assert "on 2 nodes (2 CPUs, 0 GPUs)" in p.stderr.splitlines()[0], p.stderr
    entries = [json.loads(e.read_text()) for e in (out / "_manifest").glob("*.json")]
    assert {n for e in entries for n in e["nodes"]} and len({n for e in entries for n in e["nodes"]}) == 2
    assert all(e["shard"].endswith(".parquet") for e in entries) and (out / "_SUCCESS").is_file()
    assert sorted(p for e in entries for p in e["positions"]) == list(range(1, len(names) + 1))
    # the local command on the same files
    local = runner.invoke(app, ["detect", *names, "-m", tiny_detr_fast, "-t", "0.05", "--device", "cpu", "-f",
                                "jsonl", "-q"])
    assert local.exit_code == 1
    local_recs = records_by_image(local.stdout.splitlines())
    merged = runner.invoke(app, ["merge", str(out), "-f", "jsonl"])
    assert merged.exit_code == 0, merged.stderr
    ray_recs = records_by_image(merged.stdout.splitlines())
    from_uri = ray_recs.pop(uri)  # the file:// source keeps its spelling
    local_005 = local_recs[str(images / "img005.jpg")]
    ray_recs[local_005["image"]] = dict(from_uri, image=local_005["image"])
    assert_same_records(ray_recs, local_recs)
