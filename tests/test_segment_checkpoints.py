# ruff: noqa: F811  (pytest fixtures imported from segment_helpers are re-bound as test arguments)
"""Checkpoint names, download from a loopback server, checksum and interruption handling,
offline behaviour, and architecture inference from tensor shapes."""
from __future__ import annotations

import pytest
from segment_helpers import (assert_user_error, loopback_server, records, run_cli, sha256_file,  # noqa: F401
                             tiny_ckpt)

from visiontool.errors import ModelLoadError
from visiontool.models import sam as sam_models


@pytest.fixture
def named_tiny(tiny_ckpt, monkeypatch):
    """Pretend the official vit_b file is our tiny checkpoint, named with its real hash prefix."""
    name = f"sam_vit_b_{sha256_file(tiny_ckpt)[:6]}.pth"
    monkeypatch.setitem(sam_models.CHECKPOINT_FILES, "vit_b", name)
    return name, tiny_ckpt.read_bytes()


def test_official_names_carry_hash_prefixes():
    assert sam_models.expected_hash_prefix("sam_vit_b_01ec64.pth") == "01ec64"
    assert sam_models.expected_hash_prefix("sam_vit_h_4b8939.pth") == "4b8939"
    assert sam_models.expected_hash_prefix("model.pth") is None
    assert sam_models.base_url() == "https://dl.fbaipublicfiles.com/segment_anything/"


def test_named_checkpoint_downloads_once_and_verifies(named_tiny, images_dir, monkeypatch):
    name, body = named_tiny
    with loopback_server({f"/{name}": (body, "ok")}) as url:
        monkeypatch.setenv("VISIONTOOL_SAM_BASE_URL", url)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", "vit_b", "--point", "100,100",
                       "--format", "json"])
    assert res.exit_code == 0, res.stderr
    dest = sam_models.checkpoints_dir() / name
    assert dest.read_bytes() == body
    assert "downloading" in res.stderr  # the progress bar (stderr only)
    assert records(res.stdout)[0]["model"] == "vit_b"
    assert not list(dest.parent.glob("*.part"))
    # second use: no server needed
    monkeypatch.setenv("VISIONTOOL_SAM_BASE_URL", "http://127.0.0.1:9/")
    res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", "vit_b", "--point", "100,100", "-q",
                   "--format", "json"])
    assert res.exit_code == 0, res.stderr


def test_corrupted_download_is_deleted(named_tiny, images_dir, monkeypatch):
    name, body = named_tiny
    bad = bytearray(body)
    bad[len(bad) // 2] ^= 0xFF
    with loopback_server({f"/{name}": (bytes(bad), "ok")}) as url:
        monkeypatch.setenv("VISIONTOOL_SAM_BASE_URL", url)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", "vit_b", "--point", "100,100", "-q"])
    assert_user_error(res, 1, "checksum mismatch", name, "deleted")
    assert not list(sam_models.checkpoints_dir().glob("*"))


def test_interrupted_download(named_tiny, images_dir, monkeypatch):
    name, body = named_tiny
    with loopback_server({f"/{name}": (body, "truncate")}) as url:
        monkeypatch.setenv("VISIONTOOL_SAM_BASE_URL", url)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", "vit_b", "--point", "100,100", "-q"])
    assert_user_error(res, 1, "interrupted")
    assert not list(sam_models.checkpoints_dir().glob("*"))


def test_http_error_is_one_line(monkeypatch, images_dir):
    with loopback_server({}) as url:
        monkeypatch.setenv("VISIONTOOL_SAM_BASE_URL", url)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", "vit_l", "--point", "1,1", "-q"])
    assert_user_error(res, 1, "HTTP 404", "sam_vit_l_0b3195.pth")


def test_offline_and_not_cached_names_file_and_place(images_dir, monkeypatch):
    monkeypatch.setenv("VISIONTOOL_OFFLINE", "1")
    res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", "vit_h", "--point", "1,1"])
    line = assert_user_error(res, 1, "sam_vit_h_4b8939.pth", "https://dl.fbaipublicfiles.com/segment_anything/",
                             str(sam_models.checkpoints_dir()))
    assert "offline" in line


def test_default_checkpoint_is_vit_b_on_cpu(images_dir, monkeypatch):
    monkeypatch.setenv("VISIONTOOL_OFFLINE", "1")
    res = run_cli(["segment", images_dir / "dog.jpg", "--point", "1,1", "--device", "cpu"])
    assert_user_error(res, 1, "sam_vit_b_01ec64.pth")
    res = run_cli(["segment", "--help"])
    assert "vit_b on CPU" in res.stdout and "vit_h on CUDA" in res.stdout


def test_architecture_from_shapes(tiny_ckpt):
    sd = sam_models.load_state_dict(tiny_ckpt)
    arch = sam_models.infer_architecture({k: tuple(v.shape) for k, v in sd.items()})
    assert (arch.embed_dim, arch.depth, arch.num_heads, arch.global_attn_indexes) == (32, 2, 2, (1,))
    assert (arch.patch_size, arch.img_size, arch.window_size, arch.out_chans) == (16, 1024, 14, 64)


def test_vit_b_shapes_are_recognised():
    """The official vit_b layout (shapes only, no weights) maps to 768/12/12/(2, 5, 8, 11)."""
    shapes = {"image_encoder.patch_embed.proj.weight": (768, 3, 16, 16),
              "image_encoder.pos_embed": (1, 64, 64, 768),
              "image_encoder.neck.0.weight": (256, 768, 1, 1)}
    for i in range(12):
        g = i in (2, 5, 8, 11)
        shapes[f"image_encoder.blocks.{i}.attn.rel_pos_h"] = (127 if g else 27, 64)
        shapes[f"image_encoder.blocks.{i}.mlp.lin1.weight"] = (3072, 768)
    arch = sam_models.infer_architecture(shapes)
    assert (arch.embed_dim, arch.depth, arch.num_heads, arch.global_attn_indexes, arch.window_size) == \
        (768, 12, 12, (2, 5, 8, 11), 14)
    assert arch.name == "vit_b"


def test_not_a_sam_checkpoint(tmp_path, images_dir):
    import torch

    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip at all")
    for f in ("other.pth", "junk.pth"):
        res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", tmp_path / f, "--point", "1,1", "-q",
                       "--no-cache"])
        assert_user_error(res, 1, f)
    with pytest.raises(ModelLoadError):
        sam_models.infer_architecture({"x": (1,)})


def test_checkpoint_identity_is_content_not_path(tiny_ckpt, tmp_path):
    import shutil

    copy = tmp_path / "renamed.pth"
    shutil.copy(tiny_ckpt, copy)
    assert sam_models.checkpoint_sha256(copy) == sam_models.checkpoint_sha256(tiny_ckpt) == sha256_file(tiny_ckpt)
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))  # same path, new content
    assert sam_models.checkpoint_sha256(copy) == sha256_file(copy) != sha256_file(tiny_ckpt)
