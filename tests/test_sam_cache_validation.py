# ruff: noqa: F811  (pytest fixtures imported from segment_helpers are re-bound as test arguments)
"""Cache files that are intact but wrong for the model are discarded and recomputed with one
warning naming the file, never blamed on the checkpoint (issue 8 §3.4); a bad
VISIONTOOL_EMBEDDING_CACHE_MB is exit 2 with one line (§3.7)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from segment_helpers import assert_user_error, count_encodes, records, run_cli, tiny_ckpt, tiny_ckpt_b  # noqa: F401

from visiontool.models.loader import release
from visiontool.services.embedding_cache import EmbeddingCache


@pytest.fixture(autouse=True)
def _fresh_models():
    """Each test starts like a new process: no decoder or encoder held in memory."""
    release()
    yield
    release()


def _seg(ckpt, images_dir, cache, *extra):
    return run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", ckpt, "--point", "300,200",
                    "--format", "json", "--cache-dir", cache, "-q", *extra])


def _warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("visiontool: warning:")]


def _assert_recomputed(res, good, path):
    """Exit 0, the same masks as a healthy run, exactly one warning and it names ``path``."""
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert records(res.stdout) == good
    warns = _warnings(res.stderr)
    assert len(warns) == 1 and str(path) in warns[0], res.stderr
    assert "error" not in res.stderr and "Traceback" not in res.stderr
    assert "checkpoint" not in warns[0].replace(str(path), ""), "the cache problem was blamed on the checkpoint"


@pytest.fixture(scope="module")
def warm_template(tiny_ckpt, images_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("warm") / "emb"
    res = _seg(tiny_ckpt, images_dir, cache)
    assert res.exit_code == 0, res.stderr
    return cache, records(res.stdout)


@pytest.fixture
def warm(warm_template, tmp_path):
    """A cache holding one embedding and the decoder arrays of ``tiny_ckpt``; the healthy records."""
    template, good = warm_template
    cache = tmp_path / "emb"
    shutil.copytree(template, cache)
    [npz] = list((cache / "decoders").glob("*.npz"))
    [emb] = list(cache.glob("??/*.emb"))
    return cache, npz, emb, good


# ----------------------------------------------------------------------------- decoder .npz
def _rewrite_npz(npz, edit):
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    with open(npz, "wb") as fh:
        np.savez(fh, **arrays)


def _drop_iou_head(a):
    for k in [k for k in a if "iou_prediction_head" in k]:
        del a[k]


def _stray_key(a):
    a["mask_decoder.extra.weight"] = np.zeros(3, np.float32)


def _transposed(a):
    a["mask_decoder.mask_tokens.weight"] = np.ascontiguousarray(a["mask_decoder.mask_tokens.weight"].T)


def _reshaped(a):
    w = a["mask_decoder.transformer.layers.0.mlp.lin1.weight"]  # (128, 64) -> (64, 128)
    a["mask_decoder.transformer.layers.0.mlp.lin1.weight"] = w.reshape(w.shape[1], w.shape[0])


def _float64(a):
    a["mask_decoder.iou_token.weight"] = a["mask_decoder.iou_token.weight"].astype(np.float64)


def _no_geometry(a):
    del a["__embed_grid__"]


def _other_keys_entirely(a):
    a.clear()
    a["weights"] = np.zeros((4, 4), np.float32)


@pytest.mark.parametrize("edit", [_drop_iou_head, _stray_key, _transposed, _reshaped, _float64, _no_geometry,
                                  _other_keys_entirely])
def test_wrong_decoder_npz_is_recomputed(tiny_ckpt, images_dir, warm, edit):
    cache, npz, _, good = warm
    _rewrite_npz(npz, edit)
    release()  # a new process would not have the decoder in memory
    res = _seg(tiny_ckpt, images_dir, cache)
    _assert_recomputed(res, good, npz)
    from visiontool.models.sam_weights import decoder_problem

    with np.load(npz, allow_pickle=False) as z:  # rewritten from the checkpoint, valid
        assert decoder_problem({k: z[k] for k in z.files}) is None
    release()
    again = _seg(tiny_ckpt, images_dir, cache)
    assert again.exit_code == 0 and not _warnings(again.stderr), again.stderr


def test_another_checkpoints_decoder_npz_is_not_used(tiny_ckpt, tiny_ckpt_b, images_dir, warm):
    """Same shapes, other weights: only the recorded checkpoint hash tells them apart."""
    cache, npz, _, good = warm
    res_b = _seg(tiny_ckpt_b, images_dir, cache)
    assert res_b.exit_code == 0 and records(res_b.stdout) != good
    [npz_b] = [p for p in (cache / "decoders").glob("*.npz") if p != npz]
    shutil.copy(npz_b, npz)
    release()
    _assert_recomputed(_seg(tiny_ckpt, images_dir, cache), good, npz)


# ----------------------------------------------------------------------------- embeddings .emb
@pytest.mark.parametrize("shape", [(32, 64, 64), (64, 32, 32), (64, 64), (1, 64, 64, 64)])
def test_embedding_of_another_shape_is_recomputed(tiny_ckpt, images_dir, warm, count_encodes, shape):
    """An entry with a self-consistent header (magic, key, checksum all right) holding an
    array the model cannot use."""
    cache, _, emb, good = warm
    EmbeddingCache(cache).put(emb.stem, np.ones(shape, np.float32), {"model": "sam_tiny.pth"})
    res = _seg(tiny_ckpt, images_dir, cache)
    _assert_recomputed(res, good, emb)
    assert len(count_encodes) == 1, "the encoder did not run again"
    arr, _ = EmbeddingCache(cache).get(emb.stem, expected_shape=(64, 64, 64))
    assert arr.shape == (64, 64, 64)


def test_embedding_of_another_dtype_is_recomputed(tiny_ckpt, images_dir, warm, count_encodes):
    """A header declaring float16 over a payload of the right length and checksum (already
    handled before issue 8: a regression guard)."""
    import hashlib
    import json
    import struct

    from visiontool.services.embedding_cache import MAGIC

    cache, _, emb, good = warm
    payload = np.zeros((64, 64, 64, 2), np.float16).tobytes()  # float32's byte count
    header = json.dumps({"key": emb.stem, "shape": [64, 64, 64], "dtype": "float16", "version": 1,
                         "sha256": hashlib.sha256(payload).hexdigest()}).encode()
    emb.write_bytes(MAGIC + struct.pack("<I", len(header)) + header + payload)
    _assert_recomputed(_seg(tiny_ckpt, images_dir, cache), good, emb)
    assert len(count_encodes) == 1


def test_get_without_expectation_keeps_any_intact_entry(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put("k" * 64, np.ones((2, 3, 3), np.float32))
    assert cache.get("k" * 64)[0].shape == (2, 3, 3)
    assert cache.get("k" * 64, expected_shape=(2, 4, 4)) is None
    assert cache.discarded == [str(cache.path_for("k" * 64))]
    assert "(2, 3, 3)" in cache.reasons[cache.discarded[0]]
    assert not cache.path_for("k" * 64).exists()


# ----------------------------------------------------------------------------- VISIONTOOL_EMBEDDING_CACHE_MB
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-5", "abc", "1e400", "12MB"])
def test_bad_cache_size_is_exit_2(tiny_ckpt, images_dir, tmp_path, monkeypatch, value):
    monkeypatch.setenv("VISIONTOOL_EMBEDDING_CACHE_MB", value)
    res = _seg(tiny_ckpt, images_dir, tmp_path / "emb")
    line = assert_user_error(res, 2, "VISIONTOOL_EMBEDDING_CACHE_MB", repr(value), "finite number", ">= 0")
    assert res.stdout == ""
    assert "unexpected" not in line


@pytest.mark.parametrize("value, mb", [("", 2048), ("  ", 2048), ("0", 0), ("512", 512), ("0.5", 0.5)])
def test_good_cache_sizes(tmp_path, monkeypatch, value, mb):
    monkeypatch.setenv("VISIONTOOL_EMBEDDING_CACHE_MB", value)
    assert EmbeddingCache(tmp_path).max_bytes == int(mb * 1024 * 1024)


def test_bad_cache_size_is_found_before_any_download(images_dir, monkeypatch):
    """Checked before the checkpoint is fetched (here: offline, so fetching would fail with exit 1)."""
    monkeypatch.setenv("VISIONTOOL_EMBEDDING_CACHE_MB", "nan")
    monkeypatch.setenv("VISIONTOOL_OFFLINE", "1")
    res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", "vit_h", "--point", "1,1", "-q"])
    assert_user_error(res, 2, "VISIONTOOL_EMBEDDING_CACHE_MB")


def test_bad_cache_size_is_irrelevant_without_cache(tiny_ckpt, images_dir, monkeypatch):
    monkeypatch.setenv("VISIONTOOL_EMBEDDING_CACHE_MB", "nan")
    res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", tiny_ckpt, "--point", "300,200",
                   "--format", "json", "--no-cache", "-q"])
    assert res.exit_code == 0, res.stderr


def test_python_api_raises_usage_error(tiny_ckpt, images_dir, tmp_path, monkeypatch):
    from visiontool import segment
    from visiontool.errors import UsageError

    monkeypatch.setenv("VISIONTOOL_EMBEDDING_CACHE_MB", "-5")
    with pytest.raises(UsageError, match="VISIONTOOL_EMBEDDING_CACHE_MB"):
        segment(str(images_dir / "dog.jpg"), checkpoint=str(tiny_ckpt), points=[(10, 10)],
                cache_dir=str(tmp_path), device="cpu")


def test_a_cache_hit_still_needs_no_torch(tiny_ckpt, images_dir, tmp_path):
    """The validation of cached files is torch-free: a second run on the same image (decoder
    arrays and embedding from the cache) imports neither torch nor segment_anything."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import visiontool

    cache = tmp_path / "emb"
    assert _seg(tiny_ckpt, images_dir, cache).exit_code == 0
    src = Path(visiontool.__file__).resolve().parents[1]
    code = ("import sys, runpy\n"
            "sys.argv = ['visiontool', 'segment', sys.argv[1], '--checkpoint', sys.argv[2], '--point', '20,30',\n"
            "            '--cache-dir', sys.argv[3], '--format', 'json', '-q']\n"
            "try:\n"
            "    runpy.run_module('visiontool', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "heavy = [m for m in ('torch', 'segment_anything') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", code, str(images_dir / "dog.jpg"), str(tiny_ckpt), str(cache)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout)[0]["masks"], proc.stdout
