"""A directory on a local disk or in an object store, for the shards of a cluster run.

:class:`Store` is the one place that touches DIR: local paths go through ``os`` (atomic
replace, fsync), URIs through ``pyarrow.fs`` (``s3://``, ``gs://``, … where pyarrow has that
filesystem; an object PUT is atomic by itself). It pickles as its URI, so tasks on other nodes
open the same directory.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from visiontool.errors import InvalidInputError, UsageError


class Store:
    """A directory on a local disk or in an object store (``pyarrow.fs``); picklable, so
    writer tasks on other nodes get the same handle. Paths are relative to the root."""

    def __init__(self, uri: str):
        self.uri = str(uri)
        self.local = "://" not in self.uri or self.uri.startswith("file://")
        if self.local:
            path = self.uri[len("file://"):] if self.uri.startswith("file://") else self.uri
            self.root = os.path.abspath(os.path.expanduser(path))
            self._fs = None
        else:
            self._fs, self.root = filesystem(self.uri)
            self.root = self.root.rstrip("/")

    def __getstate__(self):
        return {"uri": self.uri}

    def __setstate__(self, state):
        self.__init__(state["uri"])

    def path(self, rel: str = "") -> str:
        return self.root if not rel else f"{self.root}/{rel}"

    def display(self, rel: str = "") -> str:
        """What messages show for ``rel`` (the user's spelling of DIR)."""
        base = self.uri.rstrip("/") if not self.local else self.root
        return base if not rel else f"{base}/{rel}"

    # -- queries
    def exists(self, rel: str) -> bool:
        if self.local:
            return os.path.exists(self.path(rel))
        from pyarrow.fs import FileType

        return self._fs.get_file_info(self.path(rel)).type != FileType.NotFound

    def is_dir(self, rel: str = "") -> bool:
        if self.local:
            return os.path.isdir(self.path(rel))
        from pyarrow.fs import FileType

        return self._fs.get_file_info(self.path(rel)).type == FileType.Directory

    def listdir(self, rel: str = "") -> list[str]:
        """File names directly in ``rel`` (sorted; [] when it does not exist)."""
        return sorted(self.sizes(rel))

    def sizes(self, rel: str = "") -> dict[str, int]:
        """{file name: size in bytes} for the files directly in ``rel`` (one listing)."""
        if self.local:
            d = self.path(rel)
            if not os.path.isdir(d):
                return {}
            with os.scandir(d) as it:
                return {e.name: e.stat().st_size for e in it if e.is_file()}
        from pyarrow.fs import FileSelector, FileType

        infos = self._fs.get_file_info(FileSelector(self.path(rel), allow_not_found=True))
        return {i.base_name: int(i.size) for i in infos if i.type == FileType.File}

    def size(self, rel: str) -> int:
        if self.local:
            return os.path.getsize(self.path(rel))
        return int(self._fs.get_file_info(self.path(rel)).size)

    # -- reading
    def read_bytes(self, rel: str) -> bytes:
        if self.local:
            with open(self.path(rel), "rb") as fh:
                return fh.read()
        with self._fs.open_input_stream(self.path(rel)) as fh:
            return fh.read()

    def open_input(self, rel: str):
        """A seekable binary file (Parquet readers need one)."""
        if self.local:
            return open(self.path(rel), "rb")
        return self._fs.open_input_file(self.path(rel))

    def read_json(self, rel: str) -> Any:
        try:
            return json.loads(self.read_bytes(rel))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{self.display(rel)} is not valid JSON ({exc}); the output directory is "
                                    "damaged") from None

    # -- writing
    def makedirs(self, rel: str = "") -> None:
        if self.local:
            os.makedirs(self.path(rel), exist_ok=True)
        else:
            self._fs.create_dir(self.path(rel), recursive=True)

    def write_bytes(self, rel: str, data: bytes, durable: bool = True, atomic: bool = True) -> None:
        """Write a whole file: atomically (a temp sibling renamed over it on a local disk; an
        object-store PUT is atomic by itself) and, on a local disk, fsynced when ``durable``."""
        if not self.local:
            with self._fs.open_output_stream(self.path(rel)) as fh:
                fh.write(data)
            return
        target = self.path(rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not atomic:
            with open(target, "wb") as fh:
                fh.write(data)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            return
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=os.path.dirname(target))
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            _unlink(tmp)
            raise

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=1) + "\n").encode())

    def open_output(self, rel: str):
        """A binary stream for a new file (the caller closes it; not atomic)."""
        if self.local:
            os.makedirs(os.path.dirname(self.path(rel)), exist_ok=True)
            return open(self.path(rel), "wb")
        return self._fs.open_output_stream(self.path(rel))

    def move(self, src: str, dst: str) -> None:
        if self.local:
            os.replace(self.path(src), self.path(dst))
        else:
            self._fs.move(self.path(src), self.path(dst))

    def delete(self, rel: str) -> None:
        if self.local:
            _unlink(self.path(rel))
            return
        try:
            self._fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def filesystem(uri: str):
    """``pyarrow.fs`` for an object-store URI (UsageError naming what is missing)."""
    from visiontool.errors import require

    pafs = require("pyarrow.fs", f"'{uri}'", "ray")
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError, ImportError) as exc:
        raise UsageError(f"cannot open '{uri}': {exc} (pyarrow reads s3:// and gs:// when built with those "
                         "filesystems)") from None
