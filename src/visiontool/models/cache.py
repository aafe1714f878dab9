"""Cache locations (Hugging Face hub cache, SAM checkpoints, SAM embeddings)."""
from __future__ import annotations

import os
from pathlib import Path


def visiontool_cache_dir() -> Path:
    env = os.environ.get("VISIONTOOL_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("visiontool"))


def hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:
        return os.path.expanduser("~/.cache/huggingface/hub")


def checkpoints_dir() -> Path:
    return visiontool_cache_dir() / "checkpoints"


def embeddings_dir() -> Path:
    return visiontool_cache_dir() / "embeddings"


def cache_dirs() -> dict[str, str]:
    return {"huggingface hub": hf_cache_dir(), "sam checkpoints": str(checkpoints_dir()),
            "sam embeddings": str(embeddings_dir())}
