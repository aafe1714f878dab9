"""The segment-anything image encoder (:mod:`visiontool.models.sam_official`) in OpenVINO / ONNX Runtime.

Exported: the ViT image encoder, ``(1, 3, S, S) float32`` (resized, normalised, padded to the
checkpoint's ``img_size`` S) ``-> (1, 256, S/16, S/16)`` image embedding. The shape never
changes, so the export is static. The prompt decoder is visiontool's numpy decoder either way;
the embedding cache keeps runtime embeddings apart from torch ones (its precision tag).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

EXPORTER_VERSION = 1
KIND = "sam-image-encoder"


def cache_fields(checkpoint_sha: str, img_size: int, runtime: str) -> dict[str, Any]:
    import torch

    from visiontool.models.runtimes.engines import runtime_version

    return {"kind": KIND, "exporter": EXPORTER_VERSION, "runtime": runtime, "runtime_version": runtime_version(runtime),
            "torch": torch.__version__, "precision": "float32", "shapes": f"static-{img_size}",
            "weights": checkpoint_sha}


def encoder(build_torch: Callable[[], Any], checkpoint_sha: str, img_size: int, runtime: str, name: str):
    """A module-like callable ``x (1, 3, S, S) torch float32 -> (1, C, g, g) torch`` running
    the cached export of the encoder ``build_torch()`` builds (built only to export)."""
    import torch

    from visiontool.models.runtimes.engines import export_network, open_engine
    from visiontool.models.runtimes.export_cache import get_or_build

    def build(directory: Path) -> list[str]:
        enc = build_torch().eval()
        example = (torch.zeros(1, 3, img_size, img_size),)
        return export_network(enc, example, runtime, directory, ["image"], ["embedding"], {})

    engine, where = get_or_build(cache_fields(checkpoint_sha, img_size, runtime), build,
                                 lambda d: open_engine(runtime, d), f"{name} image encoder to {runtime}")

    class RuntimeEncoder:
        export = str(where)

        def __call__(self, x):
            (out,) = engine([x.detach().cpu().numpy()])[:1]
            return torch.from_numpy(out)

        def parameters(self):
            return iter(())

    return RuntimeEncoder()
