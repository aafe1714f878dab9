"""compare's pure parts: duplicate rate on hand-made boxes, deltas, sort keys, peak memory."""
from __future__ import annotations

import gc

import numpy as np
import pytest

from visiontool.errors import UsageError
from visiontool.services.compare import (
    STAT_KEYS,
    CompareResult,
    CompareRun,
    PeakMemory,
    deltas,
    duplicate_flags,
    duplicate_rate,
    parse_sort_key,
)
from visiontool.types import Detections, ImageResult


def _flags(boxes, scores, classes, iou=0.7):
    return duplicate_flags(np.array(boxes, float), np.array(scores, float), np.array(classes), iou).tolist()


@pytest.mark.parametrize("boxes, scores, classes, expected", [
    # nothing to overlap
    ([], [], [], []),
    ([[0, 0, 10, 10]], [0.9], [1], [False]),
    # same box, same class: the lower score is the duplicate, whatever the input order
    ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 1], [False, True]),
    ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.8, 0.9], [1, 1], [True, False]),
    # same box, other class: not a duplicate (NMS is per class)
    ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 2], [False, False]),
    # IoU exactly 0.7 is not > 0.7; 0.8 is: [0,0,10,10] vs [0,0,10,7] -> 70/100; vs [0,0,10,8] -> 0.8
    ([[0, 0, 10, 10], [0, 0, 10, 7]], [0.9, 0.8], [1, 1], [False, False]),
    ([[0, 0, 10, 10], [0, 0, 10, 8]], [0.9, 0.8], [1, 1], [False, True]),
    # equal scores: the earlier one ranks higher, so one duplicate, not two
    ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5], [3, 3], [False, True]),
    # a chain: b overlaps a, c overlaps b only (IoU(a, c) < 0.7): both b and c are duplicates
    ([[0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10]], [0.9, 0.8, 0.7], [1, 1, 1], [False, True, True]),
    # disjoint boxes and a zero-area box
    ([[0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 5, 5]], [0.9, 0.8, 0.7], [1, 1, 1], [False, False, False]),
])
def test_duplicate_flags(boxes, scores, classes, expected):
    assert _flags(boxes, scores, classes) == expected


def test_duplicate_flags_match_a_python_loop():
    rng = np.random.default_rng(0)
    # 15 objects, 4 jittered copies each: many pairs near the 0.7 line
    xy = np.repeat(rng.uniform(0, 200, (15, 2)), 4, axis=0) + rng.normal(0, 1.5, (60, 2))
    wh = np.repeat(rng.uniform(10, 30, (15, 2)), 4, axis=0) + rng.normal(0, 1.5, (60, 2))
    boxes = np.hstack([xy, xy + wh])
    scores = rng.choice([0.3, 0.5, 0.7, 0.9], 60)  # many ties
    classes = rng.integers(0, 3, 60)
    got = duplicate_flags(boxes, scores, classes)
    order = sorted(range(60), key=lambda i: -scores[i])  # Python's sort is stable too

    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / u if u > 0 else 0.0

    want = [False] * 60
    for rank, i in enumerate(order):
        want[i] = any(classes[j] == classes[i] and iou(boxes[i], boxes[j]) > 0.7 for j in order[:rank])
    assert got.tolist() == want
    assert 0 < sum(want) < 60


def _result(boxes, scores, classes):
    d = Detections(np.array(boxes, float).reshape(-1, 4), np.array(scores, float), np.array(classes),
                   np.array([str(c) for c in classes], dtype=object))
    return ImageResult("x.jpg", 100, 100, "m", detections=d)


def test_duplicate_rate_over_images_and_score_floor():
    a = _result([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [1, 1, 1])
    # the same boxes in another image are not duplicates of the first image's
    b = _result([[0, 0, 10, 10]], [0.95], [1])
    assert duplicate_rate([a, b], min_score=0.5) == pytest.approx(1 / 4)
    # below the floor the duplicate is not counted at all
    assert duplicate_rate([a, b], min_score=0.85) == 0.0
    assert duplicate_rate([a, b], min_score=0.99) is None
    assert duplicate_rate([], min_score=0.0) is None


def test_deltas():
    base = {k: 0.5 for k in STAT_KEYS}
    run = dict(base, map=0.6, map_small=-1)
    base2 = dict(base, map_small=-1)
    d = deltas(run, base2)
    assert d["map"] == pytest.approx(0.1) and d["map_small"] == 0.0 and d["mar_100"] == 0.0
    assert deltas(run, base)["map_small"] is None


@pytest.mark.parametrize("key, expected", [
    ("AP", ("map", True)), ("ap50", ("map_50", True)), ("map_75", ("map_75", True)), ("AR100", ("mar_100", True)),
    ("APs", ("map_small", True)), ("fps", ("images_per_s", True)), ("ms", ("inference", False)),
    ("memory", ("peak_memory_mb", False)), ("dup", ("duplicate_rate", False)), ("name", ("name", False)),
    ("-name", ("name", True)), ("+AP", ("map", False)), ("params", ("params", False)),
])
def test_sort_keys(key, expected):
    assert parse_sort_key(key) == expected


def test_sort_key_invalid():
    with pytest.raises(UsageError, match="invalid --sort-by 'bogus'"):
        parse_sort_key("bogus")


def test_sorted_keeps_baseline_first():
    runs = [CompareRun(n, "file", n, stats={k: v for k in STAT_KEYS}) for n, v in
            (("base", 0.2), ("lo", 0.1), ("hi", 0.9))]
    runs.append(CompareRun("broken", "model", "x", error="boom"))
    res = CompareResult(runs)
    assert [r.name for r in res.sorted("AP").runs] == ["base", "hi", "lo", "broken"]
    assert [r.name for r in res.sorted("+AP").runs] == ["base", "lo", "hi", "broken"]
    assert [r.name for r in res.sorted(None).runs] == ["base", "lo", "hi", "broken"]


def test_peak_memory_sees_an_allocation():
    with PeakMemory("cpu") as small:
        pass
    with PeakMemory("cpu") as big:
        block = np.ones(80 * 2 ** 20 // 8)  # 80 MB, touched
        del block
    assert small.mb is not None and big.mb is not None
    assert big.mb >= 60, big.mb
    assert small.mb < 30, small.mb


def test_peak_memory_is_not_hidden_by_earlier_garbage():
    # 200 MB held only by a reference cycle, freed by a collection that runs inside the
    # block (CI saw 0.0 MB when a collection landed there): the 80 MB must still count
    cycle = {"data": np.ones(200 * 2 ** 20 // 8)}
    cycle["self"] = cycle
    del cycle
    with PeakMemory("cpu") as mem:
        gc.collect()
        block = np.ones(80 * 2 ** 20 // 8)
        del block
    assert mem.mb is not None and mem.mb >= 60, mem.mb
