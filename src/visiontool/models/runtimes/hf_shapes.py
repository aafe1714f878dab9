"""Per-shape exports: one static ``(1, 3, H, W)`` network per processed image size.

For the DETR families whose traced graph fixes what it computes from the image size
(:data:`.hf_export.SHAPE_BOUND`: Deformable DETR's feature maps' sizes and level start indices,
RT-DETR's, RT-DETR v2's, D-FINE's and DEIMv2's anchors and batch) when their processor does not
resize every image to one size (:func:`.hf_export.per_shape`). A dynamic-shape export of them
does not reproduce torch at other sizes, so :class:`PerShapeHFDetector` exports one static
network per processed ``(H, W)``, the first time a batch of that size reaches the network, each
cached on disk (:func:`.export_cache.get_or_build`, key fields ``shapes: "HxW"``, ``batch: 1``,
``policy: "per-shape"``) and checked against torch at its own shape before it is cached (a
failing check is the usual one-line refusal). A second command finds the cached exports and
converts nothing.

Images are never padded to a shared size: Deformable DETR's ``input_proj`` ends in a GroupNorm
over the whole feature map, so padding would change every output; the adapter batches only
images of one processed shape (:func:`visiontool.models.hf_detection.group_by_shape`) and the
export takes no pixel mask, so an export at exactly that shape is the torch path's network.

``visiontool export --image-size HxW`` (:func:`write_per_size`): an export directory holds one
network per processed size of the images named, in a folder ``HxW`` each (the manifest's
``sizes``); ``--model DIR`` (``source`` None) opens a size's network when first met and refuses
another size in one line, exit 2 (:func:`unknown_size`). Used by the DETR family, Grounding DINO
(:mod:`.gd_deploy`) and universal segmentation.

Cost: one conversion per processed size (the processor's shortest/longest-edge resize gives a
size per aspect ratio), measured in docs/runtimes.md; past :data:`WARN_AT` sizes in one
detector's life, one warning says so.
"""
from __future__ import annotations

import threading
from typing import Any

from visiontool.errors import UsageError
from visiontool.models.hf_detection import HFDetector
from visiontool.models.runtimes.hf_export import (RuntimeHFDetector, build_into, cache_fields, run_engine,
                                                  runtime_info, shape_fields)

WARN_AT = 9  # the number of distinct sizes at which a run is told about the per-size exports (once)


# ``visiontool export --image-size``: an export directory holds one network per processed size,
# in a folder named for it; ``--model DIR`` serves those sizes and refuses others in one line

def processed_sizes(encode, image_sizes) -> list[tuple[int, int]]:
    """The distinct processed ``(H, W)`` of images of ``image_sizes`` (``(H, W)`` before
    processing), in first-seen order; ``encode`` maps a PIL image to its ``pixel_values``."""
    from PIL import Image

    out: list[tuple[int, int]] = []
    for h, w in image_sizes:
        size = tuple(int(s) for s in encode(Image.new("RGB", (int(w), int(h))))["pixel_values"].shape[2:])
        if size not in out:
            out.append(size)  # type: ignore[arg-type]
    return out


def size_folder(size: tuple[int, int]) -> str:
    return f"{int(size[0])}x{int(size[1])}"


def per_size_dirs(directory, manifest: dict) -> dict[tuple[int, int], Any]:
    """An export directory's per-size networks: processed size -> its folder."""
    from pathlib import Path

    from visiontool.models.runtimes.deploy import parse_image_size

    return {parse_image_size(s): Path(directory) / s for s in manifest.get("sizes") or []}


def per_size_manifest(sizes: list[tuple[int, int]], image_sizes) -> dict[str, Any]:
    return {"shapes": "per-shape", "sizes": [size_folder(s) for s in sizes],
            "image_sizes": [size_folder(s) for s in image_sizes]}


def write_per_size(build, directory, sizes: list[tuple[int, int]]) -> list[str]:
    """``build(folder, size)`` for every size, each into its own folder of ``directory``; the
    file names written, relative to ``directory``."""
    from pathlib import Path

    files: list[str] = []
    for size in sizes:
        folder = Path(directory) / size_folder(size)
        folder.mkdir()
        files += [f"{folder.name}/{f}" for f in build(folder, size)]
    return files


def per_shape_info(info, runtime: str):
    """The ModelInfo of an adapter exporting per processed size from a torch adapter whose info
    is ``info``: its exports are in the cache, one per size met."""
    from visiontool.models.runtimes.export_cache import exports_dir

    return runtime_info(info, runtime, export=str(exports_dir()), shapes="per-shape")


def unknown_size(name: str, runtime: str, size: tuple[int, int], have: list[tuple[int, int]]) -> str:
    listed = ", ".join(size_folder(s) for s in have) or "none"
    return (f"{name}: this {runtime} export holds networks for processed image sizes {listed}, and an image here is "
            f"processed to {size_folder(size)}; export the model again with this image's size added (visiontool "
            f"export --image-size HEIGHTxWIDTH, repeatable), or run the source model with --runtime {runtime}, "
            "which exports every size it meets")


class PerSizeEngines:
    """One exported engine per processed image size, for a runtime adapter whose network is
    exported at static sizes: :meth:`engine_for` opens ``engines[(H, W)]`` from the export cache,
    or exports it from the torch adapter ``source`` (checked, then cached), the first time a
    size is met; past :data:`WARN_AT` sizes one warning says so. Used by Deformable DETR and the
    RT-DETR-like families here, Grounding DINO (:mod:`.gd_export`) and universal segmentation
    (:mod:`.universal_export`).

    The adapter calls :meth:`init_sizes` and defines :meth:`build` (export at a size into a
    directory, the file names) and :meth:`size_fields` (what a size adds to the key fields)."""

    def init_sizes(self, source, runtime: str, fields: dict | None, engines: dict | None = None,
                   quiet: bool = False, exported: dict | None = None) -> None:
        """``source`` None: only the sizes of ``engines`` and ``exported`` (size -> a directory of
        an export directory's, opened when first met) are served; another size is one line, exit 2."""
        self.source, self.runtime, self.quiet = source, runtime, quiet
        self.fields = fields  # the key fields but the size: the weights are hashed once, not per size
        self.engines: dict[tuple[int, int], Any] = dict(engines or {})
        self.exported: dict[tuple[int, int], Any] = dict(exported or {})
        self.warned = False
        self._lock = threading.Lock()  # two threads meeting a new size export it once

    def build(self, directory, size: tuple[int, int]) -> list[str]:
        raise NotImplementedError

    def size_fields(self, size: tuple[int, int]) -> dict[str, Any]:
        raise NotImplementedError

    def engine_for(self, size: tuple[int, int]):
        """The engine for processed size ``size`` (H, W), exporting it on first use."""
        engine = self.engines.get(size)
        if engine is not None:
            return engine
        if self.source is None and size not in self.exported:
            raise UsageError(unknown_size(self.info.name, self.runtime, size, sorted({*self.engines, *self.exported})))
        with self._lock:
            if size not in self.engines:
                self.engines[size] = self._open(size)
                self._warn_if_many()
            return self.engines[size]

    def _open(self, size: tuple[int, int]):
        import torch

        from visiontool.models.runtimes.engines import open_engine
        from visiontool.models.runtimes.export_cache import get_or_build

        if size in self.exported:
            return open_engine(self.runtime, self.exported[size])

        def build(directory):
            with torch.inference_mode(False):  # the adapter calls the network under inference_mode
                return self.build(directory, size)

        engine, _ = get_or_build({**self.fields, **self.size_fields(size)}, build,
                                 lambda d: open_engine(self.runtime, d),
                                 f"{self.info.name} to {self.runtime} at {size[0]}x{size[1]}", quiet=self.quiet)
        return engine

    def _warn_if_many(self) -> None:
        if self.warned or self.source is None or len(self.engines) < WARN_AT:
            return
        from visiontool.render.console import warn

        self.warned = True
        warn(f"{self.info.name} ({self.info.family}) exports one {self.runtime} network per processed image size "
             f"({len(self.engines)} sizes so far, each converted once and cached, each held in memory); images "
             "resized to one size, or --runtime torch, avoid it")


class PerShapeHFDetector(PerSizeEngines, RuntimeHFDetector):
    """A :class:`RuntimeHFDetector` holding one engine per processed size (:class:`PerSizeEngines`:
    static, batch 1); a batch of B images of one size is B calls of that engine.

    Memory: unlike the other runtime adapters, this one keeps the torch adapter (``source``:
    its model and weights, e.g. ~160 MB for Deformable DETR R50 in float32) referenced for its
    whole life, because a size not yet met needs it to export; and every engine opened holds
    its own copy of the weights (one per size met, nothing is closed), so a run over photos of
    many aspect ratios grows by one network per size."""

    def __init__(self, source: HFDetector | None, runtime: str, quiet: bool = False, *, info=None, processor=None,
                 exported: dict | None = None):
        """From the torch adapter ``source``; or (``source`` None) from an export directory:
        its ``info``, ``processor`` and per-size folders (``exported``)."""
        if source is not None:
            info, processor = per_shape_info(source.info, runtime), source.processor
        super().__init__(info, processor, None)
        self.init_sizes(source, runtime, cache_fields(source, runtime) if source is not None else None, quiet=quiet,
                        exported=exported)

    def build(self, directory, size: tuple[int, int]) -> list[str]:
        return build_into(self.source, self.runtime, directory, size)

    def size_fields(self, size: tuple[int, int]) -> dict[str, Any]:
        return shape_fields(size)

    def network(self, pixel_values):
        h, w = (int(s) for s in pixel_values.shape[2:])
        return run_engine(self.engine_for((h, w)), pixel_values)
