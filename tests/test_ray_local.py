"""A run without --address starts a local cluster of its own and stops it: through the installed
`visiontool` (records equal a local run; none of that cluster's processes are left), and the two
shortcuts of :mod:`visiontool.engines.ray_local` in a driver of their own (the raylet lookup
waits for the registration; the head starts no API server, autoscaler monitor or log monitor, so
``ray.shutdown`` has no monitor to wait a second for; the cluster's connect retries are 50 ms
apart; a Ray Data job starts none of Ray Data's helper actors)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from ray_helpers import _procs, assert_same_records, child_env, make_images, records_by_image

pytest.importorskip("ray")


def own_env(tmp_path) -> dict:
    env = child_env(VISIONTOOL_CACHE=tmp_path / "cache")
    env.pop("RAY_ADDRESS", None)  # no cluster to join: the run starts its own
    return env


DRIVER = textwrap.dedent("""
    import json
    import ray
    from ray._private import services
    from visiontool.engines import ray_local
    from visiontool.engines.ray_cluster import Session

    polls = []
    registered = ray_local._registered
    ray_local._registered = lambda client, node_id: polls.append(registered(client, node_id)) or polls[-1]
    original = services.get_node
    from ray._private.node import Node
    node_methods = {name: Node.__dict__[name] for name in ray_local.UNNEEDED}
    from ray.data._internal import stats
    from ray.data._internal.cluster_autoscaler import default_autoscaling_coordinator as dac
    from ray.data._internal.execution.operators import actor_pool_map_operator as pool

    HELPERS = [(stats.STATS_ACTOR_NAME, stats.STATS_ACTOR_NAMESPACE),
               ("AutoscalingCoordinator", "AutoscalingCoordinator"), ("ActorLocationTracker", "ActorLocationTracker")]
    data_originals = {(owner, name): getattr(owner, name) for owner, name in [
        (stats, "get_or_create_stats_actor"), (pool, "get_or_create_actor_location_tracker"),
        (pool, "get_actor_locations"), (dac.DefaultAutoscalingCoordinator, "get_reserved_resources")]}
    seen = {}
    with Session(None) as session:
        node = ray._private.worker._global_node
        seen["processes"] = sorted(node.all_processes)
        seen["webui_url"] = node.webui_url
        seen["session_dir"] = node.get_session_dir_path()
        seen["pids"] = [i.process.pid for infos in node.all_processes.values() for i in infos]
        seen["restored"] = services.get_node is original and all(
            Node.__dict__[name] is fn for name, fn in node_methods.items())
        seen["answer"] = ray.get(ray.remote(lambda: 41 + 1).remote())
        # the connect retries as the GCS holds them, and as a worker process runs with them
        config = ray._private.state.state.get_system_config()
        seen["retries"] = [[config.get(k) for k in sorted(ray_local.system_config())],
                           ray.get(ray.remote(lambda: [ray._config.raylet_client_connect_timeout_milliseconds(),
                                                       ray._config.raylet_client_num_connect_attempts()]).remote())]
        seen["started_local"] = session.started_local
        # a Ray Data job with an actor pool, as a run's: its rows, and none of Ray Data's helper
        # actors (each a Python process importing Ray beside the replica's start)
        import ray.data
        from ray.data import ActorPoolStrategy

        class AddOne:
            def __call__(self, batch):
                return {"id": batch["id"] + 1}

        rows = ray.data.range(20, override_num_blocks=4).map_batches(
            AddOne, batch_size=5, compute=ActorPoolStrategy(size=1), num_cpus=1).take_all()
        seen["rows"] = sorted(r["id"] for r in rows)
        seen["helpers"] = []
        for name, namespace in HELPERS:
            try:
                ray.get_actor(name, namespace=namespace)
                seen["helpers"].append(name)
            except ValueError:
                pass
    seen["polls"] = polls
    seen["data_restored"] = all(getattr(owner, name) is fn for (owner, name), fn in data_originals.items())
    print(json.dumps(seen))
""")


def test_own_cluster_waits_for_the_raylet_and_starts_no_idle_process(tmp_path):
    p = subprocess.run([sys.executable, "-c", DRIVER], env=own_env(tmp_path), capture_output=True, text=True,
                       timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["started_local"] and out["answer"] == 42
    # the lookup asked until the raylet was there, then left the rest to Ray; Ray's lookup and
    # Node's methods are restored
    assert out["polls"] and out["polls"][-1] is True and out["restored"]
    # no API server, autoscaler monitor or log monitor (Ray starts all three by default), and
    # Ray knows there is no dashboard; the node's own processes are there
    assert not {"dashboard", "monitor", "log_monitor"} & set(out["processes"]), out["processes"]
    assert {"gcs_server", "raylet"} <= set(out["processes"]) and out["webui_url"] is None
    # so no log file of theirs either
    logs = os.listdir(os.path.join(out["session_dir"], "logs"))
    assert not [f for f in logs if f.startswith(("monitor", "log_monitor", "dashboard."))], logs
    # the cluster's clients retry a socket not yet listening after 50 ms, not a second, 200
    # times: in the GCS's config and in a worker
    assert out["retries"] == [[50, 200], [50, 200]]
    # Ray Data ran the actor pool on the whole cluster without its three helper actors (stats,
    # autoscaling coordinator, actor locations), and its own functions are back afterwards
    assert out["rows"] == list(range(1, 21)) and out["helpers"] == [] and out["data_restored"]
    alive = _procs()
    assert not [pid for pid in out["pids"] if pid in alive and "<defunct>" not in alive[pid][1]]


def test_installed_command_on_its_own_cluster_equals_the_local_run(tmp_path, tiny_detr_fast):
    exe = shutil.which("visiontool", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the visiontool entry point is not installed next to this Python"
    images = make_images(tmp_path / "images", 12)
    env = own_env(tmp_path)
    before = set(_procs())
    local = subprocess.run([exe, "detect", str(images), "-m", tiny_detr_fast, "-f", "jsonl", "-q"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 1, local.stderr  # the corrupt files are failed records
    out = tmp_path / "out"
    p = subprocess.run([exe, "detect", str(images), "-m", tiny_detr_fast, "--engine", "ray", "--replicas", "1",
                        "--output-dir", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "on 1 node" in p.stderr and p.stdout == ""
    merged = subprocess.run([exe, "merge", str(out), "-f", "jsonl"], env=env, capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    assert_same_records(records_by_image(merged.stdout.splitlines()), records_by_image(local.stdout.splitlines()))
    # the cluster's processes are gone: the node's at once, the replica's worker once it sees its raylet gone
    # (measured: 1-2.5 s after the command, with Ray's own shutdown too)
    deadline = time.monotonic() + 30
    while True:
        left = [cmd.split()[0] for pid, (_, cmd) in _procs().items() if pid not in before and
                ("raylet" in cmd or "gcs_server" in cmd or "ray::" in cmd) and "<defunct>" not in cmd]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left, left
