"""segment-anything checkpoints as data: what a file is, and whether it holds exactly the
tensors a SAM of its architecture has.

* :func:`read_checkpoint` looks at a file's first bytes before torch sees it, so a plain
  pickle, a safetensors file, an ``.npz`` or a damaged download is named for what it is;
  torch only ever reads it with ``weights_only=True``. Its advice to retry with
  ``weights_only=False`` is never repeated (that would run the file's code).
* :func:`check_state_dict` compares the tensors with ``segment_anything``'s own ``Sam``
  built (on the meta device: no memory) for the architecture the shapes describe: a missing
  IoU head, a stray tensor or a decoder of another width is a :class:`ModelLoadError` naming
  the tensors, never a silently wrong model.
* :func:`decoder_problem` checks the prompt-encoder / mask-decoder arrays cached as ``.npz``
  without torch, against :func:`decoder_shapes` (the same layout, written out; a test keeps
  it equal to ``segment_anything``'s for several widths).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from visiontool.errors import ModelLoadError

DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")
DECODER_META = ("__img_size__", "__embed_grid__")  # encoder geometry stored with the decoder arrays
CHECKPOINT_SHA_KEY = "__checkpoint_sha256__"  # optional in a cached .npz: whose decoder it is
_NAMED = 3  # tensors named in a message before "… and N more"

# torch.save's legacy (pre-zip) files start with a pickled magic number (a 10-byte LONG1),
# right after the protocol (and, from protocol 4, frame) opcodes
_LEGACY_TORCH_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


# ----------------------------------------------------------------------------- decoder dims
@dataclass(frozen=True)
class SamDecoderDims:
    """Prompt encoder + mask decoder hyper-parameters (SAM's: 256, 16, 4, 2, 2048, 3, 256)."""

    prompt_dim: int = 256
    mask_in_chans: int = 16
    num_mask_tokens: int = 4  # 1 + num_multimask_outputs
    depth: int = 2  # TwoWayTransformer blocks
    mlp_dim: int = 2048
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


def _indices(shapes, prefix: str) -> list[int]:
    """Sorted ``i`` of the keys ``<prefix><i>.…``."""
    out = set()
    for k in shapes:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                out.add(int(head))
    return sorted(out)


def _dim(shapes, candidates, default: int) -> int:
    """The first available ``shapes[key][axis]`` among ``(key, axis)`` candidates, else ``default``."""
    for key, axis, factor in candidates:
        s = shapes.get(key)
        if s is not None and len(s) > axis:
            return int(s[axis]) * factor
    return default


def infer_decoder_dims(shapes: dict[str, tuple[int, ...]]) -> SamDecoderDims:
    """Decoder hyper-parameters from ``{state-dict key: shape}``.

    Robust to missing tensors: a dimension is read from any tensor that carries it, else
    SAM's default is assumed, so a missing tensor shows up as *missing* in
    :func:`check_state_dict` (or :func:`decoder_problem`) rather than as a wrong model.
    """
    pe, md = "prompt_encoder.", "mask_decoder."
    dim = _dim(shapes, [(pe + "no_mask_embed.weight", 1, 1), (md + "iou_token.weight", 1, 1),
                        (md + "mask_tokens.weight", 1, 1), (pe + "not_a_point_embed.weight", 1, 1),
                        (pe + "pe_layer.positional_encoding_gaussian_matrix", 1, 2)], 256)
    mask_in = _dim(shapes, [(pe + "mask_downscaling.3.weight", 0, 1), (pe + "mask_downscaling.6.weight", 1, 1),
                            (pe + "mask_downscaling.0.weight", 0, 4)], 16)
    hyper = _indices(shapes, md + "output_hypernetworks_mlps.")
    tokens = _dim(shapes, [(md + "mask_tokens.weight", 0, 1)], hyper[-1] + 1 if hyper else 4)
    layers = _indices(shapes, md + "transformer.layers.")
    depth = layers[-1] + 1 if layers else 2
    mlp_dim = _dim(shapes, [(f"{md}transformer.layers.{i}.mlp.lin1.weight", 0, 1) for i in layers], 2048)
    head = md + "iou_prediction_head.layers."
    iou = _indices(shapes, head)
    iou_depth = iou[-1] + 1 if iou else 3
    last = shapes.get(f"{head}{iou_depth - 1}.weight") if iou else None
    if last is not None and int(last[0]) != tokens:
        iou_depth += 1  # the present layers end in a hidden width: the output layer is missing
    hidden = _dim(shapes, [(f"{head}{i}.weight", 0, 1) for i in range(iou_depth - 1)], 256)
    return SamDecoderDims(prompt_dim=dim, mask_in_chans=mask_in, num_mask_tokens=tokens, depth=depth,
                          mlp_dim=mlp_dim, iou_head_depth=iou_depth, iou_head_hidden_dim=hidden)


def decoder_shapes(d: SamDecoderDims) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``PromptEncoder`` + ``MaskDecoder`` state dicts (``prompt_encoder.`` /
    ``mask_decoder.`` prefixes, segment_anything's order), without torch."""
    c, half, mi = d.prompt_dim, d.prompt_dim // 2, d.mask_in_chans
    out: dict[str, tuple[int, ...]] = {"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, half)}
    for i in range(4):
        out[f"prompt_encoder.point_embeddings.{i}.weight"] = (1, c)
    out["prompt_encoder.not_a_point_embed.weight"] = (1, c)
    for name, shape in (("0.weight", (mi // 4, 1, 2, 2)), ("0.bias", (mi // 4,)), ("1.weight", (mi // 4,)),
                        ("1.bias", (mi // 4,)), ("3.weight", (mi, mi // 4, 2, 2)), ("3.bias", (mi,)),
                        ("4.weight", (mi,)), ("4.bias", (mi,)), ("6.weight", (c, mi, 1, 1)), ("6.bias", (c,))):
        out["prompt_encoder.mask_downscaling." + name] = shape
    out["prompt_encoder.no_mask_embed.weight"] = (1, c)

    def attn(prefix: str, inner: int) -> None:
        for p in ("q_proj", "k_proj", "v_proj"):
            out[f"{prefix}.{p}.weight"], out[f"{prefix}.{p}.bias"] = (inner, c), (inner,)
        out[f"{prefix}.out_proj.weight"], out[f"{prefix}.out_proj.bias"] = (c, inner), (c,)

    def norm(prefix: str, n: int = c) -> None:
        out[prefix + ".weight"], out[prefix + ".bias"] = (n,), (n,)

    def mlp(prefix: str, widths: list[int]) -> None:
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            out[f"{prefix}.layers.{i}.weight"], out[f"{prefix}.layers.{i}.bias"] = (b, a), (b,)

    t = "mask_decoder.transformer."
    for i in range(d.depth):
        L = f"{t}layers.{i}."
        attn(L + "self_attn", c)
        norm(L + "norm1")
        attn(L + "cross_attn_token_to_image", half)
        norm(L + "norm2")
        out[L + "mlp.lin1.weight"], out[L + "mlp.lin1.bias"] = (d.mlp_dim, c), (d.mlp_dim,)
        out[L + "mlp.lin2.weight"], out[L + "mlp.lin2.bias"] = (c, d.mlp_dim), (c,)
        norm(L + "norm3")
        norm(L + "norm4")
        attn(L + "cross_attn_image_to_token", half)
    attn(t + "final_attn_token_to_image", half)
    norm(t + "norm_final_attn")
    out["mask_decoder.iou_token.weight"] = (1, c)
    out["mask_decoder.mask_tokens.weight"] = (d.num_mask_tokens, c)
    out["mask_decoder.output_upscaling.0.weight"] = (c, c // 4, 2, 2)
    out["mask_decoder.output_upscaling.0.bias"] = (c // 4,)
    norm("mask_decoder.output_upscaling.1", c // 4)
    out["mask_decoder.output_upscaling.3.weight"] = (c // 4, c // 8, 2, 2)
    out["mask_decoder.output_upscaling.3.bias"] = (c // 8,)
    for j in range(d.num_mask_tokens):
        mlp(f"mask_decoder.output_hypernetworks_mlps.{j}", [c, c, c, c // 8])
    mlp("mask_decoder.iou_prediction_head",
        [c] + [d.iou_head_hidden_dim] * (d.iou_head_depth - 1) + [d.num_mask_tokens])
    return out


# ----------------------------------------------------------------------------- the whole model
def build_sam_module(arch, dims: SamDecoderDims, device=None):
    """segment_anything's ``Sam`` for this architecture (random weights; ``device="meta"``
    allocates nothing)."""
    from contextlib import nullcontext
    from functools import partial

    import torch

    from visiontool.models.sam import sam_modeling

    m = sam_modeling()
    grid = arch.img_size // arch.patch_size
    with torch.device(device) if device is not None else nullcontext():
        enc = m.ImageEncoderViT(depth=arch.depth, embed_dim=arch.embed_dim, img_size=arch.img_size,
                                mlp_ratio=arch.mlp_ratio, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                num_heads=arch.num_heads, patch_size=arch.patch_size, qkv_bias=True,
                                use_rel_pos=arch.use_rel_pos, global_attn_indexes=arch.global_attn_indexes,
                                window_size=arch.window_size, out_chans=arch.out_chans)
        prompt = m.PromptEncoder(embed_dim=dims.prompt_dim, image_embedding_size=(grid, grid),
                                 input_image_size=(arch.img_size, arch.img_size), mask_in_chans=dims.mask_in_chans)
        transformer = m.TwoWayTransformer(depth=dims.depth, embedding_dim=dims.prompt_dim, mlp_dim=dims.mlp_dim,
                                          num_heads=8)
        decoder = m.MaskDecoder(num_multimask_outputs=dims.num_mask_tokens - 1, transformer=transformer,
                                transformer_dim=dims.prompt_dim, iou_head_depth=dims.iou_head_depth,
                                iou_head_hidden_dim=dims.iou_head_hidden_dim)
        return m.Sam(image_encoder=enc, prompt_encoder=prompt, mask_decoder=decoder)


@lru_cache(maxsize=8)
def expected_shapes(arch, dims: SamDecoderDims) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of segment_anything's ``Sam(...).state_dict()`` for this architecture."""
    sam = build_sam_module(arch, dims, device="meta")
    return {k: tuple(v.shape) for k, v in sam.state_dict().items()}


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMED])
    return shown + (f" … and {len(names) - _NAMED} more" if len(names) > _NAMED else "")


def key_mismatch(expected, present) -> str | None:
    """'N missing (a, b, c … and M more); K unexpected (…)', or None if the key sets agree."""
    missing = [k for k in expected if k not in present]
    unexpected = [k for k in present if k not in expected]
    parts = []
    if missing:
        parts.append(f"{len(missing)} expected tensor{'s' * (len(missing) > 1)} missing ({_some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_some(unexpected)})")
    return "; ".join(parts) or None


def shape_mismatch(expected, shapes) -> str | None:
    """The first tensor whose shape differs, with both shapes (and how many differ)."""
    bad = [k for k, s in expected.items() if k in shapes and tuple(shapes[k]) != tuple(s)]
    if not bad:
        return None
    k = bad[0]
    more = f" ({len(bad)} tensors differ)" if len(bad) > 1 else ""
    return f"tensor '{k}' has shape {_shape(shapes[k])}, expected {_shape(expected[k])}{more}"


def _shape(s) -> str:
    return str(tuple(int(v) for v in s))


def check_state_dict(sd: dict, origin: str | os.PathLike):
    """(SamArchitecture, SamDecoderDims) of a state dict holding exactly SAM's tensors, else
    ModelLoadError naming the missing / unexpected / mis-shaped ones."""
    import torch

    from visiontool.models.sam import infer_architecture

    shapes = {k: tuple(v.shape) for k, v in sd.items() if isinstance(k, str) and torch.is_tensor(v)}
    arch = infer_architecture(shapes)
    dims = infer_decoder_dims(shapes)
    expected = expected_shapes(arch, dims)
    what = f"checkpoint '{origin}' is not a complete segment-anything {arch.name} state dict"
    keys = key_mismatch(expected, [str(k) for k in sd])
    if keys:
        raise ModelLoadError(f"{what}: {keys}")
    shape = shape_mismatch(expected, shapes)
    if shape:
        raise ModelLoadError(f"checkpoint '{origin}' does not match the segment-anything {arch.name} "
                             f"architecture its tensors describe: {shape}")
    bad = [k for k in expected if not torch.is_tensor(sd[k]) or not sd[k].is_floating_point()]
    if bad:
        v = sd[bad[0]]
        what = f"a {v.dtype} tensor" if torch.is_tensor(v) else f"a {type(v).__name__}"
        raise ModelLoadError(f"checkpoint '{origin}': '{bad[0]}' is {what}, not floating-point weights")
    return arch, dims


def decoder_problem(arrays: dict, checkpoint_sha: str | None = None) -> str | None:
    """Why cached decoder arrays cannot serve (None if they can): keys, shapes and dtypes must
    be those of :func:`decoder_shapes` for the dimensions they describe, the geometry scalars
    present and sane, and a recorded checkpoint hash (if any) the expected one."""
    import numpy as np

    meta = {k for k in arrays if k.startswith("__")}
    weights = {k: tuple(np.shape(v)) for k, v in arrays.items() if k not in meta}
    expected = decoder_shapes(infer_decoder_dims(weights))
    keys = key_mismatch(list(expected) + list(DECODER_META),
                        [k for k in arrays if k != CHECKPOINT_SHA_KEY])
    if keys:
        return keys
    shape = shape_mismatch(expected, weights)
    if shape:
        return shape
    bad = [k for k in weights if np.asarray(arrays[k]).dtype != np.float32]
    if bad:
        return f"array '{bad[0]}' is {np.asarray(arrays[bad[0]]).dtype}, not float32"
    try:
        img, grid = (int(np.asarray(arrays[k]).reshape(())) for k in DECODER_META)
    except (TypeError, ValueError):
        return "the image geometry (__img_size__, __embed_grid__) is not two integers"
    if not (0 < grid <= img):
        return f"the image geometry is impossible (img_size {img}, embedding grid {grid})"
    if CHECKPOINT_SHA_KEY in arrays and checkpoint_sha is not None:
        try:
            recorded = str(np.asarray(arrays[CHECKPOINT_SHA_KEY]).reshape(()))
        except (TypeError, ValueError):
            recorded = ""
        if recorded != checkpoint_sha:
            return "it was written for another checkpoint"
    return None


# ----------------------------------------------------------------------------- reading files
def sniff(path: str | os.PathLike) -> str:
    """What a checkpoint file is, from its first bytes: ``torch-zip``, ``zip``, ``bad-zip``,
    ``torch-legacy``, ``pickle``, ``safetensors``, ``empty`` or ``unknown``."""
    import zipfile

    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(32)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "bad-zip"
        return "torch-zip" if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names) else "zip"
    if head[:1] == b"\x80" and head.find(_LEGACY_TORCH_MAGIC) in (2, 11):  # protocol 2 | 4+ (framed)
        return "torch-legacy"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < p.stat().st_size:
        return "safetensors"
    return "unknown"


_NOT_A_CHECKPOINT = {
    "empty": "the file is empty",
    "bad-zip": "it is a damaged zip archive (a truncated or corrupted download?), not a readable PyTorch "
               "checkpoint",
    "zip": "it is a zip archive (an .npz?) but not a PyTorch checkpoint",
    "pickle": "it is a pickled Python object, not a PyTorch tensor state dict; visiontool never unpickles code",
    "safetensors": "it is a safetensors file, not a PyTorch .pth state dict (torch.save)",
    "unknown": "it is not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy torch file)",
}


def read_checkpoint(path: str | os.PathLike):
    """``torch.load(weights_only=True)`` of a checkpoint file (memory-mapped when it is a zip
    archive), with every failure turned into a ModelLoadError that says what the file is not.
    torch's own warnings (e.g. about pickle protocols) are kept off stderr."""
    import pickle
    import warnings
    import zipfile

    import torch

    try:
        kind = sniff(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read checkpoint '{path}': {exc.strerror or exc}") from exc
    if kind not in ("torch-zip", "torch-legacy"):
        raise ModelLoadError(f"cannot load checkpoint '{path}': {_NOT_A_CHECKPOINT[kind]}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=kind == "torch-zip")
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(f"cannot load checkpoint '{path}': {_unpickling_reason(str(exc), kind, path)}"
                             ) from exc
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError,
            AttributeError, IndexError) as exc:
        raise ModelLoadError(f"cannot load checkpoint '{path}': {_torch_reason(exc)}") from exc


def _unpickling_reason(message: str, kind: str = "", path=None) -> str:
    """torch's weights-only refusal, reworded: which code the file wants run, never the
    advice to run it."""
    if kind == "torch-legacy" and "Unsupported operand" in message:
        try:
            with open(path, "rb") as fh:
                protocol = fh.read(2)[1]
        except (OSError, IndexError, TypeError):
            protocol = "?"
        return (f"it is a legacy (pre-zip) torch file written with pickle protocol {protocol}, which torch's "
                "weights-only reader does not support; visiontool never unpickles code")
    m = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", message)
    if m is None:
        return ("it is not a plain tensor state dict (it holds pickled Python objects); "
                "visiontool never unpickles code")
    name = m.group(1)
    hint = ""
    if name.startswith("torch.nn.modules.") or name.startswith("segment_anything."):
        hint = " (a whole model saved with torch.save(model): save model.state_dict() instead)"
    return (f"it is a pickled Python object (it needs {name}), not a tensor state dict{hint}; "
            "visiontool never unpickles code")


def _torch_reason(exc: BaseException) -> str:
    """The first line of torch's message, unless it gives loading advice (then a plain
    description of the failure)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "weights_only" in text or "Weights only" in text or "trust" in text:
        return "it is not a plain tensor state dict; visiontool never unpickles code"
    if "central directory" in text or "zip archive" in text:
        return "the archive is truncated or corrupt (a partial download?)"
    return text
