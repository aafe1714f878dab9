"""Benchmark helper: every timed path in a process of its own, interleaved rounds.

Measured on the 2-core AMD EPYC VM (2026-12-02, DETR-R50 with random weights, the four photos,
``run_detect`` as the CLI runs it): the torch path ran at 0.727 images/s in a process that also
held live OpenVINO and ONNX Runtime sessions and at 0.794-0.803 in a process of its own, while
OpenVINO ran at 0.880 beside the others and 0.939 alone. Timed in one shared process, the
runtimes' ratio to torch read 1.32x; timed apart, 1.18-1.26x. The runtimes' worker threads and
torch's compete for the two cores (the SAM part had shown the same: :mod:`runtimes_sam`).

A path is named by a factory: ``(module, function, args)``; the child imports ``module``
(a benchmark module: ``benchmarks/`` and ``src/`` are on its path), calls
``function(*args)`` to build the path's callable, calls it once untimed (loading, the runtime's
compile from the export cache, first-call set-up), then ``calls`` times timed, and hands back
the times and the untimed call's output (pickled). Exports are made by the parent before the
rounds (timed there, apart) and found by the children in ``VISIONTOOL_CACHE``.

The children get the environment the parent had when this module was imported, so a variable a
library set in the parent since (Ultralytics' import sets ``OMP_NUM_THREADS=1``) does not reach
them.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
ENV_AT_IMPORT = dict(os.environ)
CARRIED = ("VISIONTOOL_CACHE", "HF_HUB_OFFLINE")  # set by the benchmarks after import: carried over

Factory = tuple[str, str, list]

CHILD = r"""
import importlib, json, pickle, sys, time
sys.path[:0] = json.loads(sys.argv[1])
module, function, args, calls, out = sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
fn = getattr(importlib.import_module(module), function)(*args)
result = fn()  # untimed
times = []
for _ in range(calls):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
with open(out, "wb") as f:
    pickle.dump({"times": times, "result": result}, f)
"""


def child_env() -> dict[str, str]:
    env = dict(ENV_AT_IMPORT)
    env.update({k: os.environ[k] for k in CARRIED if k in os.environ})
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_once(factory: Factory, calls: int) -> tuple[list[float], Any]:
    """One fresh process: ``(the timed calls' seconds, the untimed call's output)``."""
    module, function, args = factory
    with tempfile.TemporaryDirectory(prefix="vt-bench-child-") as d:
        out = Path(d) / "out.pkl"
        p = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(HERE), str(SRC)]), module, function,
                            json.dumps(args), str(calls), str(out)], env=child_env(), capture_output=True, text=True)
        if p.returncode != 0 or not out.is_file():
            raise SystemExit(f"the benchmark child {function}{tuple(args)} failed (exit {p.returncode}):\n"
                             f"{p.stderr[-3000:]}")
        with open(out, "rb") as f:
            got = pickle.load(f)
    return got["times"], got["result"]


def run_rounds(factories: dict[str, Factory], rounds: int, calls: int = 1) -> tuple[dict[str, list[float]], dict]:
    """``rounds`` interleaved rounds (every path once per round, each in a fresh process timing
    ``calls`` calls): ``(seconds per path, the first round's untimed output per path)``."""
    times: dict[str, list[float]] = {name: [] for name in factories}
    outputs: dict[str, Any] = {}
    for _ in range(rounds):
        for name, factory in factories.items():
            ts, result = run_once(factory, calls)
            times[name] += ts
            outputs.setdefault(name, result)
    return times, outputs
