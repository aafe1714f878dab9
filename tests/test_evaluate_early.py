"""The checks of a large results file that overlap the engine's own reading: segm in a forked
child (visiontool.io.pred_early) -- the same numbers, the same error lines, no child left
behind -- and bbox on the rows the engine's reader parsed (the file is parsed once).

The fork is forced here (small files, and whatever threads earlier tests left running); each
test asserts that a child really answered, so none can pass on the in-process path alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from cli_helpers import entry_point, one_error_line
from evaluate_helpers import STAT_KEYS, adversarial_set, oracle
from visiontool.cli.main import app
from visiontool.io import pred_early
from visiontool.services.evaluate import evaluate

pytestmark = pytest.mark.skipif(sys.platform != "linux" or not hasattr(os, "fork"), reason="the child is forked")

runner = CliRunner()


@pytest.fixture
def children(monkeypatch):
    """Force the fork; record what each child answered ("facts" or None) and its pid."""
    seen: list = []
    monkeypatch.setattr(pred_early, "FORK_MIN_BYTES", 0)
    monkeypatch.setattr(pred_early, "can_fork", lambda: True)
    orig_facts, orig_start = pred_early.EarlyCheck.facts, pred_early.start

    def facts(self):
        out = orig_facts(self)
        seen.append("facts" if out is not None else None)
        return out

    def start(pred, iou_type):
        early = orig_start(pred, iou_type)
        if early is not None:
            seen.append(("pid", early.pid))
        return early

    monkeypatch.setattr(pred_early.EarlyCheck, "facts", facts)
    monkeypatch.setattr(pred_early, "start", start)
    return seen


def answers(seen):
    return [s for s in seen if not isinstance(s, tuple)]


def reaped(seen) -> bool:
    for s in seen:
        if isinstance(s, tuple):
            with pytest.raises(ChildProcessError):
                os.waitpid(s[1], os.WNOHANG)
    return True


def run(*args):
    return runner.invoke(app, ["evaluate", *map(str, args)])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("early")
    gt, res = adversarial_set(11, with_segm=False, first_id=1)
    (d / "gt.json").write_text(json.dumps(gt))
    (d / "dt.json").write_text(json.dumps(res))
    return d, gt, res


def test_same_numbers_as_the_check_in_process(coco_dir, children, monkeypatch):
    iou_type = "segm"  # bbox: the check runs on the rows the engine's reader parsed (no child)
    gt = coco_dir / "instances_val2014_100.json"
    pred = coco_dir / f"instances_val2014_fake{iou_type}100_results.json"
    forked = evaluate(str(gt), str(pred), iou_type, per_class=True, warn=False)
    assert answers(children) == ["facts"] and reaped(children)
    monkeypatch.setattr(pred_early, "can_fork", lambda: False)
    inline = evaluate(str(gt), str(pred), iou_type, per_class=True, warn=False)
    assert answers(children) == ["facts"]  # no second child
    assert forked.stats == inline.stats and forked.per_class == inline.per_class
    assert forked.diagnostics == inline.diagnostics
    assert forked.n_predictions == inline.n_predictions == len(json.loads(pred.read_text()))
    assert np.array_equal(forked.precision, inline.precision)


def test_bbox_file_is_parsed_once(synth, monkeypatch):
    """bbox: the check runs on the rows ultrafast-pycocotools' reader parsed for the engine."""
    from ultrafast_pycocotools import _ufcoco

    from visiontool.io import pred_fast

    d, gt, res = synth
    calls, given = [], []
    orig_load, orig_facts = _ufcoco.load_compact_bbox, pred_fast.bbox_facts
    monkeypatch.setattr(_ufcoco, "load_compact_bbox", lambda *a, **k: calls.append(a) or orig_load(*a, **k))
    monkeypatch.setattr(pred_fast, "bbox_facts",
                        lambda *a, **k: given.append(k.get("rows") is not None) or orig_facts(*a, **k))
    out = evaluate(str(d / "gt.json"), str(d / "dt.json"), "bbox", warn=False)
    assert out.stats == oracle(gt, res, "bbox")["stats"] and out.n_predictions == len(res)
    assert [c for c in calls if str(c[0]).endswith("dt.json")] == [(str(d / "dt.json"),)] and given == [True]


def test_bad_masks_are_named_as_before(coco_dir, tmp_path, children):
    res = json.loads((coco_dir / "instances_val2014_fakesegm100_results.json").read_text())
    gt = coco_dir / "instances_val2014_100.json"
    p = tmp_path / "bad.json"
    cases = [(lambda r: {k: v for k, v in r.items() if k != "segmentation"}, "has no 'segmentation'"),
             (lambda r: dict(r, score=None), "score is not a number"),
             (lambda r: dict(r, segmentation=dict(r["segmentation"], size=[3, 3])), "is not a COCO RLE of 3x3 pixels"),
             (lambda r: dict(r, image_id=987654), "image_id 987654 is not in the ground truth")]
    for mut, text in cases:
        bad = list(res)
        bad[3] = mut(bad[3])
        p.write_text(json.dumps(bad))
        line = one_error_line(run("--gt", gt, "--pred", p, "--iou-type", "segm"))
        assert "result 3:" in line and text in line, line
    assert len(answers(children)) == len(cases) and reaped(children)
    # a box on every result but one: pycocotools takes its format from the first result
    boxed = [dict(r, bbox=[1, 2, 30, 40]) for r in res]
    del boxed[3]["bbox"]
    p.write_text(json.dumps(boxed))
    line = one_error_line(run("--gt", gt, "--pred", p, "--iou-type", "segm"))
    assert "result 3: has no 'bbox' while the first result has one" in line, line
    assert answers(children)[-1] is None


def test_masks_of_another_size_warn_with_the_same_example(coco_dir, tmp_path, children, monkeypatch):
    res = json.loads((coco_dir / "instances_val2014_fakesegm100_results.json").read_text())
    from pycocotools import mask as mu

    small = mu.encode(np.asfortranarray(np.ones((4, 5), np.uint8)))
    for i in (7, 8, 40):
        res[i] = dict(res[i], segmentation={"size": [4, 5], "counts": small["counts"].decode()})
    p = tmp_path / "sizes.json"
    p.write_text(json.dumps(res))
    gt = coco_dir / "instances_val2014_100.json"
    forked = evaluate(str(gt), str(p), "segm", warn=False)
    assert answers(children) == ["facts"]
    monkeypatch.setattr(pred_early, "can_fork", lambda: False)
    inline = evaluate(str(gt), str(p), "segm", warn=False)
    assert forked.stats == inline.stats and forked.diagnostics == inline.diagnostics
    assert any("3 prediction mask(s)" in d and "result 7: 4x5" in d for d in forked.diagnostics), forked.diagnostics


def test_a_child_that_dies_reads_as_not_plain(coco_dir, children, monkeypatch):
    """A child killed (out of memory, a signal) gives no facts: the file takes the precise path."""
    gt = coco_dir / "instances_val2014_100.json"
    pred = coco_dir / "instances_val2014_fakesegm100_results.json"
    expected = evaluate(str(gt), str(pred), "segm", warn=False).stats
    del children[:]
    monkeypatch.setattr(pred_early, "facts_function", lambda iou_type: lambda path: os._exit(9))
    out = evaluate(str(gt), str(pred), "segm", warn=False)
    assert answers(children) == [None] and reaped(children)
    assert out.stats == expected


def test_an_error_first_leaves_no_child(coco_dir, tmp_path, children):
    pred = coco_dir / "instances_val2014_fakesegm100_results.json"
    line = one_error_line(run("--gt", tmp_path / "missing.json", "--pred", pred, "--iou-type", "segm"))
    assert "missing.json" in line
    assert [s for s in children if isinstance(s, tuple)] and reaped(children)


def test_through_the_installed_command(coco_dir, tmp_path):
    """The real entry point on a masks file above the fork threshold: pycocotools' numbers."""
    gt = json.loads((coco_dir / "instances_val2014_100.json").read_text())
    res = json.loads((coco_dir / "instances_val2014_fakesegm100_results.json").read_text())
    big = []
    while len(json.dumps(big)) < pred_early.FORK_MIN_BYTES + 4096:
        big += res
    (tmp_path / "dt.json").write_text(json.dumps(big))
    out = subprocess.run([entry_point(), "evaluate", "--gt", str(coco_dir / "instances_val2014_100.json"), "--pred",
                          str(tmp_path / "dt.json"), "--iou-type", "segm", "-f", "json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert {k: json.loads(out.stdout)[k] for k in STAT_KEYS} == oracle(gt, big, "segm")["stats"]


def test_bbox_ground_truth_scans_in_a_child(coco_dir, tmp_path, monkeypatch):
    """The bbox ground truth's byte scans run in a forked child while ultrafast's reader parses
    the file: the child answers what the process computes itself, the GroundTruth is the same,
    and a null "area" still sends the file to the precise readers."""
    from visiontool.services import ground_truth as G

    answered: list = []
    monkeypatch.setattr(pred_early, "FORK_MIN_BYTES", 0)
    monkeypatch.setattr(pred_early, "can_fork", lambda: True)
    orig = pred_early.EarlyCheck.facts

    def facts(self):
        out = orig(self)
        answered.append(out)
        return out

    monkeypatch.setattr(pred_early.EarlyCheck, "facts", facts)
    path = str(coco_dir / "instances_val2014_100.json")
    forked = G._native_gt(path)
    assert answered == [G._bbox_gt_scan(path)] and answered[0][0] > 0
    monkeypatch.setattr(pred_early, "can_fork", lambda: False)
    inline = G._native_gt(path)
    assert len(answered) == 1  # no second child
    for g in (forked, inline):
        assert g is not None
    assert (forked._zero_id_possible, forked.has_annotations, forked._n_anns) == \
        (inline._zero_id_possible, inline.has_annotations, inline._n_anns)
    d = json.loads((coco_dir / "instances_val2014_100.json").read_text())
    d["annotations"][3]["area"] = None
    (tmp_path / "gt.json").write_text(json.dumps(d))
    monkeypatch.setattr(pred_early, "can_fork", lambda: True)
    assert G._native_gt(str(tmp_path / "gt.json")) is None and answered[-1][1] is True


@pytest.mark.parametrize("indent", [None, 2])
def test_segm_facts_do_not_depend_on_where_the_file_is_cut(coco_dir, tmp_path, monkeypatch, indent):
    """The check decodes a segm file a slice at a time, cut at a seam between two records:
    slices of a few records (every seam used, compact or indented) give the facts of one slice."""
    from visiontool.io import pred_fast

    res = json.loads((coco_dir / "instances_val2014_fakesegm100_results.json").read_text())
    path = tmp_path / "dt.json"
    path.write_text(json.dumps(res, indent=indent))
    whole = pred_fast.segm_facts(str(path))
    assert whole is not None and whole["n"] == len(res)
    for step in (1, 700, 5000):
        monkeypatch.setattr(pred_fast, "SEGM_SLICE", step)
        cut = pred_fast.segm_facts(str(path))
        assert cut is not None and cut.keys() == whole.keys() and cut["n"] == whole["n"]
        assert cut["min_score"] == whole["min_score"]
        for key in ("image_ids", "category_ids"):
            assert np.array_equal(cut[key], whole[key])
        assert all(np.array_equal(a, b) for a, b in zip(cut["mask_sizes"], whole["mask_sizes"]))
    # a record that breaks the schema in a later slice still makes the file not plain valid
    res[-1]["score"] = "high"
    path.write_text(json.dumps(res, indent=indent))
    assert pred_fast.segm_facts(str(path)) is None


def _facts_equal(a, b) -> bool:
    return (a.keys() == b.keys() and a["n"] == b["n"] and a["min_score"] == b["min_score"]
            and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in ("image_ids", "category_ids"))
            and all(np.array_equal(x, y) for x, y in zip(a["mask_sizes"], b["mask_sizes"])))


@pytest.mark.parametrize("shape", ["plain", "boxed", "some boxed", "ids spelled as floats"])
def test_segm_columns_through_msgpack_equal_one_record_at_a_time(coco_dir, tmp_path, monkeypatch, shape):
    """The check reads the decoded records' numbers as columns of their msgpack bytes; the same
    facts as taking them out one record at a time, with a box on every record, on some (the
    fixed layout breaks: those slices go one by one) and with ids written 3.0 or 3e0."""
    import re

    from visiontool.io import pred_fast

    res = json.loads((coco_dir / "instances_val2014_fakesegm100_results.json").read_text())
    if shape == "boxed":
        for i, r in enumerate(res):
            r["bbox"] = [i % 7, 1.5, 20, 30.25]
    if shape == "some boxed":
        res[40]["bbox"] = [1, 2, 3, 4]
    text = json.dumps(res)
    if shape == "ids spelled as floats":
        text = re.sub(r'"image_id": (\d+)', r'"image_id": \1.0', text)
        text = re.sub(r'"category_id": (\d+)', r'"category_id": \1e0', text)
    path = tmp_path / "dt.json"
    path.write_text(text)
    monkeypatch.setattr(pred_fast, "SEGM_SLICE", 5000)  # several slices
    assert pred_fast._segm_schema().layouts  # msgspec writes every float in 9 bytes: the columns path exists
    fast = pred_fast.segm_facts(str(path))
    monkeypatch.setattr(pred_fast._segm_schema(), "layouts", {})
    slow = pred_fast.segm_facts(str(path))
    assert fast is not None and slow is not None and _facts_equal(fast, slow)
    assert fast["n"] == len(res) and fast["min_score"] == min(r["score"] for r in res)
    assert set(fast["image_ids"].tolist()) == {r["image_id"] for r in res}
    assert set(fast["category_ids"].tolist()) == {r["category_id"] for r in res}


@pytest.mark.parametrize("value, plain", [("41.5", False), ("1e300", False), ("9007199254740993", False),
                                          ("-7", True)])
def test_segm_ids_that_are_not_exact_integers_leave_the_fast_path(coco_dir, tmp_path, value, plain):
    """An id of 41.5, or one a float64 cannot hold exactly (2**53 + 1), is not plain valid (the
    precise path names it); a negative id decodes (and then is not the ground truth's)."""
    from visiontool.io import pred_fast

    res = json.loads((coco_dir / "instances_val2014_fakesegm100_results.json").read_text())
    res[7]["image_id"] = "ID"
    path = tmp_path / "dt.json"
    path.write_text(json.dumps(res).replace('"image_id": "ID"', f'"image_id": {value}'))
    facts = pred_fast.segm_facts(str(path))
    assert (facts is not None) == plain
    if plain:
        assert -7 in facts["image_ids"].tolist()


def test_ids_and_sizes_written_as_floats_through_the_child(coco_dir, tmp_path, children):
    """Through the forked check (whose columns take 3.0 as an integer): ids written 3.0 / 3e0
    get the numbers of the same file with 3 (pycocotools and hotcoco read them alike); a mask
    size written 427.0, which hotcoco's reader refuses, is named by the precise path."""
    import re

    gt = coco_dir / "instances_val2014_100.json"
    res = json.loads((coco_dir / "instances_val2014_fakesegm100_results.json").read_text())
    plain = json.loads(run("--gt", gt, "--pred", coco_dir / "instances_val2014_fakesegm100_results.json",
                           "--iou-type", "segm", "-f", "json").stdout)
    text = re.sub(r'"image_id": (\d+)', r'"image_id": \1.0', json.dumps(res))
    (tmp_path / "ids.json").write_text(re.sub(r'"category_id": (\d+)', r'"category_id": \1e0', text))
    r = run("--gt", gt, "--pred", tmp_path / "ids.json", "--iou-type", "segm", "-f", "json")
    assert r.exit_code == 0 and json.loads(r.stdout) == plain
    h, w = res[5]["segmentation"]["size"]
    first = next(i for i, x in enumerate(res) if x["segmentation"]["size"] == [h, w])
    (tmp_path / "size.json").write_text(json.dumps(res).replace(f'"size": [{h}, {w}]', f'"size": [{h}.0, {w}]', 1))
    r = run("--gt", gt, "--pred", tmp_path / "size.json", "--iou-type", "segm")
    assert r.exit_code == 2
    assert f"result {first}: segmentation.size must be [height, width]" in one_error_line(r)
    assert answers(children) == ["facts"] * 3 and reaped(children)
