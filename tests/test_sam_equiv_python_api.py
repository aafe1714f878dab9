# ruff: noqa: F811  (pytest fixtures imported from segment_helpers are re-bound as test arguments)
"""``visiontool.segment()`` returns the records ``visiontool segment`` prints: the same
records, masks included, for points, negative points, boxes and their mixes, on one image
and on several, with and without the embedding cache (issue 8 §4)."""
from __future__ import annotations

import json

import pytest
from segment_helpers import decode, records, run_cli, tiny_ckpt  # noqa: F401

CASES = {  # name: (API keyword arguments, CLI flags)
    "point": (dict(points=[(600, 400)]), ["--point", "600,400"]),
    "point-single-mask": (dict(points=[(600, 400)], multimask=False), ["--point", "600,400", "--single-mask"]),
    "points+neg": (dict(points=[(600, 400), (1500, 300)], neg_points=[(100, 900)]),
                   ["--point", "600,400", "--point", "1500,300", "--neg-point", "100,900"]),
    # run on truck.jpg and dog.jpg (800 x 534): every box lies inside both
    "boxes": (dict(boxes=[(100, 150, 700, 500), (20, 30, 400, 500), (700, 100, 790, 530)]),
              ["--box", "100,150,700,500", "--box", "20,30,400,500", "--box", "700,100,790,530"]),
    "box+point": (dict(points=[(600, 400)], boxes=[(100, 150, 1300, 1000)]),
                  ["--point", "600,400", "--box", "100,150,1300,1000"]),
    "box-multimask": (dict(boxes=[(100, 150, 700, 500)], multimask=True),
                      ["--box", "100,150,700,500", "--multimask"]),
}


def _api(images, tiny_ckpt, **kw):
    from visiontool import segment

    results = segment(images, checkpoint=str(tiny_ckpt), device="cpu", **kw)
    # what the CLI's json writer does with each result
    return [json.loads(json.dumps(r.to_dict())) for r in results]


def _cli(images, tiny_ckpt, flags, *extra):
    res = run_cli(["segment", *images, "--checkpoint", tiny_ckpt, "--device", "cpu", "--format", "json", "-q",
                   *flags, *extra])
    assert res.exit_code == 0, (res.stdout, res.stderr)
    return records(res.stdout)


@pytest.mark.parametrize("case", list(CASES))
def test_api_returns_the_cli_records(tiny_ckpt, images_dir, case):
    kw, flags = CASES[case]
    images = [str(images_dir / "truck.jpg"), str(images_dir / "dog.jpg")] if case == "boxes" else \
        [str(images_dir / "truck.jpg")]
    ours = _api(images if len(images) > 1 else images[0], tiny_ckpt, use_cache=False, **kw)
    cli = _cli(images, tiny_ckpt, flags, "--no-cache")
    assert [r["image"] for r in ours] == [r["image"] for r in cli] == images
    assert sum(len(r["masks"]) for r in cli) >= 1
    for a, b in zip(ours, cli):
        assert [decode(m["segmentation"]).sum() for m in a["masks"]] == [m["area"] for m in b["masks"]]
        assert a == b


def test_api_and_cli_agree_through_the_cache(tiny_ckpt, images_dir, tmp_path):
    """The API reading an embedding the CLI cached (and the other way round) changes nothing."""
    cache = tmp_path / "emb"
    image = str(images_dir / "truck.jpg")
    kw, flags = CASES["box+point"]
    cli_first = _cli([image], tiny_ckpt, flags, "--cache-dir", cache)
    api_hit = _api(image, tiny_ckpt, cache_dir=str(cache), **kw)
    assert len(list(cache.glob("??/*.emb"))) == 1
    kw2, flags2 = CASES["points+neg"]
    api_first = _api(image, tiny_ckpt, cache_dir=str(cache), **kw2)
    cli_hit = _cli([image], tiny_ckpt, flags2, "--cache-dir", cache)
    assert api_hit == cli_first
    assert cli_hit == api_first
    assert len(list(cache.glob("??/*.emb"))) == 1
