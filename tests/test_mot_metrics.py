"""evaluate --mot: HOTA, CLEAR MOT and Identity equal to TrackEval's own numbers (its standard
layout and call), agree with py-motmetrics where the definitions coincide, and tracks written
by detect --track --format mot round-trip through the metric library."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("trackeval")

from cli_helpers import assert_user_error  # noqa: E402
from video_helpers import (  # noqa: E402
    SquareDetector, install_detector, invoke, jsonl, make_clip, mot_layout, synthetic_sequence, trackeval_reference,
    write_lines)

HOTA_ARRAYS = ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "OWTA")
HOTA_FLOATS = ("HOTA(0)", "LocA(0)", "HOTALocA(0)")
CLEAR = ("MOTA", "MOTP", "MODA", "CLR_Re", "CLR_Pr", "MTR", "PTR", "MLR", "sMOTA", "CLR_F1", "FP_per_frame", "MOTAL",
         "CLR_TP", "CLR_FN", "CLR_FP", "IDSW", "MT", "PT", "ML", "Frag", "CLR_Frames")
IDENTITY = ("IDF1", "IDR", "IDP", "IDTP", "IDFN", "IDFP")
COUNT = ("Dets", "GT_Dets", "IDs", "GT_IDs")


def expected(ref: dict) -> dict:
    """TrackEval's result dict in the flat form visiontool reports (HOTA arrays -> their mean)."""
    out = {k: float(np.mean(ref["HOTA"][k])) for k in HOTA_ARRAYS}
    out.update({k: float(ref["HOTA"][k]) for k in HOTA_FLOATS})
    out.update({k: ref["CLEAR"][k] for k in CLEAR})
    out.update({k: ref["Identity"][k] for k in IDENTITY})
    out.update({k: ref["Count"][k] for k in COUNT})
    return out


def evaluate_json(gt, pred, *extra) -> dict:
    res = invoke("evaluate", "--gt", gt, "--pred", pred, "--mot", "-f", "json", *extra)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def assert_same(ours: dict, ref: dict) -> None:
    want = expected(ref)
    assert set(want) <= set(ours)
    for k, v in want.items():
        assert ours[k] == pytest.approx(v, rel=0, abs=0), k  # the library's own number, exactly


def test_mot17_folder_equals_trackevals_own_run(tmp_path):
    seqs = {"MOT17-02-SIM": synthetic_sequence(1), "MOT17-04-SIM": synthetic_sequence(2, frames=25, objects=3)}
    gt_root, tr_root = mot_layout(tmp_path, "MOT17", seqs)
    ref = trackeval_reference(gt_root, tr_root, "mine", "MOT17")
    out = evaluate_json(gt_root / "MOT17-train", tr_root / "MOT17-train" / "mine")
    assert out["benchmark"] == "MOT17" and out["preprocessing"] is True and out["backend"].startswith("trackeval ")
    assert out["sequences"] == ["MOT17-02-SIM", "MOT17-04-SIM"]
    assert_same(out["metrics"], ref["COMBINED_SEQ"])
    for seq in seqs:
        assert_same(out["per_sequence"][seq], ref[seq])
    # the distractor object's predictions were removed and its boxes are not ground truth
    assert out["metrics"]["GT_IDs"] == 3 + 2  # 4 and 3 objects per sequence, the last one a distractor
    # --preproc none scores every row (the distractor's boxes count) and differs
    plain = evaluate_json(gt_root / "MOT17-train", tr_root / "MOT17-train" / "mine", "--preproc", "none")
    assert plain["preprocessing"] is False and plain["metrics"]["GT_IDs"] > out["metrics"]["GT_IDs"]


def _sparse(lines: list[str]) -> list[str]:
    """Frames spread out (every 3rd, then a 500-frame hole) and ids made large and sparse."""
    out = []
    for ln in lines:
        f, i, rest = ln.split(",", 2)
        f = 3 * int(f) + (500 if int(f) > 20 else 0)
        out.append(f"{f},{int(i) * 100_003},{rest}")
    return out


def test_sparse_frames_and_ids_give_trackevals_own_numbers(tmp_path):
    """Frames and ids are renumbered densely before TrackEval (a row at frame 10**7 or an id of
    10**10 would otherwise take it gigabytes): every number stays TrackEval's own on the raw
    files, CLR_Frames and FP_per_frame included (the holes count as frames)."""
    seqs = {name: tuple(_sparse(part) for part in synthetic_sequence(seed, mot17=True))
            for name, seed in (("MOT17-02-SIM", 7), ("MOT17-04-SIM", 8))}
    seqs["MOT17-04-SIM"][1].append("700,5,10,10,20,20,0.9,-1,-1,-1")  # a prediction past the last GT frame
    gt_root, tr_root = mot_layout(tmp_path, "MOT17", seqs)
    ref = trackeval_reference(gt_root, tr_root, "mine", "MOT17")
    out = evaluate_json(gt_root / "MOT17-train", tr_root / "MOT17-train" / "mine")
    assert out["metrics"]["CLR_Frames"] == 620 + 700 and out["metrics"]["FP_per_frame"] > 0
    assert_same(out["metrics"], ref["COMBINED_SEQ"])
    for seq in seqs:
        assert_same(out["per_sequence"][seq], ref[seq])


def test_a_prediction_at_frame_ten_million_costs_nothing(tmp_path):
    gt, pred = synthetic_sequence(3, mot17=False)
    gt_file = write_lines(tmp_path / "gt.txt", gt)
    pred_file = write_lines(tmp_path / "pred.txt", pred + ["10000000,10000000000,1,1,5,5,0.9,-1,-1,-1"])
    out = evaluate_json(gt_file, pred_file)  # TrackEval alone: 18 GB and minutes
    assert out["metrics"]["CLR_Frames"] == 10_000_000
    assert out["metrics"]["CLR_FP"] == evaluate_json(gt_file, write_lines(tmp_path / "p.txt", pred))["metrics"][
        "CLR_FP"] + 1


def test_mot15_file_pair_equals_trackevals_own_run(tmp_path):
    gt, pred = synthetic_sequence(3, mot17=False)
    gt_root, tr_root = mot_layout(tmp_path, "MOT15", {"Walk-SIM": (gt, pred)})
    ref = trackeval_reference(gt_root, tr_root, "mine", "MOT15")
    gt_file = write_lines(tmp_path / "plain" / "gt.txt", gt)
    pred_file = write_lines(tmp_path / "plain" / "pred.txt", pred)
    out = evaluate_json(gt_file, pred_file)  # two loose files, no seqinfo: no MOTChallenge preprocessing
    assert out["benchmark"] == "MOT15" and out["preprocessing"] is False
    assert_same(out["metrics"], ref["COMBINED_SEQ"])


@pytest.mark.filterwarnings("ignore::Warning:motmetrics")
def test_clear_and_identity_agree_with_py_motmetrics(tmp_path, monkeypatch):
    mm = pytest.importorskip("motmetrics")
    if not hasattr(np, "asfarray"):  # py-motmetrics 1.4.0's IoU distance calls it; NumPy 2 removed it
        monkeypatch.setattr(np, "asfarray", lambda a, dtype=float: np.asarray(a, dtype=dtype), raising=False)
    gt, pred = synthetic_sequence(4, mot17=False)
    gt_file = write_lines(tmp_path / "gt.txt", gt)
    pred_file = write_lines(tmp_path / "pred.txt", pred)
    ours = evaluate_json(gt_file, pred_file)["metrics"]
    acc = mm.utils.compare_to_groundtruth(mm.io.loadtxt(str(gt_file), fmt="mot15-2D", min_confidence=1),
                                          mm.io.loadtxt(str(pred_file), fmt="mot15-2D"), "iou", distth=0.5)
    s = mm.metrics.create().compute(acc, metrics=["mota", "idf1", "num_switches", "num_false_positives",
                                                  "num_misses"], name="x")
    assert ours["MOTA"] == pytest.approx(float(s["mota"]["x"]), abs=1e-9)
    assert ours["IDF1"] == pytest.approx(float(s["idf1"]["x"]), abs=1e-9)
    assert (ours["IDSW"], ours["CLR_FP"], ours["CLR_FN"]) == (
        int(s["num_switches"]["x"]), int(s["num_false_positives"]["x"]), int(s["num_misses"]["x"]))
    # (MT differs at the boundary by definition: TrackEval counts > 80 % tracked, py-motmetrics >= 80 %)


def test_table_output(tmp_path):
    seqs = {"MOT17-02-SIM": synthetic_sequence(1), "MOT17-04-SIM": synthetic_sequence(2, frames=25, objects=3)}
    gt_root, tr_root = mot_layout(tmp_path, "MOT17", seqs)
    res = invoke("evaluate", "--gt", gt_root / "MOT17-train", "--pred", tr_root / "MOT17-train" / "mine" / "data",
                 "--mot", "-f", "table")
    assert res.exit_code == 0, res.stderr
    js = evaluate_json(gt_root / "MOT17-train", tr_root / "MOT17-train" / "mine" / "data")["metrics"]
    for col in ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW", "MOT17-02-SIM", "MOT17-04-SIM", "COMBINED"):
        assert col in res.stdout
    assert "{0:1.5g}".format(100 * js["HOTA"]) in res.stdout


def test_tracks_written_by_detect_round_trip_through_the_metric_library(tmp_path, monkeypatch):
    install_detector(monkeypatch, SquareDetector())
    clip = tmp_path / "SQUARES-01.mp4"
    truth = make_clip(clip, frames=30, size=(240, 120), squares=3, speed=2)
    gt = [f"{f + 1},{k + 1},{b[0]},{b[1]},{b[2] - b[0]},{b[3] - b[1]},1,1,1"
          for f, boxes in enumerate(truth) for k, b in enumerate(boxes)]
    gt_file = write_lines(tmp_path / "gt" / "SQUARES-01.txt", gt)
    res = invoke("detect", clip, "-m", "squares", "--track", "-f", "mot", "-q")
    assert res.exit_code == 0, res.stderr
    mot = res.stdout.splitlines()
    recs = jsonl(invoke("detect", clip, "-m", "squares", "--track", "-f", "jsonl", "-q").stdout)
    # the MOT rows are the tracked detections of the records: 1-based frames, xywh boxes
    want = sorted((r["frame"] + 1, d["track_id"], *np.round([d["box"][0], d["box"][1], d["box"][2] - d["box"][0],
                                                            d["box"][3] - d["box"][1]], 3), round(d["score"], 6))
                  for r in recs for d in r["detections"] if "track_id" in d)
    got = sorted(tuple(int(v) if i < 2 else float(v) for i, v in enumerate(ln.split(",")[:7])) for ln in mot)
    assert got == [tuple(w) for w in want] and len(got) >= 3 * 28
    assert {ln.split(",", 7)[7] for ln in mot} == {"-1,-1,-1"}
    pred_file = write_lines(tmp_path / "pred" / "SQUARES-01.txt", mot)
    out = evaluate_json(gt_file, pred_file)["metrics"]
    gt_root, tr_root = mot_layout(tmp_path / "ref", "MOT15", {"SQUARES-01": (gt, mot)})
    assert_same(out, trackeval_reference(gt_root, tr_root, "mine", "MOT15")["COMBINED_SEQ"])
    assert out["IDSW"] == 0 and out["MT"] == 3 and out["CLR_FP"] == 0
    assert out["CLR_FN"] == 3  # the first frame: a track is confirmed on its second detection


def test_several_videos_write_one_sequence_file_each_and_evaluate_as_a_folder(tmp_path, monkeypatch):
    install_detector(monkeypatch, SquareDetector())
    gt_dir, out_dir = tmp_path / "gt", tmp_path / "tracks"
    videos = []
    for name in ("SEQ-A", "SEQ-B"):
        truth = make_clip(tmp_path / f"{name}.mp4", frames=20, size=(240, 120), squares=2, speed=2)
        write_lines(gt_dir / name / "gt" / "gt.txt", [f"{f + 1},{k + 1},{b[0]},{b[1]},{b[2] - b[0]},{b[3] - b[1]},1,1,1"
                                                     for f, boxes in enumerate(truth) for k, b in enumerate(boxes)])
        videos.append(tmp_path / f"{name}.mp4")
    res = invoke("detect", *videos, "-m", "squares", "--track", "-f", "mot", "-o", out_dir, "-q")
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["SEQ-A.txt", "SEQ-B.txt"]
    out = evaluate_json(gt_dir, out_dir)
    assert out["sequences"] == ["SEQ-A", "SEQ-B"] and out["metrics"]["IDSW"] == 0
    assert out["metrics"]["GT_IDs"] == 4
    # one video into a directory (an existing one, or a path ending with a separator) works the same way
    res = invoke("detect", videos[0], "-m", "squares", "--track", "-f", "mot", "-o", f"{tmp_path / 'one'}/", "-q")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "one" / "SEQ-A.txt").read_text() == (out_dir / "SEQ-A.txt").read_text()


def test_preproc_mot17_needs_mot_classes(tmp_path):
    gt, pred = synthetic_sequence(5, mot17=False)
    res = invoke("evaluate", "--gt", write_lines(tmp_path / "gt.txt", gt), "--pred",
                 write_lines(tmp_path / "p.txt", pred), "--mot", "--preproc", "mot17")
    assert_user_error(res, 2, "--preproc mot17", "class ids 1-13", "--preproc none")
