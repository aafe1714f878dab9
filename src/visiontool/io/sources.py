"""What a command runs on, one item at a time: images now, video frames and streams too.

:func:`iter_items` turns expanded sources (:func:`visiontool.io.images.expand_sources`) and
in-memory images into :class:`Item` s, decoding lazily so that memory stays flat however
many inputs there are. A source that cannot be read becomes an item with ``error`` (the
command reports it and goes on).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from visiontool.errors import ImageLoadError, UsageError


@dataclass
class Item:
    """One image or video frame to process.

    name: what records show as ``image`` (the file, URL or video path);
    image: the decoded RGB PIL image (None when ``error`` is set);
    position: 1-based position among the inputs (default image ids);
    frame / time_s: the frame index and presentation time for video sources.
    """

    name: str
    image: Any = None
    position: int = 0
    frame: int | None = None
    time_s: float | None = None
    error: str | None = None


def in_memory(items: Iterable[Any]) -> list[tuple[str, Any]]:
    """Python-API inputs: PIL images and HxWx3 uint8 arrays become (name, RGB image)."""
    from PIL import Image

    out = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            item = Image.fromarray(item)
        if not isinstance(item, Image.Image):
            raise UsageError(f"cannot process a {type(item).__name__}: pass paths, URLs, PIL images or HxWx3 "
                             "uint8 arrays")
        out.append((getattr(item, "filename", "") or f"<image {i}>", item.convert("RGB")))
    return out


def resolve_inputs(sources: Any, recursive: bool = False) -> list[tuple[str, Any]]:
    """Python-API ``sources`` (a path, URL, glob, directory, PIL image, array, or a list of
    them) -> (name, decoded image or None) pairs; paths are checked now (UsageError)."""
    from visiontool.io.images import expand_sources

    items = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    if all(isinstance(s, (str, Path)) for s in items):
        return [(s.name, None) for s in expand_sources([str(s) for s in items], recursive=recursive)]
    return in_memory(items)


def iter_items(named: Iterable[tuple[str, Any]]) -> Iterator[Item]:
    """Items in input order, each decoded when it is reached (EXIF orientation, RGB)."""
    from visiontool.io.images import ImageSource, is_url, load_image

    for position, (name, image) in enumerate(named, 1):
        if image is not None:
            yield Item(name, image, position)
            continue
        try:
            yield Item(name, load_image(ImageSource(name, is_url(name))), position)
        except ImageLoadError as exc:
            yield Item(name, None, position, error=str(exc))
