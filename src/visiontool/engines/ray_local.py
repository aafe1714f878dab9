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
  SIGKILLed it; SIGTERMed earlier, it reports "the autoscaler failed" to the driver and takes
  0.6 s. A local cluster's monitor has nothing to save (the cluster has a fixed size and is
  about to go), so :func:`stop_monitor` SIGKILLs it first: ``ray.shutdown`` then took 0.33 s.

Both touch Ray internals (``ray._private``), only for a cluster this process started, and fall
back to Ray's own behaviour when those internals are not as expected.

A third wait was a race, so it showed only in some runs: **a whole second in about a third of
the starts** (``ray.init`` 2.34 s instead of 1.50 s in 3 of 8 quiet starts here). The raylet
connects to its own object store right after creating it, and a Ray client that finds a socket
not yet listening sleeps ``raylet_client_connect_timeout_milliseconds`` (1,000 ms) before it
tries again, ``raylet_client_num_connect_attempts`` (10) times; the raylet log shows the store
created and the object manager started exactly 1.000 s apart. Workers connect to their raylet
the same way. :func:`system_config` makes the retries 50 ms apart, 200 of them (the same 10 s
in all), through ``ray.init``'s ``_system_config``, which a new cluster hands to its GCS,
raylet and workers: 8 of 8 starts then took 1.50-1.60 s.
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


def stop_monitor() -> None:
    """SIGKILL the autoscaler monitor of the local cluster this process started (call it just
    before ``ray.shutdown()``)."""
    try:
        from ray._private import worker

        node = worker._global_node
        infos = list(node.all_processes.get("monitor", ())) if node is not None and node.is_head() else []
    except (ImportError, AttributeError):
        return
    for info in infos:
        process = getattr(info, "process", None)
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                process.kill()
