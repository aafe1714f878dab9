"""A replica's own input and output: the rows of a chunk, and the shards of its records.

A model replica (:mod:`visiontool.engines.ray_udfs`) receives chunk ids, not images: it looks
its input rows up in ``DIR/_inputs.parquet`` (:func:`expand_chunk`), decodes and infers, and
writes its records as shard files to ``DIR/_tmp/`` itself (:meth:`ChunkIO.write`), returning
to the driver only one small summary row per shard (rows, failures, positions), which the
driver commits. So while a run is on, no Ray worker process other than the replicas is busy:
measured on 2 cores, separate 0-CPU stages for reading inputs and writing shards cost a
worker process start (about 1.2 s of CPU, taken from the model's threads) per burst of tasks.

A chunk is ``todo[c*rows:(c+1)*rows]``: the positions still to do (ascending), cut into
chunks of ``rows``. Shards hold at most ``shard_rows`` rows, sorted by position, and are
written whole (fsynced on a local disk) before they are reported; one that a dying process
leaves half written is never committed (see :mod:`visiontool.io.shards`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_READERS: dict[str, Any] = {}


def expand_chunk(table, *, listing: str, todo, rows: int):
    """Chunk ids -> the input rows they stand for (``position``, ``image``, ``image_id``
    [, ``job``]), looked up in ``_inputs.parquet`` at ``listing``."""
    import numpy as np
    import pyarrow as pa

    from visiontool.io.shards import ListingReader

    reader = _READERS.get(listing)
    if reader is None:
        reader = _READERS[listing] = ListingReader(listing)
    chunks = table.column("chunk").to_pylist()
    positions = np.concatenate([todo[c * rows:(c + 1) * rows] for c in chunks]) if chunks else []
    cols = reader.rows(positions)
    out = {"position": pa.array(cols.get("position", []), pa.int64()),
           "image": pa.array(cols.get("image", []), pa.string()),
           "image_id": pa.array(cols.get("image_id", []), pa.int64())}
    if "job" in cols:
        out["job"] = pa.array(cols["job"], pa.binary())
    return pa.table(out)


@dataclass(frozen=True)
class ChunkIO:
    """Where a replica reads its rows and writes its shards (plain values: pickled to every
    replica once). ``todo`` is the array of positions left to do, ``rows`` the chunk size."""

    output_dir: str  # DIR (a local path or an object-store URI)
    fmt: str  # jsonl | parquet
    kind: str  # detect | segment
    todo: Any = None  # numpy int64 array; None when rows arrive expanded (a decode stage ran)
    rows: int = 1
    shard_rows: int = 1000

    def expand(self, table):
        """The input rows of ``table``: chunk ids expanded here, else ``table`` as it is."""
        if "chunk" not in table.column_names:
            return table
        return expand_chunk(table, listing=self.output_dir, todo=self.todo, rows=self.rows)

    def write(self, records, node: str, warnings: list[str]):
        """Shards from a records table (``position``, ``record``, ``error``) written to
        ``_tmp/``; returns one summary row per shard for the driver to commit."""
        import pyarrow as pa

        from visiontool.io.shards import TMP_DIR, encode_shard, shard_name
        from visiontool.io.storage import Store

        store = Store(self.output_dir)
        all_positions = records.column("position").to_pylist()
        order = sorted(range(records.num_rows), key=all_positions.__getitem__)
        all_records, all_errors = records.column("record").to_pylist(), records.column("error").to_pylist()
        out: dict[str, list] = {k: [] for k in ("shard", "bytes", "rows", "failed", "positions", "errors", "nodes",
                                                "warnings")}
        step = max(1, int(self.shard_rows))
        for start in range(0, len(order), step):
            part = order[start:start + step]
            positions = [all_positions[i] for i in part]
            errors = [all_errors[i] for i in part if all_errors[i] is not None]
            name = shard_name(positions[0], self.fmt)
            data = encode_shard([all_records[i] for i in part], self.fmt, self.kind)
            store.write_bytes(f"{TMP_DIR}/{name}", data, durable=True, atomic=False)
            for key, value in (("shard", name), ("bytes", len(data)), ("rows", len(positions)),
                               ("failed", len(errors)), ("positions", positions), ("errors", errors),
                               ("nodes", [node] if node else []), ("warnings", warnings if start == 0 else [])):
                out[key].append(value)
        return pa.table({"shard": pa.array(out["shard"], pa.string()), "bytes": pa.array(out["bytes"], pa.int64()),
                         "rows": pa.array(out["rows"], pa.int64()), "failed": pa.array(out["failed"], pa.int64()),
                         "positions": pa.array(out["positions"], pa.list_(pa.int64())),
                         "errors": pa.array(out["errors"], pa.list_(pa.string())),
                         "nodes": pa.array(out["nodes"], pa.list_(pa.string())),
                         "warnings": pa.array(out["warnings"], pa.list_(pa.string()))})
