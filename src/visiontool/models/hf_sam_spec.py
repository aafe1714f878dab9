"""What a transformers SAM-family model is, read from its files alone (no torch, no transformers).

``segment --model SPEC`` names a hub id or a directory saved with ``save_pretrained``; its
``config.json`` ``model_type`` decides the family and what it can do:

=====================  ========================  ==========================================
model_type             prompts (points/boxes)    also
=====================  ========================  ==========================================
sam                    SamModel                  --auto
sam_hq                 SamHQModel                --auto
sam2, edgetam          Sam2Model / EdgeTamModel  --auto
sam2_video,            the video model's image   video (Sam2VideoModel / EdgeTamVideoModel)
edgetam_video          features and heads
sam3_tracker(_video)   Sam3TrackerModel          video (Sam3TrackerVideoModel)
sam3                   —                         --text (Sam3Model: every instance of a concept)
sam3_video             Sam3TrackerModel          --text, video (points: Sam3TrackerVideoModel,
                                                 text: Sam3VideoModel)
=====================  ========================  ==========================================

Everything a cache hit needs comes from here: the input geometry (image side, embedding grid,
padding), the prompt-encoder / mask-decoder weights (read from the safetensors files by name,
as numpy arrays) and the model's identity for the embedding cache — a SHA-256 over
``config.json`` and the weight files' contents (each file's hash memoised by path, size,
mtime and inode, so a 3 GB checkpoint is hashed once).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from visiontool.errors import ModelLoadError, UsageError

# model_type -> (family, decoder kind, image model class, video model class, text)
MODEL_TYPES: dict[str, tuple[str, str | None, str | None, str | None, bool]] = {
    "sam": ("sam", "sam1", "SamModel", None, False),
    "sam_hq": ("sam_hq", "sam_hq", "SamHQModel", None, False),
    "sam2": ("sam2", "sam2", "Sam2Model", None, False),
    "sam2_video": ("sam2", "sam2", "Sam2VideoModel", "Sam2VideoModel", False),
    "edgetam": ("edgetam", "sam2", "EdgeTamModel", None, False),
    "edgetam_video": ("edgetam", "sam2", "EdgeTamVideoModel", "EdgeTamVideoModel", False),
    "sam3_tracker": ("sam3", "sam2", "Sam3TrackerModel", None, False),
    "sam3_tracker_video": ("sam3", "sam2", "Sam3TrackerModel", "Sam3TrackerVideoModel", False),
    "sam3": ("sam3", None, None, None, True),
    "sam3_video": ("sam3", "sam2", "Sam3TrackerModel", "Sam3TrackerVideoModel", True),
}
VIDEO_EXAMPLES = "facebook/sam2.1-hiera-tiny, yonigozlan/EdgeTAM-hf or facebook/sam3"
TEXT_EXAMPLES = "facebook/sam3"
WEIGHT_PATTERNS = ("*.safetensors",)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt"]


@dataclass
class SamSpec:
    """A SAM-family checkpoint on disk and its geometry (pixels of the model's input frame)."""

    spec: str  # as the user wrote it (records' "model")
    path: Path  # the local directory
    config: dict
    model_type: str
    family: str  # sam | sam_hq | sam2 | edgetam | sam3
    kind: str | None  # decoder: sam1 | sam_hq | sam2 (None: no point/box prompts, e.g. sam3 detector only)
    image_class: str | None
    video_class: str | None
    text: bool
    image_size: int = 1024  # the square the image is resized (and padded) to
    grid: int = 64  # embedding grid side (image_size / patch)
    pad: bool = False  # SAM 1: longest side resized to image_size, then padded; SAM 2/3: squashed square
    prefix: str = ""  # weight-name prefix of the prompt encoder / mask decoder
    decoder: dict = field(default_factory=dict)  # mask-decoder settings (heads, eps, dynamic multimask)

    @property
    def video(self) -> bool:
        return self.video_class is not None or self.model_type == "sam3_video"

    @property
    def name(self) -> str:
        return self.spec

    def sub(self, key: str) -> dict:
        """The tracker/image part of the config (sam3_video nests it in ``tracker_config``)."""
        c = self.config
        if self.model_type == "sam3_video":
            c = c.get("tracker_config") or {}
        return c.get(key) or {}

    def weight_files(self) -> list[Path]:
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            files = sorted(self.path.glob("*.bin"))
        if not files:
            raise ModelLoadError(f"cannot load model '{self.spec}': no weights (*.safetensors) in {self.path}")
        return files


# ----------------------------------------------------------------------------- spec -> directory
def is_hub_id(spec: str) -> bool:
    return not Path(spec).expanduser().exists()


def local_dir(spec: str, download: bool = True) -> Path:
    """The directory holding ``spec``'s files: itself, or the hub snapshot (downloaded when
    the hub is reachable and ``download``; else the cached snapshot; ModelLoadError if none)."""
    p = Path(spec).expanduser()
    if p.exists():
        return p
    from visiontool.models import hf_hub

    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a dependency of transformers
        raise ModelLoadError(f"cannot load model '{spec}': huggingface_hub is not installed") from exc
    local_only = not download or hf_hub.is_offline() or not hf_hub.hub_reachable()
    try:
        return Path(snapshot_download(spec, allow_patterns=HUB_PATTERNS, local_files_only=local_only))
    except Exception as exc:  # noqa: BLE001 - every hub failure is one line
        raise hf_hub.classify(spec, exc, local_only=local_only) from exc


def cached_dir(spec: str) -> Path | None:
    """``spec``'s directory if it is local or already in the hub cache (never downloads)."""
    try:
        return local_dir(spec, download=False)
    except ModelLoadError:
        return None


def read_config(path: Path, spec: str) -> dict:
    cfg = path / "config.json"
    try:
        return json.loads(cfg.read_text())
    except FileNotFoundError:
        raise UsageError(f"--model '{spec}': no config.json in {path}; expected a directory saved with "
                         "save_pretrained") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model '{spec}': unreadable config.json ({exc})") from exc


def check_model_type(model_type: str, spec: str) -> None:
    if model_type not in MODEL_TYPES:
        known = ", ".join(sorted(MODEL_TYPES))
        raise UsageError(f"--model '{spec}' is a '{model_type or 'unknown'}' model, not a SAM-family mask "
                         f"generator (segment serves {known}; for detection use `visiontool detect`)")


def read_spec(spec: str, download: bool = True) -> SamSpec:
    """``spec`` resolved to its directory and described (UsageError for a non-SAM model)."""
    path = local_dir(spec, download=download)
    cfg = read_config(path, spec)
    mt = str(cfg.get("model_type", ""))
    check_model_type(mt, spec)
    family, kind, image_class, video_class, text = MODEL_TYPES[mt]
    s = SamSpec(spec=spec, path=path, config=cfg, model_type=mt, family=family, kind=kind,
                image_class=image_class, video_class=video_class, text=text)
    if kind is not None:
        _geometry(s)
    return s


def _geometry(s: SamSpec) -> None:
    pe = s.sub("prompt_encoder_config")
    md = s.sub("mask_decoder_config")
    default_size, default_patch = (1008, 14) if s.family == "sam3" else (1024, 16)
    s.image_size = int(_side(pe.get("image_size", default_size)))
    s.grid = s.image_size // int(_side(pe.get("patch_size", default_patch)))
    s.pad = s.kind in ("sam1", "sam_hq")
    s.prefix = "tracker_model." if s.model_type == "sam3_video" else ""
    s.decoder = {
        "num_heads": int(md.get("num_attention_heads", 8)),
        "ln_eps": float(md.get("layer_norm_eps", 1e-6)),
        "dynamic": bool(md.get("dynamic_multimask_via_stability", s.kind == "sam2")),
        "delta": float(md.get("dynamic_multimask_stability_delta", 0.05)),
        "thresh": float(md.get("dynamic_multimask_stability_thresh", 0.98)),
        "act": str(md.get("hidden_act", "relu")),
    }


def _side(v) -> int:
    return int(v[0] if isinstance(v, (list, tuple)) else v)


def check(spec: str) -> None:
    """Before anything loads: a local directory must hold a SAM-family config; a hub id must
    look like one (and, if it is cached, be a SAM-family model)."""
    from visiontool.models.hf_hub import check_hf_spec

    check_hf_spec(spec)
    p = Path(spec).expanduser()
    if p.is_dir():
        check_model_type(str(read_config(p, spec).get("model_type", "")), spec)


# ----------------------------------------------------------------------------- identity
def _hash_memo_path() -> Path:
    from visiontool.models.cache import visiontool_cache_dir

    return visiontool_cache_dir() / "file-hashes.json"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered by (path, size, mtime, inode)."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    memo_path = _hash_memo_path()
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    hit = memo.get(str(path))
    if isinstance(hit, dict) and hit.get("stamp") == stamp:
        return str(hit["sha256"])
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    memo[str(path)] = {"stamp": stamp, "sha256": digest}
    try:
        from visiontool.io.output import atomic_write

        with atomic_write(memo_path, fsync=False) as fh:
            fh.write(json.dumps(memo, sort_keys=True))
    except OSError:
        pass
    return digest


def content_sha(s: SamSpec) -> str:
    """The model's identity for the embedding cache: config + weight contents."""
    h = hashlib.sha256((s.path / "config.json").read_bytes())
    for f in s.weight_files():
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- weights
def read_tensors(s: SamSpec, prefixes: tuple[str, ...]) -> dict:
    """The float32 numpy arrays whose names start with ``s.prefix + p`` for p in ``prefixes``
    (names returned without ``s.prefix``); reads only those tensors from the safetensors files."""
    import numpy as np

    try:
        from safetensors import safe_open
    except ImportError as exc:  # pragma: no cover - a transformers dependency
        raise ModelLoadError("the safetensors package is missing") from exc
    want = tuple(s.prefix + p for p in prefixes)
    out = {}
    for f in s.weight_files():
        if f.suffix != ".safetensors":
            raise ModelLoadError(f"'{s.spec}': weights in {f.name} (not safetensors) cannot be read without torch")
        with safe_open(str(f), framework="numpy") as st:
            for k in st.keys():
                if k.startswith(want):
                    out[k[len(s.prefix):]] = np.ascontiguousarray(st.get_tensor(k), dtype=np.float32)
    return out
