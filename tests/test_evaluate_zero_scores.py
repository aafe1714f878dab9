"""A 0.0 score in a bbox results file: ultrafast-pycocotools' reader also reads a null or
missing score as 0.0, so those records are checked in the text (score_scan.scores_present).
A real zero is scored as pycocotools scores it; a null or missing one is an error naming
the record, whichever way the check finds the records."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli_helpers import one_error_line

from evaluate_helpers import STAT_KEYS, adversarial_set, oracle
from visiontool.cli.main import app
from visiontool.io import score_scan
from visiontool.io.score_scan import scores_present

runner = CliRunner()
ZEROS = (0, 17, 41)  # positions of the 0.0 scores; the last record gets one too


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("zeros")
    gt, res = adversarial_set(3, with_segm=False, first_id=1)
    (d / "gt.json").write_text(json.dumps(gt))
    res = [dict(r, score=0) if i in ZEROS or i == len(res) - 1 else r for i, r in enumerate(res)]
    return d, gt, res


def zero_rows(res):
    return np.array([i for i, r in enumerate(res) if r.get("score", 0) in (0, None)], dtype=np.int64)


def spellings(res):
    """The same results as JSON texts a user's tools write: compact, indented, and with the
    zeros spelled -0.0, 0e5 and 0.000 (each read as 0.0 by pycocotools)."""
    compact = json.dumps(res, separators=(",", ":"))
    spelled = json.dumps(res).replace('"score": 0,', '"score" :\n -0.0,', 1)
    spelled = spelled.replace('"score": 0,', '"score":0e5,', 1).replace('"score": 0,', '"score": 0.000 ,', 1)
    assert all(z in spelled for z in ("-0.0,", "0e5,", "0.000 ,"))
    return {"plain": json.dumps(res), "compact": compact, "indented": json.dumps(res, indent=2), "spelled": spelled}


@pytest.mark.parametrize("spelling", ["plain", "compact", "indented", "spelled"])
def test_real_zero_scores_are_found_record_by_record(synth, tmp_path, spelling):
    d, gt, res = synth
    p = tmp_path / "dt.json"
    p.write_text(spellings(res)[spelling])
    assert score_scan.record_starts(str(p), zero_rows(res), len(res)) is not None  # the lookup, not the fallback
    assert scores_present(str(p), zero_rows(res), len(res))
    r = runner.invoke(app, ["evaluate", "--gt", str(d / "gt.json"), "--pred", str(p), "--format", "json"])
    assert r.exit_code == 0, r.stderr
    assert {k: json.loads(r.stdout)[k] for k in STAT_KEYS} == oracle(gt, res, "bbox")["stats"]


@pytest.mark.parametrize("fault,text", [("missing", "has no 'score'"), ("null", "score is not a number")])
@pytest.mark.parametrize("layout", ["one brace per record", "nested objects", "many zeros"])
def test_a_null_or_missing_score_among_real_zeros_is_named(synth, tmp_path, monkeypatch, fault, text, layout):
    d, _, res = synth
    bad = [dict(r) for r in res]
    if fault == "missing":
        del bad[23]["score"]
    else:
        bad[23]["score"] = None
    if layout == "nested objects":  # the braces no longer line up with the records: every key is counted
        bad = [dict(r, extra={"source": "x"}) for r in bad]
    if layout == "many zeros":
        monkeypatch.setattr(score_scan, "MAX_RECORDS_LOOKED_UP", 2)
    p = tmp_path / "dt.json"
    p.write_text(json.dumps(bad))
    rows = zero_rows(bad)
    assert 23 in rows.tolist()
    assert (score_scan.record_starts(str(p), rows, len(bad)) is None) == (layout == "nested objects")
    assert not scores_present(str(p), rows, len(bad))
    line = one_error_line(runner.invoke(app, ["evaluate", "--gt", str(d / "gt.json"), "--pred", str(p)]))
    assert "result 23:" in line and text in line, line


def test_real_zeros_with_nested_objects_are_counted(synth, tmp_path):
    d, gt, res = synth
    p = tmp_path / "dt.json"
    p.write_text(json.dumps([dict(r, extra={"score_source": "model"}) for r in res]))
    assert score_scan.record_starts(str(p), zero_rows(res), len(res)) is None
    assert scores_present(str(p), zero_rows(res), len(res))
    r = runner.invoke(app, ["evaluate", "--gt", str(d / "gt.json"), "--pred", str(p), "--format", "json"])
    assert r.exit_code == 0, r.stderr
    assert {k: json.loads(r.stdout)[k] for k in STAT_KEYS} == oracle(gt, res, "bbox")["stats"]


def test_record_ranges_across_read_chunks(synth, tmp_path, monkeypatch):
    """Records that straddle the reads (64-byte chunks here) are still found whole."""
    _, _, res = synth
    monkeypatch.setattr(score_scan, "SCAN_CHUNK", 64)
    p = tmp_path / "dt.json"
    text = json.dumps(res)
    p.write_text(text)
    rows = zero_rows(res)
    ranges = score_scan.record_starts(str(p), rows, len(res))
    for i, (begin, end) in zip(rows.tolist(), ranges):
        assert json.loads(text[begin:end].rstrip(", ]")) == res[i]
