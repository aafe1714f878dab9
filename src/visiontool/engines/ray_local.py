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

All of these apply only to a cluster this process started. The registration poll and the skipped
processes touch Ray internals (``ray._private``) and fall back to Ray's own behaviour when those
internals are not as expected; the connect retries go through ``ray.init``'s ``_system_config``.
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


@contextlib.contextmanager
def fast_start():
    """``ray.init`` of a new local cluster without Ray's fixed waits and idle processes:
    :func:`prompt_registration` and :func:`lean_head` (pass :func:`system_config` too)."""
    with prompt_registration(), lean_head():
        yield
