"""Starting and stopping the local Ray cluster a run owns without Ray's fixed waits.

Measured with Ray 2.60 on this machine (2 cores), ``ray.init()`` of a new local cluster took
2.0 s and ``ray.shutdown()`` 1.1-1.3 s; two fixed waits made up half of it:

* **Start (~0.5-0.9 s).** Right after starting the raylet, ``ray.init`` asks the GCS for it
  (``ray._private.services.get_node``). The raylet registers only once its agents are up
  (~0.5 s here), and Ray's C++ accessor (``GlobalStateAccessor::GetNode``) then sleeps a whole
  second before asking again. :func:`prompt_registration` asks every 20 ms first, through the
  same GCS call, and leaves the final lookup to Ray.
* **Stop (~1 s).** ``ray.shutdown`` stops its processes one after the other: SIGTERM, up to a
  second's wait, then SIGKILL. The autoscaler monitor does not exit on SIGTERM once the GCS is
  gone (Ray stops the GCS before it), so every shutdown waited the full second and then
  SIGKILLed it. :func:`lean_head` (below) does not start it: ``ray.shutdown`` takes 0.08-0.4 s.

**Processes nobody uses (~0.45 s of the start, ~1 CPU-s).** A head node also starts the API
server (the dashboard's head in its minimal form, for ``ray job`` and the state API), the
autoscaler monitor and the log monitor (which tails the workers' logs for drivers that print
them). A cluster started for one run and stopped after it needs none of them: its size is
fixed, the run prints no worker log (``log_to_driver=False``), and no client submits jobs to
it. ``ray.init`` waits for the API server's URL before it starts the raylet, so that process's
start is on the critical path; and all three are Python processes importing Ray on the same 2
cores as the run. :func:`lean_head` skips the three. Measured here: the run's start of its
cluster (``import ray`` included) 2.07-2.15 → 1.46-1.53 s; Ray's processes 1.7 → 1.0 CPU-s in
the first 3 s; in the tiny DETR's run the replica was up 0.46 s sooner (5.86-6.01 s against
6.22-6.52 s, 3 runs each way), and Ray's other processes used 0.44 instead of 0.50 CPU-s per 6 s
of steady state.

A third wait was a race, so it showed only in some runs: **a whole second in about a third of
the starts** (``ray.init`` 2.34 s instead of 1.50 s in 3 of 8 quiet starts here). The raylet
connects to its own object store right after creating it, and a Ray client that finds a socket
not yet listening sleeps ``raylet_client_connect_timeout_milliseconds`` (1,000 ms) before it
tries again, ``raylet_client_num_connect_attempts`` (10) times; the raylet log shows the store
created and the object manager started exactly 1.000 s apart. Workers connect to their raylet
the same way. :func:`system_config` makes the retries 50 ms apart, 200 of them (the same 10 s
in all), through ``ray.init``'s ``_system_config``, which a new cluster hands to its GCS,
raylet and workers: 8 of 8 starts then took 1.50-1.60 s.

**Ray Data's helper actors (~0.6 s of the replica's start, ~2 CPU-s).** Every Ray Data job
creates three named, detached actors, each a worker process importing Ray: the stats actor
(metrics for the dashboard), the actor location tracker (where each pool actor runs) and the
autoscaling coordinator (which shares a cluster between concurrent jobs and asks an autoscaler
for nodes). On a cluster of two cores they start exactly while the replica's worker does, and
take ~2 CPU-s from it; and until the coordinator first answers, Ray Data counts the cluster as
having no resources at all. A cluster started for one run has no dashboard, one node and one job:
:func:`lean_data` gives Ray Data the whole cluster's resources itself and starts none of the
three. Measured here (tiny DETR, one image): the command took 6.57-6.93 s instead of 7.25-7.45 s
(4 runs each, alternated); the replica's constructor began at 2.06-2.20 s instead of 2.74-2.81 s
(a probe with the same patches, 2 runs against 3).

All of these apply only to a cluster this process started. The registration poll and the skipped
processes touch Ray internals (``ray._private``) and fall back to Ray's own behaviour when those
internals are not as expected; the connect retries go through ``ray.init``'s ``_system_config``. On a
joined cluster the helper actors are shared by its jobs and already up, and they stay.
"""
from __future__ import annotations

import contextlib
import time

POLL_S = 0.02
WAIT_S = 10.0
CONNECT_RETRY_MS = 50


def system_config() -> dict:
    """``ray.init(_system_config=...)`` for a new local cluster: a Ray client (the raylet to its
    object store, a worker to its raylet) that finds the socket not listening yet tries again
    after 50 ms instead of a second, as long in all as Ray's default (10 tries, 1 s apart)."""
    return {"raylet_client_connect_timeout_milliseconds": CONNECT_RETRY_MS,
            "raylet_client_num_connect_attempts": 10 * 1000 // CONNECT_RETRY_MS}


def _registered(client, node_id: str) -> bool:
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    try:
        infos = client.get_all_node_info(timeout=1)
    except Exception:  # noqa: BLE001 - the GCS not answering yet: ask again
        return False
    return any(nid.hex() == node_id and info.state == GcsNodeInfo.GcsNodeState.ALIVE
               for nid, info in infos.items())


@contextlib.contextmanager
def prompt_registration():
    """While the block runs (``ray.init`` of a new local cluster), Ray's lookup of the new
    raylet first waits for it to register, asking every 20 ms (at most 10 s, then Ray's own
    lookup and its own timeout take over)."""
    try:
        from ray._private import services
        from ray._raylet import GcsClient

        original = services.get_node
    except (ImportError, AttributeError):
        yield
        return

    def get_node(gcs_address, node_id):
        try:
            client = GcsClient(address=gcs_address)
            end = time.monotonic() + WAIT_S
            while not _registered(client, node_id) and time.monotonic() < end:
                time.sleep(POLL_S)
        except Exception:  # noqa: BLE001 - Ray's own lookup (and its errors) below
            pass
        return original(gcs_address, node_id)

    services.get_node = get_node
    try:
        yield
    finally:
        if services.get_node is get_node:
            services.get_node = original


# what a head node starts and a cluster started for one run never uses (see the module docstring)
UNNEEDED = ("start_api_server", "start_monitor", "start_log_monitor")


@contextlib.contextmanager
def lean_head():
    """While the block runs (``ray.init`` of a new local cluster), the head node starts without
    the API server, the autoscaler monitor and the log monitor (``Node`` methods that Ray calls
    once each while starting a head; Ray's own code handles an API server that did not start:
    no dashboard URL)."""
    try:
        from ray._private.node import Node

        originals = {name: Node.__dict__[name] for name in UNNEEDED}
    except (ImportError, KeyError):
        yield
        return

    def skip(self, *args, **kwargs):
        return None

    for name in UNNEEDED:
        setattr(Node, name, skip)
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(Node, name, fn)


class NullActor:
    """Stands for a Ray Data helper actor that :func:`lean_data` does not start: every method's
    ``.remote(...)`` is accepted and dropped (Ray Data only sends them fire-and-forget calls)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Dropped()


class _Dropped:
    def remote(self, *args, **kwargs):
        return None


def _reserved_resources(self):
    """The whole cluster, per alive node: what a run owns on a cluster of its own."""
    import ray

    return {n["NodeID"]: dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")}


@contextlib.contextmanager
def lean_data():
    """While the block runs (Ray Data jobs on a cluster this process started), Ray Data starts
    none of its three helper actors: the stats actor (it feeds the dashboard, which such a cluster
    does not have), the actor location tracker (its answer only matters with several nodes) and
    the autoscaling coordinator (which shares a cluster between concurrent jobs and asks an
    autoscaler for more; the run is the only job, on a cluster of fixed size, so it gets every
    node's resources, as Ray Data did before the coordinator). Falls back to Ray's own behaviour
    when Ray Data's internals are not as expected."""
    try:
        from ray.data._internal import stats
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            DefaultAutoscalingCoordinator as coordinator,
        )
        from ray.data._internal.execution.operators import actor_pool_map_operator as pool

        targets = {(stats, "get_or_create_stats_actor"): lambda: NullActor(),
                   (pool, "get_or_create_actor_location_tracker"): lambda: NullActor(),
                   (pool, "get_actor_locations"): lambda ids: {},
                   (coordinator, "request_resources"): lambda self, *a, **k: None,
                   (coordinator, "cancel_request"): lambda self: None,
                   (coordinator, "get_reserved_resources"): _reserved_resources}
        originals = {(owner, name): vars(owner)[name] for owner, name in targets}
    except (ImportError, KeyError):
        yield
        return
    for (owner, name), fn in targets.items():
        setattr(owner, name, fn)
    try:
        yield
    finally:
        for (owner, name), fn in originals.items():
            setattr(owner, name, fn)


@contextlib.contextmanager
def fast_start():
    """``ray.init`` of a new local cluster without Ray's fixed waits and idle processes:
    :func:`prompt_registration` and :func:`lean_head` (pass :func:`system_config` too)."""
    with prompt_registration(), lean_head():
        yield
