"""``--engine local|ray`` and the cluster options ``detect`` and ``segment`` share.

:func:`check_engine` validates them together before anything loads and returns the
:class:`~visiontool.engines.ray.RayOptions` of a cluster run (None for ``--engine local``).
Nothing here imports Ray: ``visiontool --help`` stays ray- and pyarrow-free.
"""
from __future__ import annotations

import os

import re
from typing import Optional

import typer

ENGINES = ("local", "ray")

EngineOpt = typer.Option("local", "--engine", metavar="local|ray",
                         help="local: this process. ray: a Ray cluster (extra [ray]); records go to sharded files "
                              "in --output-dir, and SOURCE also takes manifests (.txt, or .parquet/.jsonl/.csv with a "
                              "'path' column) and object-store URIs (s3://, gs://).")
AddressOpt = typer.Option(None, "--address", metavar="auto|HOST:PORT|ray://HOST:PORT",
                          help="--engine ray: join a cluster started with `ray start` (auto: the one on this "
                               "machine). Default: start a local cluster sized to this machine.")
ReplicasOpt = typer.Option(None, "--replicas", min=1, metavar="N",
                           help="--engine ray: model replicas (default: as many as the cluster's GPUs, or CPUs, "
                                "hold).")
GpusOpt = typer.Option(None, "--gpus-per-replica", min=0.0, metavar="F",
                       help="--engine ray: GPUs per replica, fractions share a GPU (default: 1 when the cluster has "
                            "GPUs, else 0).")
CpusOpt = typer.Option(None, "--cpus-per-replica", min=0.0, metavar="F",
                       help="--engine ray: CPUs per replica (default 1; torch uses as many threads).")
OutputDirOpt = typer.Option(None, "--output-dir", metavar="DIR",
                            help="--engine ray: where the shards go (a shared path or an object-store URI); "
                                 "gather them with `visiontool merge DIR`.")
ResumeOpt = typer.Option(False, "--resume",
                         help="--engine ray: continue the run in --output-dir (images already written are skipped).")
OutputFormatOpt = typer.Option(None, "--output-format", metavar="jsonl|parquet",
                               help="--engine ray: shard format (default jsonl).")

_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5})$")


def check_engine(engine: str, *, address: Optional[str] = None, replicas: Optional[int] = None,
                 gpus_per_replica: Optional[float] = None, cpus_per_replica: Optional[float] = None,
                 output_dir: Optional[str] = None, resume: bool = False, output_format: Optional[str] = None,
                 quiet: bool = False, local_only: Optional[dict] = None):
    """The engine options checked together; ``local_only``: flag -> value of the options a
    cluster run does not take (its records go to --output-dir). Returns RayOptions or None."""
    from visiontool.errors import UsageError

    engine = (engine or "local").strip().lower()
    if engine not in ENGINES:
        raise UsageError(f"invalid --engine '{engine}': expected local|ray")
    ray_flags = {"--address": address, "--replicas": replicas, "--gpus-per-replica": gpus_per_replica,
                 "--cpus-per-replica": cpus_per_replica, "--output-dir": output_dir,
                 "--resume": resume or None, "--output-format": output_format}
    if engine == "local":
        from visiontool.cli.options import refuse_given

        refuse_given({flag: v is not None for flag, v in ray_flags.items()}, "--engine ray")
        return None
    given = [flag for flag, v in (local_only or {}).items() if v]
    if given:
        raise UsageError(f"--engine ray writes its records to --output-dir; {', '.join(given)} "
                         f"{'is' if len(given) == 1 else 'are'} for --engine local (gather the shards with "
                         "`visiontool merge DIR`)")
    if not output_dir:
        raise UsageError("--engine ray needs --output-dir DIR (the records are written there as shards)")
    if address is not None and not _ADDRESS.match(address.strip()):
        raise UsageError(f"invalid --address '{address}': expected auto, HOST:PORT or ray://HOST:PORT")
    fmt = (output_format or "jsonl").strip().lower()
    if fmt not in ("jsonl", "parquet"):
        raise UsageError(f"invalid --output-format '{output_format}': expected jsonl|parquet")
    if cpus_per_replica is not None and cpus_per_replica <= 0 and not gpus_per_replica:
        raise UsageError("--cpus-per-replica must be above 0 unless the replicas hold GPUs")
    from visiontool.errors import require

    if address or os.environ.get("RAY_ADDRESS"):
        from visiontool.engines.ray_cluster import join_with_token_if_any

        join_with_token_if_any()  # before ray is imported: it reads the auth mode once
    require("ray", "--engine ray", "ray")
    require("pyarrow", "--engine ray", "ray")
    require("ray.data", "--engine ray", "ray")
    _check_output_dir(output_dir)
    from visiontool.engines.ray import RayOptions

    return RayOptions(output_dir=output_dir, address=address.strip() if address else None, replicas=replicas,
                      gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica, resume=resume,
                      output_format=fmt, quiet=quiet)


def _check_output_dir(output_dir: str) -> None:
    """A local --output-dir must be (or become) a writable directory; object-store URIs are
    checked when the run opens them."""
    if "://" in output_dir and not output_dir.startswith("file://"):
        return
    from visiontool.io.output import check_output_dir

    check_output_dir(output_dir[len("file://"):] if output_dir.startswith("file://") else output_dir,
                     "--output-dir")
