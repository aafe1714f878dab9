# ruff: noqa: F811  (pytest fixtures imported from segment_helpers are re-bound as test arguments)
"""A checkpoint is exactly SAM's tensors or an error naming the difference (issue 8 §3.3), and
a file that is not a tensor state dict is named for what it is, never with torch's advice to
unpickle it (§3.5)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from segment_helpers import assert_user_error, build_tiny_sam, records, run_cli, tiny_ckpt  # noqa: F401

import visiontool
from visiontool.errors import ModelLoadError
from visiontool.models import sam as sam_models

SRC = Path(visiontool.__file__).resolve().parents[1]  # the sources under test, for the subprocess


@pytest.fixture(scope="module")
def tiny_sd(tiny_ckpt):
    import torch

    return torch.load(tiny_ckpt, weights_only=True)


def _segment(ckpt, images_dir, *extra):
    return run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", ckpt, "--point", "100,100", "--format",
                    "json", "--no-cache", *extra])


def _save(tmp_path, name, sd):
    import torch

    torch.save(sd, tmp_path / name)
    return tmp_path / name


# ----------------------------------------------------------------------------- §3.3 missing / unexpected
@pytest.mark.parametrize("case, needles", [
    ("no-iou-head", ["6 expected tensors missing", "mask_decoder.iou_prediction_head.layers.0.weight",
                     "… and 3 more"]),
    ("no-iou-output-layer", ["2 expected tensors missing", "mask_decoder.iou_prediction_head.layers.2.weight",
                             "mask_decoder.iou_prediction_head.layers.2.bias"]),
    ("no-mask-tokens", ["1 expected tensor missing", "mask_decoder.mask_tokens.weight"]),
    ("no-patch-embed", ["1 expected tensor missing", "image_encoder.patch_embed.proj.weight"]),
    ("no-rel-pos", ["expected tensor missing", "image_encoder.blocks.0.attn.rel_pos_h"]),
    ("extra", ["1 unexpected", "extra.weight"]),
    ("both", ["1 expected tensor missing", "mask_decoder.iou_token.weight", "1 unexpected",
              "mask_decoder.iou_tokens.weight"]),
])
def test_incomplete_checkpoint_is_an_error_naming_tensors(tiny_sd, tmp_path, images_dir, case, needles):
    import torch

    sd = dict(tiny_sd)
    if case == "no-iou-head":
        sd = {k: v for k, v in sd.items() if "iou_prediction_head" not in k}
    elif case == "no-iou-output-layer":
        sd = {k: v for k, v in sd.items() if "iou_prediction_head.layers.2" not in k}
    elif case == "no-mask-tokens":
        del sd["mask_decoder.mask_tokens.weight"]
    elif case == "no-patch-embed":
        del sd["image_encoder.patch_embed.proj.weight"]
    elif case == "no-rel-pos":
        del sd["image_encoder.blocks.0.attn.rel_pos_h"]
    elif case == "extra":
        sd["extra.weight"] = torch.zeros(3)
    else:  # a renamed tensor: one missing, one unexpected
        sd["mask_decoder.iou_tokens.weight"] = sd.pop("mask_decoder.iou_token.weight")
    path = _save(tmp_path, f"{case}.pth", sd)
    res = _segment(path, images_dir)
    line = assert_user_error(res, 1, str(path), "segment-anything", *needles)
    assert res.stdout == "", "output was printed from an incomplete checkpoint"
    assert "iou_prediction_head" not in line or case in ("no-iou-head", "no-iou-output-layer")


def test_every_caller_gets_the_check(tiny_sd, tmp_path, images_dir):
    """The check sits in the one loader every path uses (CLI, Python API, reference model)."""
    path = _save(tmp_path, "noiou.pth", {k: v for k, v in tiny_sd.items() if "iou_prediction_head" not in k})
    with pytest.raises(ModelLoadError, match="iou_prediction_head"):
        sam_models.load_state_dict(path)
    from visiontool import segment

    with pytest.raises(ModelLoadError, match="iou_prediction_head"):
        segment(str(images_dir / "dog.jpg"), checkpoint=str(path), points=[(10, 10)], use_cache=False,
                device="cpu")
    with pytest.raises(ModelLoadError, match="iou_prediction_head"):
        sam_models.build_sam({k: v for k, v in tiny_sd.items() if "iou_prediction_head" not in k})


def test_wrapped_and_legacy_checkpoints_still_load(tiny_sd, tmp_path, images_dir):
    import torch

    good = _segment(_save(tmp_path, "plain.pth", tiny_sd), images_dir)
    assert good.exit_code == 0, good.stderr
    wrapped = _save(tmp_path, "wrapped.pth", {"model": tiny_sd, "epoch": 3})
    torch.save(tiny_sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for p in (wrapped, tmp_path / "legacy.pth"):
        res = _segment(p, images_dir)
        assert res.exit_code == 0, res.stderr
        assert [m["segmentation"] for m in records(res.stdout)[0]["masks"]] == \
            [m["segmentation"] for m in records(good.stdout)[0]["masks"]]


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_official_architectures_are_complete(name):
    """The real layouts (built on the meta device: shapes only) pass the check, and lose it
    with one tensor gone."""
    import torch
    from segment_anything import sam_model_registry

    from visiontool.models import sam_weights

    with torch.device("meta"):
        sd = sam_model_registry[name]().state_dict()
    arch, dims = sam_weights.check_state_dict(sd, name)
    assert arch.name == name
    assert dims == sam_weights.SamDecoderDims()  # SAM's decoder is the same for b, l and h
    sd.pop("mask_decoder.iou_prediction_head.layers.1.bias")
    with pytest.raises(ModelLoadError, match=r"1 expected tensor missing \(mask_decoder.iou_prediction_head"):
        sam_weights.check_state_dict(sd, name)


@pytest.mark.parametrize("kw", [
    {},  # SAM's (vit_b, vit_l, vit_h)
    dict(prompt_dim=64, mask_in_chans=16, mlp_dim=128, iou_head_hidden_dim=64),  # the tiny test model's
    dict(prompt_dim=32, mask_in_chans=8, num_mask_tokens=3, depth=3, mlp_dim=48, iou_head_depth=2,
         iou_head_hidden_dim=16),
])
def test_decoder_layout_matches_segment_anything(kw):
    """The torch-free decoder layout used to check cached .npz files is segment_anything's."""
    import torch
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    from visiontool.models import sam_weights

    dims = sam_weights.SamDecoderDims(**kw)

    with torch.device("meta"):
        pe = PromptEncoder(embed_dim=dims.prompt_dim, image_embedding_size=(8, 8), input_image_size=(128, 128),
                           mask_in_chans=dims.mask_in_chans)
        md = MaskDecoder(num_multimask_outputs=dims.num_mask_tokens - 1,
                         transformer=TwoWayTransformer(depth=dims.depth, embedding_dim=dims.prompt_dim,
                                                       mlp_dim=dims.mlp_dim, num_heads=8),
                         transformer_dim=dims.prompt_dim, iou_head_depth=dims.iou_head_depth,
                         iou_head_hidden_dim=dims.iou_head_hidden_dim)
    ref = {f"prompt_encoder.{k}": tuple(v.shape) for k, v in pe.state_dict().items()}
    ref.update({f"mask_decoder.{k}": tuple(v.shape) for k, v in md.state_dict().items()})
    assert sam_weights.decoder_shapes(dims) == ref
    assert list(sam_weights.decoder_shapes(dims)) == list(ref)
    assert sam_weights.infer_decoder_dims(ref) == dims


# ----------------------------------------------------------------------------- §3.5 what the file is not
def test_shape_mismatch_names_the_first_tensor_and_both_shapes(tiny_sd, tmp_path, images_dir):
    """A state dict whose mask decoder comes from another architecture (width 32, not 64)."""
    import segment_helpers

    old = segment_helpers.PROMPT_DIM
    segment_helpers.PROMPT_DIM = 32
    try:
        other = build_tiny_sam().state_dict()
    finally:
        segment_helpers.PROMPT_DIM = old
    sd = {**tiny_sd, **{k: v for k, v in other.items() if k.startswith("mask_decoder.")}}
    res = _segment(_save(tmp_path, "mixed.pth", sd), images_dir)
    assert_user_error(res, 1, "mixed.pth", "'mask_decoder.transformer.layers.0.self_attn.q_proj.weight'",
                      "(32, 32)", "expected (64, 64)")


class _RunsCode:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _no_unpickling_advice(text: str) -> None:
    for bad in ("weights_only", "will likely succeed", "trust", "add_safe_globals"):
        assert bad not in text, (bad, text)


@pytest.mark.parametrize("kind, needles", [
    ("torch-object", ["pickled Python object (it needs posix.mkdir" if os.name == "posix" else
                      "pickled Python object", "never unpickles code"]),
    ("module", ["pickled Python object", "torch.nn.modules.linear.Linear", "state_dict()", "never unpickles"]),
    ("plain-pickle", ["pickled Python object, not a PyTorch tensor state dict", "never unpickles code"]),
    ("npz", ["zip archive", "not a PyTorch checkpoint"]),
    ("safetensors", ["safetensors file", "not a PyTorch"]),
    ("truncated", ["damaged zip archive"]),
    ("text", ["not a PyTorch checkpoint"]),
    ("empty", ["empty"]),
    ("tensor", ["holds a Tensor, not a state dict"]),
    # torch's weights-only reader stops at protocol 4's FRAME opcode
    ("legacy-protocol-4", ["legacy (pre-zip) torch file written with pickle protocol 4", "never unpickles"]),
])
def test_not_a_state_dict_says_what_it_is_not(tiny_ckpt, tmp_path, images_dir, kind, needles):
    import numpy as np
    import torch

    marker = tmp_path / "code-ran"
    path = tmp_path / f"{kind}.pth"
    if kind == "torch-object":
        torch.save({"model": _RunsCode(marker)}, path)
    elif kind == "module":
        torch.save(torch.nn.Linear(2, 2), path)
    elif kind == "plain-pickle":
        path.write_bytes(pickle.dumps({"weights": _RunsCode(marker)}, protocol=4))
    elif kind == "npz":
        with open(path, "wb") as fh:
            np.savez(fh, a=np.zeros(3))
    elif kind == "safetensors":
        from safetensors.torch import save_file

        save_file({"a": torch.zeros(2)}, str(path))
    elif kind == "truncated":
        path.write_bytes(tiny_ckpt.read_bytes()[: tiny_ckpt.stat().st_size // 2])
    elif kind == "text":
        path.write_text("hello\n" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "legacy-protocol-4":
        torch.save({"image_encoder.x": torch.zeros(2)}, path, _use_new_zipfile_serialization=False,
                   pickle_protocol=4)
    else:
        torch.save(torch.zeros(3), path)
    res = _segment(path, images_dir)
    line = assert_user_error(res, 1, f"{kind}.pth", *needles)
    _no_unpickling_advice(res.stderr)
    assert "\x1b" not in line
    assert not marker.exists(), "the checkpoint's code ran"


def test_plain_pickle_warning_stays_off_stderr(tmp_path, images_dir):
    """torch's 'Detected pickle protocol 4' UserWarning (seen outside pytest's warning capture)."""
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    legacy = tmp_path / "legacy_obj.pth"
    import torch

    torch.save({"model": _RunsCode(tmp_path / "ran")}, legacy, _use_new_zipfile_serialization=False)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONWARNINGS": "default"}
    for p in (path, legacy):
        proc = subprocess.run([sys.executable, "-m", "visiontool", "segment", str(images_dir / "dog.jpg"),
                               "--checkpoint", str(p), "--point", "1,1", "--no-cache", "-q"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 1, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("visiontool: error: cannot load checkpoint"), proc.stderr
        assert "pickled Python object" in lines[0]
        _no_unpickling_advice(proc.stderr)
    assert not (tmp_path / "ran").exists()
