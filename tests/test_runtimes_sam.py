"""``segment --runtime openvino|onnxruntime``: the official SAM image encoder exported (static
1024 px), embeddings within 1e-3 relative error of torch, the same masks; runtime embeddings
are cached apart from torch ones (transformers SAM models: test_runtimes_sam_family)."""
from __future__ import annotations

import numpy as np
import pytest

from cli_helpers import one_error_line
from segment_helpers import records, run_cli, sam_engine, tiny_ckpt  # noqa: F401


@pytest.fixture(scope="module")
def photo(images_dir, tmp_path_factory):
    from PIL import Image

    p = tmp_path_factory.mktemp("rtsam") / "dog.png"
    im = Image.open(images_dir / "dog.jpg").convert("RGB")
    im.thumbnail((240, 240))
    im.save(p)
    return p


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_embedding_and_masks_equal_torch(tiny_ckpt, photo, tmp_path, runtime):  # noqa: F811
    from PIL import Image

    from visiontool.models import loader

    rgb = np.asarray(Image.open(photo).convert("RGB"))
    ref = sam_engine(tiny_ckpt, use_cache=False).encode(rgb)
    eng = sam_engine(tiny_ckpt, use_cache=False, runtime=runtime)
    assert eng.info.runtime == runtime and eng.info.backend == f"segment-anything+{runtime}"
    got = eng.encode(rgb)
    assert got.shape == ref.shape
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    assert rel <= 1e-3, rel
    loader.release()
    args = ["segment", photo, "--checkpoint", tiny_ckpt, "--point", "100,80", "--box", "20,20,150,120",
            "--device", "cpu", "-f", "jsonl", "--cache-dir", tmp_path / "emb"]
    a = run_cli(args)
    assert a.exit_code == 0, a.stderr
    b = run_cli(args + ["--runtime", runtime])
    assert b.exit_code == 0, b.stderr
    assert "encoding" in b.stderr  # runtime embeddings are not torch's cache entries
    ra, rb = records(a.stdout), records(b.stdout)
    ma, mb = ra[0]["masks"], rb[0]["masks"]
    assert len(ma) == len(mb) >= 1
    for x, y in zip(ma, mb):
        assert abs(x["score"] - y["score"]) <= 1e-3, (x["score"], y["score"])
        assert abs(x["area"] - y["area"]) <= max(2, 0.01 * x["area"]), (x["area"], y["area"])
    loader.release()


def test_other_segmenters_refuse(tmp_path):
    r = run_cli(["segment", str(tmp_path / "x.png"), "--model", "facebook/sam-vit-base", "--point", "1,1",
                 "--device", "cpu", "--runtime", "tensorrt"])
    one_error_line(r)
    assert "--runtime 'tensorrt'" in r.stderr


def test_a_video_with_an_image_checkpoint_and_a_runtime(tiny_ckpt, tmp_path):  # noqa: F811
    """--runtime on a video is for video models (tests/test_sam_video_runtime.py); an official
    checkpoint segments images only, with or without it."""
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    r = run_cli(["segment", video, "--checkpoint", tiny_ckpt, "--point", "1,1", "--runtime", "onnxruntime"])
    line = one_error_line(r)
    assert "is a video: segment it with a video model" in line and "segments images only" in line
