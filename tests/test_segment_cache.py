# ruff: noqa: F811  (pytest fixtures imported from segment_helpers are re-bound as test arguments)
"""The embedding cache: hits skip the encoder, keys follow content, corrupt entries are
recomputed, LRU eviction, and concurrent writers."""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil

import numpy as np
import pytest
from segment_helpers import count_encodes, records, run_cli, tiny_ckpt, tiny_ckpt_b  # noqa: F401

from visiontool.services.embedding_cache import EmbeddingCache, embedding_key


def _seg(tiny_ckpt, image, cache_dir, *extra):
    res = run_cli(["segment", image, "--checkpoint", tiny_ckpt, "--format", "json", "--cache-dir", cache_dir,
                   *extra])
    assert res.exit_code == 0, res.stderr
    return records(res.stdout), res


def test_second_call_with_new_prompt_skips_encoder(tiny_ckpt, images_dir, tmp_path, count_encodes):
    cache = tmp_path / "emb"
    first, r1 = _seg(tiny_ckpt, images_dir / "truck.jpg", cache, "--point", "600,400")
    assert len(count_encodes) == 1 and "encoding" in r1.stderr
    second, r2 = _seg(tiny_ckpt, images_dir / "truck.jpg", cache, "--point", "900,700", "--box", "1,2,1700,1100")
    assert len(count_encodes) == 1, "the encoder ran on a cache hit"
    assert "encoding" not in r2.stderr
    # a hit gives the same masks as a fresh computation
    fresh, _ = _seg(tiny_ckpt, images_dir / "truck.jpg", tmp_path / "other", "--point", "900,700", "--box",
                    "1,2,1700,1100")
    assert second == fresh
    assert len(list(cache.glob("??/*.emb"))) == 1


def test_key_is_image_content_and_checkpoint_content(tiny_ckpt, tiny_ckpt_b, images_dir, tmp_path, count_encodes):
    cache = tmp_path / "emb"
    _seg(tiny_ckpt, images_dir / "dog.jpg", cache, "--point", "10,10", "-q")
    # same pixels under another name and format: a hit
    from PIL import Image

    from visiontool.io.images import load_image

    load_image(str(images_dir / "dog.jpg")).save(tmp_path / "renamed.png")
    _seg(tiny_ckpt, tmp_path / "renamed.png", cache, "--point", "10,10", "-q")
    assert len(count_encodes) == 1
    # the same checkpoint copied elsewhere: a hit (identity is content, not path)
    shutil.copy(tiny_ckpt, tmp_path / "copy.pth")
    _seg(tmp_path / "copy.pth", images_dir / "dog.jpg", cache, "--point", "10,10", "-q")
    assert len(count_encodes) == 1
    # other weights: a miss; other pixels: a miss
    _seg(tiny_ckpt_b, images_dir / "dog.jpg", cache, "--point", "10,10", "-q")
    assert len(count_encodes) == 2
    img = np.asarray(Image.open(tmp_path / "renamed.png")).copy()
    img[0, 0] ^= 1
    Image.fromarray(img).save(tmp_path / "changed.png")
    _seg(tiny_ckpt, tmp_path / "changed.png", cache, "--point", "10,10", "-q")
    assert len(count_encodes) == 3
    # another precision: a miss
    _seg(tiny_ckpt, images_dir / "dog.jpg", cache, "--point", "10,10", "-q", "--dtype", "bfloat16")
    assert len(count_encodes) == 4


def test_no_cache_writes_nothing(tiny_ckpt, images_dir, tmp_path, count_encodes, monkeypatch):
    monkeypatch.setenv("VISIONTOOL_CACHE", str(tmp_path / "vt"))
    for _ in range(2):
        res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", tiny_ckpt, "--point", "5,5", "--no-cache",
                       "-q", "--format", "json"])
        assert res.exit_code == 0, res.stderr
    assert len(count_encodes) == 2
    assert not (tmp_path / "vt" / "embeddings").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_entry_is_discarded_and_recomputed(tiny_ckpt, images_dir, tmp_path, count_encodes, damage):
    cache = tmp_path / "emb"
    good, _ = _seg(tiny_ckpt, images_dir / "dog.jpg", cache, "--point", "50,60", "-q")
    [entry] = list(cache.glob("??/*.emb"))
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "flip":
        data[-100] ^= 0x55
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    else:
        data = bytearray()
    entry.write_bytes(bytes(data))
    again, res = _seg(tiny_ckpt, images_dir / "dog.jpg", cache, "--point", "50,60", "-q")
    assert len(count_encodes) == 2, "a corrupt entry was used"
    assert "corrupt" in res.stderr and "Traceback" not in res.stderr
    assert again == good
    assert EmbeddingCache(cache).get(entry.stem) is not None  # rewritten, valid


def test_lru_eviction_keeps_recent_entries(tmp_path):
    import time

    one = np.ones((4, 8, 8), np.float32)
    cache = EmbeddingCache(tmp_path, max_bytes=10 ** 9)
    a, b, c, d = (ch * 64 for ch in "abcd")
    past = time.time_ns() - 3600 * 10 ** 9
    for i, k in enumerate((a, b, c)):
        cache.put(k, one * i)
        os.utime(cache.path_for(k), ns=(past + i * 10 ** 9,) * 2)  # a oldest, then b, then c
    entry = cache.path_for(a).stat().st_size
    assert cache.get(a) is not None  # a hit makes a the most recently used
    cache.max_bytes = int(entry * 2.5)
    cache.put(d, one * 3)
    assert {k for k in (a, b, c, d) if cache.path_for(k).exists()} == {a, d}
    assert sum(p.stat().st_size for p in cache.entries()) <= cache.max_bytes


def _writer(args):
    root, key, seed = args
    arr = np.random.default_rng(seed % 2).normal(size=(64, 64, 64)).astype(np.float32)
    c = EmbeddingCache(root)
    for _ in range(15):
        c.put(key, arr, {"writer": seed})
        got = c.get(key)
        assert got is not None, "a reader saw a half-written entry"
    return True


def test_concurrent_writers_never_corrupt(tmp_path):
    key = embedding_key("img", "ckpt", "cpu-float32", 1024)
    ctx = mp.get_context("fork")
    with ctx.Pool(4) as pool:
        assert all(pool.map(_writer, [(str(tmp_path), key, s) for s in range(8)]))
    arr, header = EmbeddingCache(tmp_path).get(key)
    assert arr.shape == (64, 64, 64)
    expect = np.random.default_rng(header["writer"] % 2).normal(size=(64, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(arr, expect)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_decoder_weights_cache_is_verified(tiny_ckpt, images_dir, tmp_path):
    cache = tmp_path / "emb"
    first, _ = _seg(tiny_ckpt, images_dir / "dog.jpg", cache, "--point", "50,60", "-q")
    [npz] = list((cache / "decoders").glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:1000])
    from visiontool.models.loader import release

    release()  # a new process would not have the decoder in memory
    again, res = _seg(tiny_ckpt, images_dir / "dog.jpg", cache, "--point", "50,60", "-q")
    assert again == first
    assert "corrupt" in res.stderr and "Traceback" not in res.stderr
    import zipfile

    assert zipfile.is_zipfile(npz), "the decoder weights were not rewritten"


def test_an_unwritable_cache_is_one_warning_and_the_same_masks(tiny_ckpt, images_dir, tmp_path, count_encodes):
    """A cache directory that cannot be created (a file where a directory should be: root can
    write anywhere, so a mode bit would not do) costs the cache, not the run."""
    (tmp_path / "blocker").write_text("not a directory")
    blocked, res = _seg(tiny_ckpt, images_dir / "dog.jpg", tmp_path / "blocker" / "emb", "--point", "50,60")
    assert res.stderr.count("cannot write the embedding cache") == 1 and "Traceback" not in res.stderr
    fresh, _ = _seg(tiny_ckpt, images_dir / "dog.jpg", tmp_path / "emb", "--point", "50,60", "-q")
    assert blocked == fresh
