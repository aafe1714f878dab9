"""MOTChallenge files: every bad row is exit 2 naming its file and line; sequence folders; the writer."""
from __future__ import annotations

import pytest

pytest.importorskip("trackeval")

from cli_helpers import assert_user_error, one_error_line  # noqa: E402
from video_helpers import invoke, synthetic_sequence, write_lines  # noqa: E402
from visiontool.convert import to_mot_rows  # noqa: E402
from visiontool.io.mot import read_mot  # noqa: E402
from visiontool.types import Detections, ImageResult  # noqa: E402

GOOD_GT = ["1,1,10,20,30,40,1,1,1", "2,1,12,20,30,40,1,1,1"]
GOOD_PRED = ["1,1,10,20,30,40,0.9,-1,-1,-1", "2,1,12,20,30,40,0.8,-1,-1,-1"]


@pytest.mark.parametrize("which, row, needle", [
    ("pred", "3,1,10,20", "4 column(s); a MOTChallenge row has at least 6"),
    ("pred", "0,1,10,20,30,40,0.5,-1,-1,-1", "frame '0' is not an integer >= 1 (MOT frames are 1-based)"),
    ("pred", "2.5,1,10,20,30,40,0.5,-1,-1,-1", "frame '2.5'"),
    ("pred", "3,-1,10,20,30,40,0.5,-1,-1,-1", "-1 marks an untracked detection"),
    ("pred", "3,a,10,20,30,40,0.5,-1,-1,-1", "id 'a' is not an integer"),
    ("pred", "99999999999999999999,1,10,20,30,40,0.5,-1,-1,-1", "frame 99999999999999999999 is beyond the 64-bit"),
    ("gt", "3,99999999999999999999,10,20,30,40,1,1,1", "id 99999999999999999999 is beyond the 64-bit integer"),
    ("pred", "3,1,10,nan,30,40,0.5,-1,-1,-1", "must be finite"),
    ("pred", "3,1,10,20,x,40,0.5,-1,-1,-1", "must be numbers"),
    ("pred", "3,1,10,20,-30,40,0.5,-1,-1,-1", "negative box size"),
    ("pred", "2,1,50,20,30,40,0.5,-1,-1,-1", "id 1 appears twice in frame 2 (also line 2)"),
    ("pred", "3,1,10,20,30,40,high,-1,-1,-1", "column 7 (score)"),
    ("pred", "3,1,10,20,30,40,0.5,3,-1,-1", "column 8 (class) is 3"),
    ("gt", "3,2,10,20,30,40,0.87,1,1", "consider flag (1 = score it, 0 = ignore), not a score"),
    ("gt", "3,2,10,20,30,40,1,car,1", "column 8 (class) 'car'"),
])
def test_a_bad_row_is_exit_2_naming_its_line(tmp_path, which, row, needle):
    gt, pred = list(GOOD_GT), list(GOOD_PRED)
    (gt if which == "gt" else pred).append(row)
    g = write_lines(tmp_path / "gt.txt", gt)
    p = write_lines(tmp_path / "pred.txt", pred)
    res = invoke("evaluate", "--gt", g, "--pred", p, "--mot")
    line = one_error_line(res, 2)
    assert f"{which}.txt: line 3: " in line and needle in line, line


def test_a_frame_beyond_seqinfo_is_named(tmp_path):
    seq = tmp_path / "MOT17-09-SIM"
    write_lines(seq / "gt" / "gt.txt", GOOD_GT)
    (seq / "seqinfo.ini").write_text("[Sequence]\nseqLength=2\n")
    p = write_lines(tmp_path / "pred.txt", GOOD_PRED + ["3,1,10,20,30,40,0.5,-1,-1,-1"])
    line = one_error_line(invoke("evaluate", "--gt", seq, "--pred", p, "--mot"), 2)
    assert "pred.txt: line 3: frame 3 is beyond the sequence's 2 frames (seqinfo.ini)" in line


def test_rows_after_the_last_ground_truth_frame_without_seqinfo_are_one_warning(tmp_path):
    """An offset run (frames 11-12 against a 2-frame GT) was scored as false positives without a word."""
    import json

    g = write_lines(tmp_path / "gt.txt", GOOD_GT)
    late = write_lines(tmp_path / "late.txt", [f"{int(r.split(',')[0]) + 10}{r[1:]}" for r in GOOD_PRED])
    res = invoke("evaluate", "--gt", g, "--pred", late, "--mot", "-f", "json")
    assert res.exit_code == 0, res.stderr
    assert [ln for ln in res.stderr.splitlines() if "warning" in ln] == [
        f"visiontool: warning: {late}: 2 row(s) of sequence gt are on frames 11-12, after the ground truth's last "
        "frame 2: they count as false positives (is it the right sequence, or are its frames offset?)"]
    assert json.loads(res.stdout)["metrics"]["MOTA"] == -1.0  # scored as before: 2 misses, 2 false positives
    clean = invoke("evaluate", "--gt", g, "--pred", write_lines(tmp_path / "p.txt", GOOD_PRED), "--mot", "-f", "json")
    assert clean.exit_code == 0 and "warning" not in clean.stderr


def test_blank_lines_comments_spaces_and_short_rows_are_fine(tmp_path):
    g = write_lines(tmp_path / "gt.txt", ["# frame,id,x,y,w,h", "1 1 10 20 30 40", "", "2, 1, 12, 20, 30, 40,"])
    p = write_lines(tmp_path / "pred.txt", ["1,1,10,20,30,40", "2,1,12,20,30,40"])
    t = read_mot(g, "gt")
    assert t.lines == ["1,1,10,20,30,40,1,-1", "2,1,12,20,30,40,1,-1"]  # consider 1, no class
    res = invoke("evaluate", "--gt", g, "--pred", p, "--mot", "-f", "json")
    assert res.exit_code == 0, res.stderr
    assert '"MOTA": 1.0' in res.stdout and '"IDF1": 1.0' in res.stdout


def test_sequence_folders_missing_and_extra_predictions(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for name in ("A", "B"):
        write_lines(gt_dir / f"{name}.txt", GOOD_GT)
    write_lines(pred_dir / "A.txt", GOOD_PRED)
    assert_user_error(invoke("evaluate", "--gt", gt_dir, "--pred", pred_dir, "--mot"), 2,
                      "no predictions for sequence(s) B", "B.txt")
    write_lines(pred_dir / "B.txt", GOOD_PRED)
    write_lines(pred_dir / "C.txt", GOOD_PRED)
    res = invoke("evaluate", "--gt", gt_dir, "--pred", pred_dir, "--mot", "-f", "json")
    assert res.exit_code == 0, res.stderr
    assert "ignored 1 file(s) that match no ground-truth sequence: C" in res.stderr
    assert_user_error(invoke("evaluate", "--gt", gt_dir, "--pred", pred_dir / "A.txt", "--mot"), 2,
                      "holds 2 sequences")
    assert_user_error(invoke("evaluate", "--gt", tmp_path / "nope", "--pred", pred_dir, "--mot"), 2, "nope")


@pytest.mark.parametrize("args, needle", [
    (["--per-class"], "--per-class applies to COCO evaluation, not --mot"),
    (["--iou-type", "segm"], "--iou-type applies to COCO"),
    (["--preproc", "mot99"], "invalid --preproc 'mot99'"),
])
def test_mot_flags(tmp_path, args, needle):
    g = write_lines(tmp_path / "gt.txt", GOOD_GT)
    p = write_lines(tmp_path / "pred.txt", GOOD_PRED)
    assert_user_error(invoke("evaluate", "--gt", g, "--pred", p, "--mot", *args), 2, needle)


def test_a_mot_file_without_mot_is_a_hint(tmp_path):
    g = write_lines(tmp_path / "gt.txt", GOOD_GT)
    assert_user_error(invoke("evaluate", "--gt", g, "--pred", g), 2, "looks like MOTChallenge", "add --mot")


def test_to_mot_rows_spelling():
    d = Detections([[10.5, 20.25, 40.5, 60.0], [1, 1, 2, 2], [0, 0, 5, 5]], [0.912345678, 0.5, 0.4], [1, 1, 1],
                   ["a", "a", "a"])
    r = ImageResult("v.mp4", 100, 100, "m", detections=d, frame=0, time_s=0.0)
    assert to_mot_rows(r) == ["1,-1,10.5,20.25,30,39.75,0.912346,-1,-1,-1", "1,-1,1,1,1,1,0.5,-1,-1,-1",
                              "1,-1,0,0,5,5,0.4,-1,-1,-1"]  # no track_id column: det.txt rows
    r.detections = d.with_columns(track_id=[3, -1, 7])
    assert to_mot_rows(r) == ["1,3,10.5,20.25,30,39.75,0.912346,-1,-1,-1", "1,7,0,0,5,5,0.4,-1,-1,-1"]
    assert to_mot_rows(ImageResult("a.jpg", 1, 1, "m", detections=d)) == []  # a photo has no MOT frame


def test_a_ten_object_400_frame_file_reads_with_its_classes(tmp_path):
    gt, pred = synthetic_sequence(7, frames=400, objects=10)
    t = read_mot(write_lines(tmp_path / "gt.txt", gt), "gt")
    assert len(t) == 4000 and t.max_frame == 400 and set(t.classes.tolist()) == {1, 8}
