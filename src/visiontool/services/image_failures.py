"""A model that fails on one image: that image's record carries the error and the run goes on.

Some images make a model's own code raise although the file decodes: a 20000×1 px strip, which
the processor's resize turns into a 0-pixel side, is the common case. That is a failure of the
image, not of the model, and it is handled like an unreadable file: the image's record carries
``error``, the others are processed, the command ends with exit 1. A model that fails on every
image (a broken export, an operator the device lacks) must still stop the run with its error,
as before. To tell the two apart without guessing from the message, the model is tried once on
a plain image: if that works (or any image already worked in this run), the failure belongs to
the image; if it fails too, the original error is raised.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Callable

from visiontool.errors import VisionToolError


def is_oom(exc: BaseException) -> bool:
    """CUDA (or MPS) out of memory, or the host's MemoryError: never one image's fault (the
    Ray engine halves its batch on it)."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class ModelHealth:
    """Whether a model works at all; ``probe`` runs it once on a plain image (raises if not)."""

    def __init__(self, probe: Callable[[], Any]):
        self._probe = probe
        self._works: bool | None = None
        self._lock = threading.Lock()

    def worked(self) -> None:
        """A forward pass succeeded: the model works."""
        self._works = True

    def blames_image(self, exc: BaseException) -> bool:
        """True when ``exc`` (raised by the model on some images) is those images' failure;
        False when the caller must re-raise it (the model fails on a plain image too)."""
        # an error already worded for the user, out of memory, an interrupt: never the image's
        if not isinstance(exc, Exception) or isinstance(exc, VisionToolError) or is_oom(exc):
            return False
        with self._lock:
            if self._works is None:
                try:
                    self._probe()
                    self._works = True
                except Exception:  # noqa: BLE001 - any failure on a plain image is the model's
                    self._works = False
        return bool(self._works)


def plain_image(width: int = 640, height: int = 480):
    """The probe's picture: a flat grey (ImageNet's mean colour) ``width`` × ``height`` RGB image."""
    from PIL import Image

    return Image.new("RGB", (width, height), (124, 116, 104))


def image_error(name: str, size: tuple[int, int], model: str, exc: BaseException) -> str:
    """The record's ``error`` for an image ``model`` failed on: the image, its size, the cause."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    w, h = size
    return f"{name}: {model} failed on this {w}x{h} image: {type(exc).__name__}: {text}"


__all__ = ["ModelHealth", "plain_image", "image_error", "is_oom"]
