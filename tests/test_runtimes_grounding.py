"""Grounding DINO, MM-Grounding-DINO and OmDet-Turbo through ``--runtime openvino|onnxruntime``
(:mod:`visiontool.models.runtimes.gd_export`): the records equal the torch path's for the same
``--text`` (boxes within 0.05 px, scores within 1e-4; a batch of 2 images of one size); the
phrases are an input of the export, so a second command with other phrases (and another number
of them) finds the one cached export and still gives the torch path's records; an export that
does not reproduce torch is one line, exit 2, and is not cached; ``visiontool export`` (Grounding
DINO with ``--image-size``, OmDet-Turbo at its processor's one size) and ``--model DIR --text``
give the same records without the source model."""
from __future__ import annotations

from pathlib import Path

import json

import pytest
from typer.testing import CliRunner

from cli_helpers import one_error_line
from detector_helpers import small_photos
from hf_tiny_text import build_zero_shot
from runtimes_helpers import assert_same_unordered, records
from visiontool.cli.main import app

runner = CliRunner()
FAMILIES = ("grounding-dino", "mm-grounding-dino", "omdet-turbo")
RUNTIMES = ("openvino", "onnxruntime")
TEXTS = ("cat, dog, a person", "truck, forklift")  # the second: other phrases, another count
PHOTOS = ("dog.png", "groceries.png")  # one size: Grounding DINO's one processed size, one batch of 2


def build_grounding(family: str, path: Path, seed: int = 0) -> Path:
    """hf_tiny_text's tiny Grounding DINO / MM-Grounding-DINO (same config) with a word-piece
    vocabulary that puts [CLS], [SEP], "." and "?" at BERT's ids (101, 102, 1012, 1029): the ids
    the model holds as its phrase delimiters, so its text self-attention masks and position ids
    are per phrase as with the real tokenizer (with hf_tiny_text's short vocabulary no token is
    a delimiter and that part of the graph is never exercised)."""
    import transformers as T

    from hf_tiny_text import WORDS

    vocab = [f"[unused{i}]" for i in range(1030)]
    for i, token in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".",
                     1029: "?"}.items():
        vocab[i] = token
    for i, word in enumerate(w for w in WORDS if w != "."):
        vocab[200 + i] = word
    (path / "tok").mkdir(parents=True, exist_ok=True)
    (path / "tok" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return build_zero_shot(family, path, seed, tokenizer=T.BertTokenizer(str(path / "tok" / "vocab.txt")))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("grounding")
    return {f: (build_zero_shot if f == "omdet-turbo" else build_grounding)(f, d / f) for f in FAMILIES}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> list[str]:
    d = small_photos(tmp_path_factory.mktemp("gdphotos"), images_dir)
    return [str(d / name) for name in PHOTOS]


def detect(photos, model, text, *extra, cache: Path):
    from visiontool.models import loader

    loader.release()  # each run loads (and finds its export) as a new command would
    return runner.invoke(app, ["detect", *photos, "--model", str(model), "--text", text, "--device", "cpu",
                               "-f", "jsonl", "--threshold", "0.0", "--batch-size", "2",
                               *([] if "omdet" in Path(model).name else ["--text-threshold", "0.0"]),  # OmDet has none
                               *extra], env={"VISIONTOOL_CACHE": str(cache)})


@pytest.fixture(scope="module")
def torch_records(models, photos, tmp_path_factory):
    cache = tmp_path_factory.mktemp("gdcache-torch")
    out = {}
    for family, model in models.items():
        for text in TEXTS:
            r = detect(photos, model, text, cache=cache)
            assert r.exit_code == 0, (family, r.stderr)
            out[family, text] = records(r.stdout)
    return out


def entries(cache: Path) -> list[Path]:
    root = cache / "exports"
    return [p for p in root.iterdir() if not p.name.startswith((".", "locks"))] if root.exists() else []


def assert_same(want: list[dict], got: list[dict]) -> None:
    assert_same_unordered(want, got, least=20)  # threshold 0: every query's box of both photos compared


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("family", FAMILIES)
def test_records_equal_torch_path_for_any_text(models, photos, torch_records, tmp_path, family, runtime):
    cache = tmp_path / "cache"
    r = detect(photos, models[family], TEXTS[0], "--runtime", runtime, cache=cache)
    assert r.exit_code == 0, r.stderr
    assert "exported" in r.stderr
    got = records(r.stdout)
    assert {d["label"] for rec in got for d in rec["detections"]} <= {"cat", "dog", "a person"}
    assert_same(torch_records[family, TEXTS[0]], got)
    assert len(entries(cache)) == 1, entries(cache)
    # other phrases, another count of them: the same export (no second one), the torch path's records
    r2 = detect(photos, models[family], TEXTS[1], "--runtime", runtime, cache=cache)
    assert r2.exit_code == 0 and "export" not in r2.stderr, r2.stderr
    assert_same(torch_records[family, TEXTS[1]], records(r2.stdout))
    assert len(entries(cache)) == 1, entries(cache)


def test_export_that_does_not_reproduce_torch_is_one_line_and_not_cached(models, photos, tmp_path, monkeypatch):
    """The export check catches a graph that differs from torch: here the traced text masks give
    every token position id 0 (torch's restart after each phrase's delimiter)."""
    from visiontool.models.runtimes import gd_export

    right = gd_export.text_masks

    def wrong(input_ids, special_tokens):
        mask, position_ids = right(input_ids, special_tokens)
        return mask, position_ids * 0

    monkeypatch.setattr(gd_export, "text_masks", wrong)
    cache = tmp_path / "cache"
    r = detect(photos[:1], models["grounding-dino"], TEXTS[0], "--runtime", "onnxruntime", "-q", cache=cache)
    line = one_error_line(r, 2)
    assert "does not reproduce torch" in line and "--runtime torch" in line, line
    assert entries(cache) == []


def test_omdet_network_that_differs_from_transformers_is_refused(models, photos, tmp_path, monkeypatch):
    """OmDet-Turbo's exported forward is visiontool's rewrite of transformers' (without its phrase
    embedding caches): it is compared with the model's own forward before exporting."""
    from visiontool.models.runtimes import gd_export

    right = gd_export._omdet_net

    def wrong(model):
        net = right(model)
        forward = net.forward
        net.forward = lambda *args: (forward(*args)[0] * 1.01, forward(*args)[1])
        return net

    monkeypatch.setattr(gd_export, "_omdet_net", wrong)
    cache = tmp_path / "cache"
    r = detect(photos[:1], models["omdet-turbo"], TEXTS[0], "--runtime", "onnxruntime", "-q", cache=cache)
    line = one_error_line(r, 2)
    assert "differs from transformers" in line and "--runtime torch" in line, line
    assert entries(cache) == []


def test_traced_text_masks_equal_transformers():
    """:func:`gd_export.text_masks` (what the export traces) gives transformers' masks and
    position ids for any arrangement of delimiters, at any token count."""
    import torch
    from transformers.models.grounding_dino import modeling_grounding_dino as gd

    from visiontool.models.runtimes.gd_export import text_masks

    special = torch.tensor([101, 102, 1012, 1029])
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        n = int(torch.randint(1, 14, (1,), generator=gen))
        pick = torch.randint(0, 7, (3, n), generator=gen)
        ids = torch.where(pick < 4, special[pick.clamp(max=3)], 2000 + pick)
        want = gd.generate_masks_with_special_tokens_and_transfer_map(ids, special)
        got = text_masks(ids, special)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), ids


def test_a_deformable_level_one_feature_high_exports_exactly(photos, tmp_path):
    """A small processed size (64x95 here) gives Grounding DINO a feature level one row high,
    whose reference points are ``linspace(0.5, 0.5, 1)``: torch's ONNX symbolic divided by
    ``steps - 1`` and made them NaN, so the export was refused by its check. Now exact."""
    from sam_family_helpers import build_grounding_dino

    model = build_grounding_dino(tmp_path / "gdino")
    want = detect(photos[:1], model, "bus", cache=tmp_path / "torch")
    assert want.exit_code == 0, want.stderr
    got = detect(photos[:1], model, "bus", "--runtime", "onnxruntime", cache=tmp_path / "ort")
    assert got.exit_code == 0, got.stderr
    assert_same_unordered(records(want.stdout), records(got.stdout), least=10)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_onnx_linspace_of_one_step_is_its_start(tmp_path, steps):
    import numpy as np
    import torch

    from visiontool.models.runtimes.engines import export_network, onnx_linspace_keeps_dtype, open_engine

    class Grid(torch.nn.Module):
        def forward(self, x):
            h = x.shape[-1]
            return x + torch.linspace(0.5, h - 0.5, h, dtype=torch.float32)

    x = torch.zeros(1, steps)
    with onnx_linspace_keeps_dtype():
        export_network(Grid().eval(), (x,), "onnxruntime", tmp_path, ["x"], ["y"], {})
    (got,) = open_engine("onnxruntime", tmp_path)([x.numpy()])
    np.testing.assert_array_equal(got, Grid()(x).numpy())


@pytest.mark.parametrize("family", ["grounding-dino", "omdet-turbo"])
def test_export_directory_round_trip(models, photos, torch_records, tmp_path, family):
    """``visiontool export`` then ``--model DIR --text``: the torch path's records for two texts
    (one directory serves any phrases), nothing exported into the cache; no --text is one line.
    Grounding DINO keeps the aspect ratio: without --image-size the export is one line, exit 2;
    OmDet-Turbo resizes every image to one size: --image-size is a warning."""
    from PIL import Image

    cache = tmp_path / "cache"
    env = {"VISIONTOOL_CACHE": str(cache)}
    out = tmp_path / f"{family}-onnx"
    sized = []
    if family == "grounding-dino":
        r = runner.invoke(app, ["export", str(models[family]), "--runtime", "onnx", "-o", str(out)], env=env)
        assert "--image-size" in one_error_line(r, 2) and not out.exists()
        w, h = Image.open(photos[0]).size
        sized = ["--image-size", f"{h}x{w}"]
    else:  # a fixed-size processor: --image-size is accepted with a warning and changes nothing
        sized = ["--image-size", "1080x1920"]
    r = runner.invoke(app, ["export", str(models[family]), "--runtime", "onnx", "-o", str(out), *sized], env=env)
    assert r.exit_code == 0, r.stderr
    assert ("the option changes nothing" in r.stderr) == (family == "omdet-turbo")
    manifest = json.loads((out / "visiontool-export.json").read_text())
    assert (manifest["kind"], manifest["model_type"]) == ("transformers-grounding", family)
    assert len(manifest["sizes"]) == 1 and (out / manifest["sizes"][0]).is_dir()
    for text in TEXTS:
        r = detect(photos, out, text, cache=cache)
        assert r.exit_code == 0, r.stderr
        assert_same(torch_records[family, text], records(r.stdout))
    assert entries(cache) == []
    from visiontool.models import loader

    loader.release()
    r = runner.invoke(app, ["detect", *photos, "--model", str(out), "--device", "cpu"], env=env)
    assert "--text" in one_error_line(r, 2)
