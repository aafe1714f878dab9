"""Image sources and decoding.

A SOURCE is a file, a directory (``recursive``), a glob, an http(s) URL, or ``-`` (one
path per line on stdin). Sources are expanded and checked *before* any model loads, so a
missing path is a usage error (exit 2) that costs nothing. Decoding applies the EXIF
orientation and converts every PIL mode (L, P, RGBA, CMYK, I;16, ...) to RGB.
"""
from __future__ import annotations

import io
import os
import urllib.error
import threading
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from visiontool.errors import ImageLoadError
from visiontool.settings import whole_number_env

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                    ".jfif", ".jp2"}
# PIL refuses images above 2x its MAX_IMAGE_PIXELS (89.5 Mpx) and only warns between 1x and 2x;
# we refuse above the limit itself. VISIONTOOL_MAX_PIXELS raises it for genuinely huge photos.
DEFAULT_MAX_PIXELS = 89_478_485
URL_TIMEOUT_S = 30.0
URL_MAX_BYTES = 200 * 1024 * 1024


_PIL_LIMIT = {"lock": threading.Lock(), "users": 0, "saved": None}


@contextmanager
def _pil_limit_off():
    """PIL's own decompression-bomb check off while images decode (ours runs before any pixel
    is decoded, with our message). ``Image.MAX_IMAGE_PIXELS`` is a module global and images
    decode in several threads (the prefetch, the Ray replicas' readers), so the first decode in
    saves it and the last one out restores it; with it None, PIL neither warns nor raises, so no
    ``warnings.catch_warnings`` is needed (that one is not thread-safe: it would undo another
    thread's filters, e.g. an export's)."""
    from PIL import Image

    with _PIL_LIMIT["lock"]:
        if _PIL_LIMIT["users"] == 0:
            _PIL_LIMIT["saved"] = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _PIL_LIMIT["users"] += 1
    try:
        yield
    finally:
        with _PIL_LIMIT["lock"]:
            _PIL_LIMIT["users"] -= 1
            if _PIL_LIMIT["users"] == 0:
                Image.MAX_IMAGE_PIXELS = _PIL_LIMIT["saved"]


@dataclass(frozen=True)
class ImageSource:
    """Where one image comes from. ``name`` is what records and messages show."""

    name: str
    is_url: bool = False

    @property
    def file_name(self) -> str:
        """Base name used to match a COCO GT's ``images[].file_name``."""
        return os.path.basename(self.name.split("?")[0].rstrip("/"))


def is_url(s: str) -> bool:
    return s.startswith("http://") or s.startswith("https://")


def files_in_dir(d: Path, recursive: bool, extensions=None) -> list[Path]:
    """Files of ``d`` (and its subdirectories) with the extensions (default: photos), sorted;
    a subdirectory that cannot be read is reported once on stderr and skipped."""
    extensions = extensions or IMAGE_EXTENSIONS
    if not recursive:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    unreadable: list[str] = []
    found = []
    for root, _dirs, files in os.walk(d, onerror=lambda e: unreadable.append(f"{e.filename}: {e.strerror}")):
        found += [Path(root) / f for f in files if os.path.splitext(f)[1].lower() in extensions]
    if unreadable:
        from visiontool.render.console import once

        once(f"unreadable:{d}", f"cannot read {len(unreadable)} subdirector{'y' if len(unreadable) == 1 else 'ies'} "
                                f"of {d} (first: {unreadable[0]}); their images were skipped")
    return sorted(p for p in found if p.is_file())


def expand_sources(sources: list[str], recursive: bool = False, stdin=None) -> list[ImageSource]:
    """Expand SOURCE arguments into photo sources, in a stable order, without duplicates
    (:func:`visiontool.io.sources.expand_media` restricted to photos).

    Raises UsageError for a path that does not exist, a glob that matches nothing, or a
    directory without images.
    """
    from visiontool.io.sources import expand_media

    return [ImageSource(s.name, is_url(s.name)) for s in expand_media(sources, recursive, "image", stdin=stdin)]


def max_pixels() -> int:
    """The largest image (in pixels) we decode: ``VISIONTOOL_MAX_PIXELS`` or 89,478,485."""
    return whole_number_env("VISIONTOOL_MAX_PIXELS", f"a positive whole number of pixels "
                            f"(default {DEFAULT_MAX_PIXELS:,})") or DEFAULT_MAX_PIXELS


def _fetch_url(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "visiontool"})
    try:
        with urllib.request.urlopen(req, timeout=URL_TIMEOUT_S) as resp:
            data = resp.read(URL_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise ImageLoadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ImageLoadError(f"{url}: cannot download ({reason})") from exc
    if len(data) > URL_MAX_BYTES:
        raise ImageLoadError(f"{url}: larger than {URL_MAX_BYTES // 2**20} MB")
    return data


def to_rgb(img):
    """Any PIL mode to RGB: alpha composited on white, 16-bit scaled, palettes expanded."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype("uint8")
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / (hi - lo or 1.0) * 255.0 + 0.5).astype("uint8")
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(source: ImageSource | str):
    """Decode one image to an RGB PIL image in its EXIF-corrected orientation.

    Raises ImageLoadError (never a PIL exception) for unreadable, corrupt, truncated,
    non-image or oversized inputs and for URLs that fail.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, str):
        source = ImageSource(source, is_url(source))
    name = source.name
    limit = max_pixels()
    try:
        fp = io.BytesIO(_fetch_url(name)) if source.is_url else open(name, "rb")
    except OSError as exc:
        raise ImageLoadError(f"{name}: cannot open ({exc.strerror or exc})") from exc
    try:
        with fp, _pil_limit_off():
            # our limit, our message: PIL's own check (a warning at 1x, an error quoting 2x its
            # limit) is off while the image decodes, and ours runs before any pixel is decoded
            img = Image.open(fp)
            w, h = img.size
            if w * h > limit:
                raise ImageLoadError(
                    f"{name}: refused, {w}x{h} = {w * h:,} pixels exceeds the limit of {limit:,} "
                    "(possible decompression bomb; set VISIONTOOL_MAX_PIXELS to allow it)")
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                from visiontool.render.console import once

                once("multi-frame", f"{name} holds {frames} frames (an animated or multi-page image); only "
                                    "the first is used (further such images are not reported)")
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{name}: not an image (or an unsupported format)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(f"{name}: corrupt or truncated image ({exc})") from exc


def image_size(name: str) -> tuple[int, int] | None:
    """(W, H) after EXIF orientation, from the header only; None if it cannot be read."""
    try:
        from PIL import Image

        with Image.open(name) as im:
            w, h = im.size
            try:
                orient = im.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001 - a broken EXIF block: no rotation
                orient = 1
        return (h, w) if orient in (5, 6, 7, 8) else (w, h)
    except Exception:  # noqa: BLE001 - unreadable: the decode will say why
        return None
