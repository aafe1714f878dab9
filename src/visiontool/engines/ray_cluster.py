"""Joining or starting a Ray cluster, sizing the replicas, keeping Ray's chatter off the terminal.

* Without ``--address`` a local cluster sized to the machine is started (no dashboard) and
  stopped at the end; with ``--address auto|HOST:PORT|ray://HOST:PORT`` the run joins a
  cluster started with ``ray start`` (and only disconnects). When the calling process is
  already connected (``ray.init()`` done by an embedding program, or the test suite), that
  connection is used as it is.
* Ray writes a lot to the driver's stdout and stderr (raylet notices, executor logs, stack
  traces of retried tasks). While the run is on, file descriptors 1 and 2 go to a log file
  (``DIR/_logs/driver-<time>.log`` for a local DIR, else a temporary file) and visiontool's own
  progress and error lines go to the terminal; a failure names the log.
* Replicas: ``--gpus-per-replica`` defaults to 1 when the cluster has GPUs (and ``--device`` is
  not cpu), else 0; ``--cpus-per-replica`` to 1; ``--replicas`` to as many as the cluster's
  GPUs (or CPUs) hold.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass

from visiontool.engines.ray_local import fast_start, lean_data, system_config
from visiontool.errors import UsageError, VisionToolError

RAY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune")


@dataclass(frozen=True)
class Plan:
    """How many model replicas, with what each holds."""

    replicas: int
    cpus: float
    gpus: float
    cluster_cpus: float
    cluster_gpus: float
    nodes: int

    def describe(self) -> str:
        each = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return (f"{self.replicas} replica{'s' if self.replicas != 1 else ''} × {each} on {self.nodes} "
                f"node{'s' if self.nodes != 1 else ''} ({self.cluster_cpus:g} CPUs, {self.cluster_gpus:g} GPUs)")


class QuietStderr:
    """Send fds 1 and 2 and ``sys.stdout``/``sys.stderr`` to ``log_path`` while Ray runs (its
    driver prints raylet notices and task tracebacks to both; a cluster run writes no data to
    stdout); :attr:`out` is where visiontool's own lines go (the terminal's stderr, or the
    caller's captured stream)."""

    def __init__(self, log_path: str):
        self.log_path = log_path

    def __enter__(self):
        os.makedirs(os.path.dirname(self.log_path) or ".", exist_ok=True)
        self.log = open(self.log_path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
        self.saved_streams = (sys.stdout, sys.stderr)
        for stream in self.saved_streams:
            try:
                stream.flush()
            except (AttributeError, ValueError):
                pass
        self.real = _fileno(sys.stderr) == 2
        self.saved_fds = (os.dup(1), os.dup(2))
        self.out = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace") \
            if self.real else sys.stderr
        os.dup2(self.log.fileno(), 1)
        os.dup2(self.log.fileno(), 2)
        sys.stdout = sys.stderr = self.log
        self.levels = {name: logging.getLogger(name).level for name in RAY_LOGGERS}
        for name in RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc):
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        sys.stdout, sys.stderr = self.saved_streams
        for fd, saved in zip((1, 2), self.saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        if self.real:
            self.out.close()
        self.log.close()
        return False


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, ValueError, OSError):
        return None


def log_path_for(output_dir: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if "://" not in output_dir:
        return os.path.join(os.path.abspath(os.path.expanduser(output_dir)), "_logs", f"driver-{stamp}.log")
    return os.path.join(tempfile.gettempdir(), f"visiontool-ray-{stamp}-{os.getpid()}.log")


class Session:
    """Connected to a cluster for the duration of the block (started, joined or reused)."""

    def __init__(self, address: str | None):
        self.address = address
        self.owned = False
        self.started_local = False
        self.stack = contextlib.ExitStack()

    def __enter__(self):
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from a CLI run
        if not ray.is_initialized():
            if self.address and self.address != "auto":
                probe(self.address)
            kwargs = dict(logging_level=logging.WARNING, log_to_driver=False, ignore_reinit_error=True)
            try:
                if self.address:
                    ray.init(address=self.address, **kwargs)
                else:  # RAY_ADDRESS, when set, names a cluster to join instead
                    # "local": a new cluster, even when `ray start` left its address in
                    # /tmp/ray/ray_current_cluster (ray.init() alone would join that one, or fail
                    # on it when that cluster is gone)
                    self.started_local = not os.environ.get("RAY_ADDRESS")
                    if self.started_local:
                        kwargs["_system_config"] = system_config()  # no 1 s connect retries (ray_local)
                    with fast_start() if self.started_local else contextlib.nullcontext():
                        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                                 **kwargs)
                    if self.started_local:  # for as long as the run holds its cluster
                        self.stack.enter_context(lean_data())
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = f"the Ray cluster at '{self.address}'" if self.address else "a local Ray cluster"
                raise VisionToolError(f"cannot connect to {where}: {first_line(str(exc))}") from None
            self.owned = True
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        for name in ("print_on_execution_start", "enable_operator_progress_bars"):
            if hasattr(ctx, name):
                setattr(ctx, name, False)
        return self

    def __exit__(self, *exc):
        with self.stack:
            if self.owned:
                import ray

                ray.shutdown()
        return False


def join_with_token_if_any() -> None:
    """Send the cluster token when joining, if this machine has one (call it before ``import
    ray``: Ray reads the mode once; the CLI does, in ``check_engine``).

    ``ray start`` turns token authentication on whenever a token exists (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, where a first ``ray.init()`` writes one), but a
    driver joining it with an address does not send the token unless RAY_AUTH_MODE=token: measured
    with Ray 2.60, ``ray.init(address=...)`` then fails with "Failed to connect to Ray cluster"
    (the GCS logs "Missing authorization header"). A token-mode driver also joins clusters that
    run without authentication, so the mode is set whenever a token is found and the user has not
    chosen a mode."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"


def probe(address: str, timeout: float = 10.0) -> None:
    """Fail at once when nothing listens at HOST:PORT (``ray.init`` would retry for minutes)."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise VisionToolError(f"cannot connect to the Ray cluster at '{address}': {exc.strerror or exc} (is it "
                              "started? `ray start --head` prints the address to use)") from None


def plan(replicas: int | None, gpus: float | None, cpus: float | None, device: str, strict: bool,
         warn) -> Plan:
    """Replicas and their resources from the options and what the cluster holds. ``strict``
    (a local cluster we started, which cannot grow): replicas that do not fit are a usage error;
    on a joined cluster they are a warning (an autoscaler may add nodes)."""
    import ray

    res = ray.cluster_resources()
    n_cpu, n_gpu = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    on_cpu = device.split(":")[0] in ("cpu", "mps")
    if gpus is None:
        gpus = 1.0 if n_gpu > 0 and not on_cpu else 0.0
    elif gpus > 0 and on_cpu:
        raise UsageError(f"--gpus-per-replica {gpus:g} with --device {device}: the replicas would hold GPUs they "
                         "do not use")
    cpus = 1.0 if cpus is None else cpus
    if replicas is None:
        replicas = int(n_gpu // gpus) if gpus > 0 else int(n_cpu // cpus) if cpus > 0 else 1
        replicas = max(1, replicas)
    p = Plan(replicas, cpus, gpus, n_cpu, n_gpu, nodes)
    short = []
    if replicas * cpus > n_cpu + 1e-9:
        short.append(f"{replicas * cpus:g} CPUs (the cluster has {n_cpu:g})")
    if replicas * gpus > n_gpu + 1e-9:
        short.append(f"{replicas * gpus:g} GPUs (the cluster has {n_gpu:g})")
    if short:
        msg = f"{replicas} replica(s) need {' and '.join(short)}"
        if strict:
            raise UsageError(f"{msg}: lower --replicas, --cpus-per-replica or --gpus-per-replica")
        warn(f"{msg}; the run waits until the cluster has them (an autoscaler may add nodes)")
    return p


# ----------------------------------------------------------------------------- errors
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Failure|Exception)): (.+)$")


def first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return str(text).strip()


def explain(exc: BaseException, log_path: str) -> VisionToolError:
    """A Ray failure as one visiontool error: the VisionToolError a replica raised when there
    is one (a model that cannot load, …), else the exception's last line and the log file."""
    from visiontool import errors as E

    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, VisionToolError):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    text = str(exc)
    if "No module named 'visiontool'" in text:
        return UsageError("the cluster's workers cannot import visiontool: install it on every node "
                          "(pip install 'visiontool[ray]', the same version as here)")
    for line in reversed(text.splitlines()):
        m = _ERROR_LINE.match(line.strip())
        if m:
            cls = getattr(E, m.group(1), None)
            if isinstance(cls, type) and issubclass(cls, VisionToolError):
                err = cls.__new__(cls)  # the class (and its exit code) with the message as it was
                Exception.__init__(err, m.group(2))
                return err
            return VisionToolError(f"the Ray job failed: {m.group(1)}: {m.group(2)} (Ray's log: {log_path})")
    return VisionToolError(f"the Ray job failed: {type(exc).__name__}: {first_line(text)} (Ray's log: {log_path})")


def chunk_rows(todo: int, replicas: int, batch_size: int, most: int = 1000) -> int:
    """Images per pipeline chunk (one model-actor task, one shard): a forward batch at least,
    at most ``most`` (the shard size), and small enough that every replica gets several chunks."""
    share = math.ceil(todo / max(1, replicas * 8))
    return max(int(batch_size), min(most, max(1, share)))
