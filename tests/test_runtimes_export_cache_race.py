"""The export cache under concurrency: processes exporting the same key at once (Ray replicas
starting together) export it once, and the others use that entry; without the lock (a
filesystem without ``flock``) the loser of the race keeps the winner's sound entry."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from visiontool.models.runtimes import export_cache

REPO = Path(__file__).resolve().parents[1]
FIELDS = {"kind": "test", "weights": "abc"}

CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from visiontool.models.runtimes.export_cache import get_or_build

    log = Path(sys.argv[1])

    def build(d):
        with open(log, "a") as fh:
            fh.write(f"built {os.getpid()}\\n")
        time.sleep(1.0)  # long enough for the other process to arrive while this one exports
        (d / "model.onnx").write_bytes(b"net" * 1000)
        return ["model.onnx"]

    engine, where = get_or_build({"kind": "test", "weights": "abc"}, build, lambda d: (d / "model.onnx").read_bytes(),
                                 "the test net", quiet=True)
    assert engine == b"net" * 1000
    print(where)
""")


def test_two_processes_export_once(tmp_path):
    import os

    log = tmp_path / "builds.log"
    env = {**os.environ, "VISIONTOOL_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(log)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert len(log.read_text().splitlines()) == 1  # one export; the other process waited and used it
    (a, _), (b, _) = outs
    assert a.strip() == b.strip()
    entries = list((tmp_path / "cache" / "exports").iterdir())
    assert [e.name for e in entries] == [Path(a.strip()).name]  # one entry, no temporary leftovers


def test_without_the_lock_the_loser_keeps_the_winners_entry(tmp_path, monkeypatch):
    import contextlib

    monkeypatch.setenv("VISIONTOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(export_cache, "build_lock", lambda root, key: contextlib.nullcontext(False))
    both_building = threading.Barrier(2)
    builds: list[int] = []
    first: list[int] = []
    opened: list[Path] = []

    def build(d):
        builds.append(1)
        if not first:
            first.append(threading.get_ident())
        both_building.wait(timeout=30)  # the race: both export at once
        me = threading.get_ident()
        time.sleep(0.2 if me == first[0] else 0.0)  # one publishes clearly before the other
        (d / "model.onnx").write_bytes(f"net-{me}".encode())
        return ["model.onnx"]

    def open_engine(d):
        opened.append(d)
        return (d / "model.onnx").read_bytes()

    results: list = []
    errors: list = []

    def run():
        try:
            results.append(export_cache.get_or_build(FIELDS, build, open_engine, "the test net", quiet=True))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(builds) == 2 and len(results) == 2
    assert {str(w) for _, w in results} == {str(results[0][1])}
    final = results[0][1]
    assert export_cache.problem(final, FIELDS) is None
    kept = (final / "model.onnx").read_bytes()
    assert [engine for engine, _ in results] == [kept, kept]  # the first entry stayed: both use it
    assert [p.name for p in (tmp_path / "cache" / "exports").iterdir()] == [final.name]
