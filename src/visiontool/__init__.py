"""visiontool: object detection and segmentation from the shell (every detector family, the SAM
family), exact COCO and MOT evaluation.

The Python API returns the records the CLI prints::

    from visiontool import detect
    results = detect("photo.jpg", threshold=0.7)     # list[ImageResult]
    results[0].detections.xyxy                        # (N, 4) float pixels

Heavy libraries (torch, transformers, segment_anything, the optional extras) load on first use.
"""
__version__ = "0.1.0"

__all__ = ["detect", "segment", "evaluate", "compare", "__version__"]

_API = {
    "detect": ("visiontool.services.detect", "detect"),
    "segment": ("visiontool.services.segment", "segment"),
    "evaluate": ("visiontool.services.evaluate", "evaluate"),
    "compare": ("visiontool.services.compare", "compare"),
}


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'visiontool' has no attribute {name!r}")
