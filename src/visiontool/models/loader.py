"""The one place models are loaded: a per-process cache keyed by (kind, source, device, dtype).

The registry (:mod:`visiontool.models.registry`) and the adapters provide factories;
this module makes sure each model is loaded once per process, put in eval mode on its
device, and can be released (``compare`` runs models one at a time).
"""
from __future__ import annotations

import gc
import threading
from typing import Any, Callable

_cache: dict[tuple, Any] = {}
_lock = threading.Lock()


def cached(key: tuple, factory: Callable[[], Any]) -> Any:
    """Return the object for ``key``, building it with ``factory()`` the first time."""
    with _lock:
        if key in _cache:
            return _cache[key]
    obj = factory()
    with _lock:
        return _cache.setdefault(key, obj)


def release(key: tuple | None = None) -> None:
    """Forget one cached model (or all) and return its memory to the allocator."""
    with _lock:
        if key is None:
            _cache.clear()
        else:
            _cache.pop(key, None)
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def is_offline() -> bool:
    from visiontool.models.hf_hub import is_offline as _is_offline

    return _is_offline()
