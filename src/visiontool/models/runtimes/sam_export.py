"""SAM image encoders in OpenVINO / ONNX Runtime: segment-anything's and the transformers SAM family's.

* segment-anything (:mod:`visiontool.models.sam_official`, :func:`encoder`): the ViT image
  encoder, ``(1, 3, S, S) float32`` (resized, normalised, padded to the checkpoint's
  ``img_size`` S) ``-> (1, 256, S/16, S/16)`` image embedding.
* transformers SAM, SAM-HQ, SAM 2, EdgeTAM (:mod:`visiontool.models.hf_sam`, :func:`hf_encoder`):
  ``get_image_embeddings`` — every tensor the adapter's embedding cache stores (SAM 2 / EdgeTAM:
  the high-resolution s0, s1 maps too); SAM 3: the ViT backbone whose output the adapter caches.
  Each export is checked against torch on a seeded random input (relative error <= 1e-3 on
  every output) before it enters the cache; a family that fails is refused (UsageError).

The processors always give the same input size, so the exports are static. The prompt decoder
stays as it is; the embedding caches keep runtime features apart from torch ones (a precision
tag suffix ``-<runtime>``).
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


# ----------------------------------------------------------------------------- transformers SAM family
HF_KIND = "transformers-sam-image-encoder"
HF_EXPORTER_VERSION = 1
REL_TOL = 1e-3  # the bound on the embedding's relative error (||got - torch|| / ||torch||)


def _flat(out) -> tuple:
    """Nested tensors / lists / tuples -> a flat tuple of tensors, depth first."""
    import torch

    if torch.is_tensor(out):
        return (out,)
    return tuple(t for o in out for t in _flat(o))


def hf_network(model, part: str):
    """The torch module exported for a transformers SAM-family model: ``pixel_values (1, 3, S, S)
    -> a flat tuple of (1, ...) tensors``.

    ``part`` ``"embeddings"``: ``model.get_image_embeddings`` (SAM: the (C, g, g) embedding;
    SAM-HQ: it and the ViT's intermediate features; SAM 2 / EdgeTAM: the high-resolution s0, s1
    maps after the mask decoder's 1x1 convs and the (C, g, g) embedding with the no-memory
    embedding added) — exactly what the adapter caches. ``"sam3-backbone"``: SAM 3's ViT
    ``vision_encoder.backbone`` -> ``last_hidden_state`` (1, g*g, D), the adapter's cached backbone
    output that both the tracker and detector necks read."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            if part == "sam3-backbone":
                return (self.model.vision_encoder.backbone(pixel_values).last_hidden_state,)
            return _flat(self.model.get_image_embeddings(pixel_values))

    return Net().eval()


def hf_cache_fields(model_sha: str, model_type: str, part: str, image_size: int, runtime: str) -> dict[str, Any]:
    import torch
    import transformers

    from visiontool.models.runtimes.engines import runtime_version

    return {"kind": HF_KIND, "family": model_type, "part": part, "exporter": HF_EXPORTER_VERSION,
            "runtime": runtime, "runtime_version": runtime_version(runtime), "torch": torch.__version__,
            "transformers": transformers.__version__, "precision": "float32", "shapes": f"static-{image_size}",
            "weights": model_sha}


def relative_error(got, want) -> float:
    """||got - want|| / ||want|| (Frobenius; float64)."""
    import numpy as np

    want = np.asarray(want, np.float64)
    diff = np.linalg.norm(np.asarray(got, np.float64) - want)
    return float(diff / max(np.linalg.norm(want), 1e-12))


def check_hf_export(net, engine, image_size: int, runtime: str, what: str) -> float:
    """The export against torch on one seeded random input: every output's relative error
    <= :data:`REL_TOL`, else UsageError (the caller's cache entry is then not written).
    Returns the worst relative error."""
    import torch

    from visiontool.errors import UsageError

    x = torch.randn((1, 3, image_size, image_size), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = [t.float().numpy() for t in net(x)]
    got = engine([x.numpy()])
    if len(got) != len(want) or any(a.shape != b.shape for a, b in zip(got, want)):
        raise UsageError(f"--runtime {runtime}: the exported {what} gives other outputs than torch "
                         f"({[tuple(a.shape) for a in got]} vs {[tuple(b.shape) for b in want]}); use --runtime torch")
    worst = max(relative_error(a, b) for a, b in zip(got, want))
    if not worst <= REL_TOL:
        raise UsageError(f"--runtime {runtime}: the exported {what} does not reproduce torch (relative error "
                         f"{worst:.3g} > {REL_TOL:g}), so it cannot be exported yet; use --runtime torch")
    return worst


def hf_encoder(load_model: Callable[[], Any], model_sha: str, model_type: str, part: str, image_size: int,
               runtime: str, name: str, quiet: bool = False):
    """A callable ``pixel_values (1, 3, S, S) float32 numpy -> list of (1, ...) float32 numpy``
    running the cached, verified export of :func:`hf_network` (``load_model()`` gives the torch
    model; called only to export)."""
    from visiontool.models.runtimes.engines import export_network, open_engine
    from visiontool.models.runtimes.export_cache import get_or_build

    what = f"{name} image encoder" if part == "embeddings" else f"{name} ViT backbone"

    def build(directory: Path) -> list[str]:
        import torch

        net = hf_network(load_model(), part)
        with torch.inference_mode():
            n_out = len(net(torch.zeros(1, 3, image_size, image_size)))
        outputs = [f"features_{i}" for i in range(n_out)]
        files = export_network(net, (torch.zeros(1, 3, image_size, image_size),), runtime, directory,
                               ["pixel_values"], outputs, {})
        check_hf_export(net, open_engine(runtime, directory), image_size, runtime, what)
        return files

    engine, where = get_or_build(hf_cache_fields(model_sha, model_type, part, image_size, runtime), build,
                                 lambda d: open_engine(runtime, d), f"{what} to {runtime}", quiet=quiet)

    class RuntimeHFEncoder:
        export = str(where)

        def __call__(self, pixel_values):
            return engine([pixel_values])

    return RuntimeHFEncoder()
