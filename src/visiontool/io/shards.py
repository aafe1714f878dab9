"""The output directory of a cluster run: record shards, their manifest, the frozen input list.

``visiontool detect|segment --engine ray --output-dir DIR`` writes (names starting with ``_``
are hidden from Spark, Arrow datasets and DuckDB globs over ``DIR/part-*``)::

    DIR/_job.json                   what the run computes: kind, model and options, input count and digest
    DIR/_inputs.parquet             the frozen input list: position (1-based), image, image_id [, job]
    DIR/_tmp/part-….jsonl           shards being written (never read; removed on --resume)
    DIR/_manifest/part-….json       one entry per complete shard: rows, failures, positions, bytes
    DIR/part-<first>-<id>.jsonl     complete shards (``.parquet`` with --output-format parquet)
    DIR/_SUCCESS                    written once every input has its row: counts and the list of shards

A shard row is exactly the record the local command prints (DESIGN.md §3: ``json.dumps`` of
:func:`visiontool.convert.to_record`, masks as RLE), a failed image included (its record
carries ``error``). Rows in a shard are sorted by input position.

**Commit protocol.** The replica that made a shard writes ``_tmp/<name>`` completely (flushed,
fsynced on local disks) before it reports the shard; only the driver commits: it writes the manifest entry
``_manifest/<name>.json`` and then moves ``_tmp/<name>`` to ``<name>``. A shard is complete
when its entry and its file both exist; an entry whose file is still in ``_tmp`` (the driver
died between the two steps) is finished by the next run; any other ``_tmp`` file is a
partial or uncommitted shard and is deleted, its images redone. Since one process commits,
a shard from a task of a dead driver can never be committed, so no image is written twice.

Storage is a local path or a URI that ``pyarrow.fs`` opens (``s3://``, ``gs://``, … where
pyarrow has that filesystem; only local paths are tested here). Every node of the cluster
and the driver must see the same DIR (a shared filesystem or an object store).
"""
from __future__ import annotations

import heapq
import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from visiontool.errors import InvalidInputError
from visiontool.io.storage import Store

JOB_FILE = "_job.json"
INPUTS_FILE = "_inputs.parquet"
SUCCESS_FILE = "_SUCCESS"
MANIFEST_DIR = "_manifest"
TMP_DIR = "_tmp"
FORMATS = ("jsonl", "parquet")
EXTENSIONS = {"jsonl": ".jsonl", "parquet": ".parquet"}
INPUT_ROW_GROUP = 4096  # rows per row group of _inputs.parquet (what one listing read decodes)
MERGE_FAN_IN = 256  # shards merged at once by :func:`iter_positioned`; more go through temp runs


# ----------------------------------------------------------------------------- shard rows
def shard_name(first_position: int, fmt: str) -> str:
    """``part-<first position, 9 digits>-<random>.jsonl``: names sort roughly in input order and
    never collide between tasks or runs."""
    return f"part-{int(first_position):09d}-{uuid.uuid4().hex[:12]}{EXTENSIONS[fmt]}"


def encode_shard(records: list[str], fmt: str, kind: str) -> bytes:
    """One shard file's bytes from the rows' JSON records (already sorted by position)."""
    if fmt == "jsonl":
        return "".join(r + "\n" for r in records).encode("utf-8")
    import io

    import pyarrow.parquet as pq

    table = records_to_table([json.loads(r) for r in records], kind)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def records_to_table(records: list[dict], kind: str):
    """Parquet shard columns: the record's scalar fields as columns, its ``detections`` (or
    ``masks``) list as JSON text, so that every record round-trips exactly (free-form fields
    such as a mask's ``prompt`` have no fixed schema)."""
    import pyarrow as pa

    key = "masks" if kind == "segment" else "detections"
    cols = {
        "image": pa.array([r["image"] for r in records], pa.string()),
        "image_id": pa.array([r.get("image_id") for r in records], pa.int64()),
        "width": pa.array([r.get("width", 0) for r in records], pa.int32()),
        "height": pa.array([r.get("height", 0) for r in records], pa.int32()),
        "model": pa.array([r.get("model", "") for r in records], pa.string()),
        "error": pa.array([r.get("error") for r in records], pa.string()),
        key: pa.array([None if key not in r else json.dumps(r[key]) for r in records], pa.string()),
    }
    return pa.table(cols)


def table_records(table, kind: str) -> Iterator[dict]:
    """The records of a Parquet shard, in the key order :func:`visiontool.convert.to_record` uses."""
    key = "masks" if kind == "segment" else "detections"
    data = table.to_pydict()
    for i in range(table.num_rows):
        rec = {"image": data["image"][i], "image_id": data["image_id"][i], "width": data["width"][i],
               "height": data["height"][i], "model": data["model"][i]}
        if data["error"][i] is not None:
            rec["error"] = data["error"][i]
        else:
            rec[key] = json.loads(data[key][i]) if data[key][i] is not None else []
        yield rec


# ----------------------------------------------------------------------------- the directory
@dataclass
class Entry:
    """One complete shard as the manifest lists it."""

    shard: str
    rows: int
    failed: int
    bytes: int
    positions: list[int]
    errors: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"shard": self.shard, "rows": self.rows, "failed": self.failed, "bytes": self.bytes,
                "positions": self.positions, "errors": self.errors, "nodes": self.nodes}

    @classmethod
    def from_json(cls, d: dict, where: str) -> "Entry":
        try:
            return cls(str(d["shard"]), int(d["rows"]), int(d["failed"]), int(d["bytes"]),
                       [int(p) for p in d["positions"]], [str(e) for e in d.get("errors", [])],
                       [str(n) for n in d.get("nodes", [])])
        except (KeyError, TypeError, ValueError):
            raise InvalidInputError(f"{where} is not a shard manifest entry; the output directory is damaged") \
                from None


@dataclass
class State:
    """What an output directory holds: its job, its complete shards, and what they cover."""

    job: dict | None
    entries: list[Entry]
    success: dict | None = None
    damaged: list[str] = field(default_factory=list)  # committed shards lost or changed since: "NAME (why)"

    @property
    def damage(self) -> str:
        """The damaged shards, for a message: "2 shard(s) changed since they were written: a (deleted), b (…)"."""
        more = " ..." if len(self.damaged) > 3 else ""
        return f"{len(self.damaged)} shard(s) changed since they were written: {', '.join(self.damaged[:3])}{more}"

    @property
    def complete(self) -> bool:
        """Every input has its row: the run finished and nothing was lost since."""
        return self.success is not None and not self.damaged and self.rows >= self.total

    @property
    def rows(self) -> int:
        return sum(e.rows for e in self.entries)

    @property
    def failed(self) -> int:
        return sum(e.failed for e in self.entries)

    @property
    def kind(self) -> str:
        return (self.job or {}).get("kind", "detect")

    @property
    def total(self) -> int:
        return int((self.job or {}).get("inputs", 0))


class OutputDir:
    """The driver's view of DIR: read its state, clean up after a crash, commit shards."""

    def __init__(self, uri: str):
        self.store = Store(uri)

    def display(self, rel: str = "") -> str:
        return self.store.display(rel)

    # -- reading
    def has_job(self) -> bool:
        return self.store.exists(JOB_FILE)

    def read_state(self, repair: bool = False) -> State:
        """Complete shards (entry + file of the size it was written). ``repair`` (the driver
        before a run): finish commits interrupted between the entry and the move, delete
        partial or uncommitted temp shards, entries without a shard, and committed shards lost
        or changed since (``damaged``; their images are redone)."""
        s = self.store
        job = s.read_json(JOB_FILE) if s.exists(JOB_FILE) else None
        if job is not None and not isinstance(job, dict):  # e.g. overwritten by an output
            raise InvalidInputError(f"{self.display(JOB_FILE)} is not the run's description (a JSON "
                                    f"{type(job).__name__}, not an object); the output directory is damaged")
        shards = s.sizes()
        pending = s.sizes(TMP_DIR)
        entries, damaged = [], []
        for name in s.listdir(MANIFEST_DIR):
            if not name.endswith(".json"):
                continue
            e = Entry.from_json(s.read_json(f"{MANIFEST_DIR}/{name}"), self.display(f"{MANIFEST_DIR}/{name}"))
            if shards.get(e.shard) == e.bytes:
                entries.append(e)
                continue
            if e.shard not in shards and pending.get(e.shard) == e.bytes:
                if repair:  # the driver died between writing the entry and moving the shard
                    s.move(f"{TMP_DIR}/{e.shard}", e.shard)
                    del pending[e.shard]
                entries.append(e)
                continue
            if e.shard in shards:  # committed, then truncated or rewritten: its images are redone
                damaged.append(f"{e.shard} ({shards[e.shard]} bytes, {e.bytes} when written)")
                if repair:
                    s.delete(e.shard)
            elif e.shard not in pending:  # committed, then deleted
                damaged.append(f"{e.shard} (deleted)")
            if repair:
                s.delete(f"{MANIFEST_DIR}/{name}")
        if repair:
            for name in set(pending) - {e.shard for e in entries}:
                s.delete(f"{TMP_DIR}/{name}")
        entries.sort(key=lambda e: e.positions[0] if e.positions else 0)
        if repair and damaged:
            s.delete(SUCCESS_FILE)  # the run is unfinished again until its lost images are redone
        success = s.read_json(SUCCESS_FILE) if s.exists(SUCCESS_FILE) else None
        return State(job, entries, success, damaged)

    # -- writing (driver)
    def start(self, listing_rows: Iterable[dict], kind: str) -> int:
        """A fresh run: write the frozen input list (the caller then writes ``_job.json``, whose
        presence marks DIR as a run). Should the listing fail (a missing source), nothing of it
        is left behind, nor DIR itself when this created it."""
        created = not self.store.exists("")
        self.store.makedirs()
        self.store.delete(SUCCESS_FILE)
        try:
            return write_listing(self.store, listing_rows, kind)
        except BaseException:
            self.store.delete(INPUTS_FILE)
            if created and self.store.local:
                try:
                    os.rmdir(self.store.root)
                except OSError:
                    pass
            raise

    def commit(self, entry: Entry) -> None:
        """Make one written shard part of the output (entry first, then the move)."""
        self.store.write_json(f"{MANIFEST_DIR}/{entry.shard}.json", entry.to_json())
        self.store.move(f"{TMP_DIR}/{entry.shard}", entry.shard)

    def discard(self, shard: str) -> None:
        self.store.delete(f"{TMP_DIR}/{shard}")

    def finish(self, summary: dict) -> None:
        self.store.write_json(SUCCESS_FILE, summary)


# ----------------------------------------------------------------------------- the input list
def write_listing(store: Store, rows: Iterable[dict], kind: str) -> int:
    """Write ``_inputs.parquet`` from rows ``{"position", "image", "image_id", "job"?}`` in
    position order, one row group at a time (the driver never holds the whole list in Arrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [pa.field("position", pa.int64()), pa.field("image", pa.binary()), pa.field("image_id", pa.int64())]
    if kind == "segment":
        fields.append(pa.field("job", pa.binary()))
    schema = pa.schema(fields)
    n = 0
    with store.open_output(INPUTS_FILE) as raw, pq.ParquetWriter(raw, schema, compression="zstd") as writer:
        chunk: list[dict] = []

        def flush() -> None:
            cols = {"position": [r["position"] for r in chunk],
                    "image": [r["image"].encode("utf-8", "surrogateescape") for r in chunk],
                    "image_id": [r["image_id"] for r in chunk]}
            if kind == "segment":
                cols["job"] = [r["job"] for r in chunk]
            writer.write_table(pa.table(cols, schema=schema), row_group_size=INPUT_ROW_GROUP)

        for row in rows:
            chunk.append(row)
            n += 1
            if len(chunk) == INPUT_ROW_GROUP:
                flush()
                chunk = []
        if chunk or n == 0:
            flush()
    return n


class ListingReader:
    """Rows of ``_inputs.parquet`` by position, one row group decoded at a time (cached)."""

    def __init__(self, uri: str):
        self.store = Store(uri)
        self._file = None
        self._group: tuple[int, Any] | None = None

    def rows(self, positions) -> dict[str, list]:
        """Columns (position, image, image_id[, job]) for ``positions`` (1-based, ascending)."""
        import pyarrow.parquet as pq

        if self._file is None:
            self._file = pq.ParquetFile(self.store.open_input(INPUTS_FILE))
        out: dict[str, list] = {}
        for p in positions:
            g, r = divmod(int(p) - 1, INPUT_ROW_GROUP)
            if self._group is None or self._group[0] != g:
                self._group = (g, self._file.read_row_group(g).to_pydict())
            cols = self._group[1]
            for key, values in cols.items():
                v = values[r]
                if key == "image":
                    v = v.decode("utf-8", "surrogateescape")
                out.setdefault(key, []).append(v)
        return out


# ----------------------------------------------------------------------------- reading back
def iter_positioned(uri: str, state: State | None = None) -> Iterator[tuple[int, dict]]:
    """``(position, record)`` for every complete shard of DIR, in input order.

    Shards hold sorted runs of positions; they are merged lazily (``heapq.merge``) at most
    :data:`MERGE_FAN_IN` at a time, further ones through sorted temporary runs, so memory
    stays flat and the open files bounded however many shards there are."""
    out = OutputDir(uri)
    state = state or out.read_state()
    kind = state.kind
    sources = [_shard_rows(out.store, e, kind) for e in state.entries]
    yield from _merge(sources)


def _shard_rows(store: Store, entry: Entry, kind: str) -> Iterator[tuple[int, dict]]:
    positions = entry.positions
    if entry.shard.endswith(".parquet"):
        import pyarrow.parquet as pq

        with store.open_input(entry.shard) as fh:
            pf = pq.ParquetFile(fh)
            import pyarrow as pa

            records = (rec for batch in pf.iter_batches(batch_size=256)
                       for rec in table_records(pa.Table.from_batches([batch]), kind))
            yield from zip(positions, records)
        return
    def parsed(lines) -> Iterator[dict]:
        for n, line in enumerate(lines, 1):
            try:
                yield json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # changed in place, its size kept
                raise InvalidInputError(f"{store.display(entry.shard)}: record {n} is not JSON ({exc}); the shard "
                                        "was changed after it was written: delete it and its _manifest entry, "
                                        "then rerun with --resume") from None

    if not store.local:  # an object-store shard: one GET (a shard is at most a few MB)
        lines = [ln for ln in store.read_bytes(entry.shard).splitlines() if ln.strip()]
        yield from zip(positions, parsed(lines))
        return
    with store.open_input(entry.shard) as fh:  # a local shard: line by line
        yield from zip(positions, parsed(ln for ln in fh if ln.strip()))


def _merge(sources: list[Iterator[tuple[int, dict]]]) -> Iterator[tuple[int, dict]]:
    if len(sources) <= MERGE_FAN_IN:
        yield from heapq.merge(*sources, key=lambda t: t[0])
        return
    with tempfile.TemporaryDirectory(prefix="visiontool-merge-") as tmp:
        runs = []
        for k in range(0, len(sources), MERGE_FAN_IN):
            path = os.path.join(tmp, f"run{k}.jsonl")
            with open(path, "w", encoding="utf-8") as fh:
                for pos, rec in heapq.merge(*sources[k:k + MERGE_FAN_IN], key=lambda t: t[0]):
                    fh.write(f"{pos}\t{json.dumps(rec)}\n")
            runs.append(path)
        yield from _merge([_run_rows(p) for p in runs])


def _run_rows(path: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            pos, _, text = line.partition("\t")
            yield int(pos), json.loads(text)
