"""segment-anything checkpoints: names, download, verification, architecture, loading.

* ``vit_b | vit_l | vit_h`` resolve to the official file names in :func:`checkpoints_dir`
  and are downloaded on first use from ``VISIONTOOL_SAM_BASE_URL`` (default: Meta's
  official URL), with a progress bar on stderr, and verified with torch.hub's hash-prefix
  convention: the hex after the last ``_`` of the file name is a prefix of its SHA-256.
* The architecture (encoder width, depth, heads, global-attention blocks, window size,
  image size) is read from the checkpoint's tensor shapes, so a checkpoint can never be
  built with the wrong model type.
* A checkpoint must hold exactly the tensors of segment_anything's ``Sam`` for that
  architecture (:mod:`visiontool.models.sam_weights`): a missing IoU head, a stray or a
  mis-shaped tensor is one error line naming them, never a silently wrong model.
* Weights are read with ``torch.load(weights_only=True, mmap=True)``: on an embedding-cache
  hit only the prompt encoder and mask decoder are used (as numpy arrays, cached in a
  ``.npz`` next to the embeddings), so the image encoder is never built and torch is not
  even imported.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from visiontool.errors import ModelLoadError, UsageError
from visiontool.models.cache import checkpoints_dir, visiontool_cache_dir

DEFAULT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
CHECKPOINT_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


# ----------------------------------------------------------------------------- resolving

def base_url() -> str:
    url = os.environ.get("VISIONTOOL_SAM_BASE_URL", "").strip() or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


def default_checkpoint_name(device_type: str) -> str:
    """vit_b on CPU (17 s per image), vit_h on CUDA."""
    return "vit_h" if device_type == "cuda" else "vit_b"


def is_checkpoint_name(spec: str) -> bool:
    return spec in CHECKPOINT_FILES


def check_checkpoint_spec(spec: str) -> None:
    """Before any model loads: a path must exist; a name must be known."""
    if is_checkpoint_name(spec):
        return
    p = Path(spec).expanduser()
    if not p.is_file():
        raise UsageError(f"--checkpoint '{spec}': no such file (or use one of {'|'.join(CHECKPOINT_FILES)})")


def resolve_checkpoint(spec: str, offline: bool | None = None, quiet: bool = False) -> Path:
    """A checkpoint name or path -> a local file, downloading a named one if needed."""
    if not is_checkpoint_name(spec):
        check_checkpoint_spec(spec)
        return Path(spec).expanduser()
    fname = CHECKPOINT_FILES[spec]
    dest = checkpoints_dir() / fname
    if dest.is_file():
        return dest
    if offline is None:
        from visiontool.models.loader import is_offline

        offline = is_offline()
    url = base_url() + fname
    if offline:
        raise ModelLoadError(f"checkpoint {spec} is not cached and downloads are off (offline): fetch {url} "
                             f"and put it at {dest} (or pass --checkpoint PATH)")
    download_checkpoint(url, dest, quiet=quiet)
    return dest


def expected_hash_prefix(file_name: str) -> str | None:
    """torch.hub convention: ``name_<hexprefix>.ext`` -> ``hexprefix`` (None if absent)."""
    stem = Path(file_name).name.split(".")[0]
    if "_" not in stem:
        return None
    tail = stem.rsplit("_", 1)[1].lower()
    return tail if len(tail) >= 6 and all(c in "0123456789abcdef" for c in tail) else None


def download_checkpoint(url: str, dest: Path, quiet: bool = False) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying length and the name's hash prefix.

    Raises ModelLoadError (exit 1) for network failures, interrupted transfers and checksum
    mismatches; a partial or mismatching file is deleted, never left at ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = expected_hash_prefix(dest.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    sha = hashlib.sha256()
    received = 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "visiontool"})
        try:
            resp = urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            raise ModelLoadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot download {url}: {getattr(exc, 'reason', exc)}; fetch it by hand "
                                 f"and put it at {dest}") from exc
        with resp, os.fdopen(fd, "wb") as fh:
            fd = -1
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            with _progress(dest.name, total, quiet) as advance:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except Exception as exc:  # IncompleteRead, reset connection, timeout
                        raise ModelLoadError(f"download of {url} interrupted after {received:,} bytes "
                                             f"({type(exc).__name__}); partial file deleted, run again") from exc
                    if not chunk:
                        break
                    fh.write(chunk)
                    sha.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
        if total is not None and received != total:
            raise ModelLoadError(f"download of {url} interrupted: got {received:,} of {total:,} bytes; "
                                 "partial file deleted, run again")
        digest = sha.hexdigest()
        if prefix is not None and not digest.startswith(prefix):
            raise ModelLoadError(f"checksum mismatch for {dest.name}: SHA-256 {digest[:12]}… does not start "
                                 f"with {prefix} (from the file name); the download was deleted")
        os.replace(tmp, dest)
        _remember_hash(dest, digest)
        return dest
    finally:
        if fd != -1:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)


class _progress:
    """A rich progress bar on stderr (nothing when quiet); yields ``advance(n_bytes)``."""

    def __init__(self, name: str, total: int | None, quiet: bool):
        self.name, self.total, self.quiet = name, total, quiet
        self._p = None

    def __enter__(self):
        from visiontool.render.console import is_quiet

        if self.quiet or is_quiet():
            return lambda n: None
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        from visiontool.render.console import err

        self._p = Progress(TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(),
                           TransferSpeedColumn(), TimeRemainingColumn(), console=err(), transient=False)
        self._p.__enter__()
        task = self._p.add_task(self.name, total=self.total)
        return lambda n: self._p.advance(task, n)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
        return False


# ----------------------------------------------------------------------------- identity

def _hash_memo_path() -> Path:
    return visiontool_cache_dir() / "checkpoint_hashes.json"


def _read_memo() -> dict:
    try:
        with open(_hash_memo_path(), encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _stat_key(path: Path) -> tuple[str, dict]:
    st = path.stat()
    return str(path.resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _remember_hash(path: Path, digest: str) -> None:
    key, stat = _stat_key(path)
    memo = _read_memo()
    memo[key] = {**stat, "sha256": digest}
    target = _hash_memo_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hashes.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(memo, fh)
        os.replace(tmp, target)
    except OSError:
        pass  # the memo is an optimisation only


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the checkpoint's content: its identity for the embedding cache.

    Computed once and memoised by (real path, size, mtime); a file replaced in place gets a
    new size or mtime and is hashed again, so a stale identity cannot survive.
    """
    p = Path(path)
    key, stat = _stat_key(p)
    hit = _read_memo().get(key)
    if isinstance(hit, dict) and hit.get("size") == stat["size"] and hit.get("mtime_ns") == stat["mtime_ns"] \
            and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    sha = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK * 8), b""):
            sha.update(chunk)
    digest = sha.hexdigest()
    _remember_hash(p, digest)
    return digest


# ----------------------------------------------------------------------------- architecture

@dataclass(frozen=True)
class SamArchitecture:
    """What the checkpoint's tensor shapes say (vit_b: 768, 12, 12, (2, 5, 8, 11))."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    patch_size: int = 16
    img_size: int = 1024
    window_size: int = 14
    mlp_ratio: float = 4.0
    out_chans: int = 256
    use_rel_pos: bool = True

    @property
    def name(self) -> str:
        known = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}
        return known.get((self.embed_dim, self.depth), f"vit_{self.embed_dim}x{self.depth}")

    def to_dict(self) -> dict:
        return asdict(self)


def infer_architecture(shapes: dict[str, tuple[int, ...]]) -> SamArchitecture:
    """Encoder hyper-parameters from ``{state-dict key: shape}``; ModelLoadError if not SAM.

    Each dimension is read from any tensor that carries it (SAM's value otherwise), so a
    checkpoint with missing tensors still yields its architecture and
    :func:`visiontool.models.sam_weights.check_state_dict` can name what is missing.
    """
    pre = "image_encoder."
    if not any(k.startswith(pre) for k in shapes):
        raise ModelLoadError("not a segment-anything checkpoint (no image_encoder weights)")
    try:
        blocks = sorted({int(k[len(pre) + 7:].split(".")[0]) for k in shapes
                         if k.startswith(pre + "blocks.") and k[len(pre) + 7:].split(".")[0].isdigit()})
        depth = blocks[-1] + 1 if blocks else 0
        if depth == 0:
            raise KeyError(pre + "blocks")

        def first(cands, default):
            """shapes[key][axis] of the first (key, axis) present."""
            for k, axis in cands:
                s = shapes.get(k)
                if s is not None and len(s) > axis:
                    return int(s[axis])
            return default

        per_block = [f"{pre}blocks.{i}." for i in blocks]
        embed_dim = first([(pre + "patch_embed.proj.weight", 0), (pre + "pos_embed", 3)] +
                          [(b + n, 0) for b in per_block for n in ("norm1.weight", "attn.proj.weight")], None)
        if embed_dim is None or embed_dim <= 0:
            raise KeyError(pre + "patch_embed.proj.weight")
        patch = first([(pre + "patch_embed.proj.weight", 2)], 16)
        grid = first([(pre + "pos_embed", 1)], 64)
        mlp_hidden = first([(b + "mlp.lin1.weight", 0) for b in per_block], 4 * embed_dim)
        out_chans = first([(pre + f"neck.{i}.weight", 0) for i in range(4)] +
                          [("prompt_encoder.no_mask_embed.weight", 1)], 256)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"not a segment-anything checkpoint (missing {exc})") from exc
    rel = {i: shapes.get(f"{pre}blocks.{i}.attn.rel_pos_h") or shapes.get(f"{pre}blocks.{i}.attn.rel_pos_w")
           for i in range(depth)}
    present = {i: r for i, r in rel.items() if r is not None and len(r) == 2}
    if present:
        head_dim = max(1, int(next(iter(present.values()))[1]))
        global_len = 2 * grid - 1
        glob = tuple(i for i, r in present.items() if int(r[0]) == global_len)
        windowed = [int(r[0]) for r in present.values() if int(r[0]) != global_len]
        window = (windowed[0] + 1) // 2 if windowed else 14
        use_rel = True
    else:  # without relative positions the head count is not in the shapes: SAM's 64-wide heads
        head_dim, glob, window, use_rel = 64, (), 14, False
    return SamArchitecture(embed_dim=embed_dim, depth=depth, num_heads=max(1, embed_dim // head_dim),
                           global_attn_indexes=glob, patch_size=patch, img_size=grid * patch,
                           window_size=window, mlp_ratio=mlp_hidden / embed_dim, out_chans=out_chans,
                           use_rel_pos=use_rel)


# ----------------------------------------------------------------------------- loading

def sam_modeling():
    """``segment_anything.modeling`` without running the package's ``__init__`` (which imports
    torchvision, ~2 s) when nothing else has imported the package yet."""
    import importlib
    import importlib.util
    import types

    if "segment_anything" in sys.modules:
        return importlib.import_module("segment_anything.modeling")
    spec = importlib.util.find_spec("segment_anything")
    if spec is None:
        raise ModelLoadError("segment-anything is not installed (pip install segment-anything)")
    stub = types.ModuleType("segment_anything")
    stub.__path__ = list(spec.submodule_search_locations or [])
    sys.modules["segment_anything"] = stub
    try:
        return importlib.import_module("segment_anything.modeling")
    finally:
        # the real package (with its __init__) loads normally if someone imports it later
        if sys.modules.get("segment_anything") is stub:
            del sys.modules["segment_anything"]


def load_state_dict(path: str | os.PathLike) -> dict:
    """The checkpoint's tensors (memory-mapped where possible; weights_only), checked to be
    exactly those of a segment-anything model of the architecture they describe.

    ModelLoadError (one line) when the file is not a tensor state dict (saying what it is
    instead), or when tensors are missing, unexpected or mis-shaped (naming them).
    """
    from visiontool.models.sam_weights import check_state_dict, read_checkpoint

    sd = read_checkpoint(path)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"'{path}' is not a segment-anything checkpoint (it holds a {type(sd).__name__}, "
                             "not a state dict of tensors)")
    if not any(isinstance(k, str) and k.startswith("image_encoder.") for k in sd):
        raise ModelLoadError(f"'{path}' is not a segment-anything checkpoint (no image_encoder weights)")
    check_state_dict(sd, path)
    return sd


def build_image_encoder(sd: dict, arch: SamArchitecture | None = None):
    """The ViT image encoder with the checkpoint's weights, in eval mode on CPU."""
    from functools import partial

    import torch

    arch = arch or infer_architecture({k: tuple(v.shape) for k, v in sd.items()})
    m = sam_modeling()
    enc = m.ImageEncoderViT(depth=arch.depth, embed_dim=arch.embed_dim, img_size=arch.img_size,
                            mlp_ratio=arch.mlp_ratio, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                            num_heads=arch.num_heads, patch_size=arch.patch_size, qkv_bias=True,
                            use_rel_pos=arch.use_rel_pos, global_attn_indexes=arch.global_attn_indexes,
                            window_size=arch.window_size, out_chans=arch.out_chans)
    pre = "image_encoder."
    sub = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    try:
        enc.load_state_dict(sub, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"checkpoint image encoder does not match its inferred architecture: "
                             f"{str(exc).splitlines()[0]}") from exc
    return enc.eval()


def build_sam(sd: dict):
    """A full ``segment_anything`` ``Sam`` (for the benchmark's and tests' reference path)."""
    import torch

    from visiontool.models.sam_weights import build_sam_module, check_state_dict

    arch, dims = check_state_dict(sd, "state dict")
    sam = build_sam_module(arch, dims)
    try:
        sam.load_state_dict(dict(sd), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"checkpoint does not match its inferred architecture: "
                             f"{str(exc).splitlines()[0]}") from exc
    return sam.eval().to(torch.float32)


def decoder_arrays(sd: dict) -> dict:
    """Prompt-encoder and mask-decoder weights as float32 numpy arrays (+ encoder geometry)."""
    import numpy as np

    arch = infer_architecture({k: tuple(v.shape) for k, v in sd.items()})
    out = {k: v.detach().float().numpy().copy() for k, v in sd.items()
           if k.startswith("prompt_encoder.") or k.startswith("mask_decoder.")}
    out["__img_size__"] = np.array(arch.img_size)
    out["__embed_grid__"] = np.array(arch.img_size // arch.patch_size)
    return out
