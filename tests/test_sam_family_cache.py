"""The embedding cache for transformers SAM-family models: a new prompt on the same image is a
cache hit from a new process (no encoder, not even torch imported) for SAM 2 and SAM 3; the key
is the model's content, not its path."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from sam_family_helpers import engine, image, iou, model_dirs_fixture, rle_mask

from visiontool.types import Prompt

model_dirs = model_dirs_fixture()
SRC = Path(__file__).resolve().parents[1] / "src"
RUNNER = ("import sys, atexit\n"
          "atexit.register(lambda: sys.stderr.write('\\nTORCH_IMPORTED=%s\\n' % ('torch' in sys.modules)))\n"
          "from visiontool.cli.main import run\n"
          "sys.argv = ['visiontool'] + sys.argv[1:]\n"
          "run()\n")


def _segment(args: list, cache: Path) -> tuple[list[dict], str]:
    env = dict(os.environ, VISIONTOOL_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(SRC),
               PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-c", RUNNER, "segment", *map(str, args), "--format", "json",
                        "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), p.stderr


def _image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "shapes.png"
    Image.fromarray(image()).save(path)
    return path


def _cold(model, cache: Path, prompt: Prompt, monkeypatch) -> None:
    """A first call in this process fills the cache (the encoder runs)."""
    monkeypatch.setenv("VISIONTOOL_CACHE", str(cache))
    eng = engine(model, cache_dir=cache / "embeddings")
    eng.segment(image(), [prompt])
    assert eng.stats["encoder_runs"] == 1


def test_sam2_new_prompt_is_a_cache_hit_from_a_new_process(model_dirs, tmp_path, monkeypatch):
    model, img, cache = model_dirs("sam2"), _image(tmp_path), tmp_path / "cache"
    _cold(model, cache, Prompt(points=[[40, 30]], labels=[1]), monkeypatch)
    # the same model in another directory: the key is its content, not its path
    moved = tmp_path / "elsewhere"
    shutil.copytree(model, moved)
    [rec], err = _segment([img, "--model", moved, "--box", "15,5,75,55"], cache)
    assert "encoding" not in err and "TORCH_IMPORTED=False" in err, err
    direct = engine(model, use_cache=False).segment(image(), [Prompt(box=[15, 5, 75, 55])])
    assert iou(rle_mask(rec["masks"][0]["segmentation"]), rle_mask(direct.masks[0])) == 1.0
    assert abs(rec["masks"][0]["predicted_iou"] - direct.data["predicted_iou"][0]) < 1e-5


def test_sam3_point_then_text_then_point_from_a_new_process(model_dirs, tmp_path, monkeypatch):
    model, img, cache = model_dirs("sam3_video"), _image(tmp_path), tmp_path / "cache"
    _cold(model, cache, Prompt(points=[[40, 30]], labels=[1]), monkeypatch)
    eng = engine(model, cache_dir=cache / "embeddings")
    dets = eng.segment_text(image(), ["bus"], threshold=0.0)
    assert eng.stats == {"encoder_runs": 0, "cache_hits": 1}  # the ViT backbone output came from the cache
    assert len(dets) and set(dets.names) == {"bus"}
    [rec], err = _segment([img, "--model", model, "--point", "100,70", "--single-mask"], cache)
    assert "encoding" not in err and "TORCH_IMPORTED=False" in err, err
    direct = engine(model, use_cache=False).segment(image(), [Prompt(points=[[100, 70]], labels=[1])],
                                                   multimask=False)
    assert iou(rle_mask(rec["masks"][0]["segmentation"]), rle_mask(direct.masks[0])) == 1.0


def test_other_weights_are_a_miss(model_dirs, tmp_path):
    """Changing one weight changes the key (same path, same config, same image)."""
    from safetensors.numpy import load_file, save_file

    src = model_dirs("sam2")
    model = tmp_path / "m"
    shutil.copytree(src, model)
    img = image()
    eng = engine(model, cache_dir=tmp_path / "c")
    eng.segment(img, [Prompt(points=[[40, 30]], labels=[1])])
    assert eng.stats == {"encoder_runs": 1, "cache_hits": 0}
    assert engine(model, cache_dir=tmp_path / "c").segment(img, [Prompt(box=[1, 1, 9, 9])]) is not None
    f = model / "model.safetensors"
    w = load_file(str(f))
    k = next(k for k in w if k.startswith("vision_encoder") and w[k].ndim > 1)
    w[k] = (w[k] * np.float32(1.5)).astype(w[k].dtype)
    save_file(w, str(f), metadata={"format": "pt"})
    eng = engine(model, cache_dir=tmp_path / "c")
    eng.segment(img, [Prompt(points=[[40, 30]], labels=[1])])
    assert eng.stats == {"encoder_runs": 1, "cache_hits": 0}


def test_sam2_corrupt_entry_is_recomputed_and_an_unwritable_cache_warned(model_dirs, tmp_path, monkeypatch, capsys):
    """The transformers adapter's entries hold several arrays (SAM 2's three feature maps): a
    damaged one is discarded with one warning and recomputed; a cache that cannot be written is
    one warning, and the masks are the same."""
    model, prompt = model_dirs("sam2"), Prompt(box=[15, 5, 75, 55])
    cache = tmp_path / "cache"
    _cold(model, cache, Prompt(points=[[40, 30]], labels=[1]), monkeypatch)
    [entry] = list((cache / "embeddings").glob("??/*.emb"))
    entry.write_bytes(entry.read_bytes()[:-64])
    capsys.readouterr()
    eng = engine(model, cache_dir=cache / "embeddings")
    again = eng.segment(image(), [prompt])
    err = capsys.readouterr().err
    assert eng.stats["encoder_runs"] == 1 and err.count("discarded a corrupt cache entry") == 1, err
    assert len(list((cache / "embeddings").glob("??/*.emb"))) == 1  # rewritten
    (tmp_path / "blocker").write_text("not a directory")
    blocked = engine(model, cache_dir=tmp_path / "blocker" / "emb").segment(image(), [prompt])
    err = capsys.readouterr().err
    assert err.count("cannot write the embedding cache") == 1, err
    fresh = engine(model, use_cache=False).segment(image(), [prompt])
    for d in (again, blocked):
        assert iou(rle_mask(d.masks[0]), rle_mask(fresh.masks[0])) == 1.0
        np.testing.assert_allclose(d.scores, fresh.scores, rtol=1e-5)
