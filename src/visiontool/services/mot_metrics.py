"""Tracking metrics (``evaluate --mot``): HOTA, CLEAR MOT and Identity, computed by TrackEval.

TrackEval (github.com/JonathonLuiten/TrackEval, the MOTChallenge organisers' official code)
is the reference for HOTA and gives MOTChallenge's CLEAR (MOTA, MOTP, IDSW, MT/PT/ML,
Frag) and Identity (IDF1, IDP, IDR) numbers. visiontool checks the files row by row
(:mod:`visiontool.io.mot`: exit 2 naming the line), lays them out the way TrackEval's
``MotChallenge2DBox`` dataset reads them (a temporary ``gt/SEQ/gt/gt.txt`` and
``trackers/RUN/data/SEQ.txt``) and runs TrackEval's own ``Evaluator``, so every number is
TrackEval's, combined over sequences as TrackEval combines them. Values are fractions
(TrackEval's tables print them x100); HOTA's per-alpha arrays are reported as their mean,
as in TrackEval's summaries, with ``HOTA(0)`` and ``LocA(0)`` beside them.

Preprocessing (``preproc``): MOTChallenge's protocol scores pedestrians only and removes
predictions matched to distractors (person on vehicle, static person, distractor,
reflection; MOT20 also non-MOT vehicles) — TrackEval's ``MOT17``/``MOT20`` benchmarks.
``auto`` applies it when the ground truth is MOTChallenge data (``seqinfo.ini`` or a
``MOT16/17/20-`` sequence name, and MOTChallenge class ids); otherwise (``none``, TrackEval's
``MOT15`` mode) every ground-truth row whose consider flag is not 0 is scored, whatever its class.
"""
from __future__ import annotations

import contextlib
import io
import math
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from visiontool.errors import InvalidInputError, UsageError, require
from visiontool.io.mot import MotTable, find_gt_sequences, find_pred_files, read_mot
from visiontool.io.readers import one_stdin

PREPROC = ("auto", "mot17", "mot16", "mot20", "none")
MOT_CLASS_IDS = set(range(1, 14))  # pedestrian .. crowd (TrackEval's class_name_to_class_id)
_MOT_NAME = re.compile(r"^MOT(1[5-7]|20)-", re.IGNORECASE)
# what a table shows first; JSON has every field of the four metrics
HEADLINE = ("HOTA", "DetA", "AssA", "MOTA", "IDF1")


def _trackeval():
    return require("trackeval", "evaluate --mot", "track")


@dataclass
class MotRun:
    """One tracking run's metrics: ``metrics`` over all sequences, ``sequences`` each one's."""

    name: str
    metrics: dict[str, float | int]
    sequences: dict[str, dict[str, float | int]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # compare: fps, model, tracker, frames, error


@dataclass
class MotEvaluation:
    runs: list[MotRun]
    sequences: list[str]
    benchmark: str  # TrackEval's BENCHMARK: MOT17 | MOT16 | MOT20 | MOT15 (no preprocessing)
    preprocessing: bool
    backend: str
    diagnostics: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """evaluate --mot JSON (one run): backend, preprocessing, sequences and the metrics."""
        run = self.runs[0]
        return {"backend": self.backend, "benchmark": self.benchmark, "preprocessing": self.preprocessing,
                "sequences": list(self.sequences), "metrics": _clean(run.metrics),
                "per_sequence": {k: _clean(v) for k, v in run.sequences.items()}}


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def choose_benchmark(preproc: str, seq_names: list[str], has_seqinfo: bool, gts: list[MotTable]) -> tuple[str, bool]:
    """(TrackEval BENCHMARK, preprocessing on?) for ``preproc`` (module docstring); UsageError
    when MOTChallenge preprocessing is asked for a ground truth without its class ids."""
    if preproc not in PREPROC:
        raise UsageError(f"invalid --preproc '{preproc}': expected {'|'.join(PREPROC)}")
    if preproc == "none":
        return "MOT15", False
    classes = np.concatenate([g.classes for g in gts]) if gts else np.zeros(0, np.int64)
    valid = bool(len(classes)) and bool(np.isin(classes, list(MOT_CLASS_IDS)).all())
    mot20 = any("MOT20" in n.upper() for n in seq_names)
    if preproc == "auto":
        mot_like = has_seqinfo or any(_MOT_NAME.match(n) for n in seq_names)
        if not (valid and mot_like):
            return "MOT15", False
        return ("MOT20" if mot20 else "MOT17"), True
    if not valid:
        bad = next((g for g in gts if len(g) and not np.isin(g.classes, list(MOT_CLASS_IDS)).all()), None)
        where = ""
        if bad is not None:
            i = int(np.flatnonzero(~np.isin(bad.classes, list(MOT_CLASS_IDS)))[0])
            where = f" ({bad.path}: row {i + 1} has class {int(bad.classes[i])})"
        raise UsageError(f"--preproc {preproc}: the ground truth needs MOTChallenge class ids 1-13 in column 8"
                         f"{where}; use --preproc none for other ground truth")
    return preproc.upper(), True


def evaluate_mot(gt: str, preds: list[str] | str, names: list[str] | None = None,
                 preproc: str = "auto") -> MotEvaluation:
    """Score one or more tracking runs (MOT files, or folders of sequences) against ``gt``.

    ``names`` label the runs (default: each prediction's file or folder name)."""
    te = _trackeval()
    pred_list = [preds] if isinstance(preds, str) else list(preds)
    if not pred_list:
        raise UsageError("no prediction given")
    one_stdin([gt, *pred_list])
    seqs = find_gt_sequences(gt)
    gts = [read_mot(s.path, "gt", s.length) for s in seqs]
    lengths = {}
    runs_files: list[dict[str, str]] = []
    diagnostics: list[str] = []
    for pred in pred_list:
        files, extra = find_pred_files(pred, seqs)
        if extra:
            diagnostics.append(f"{pred}: ignored {len(extra)} file(s) that match no ground-truth sequence: "
                               f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
        runs_files.append(files)
    seq_of = {s.name: s for s in seqs}
    tables = [{n: read_mot(f, "pred", seq_of[n].length) for n, f in files.items()} for files in runs_files]
    diagnostics += _past_the_end(seqs, gts, tables, pred_list)
    true_lengths = {}
    for k, (s, g) in enumerate(zip(seqs, gts)):
        true_lengths[s.name] = s.length or max([g.max_frame] + [t[s.name].max_frame for t in tables] + [1])
        gts[k], dense = _compact([g] + [t[s.name] for t in tables])
        for t, d in zip(tables, dense):
            t[s.name] = d
        lengths[s.name] = max([1, gts[k].max_frame] + [d.max_frame for d in dense])
    benchmark, preprocessing = choose_benchmark(preproc, [s.name for s in seqs],
                                                any(s.length is not None for s in seqs), gts)
    labels = list(names or []) + [_label(p) for p in pred_list[len(names or []):]]
    labels = _unique(labels)
    results = _run_trackeval(te, seqs, gts, tables, lengths, benchmark, preprocessing)
    runs = []
    for i, label in enumerate(labels):
        res = results[f"run{i}"]
        per_seq = {s.name: _with_frames(_flatten(res[s.name]["pedestrian"]), true_lengths[s.name]) for s in seqs}
        combined = _with_frames(_flatten(res["COMBINED_SEQ"]["pedestrian"]), sum(true_lengths.values()))
        runs.append(MotRun(label, combined, per_seq))
    return MotEvaluation(runs, [s.name for s in seqs], benchmark, preprocessing, f"trackeval {te.__version__}",
                         diagnostics)


def _past_the_end(seqs, gts, tables, pred_list) -> list[str]:
    """Rows after the ground truth's last frame, where no seqinfo.ini gives the sequence's length
    (with one they are refused): false positives, and most likely an offset or another sequence."""
    out = []
    for s, g in zip(seqs, gts):
        if s.length is not None or not len(g):
            continue
        for pred, table in zip(pred_list, tables):
            t = table.get(s.name)
            late = t.frames[t.frames > g.max_frame] if t is not None else ()
            if len(late):
                out.append(f"{pred}: {len(late)} row(s) of sequence {s.name} are on frames {late.min()}-{late.max()}, "
                           f"after the ground truth's last frame {g.max_frame}: they count as false positives (is it "
                           "the right sequence, or are its frames offset?)")
    return out


def _compact(tables: list[MotTable]) -> tuple[MotTable, list[MotTable]]:
    """One sequence's ground truth and runs (``tables[0]`` and the rest) with frames renumbered
    1..K over the K frames that hold a row in any of them, and each file's ids renumbered
    1..M in their order: (ground truth, runs).

    Exact for every metric reported: TrackEval skips a frame without ground truth in CLEAR
    (its state for IDSW and Frag untouched) and sums HOTA's and Identity's counts over frames,
    so a frame with no rows adds nothing but to the frame count (CLR_Frames, Frames and
    FP_per_frame are put back from the true length, :func:`_with_frames`); it relabels each
    file's ids to 0..M-1 in their order itself. But it allocates by the largest frame and id:
    one row at frame 10,000,000 took 18 GB and minutes here, an id of 10**10 would take 80 GB."""
    used = np.unique(np.concatenate([t.frames for t in tables] + [np.zeros(0, np.int64)]))
    out = []
    for t in tables:
        ids = np.unique(t.ids)
        frames = np.searchsorted(used, t.frames).astype(np.int64) + 1
        new_ids = np.searchsorted(ids, t.ids).astype(np.int64) + 1
        lines = [f"{f},{i}{line[line.index(',', line.index(',') + 1):]}"
                 for f, i, line in zip(frames.tolist(), new_ids.tolist(), t.lines)]
        out.append(replace(t, lines=lines, frames=frames, ids=new_ids))
    return out[0], out[1:]


def _with_frames(flat: dict, frames: int) -> dict:
    """The fields TrackEval derives from the number of frames, for the sequence's true length
    (it was given the compacted one, :func:`_compact`): its own formulas."""
    flat["CLR_Frames"] = int(frames)
    if "Frames" in flat:
        flat["Frames"] = int(frames)
    flat["FP_per_frame"] = float(flat["CLR_FP"] / np.maximum(1.0, frames))
    return flat


def _label(path: str) -> str:
    p = Path(path)
    if p.is_dir() and p.name == "data":
        p = p.parent
    return p.stem if p.is_file() else p.name


def _unique(labels: list[str]) -> list[str]:
    out, seen = [], {}
    for lab in labels:
        n = seen.get(lab, 0)
        seen[lab] = n + 1
        out.append(lab if n == 0 else f"{lab}-{n + 1}")
    return out


def _run_trackeval(te, seqs, gts, tables, lengths, benchmark: str, preprocessing: bool) -> dict:
    """TrackEval's Evaluator on a temporary MotChallenge2DBox layout; its ``res`` per run."""
    with tempfile.TemporaryDirectory(prefix="visiontool-mot-") as tmp:
        root = Path(tmp)
        for s, g in zip(seqs, gts):
            _write(root / "gt" / s.name / "gt" / "gt.txt", g.lines)
        for i, run in enumerate(tables):
            for name, t in run.items():
                _write(root / "trackers" / f"run{i}" / "data" / f"{name}.txt", t.lines)
        dataset_config = {
            "GT_FOLDER": str(root / "gt"), "TRACKERS_FOLDER": str(root / "trackers"),
            "OUTPUT_FOLDER": str(root / "out"), "TRACKERS_TO_EVAL": [f"run{i}" for i in range(len(tables))],
            "CLASSES_TO_EVAL": ["pedestrian"], "BENCHMARK": benchmark, "SPLIT_TO_EVAL": "train",
            "DO_PREPROC": preprocessing, "SKIP_SPLIT_FOL": True, "SEQ_INFO": dict(lengths),
            "PRINT_CONFIG": False,
        }
        eval_config = {"USE_PARALLEL": False, "BREAK_ON_ERROR": True, "LOG_ON_ERROR": None, "PRINT_RESULTS": False,
                       "PRINT_CONFIG": False, "TIME_PROGRESS": False, "OUTPUT_SUMMARY": False,
                       "OUTPUT_DETAILED": False, "PLOT_CURVES": False}
        metric_config = {"THRESHOLD": 0.5, "PRINT_CONFIG": False}
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):  # its traceback too
                evaluator = te.Evaluator(eval_config)
                dataset = te.datasets.MotChallenge2DBox(dataset_config)
                metrics = [te.metrics.HOTA(dict(metric_config)), te.metrics.CLEAR(dict(metric_config)),
                           te.metrics.Identity(dict(metric_config))]
                results, _messages = evaluator.evaluate([dataset], metrics)
        except te.utils.TrackEvalException as exc:
            raise InvalidInputError(f"TrackEval refused the files: {' '.join(str(exc).split())}") from None
        return results["MotChallenge2DBox"]


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _flatten(res: dict) -> dict[str, float | int]:
    """TrackEval's per-metric dicts -> one flat dict of its own field names. HOTA's arrays
    over the 19 alpha thresholds become their mean (TrackEval's summary value)."""
    out: dict[str, float | int] = {}
    hota = res["HOTA"]
    for key in ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "OWTA"):
        out[key] = float(np.mean(hota[key]))
    for key in ("HOTA(0)", "LocA(0)", "HOTALocA(0)"):
        out[key] = float(hota[key])
    clear = res["CLEAR"]
    for key in ("MOTA", "MOTP", "MODA", "CLR_Re", "CLR_Pr", "MTR", "PTR", "MLR", "sMOTA", "CLR_F1",
                "FP_per_frame", "MOTAL"):
        out[key] = float(clear[key])
    for key in ("CLR_TP", "CLR_FN", "CLR_FP", "IDSW", "MT", "PT", "ML", "Frag", "CLR_Frames"):
        out[key] = int(clear[key])
    ident = res["Identity"]
    for key in ("IDF1", "IDR", "IDP"):
        out[key] = float(ident[key])
    for key in ("IDTP", "IDFN", "IDFP"):
        out[key] = int(ident[key])
    for key, v in res["Count"].items():
        out[key] = int(v)
    return out
