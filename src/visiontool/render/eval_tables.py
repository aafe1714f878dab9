"""Rich tables for ``visiontool evaluate``: the 12 COCO stats (10 for keypoints) and the per-class table."""
from __future__ import annotations

from rich.table import Table

_ROWS = [
    ("map", "AP", "0.50:0.95", "all", 100), ("map_50", "AP", "0.50", "all", 100),
    ("map_75", "AP", "0.75", "all", 100), ("map_small", "AP", "0.50:0.95", "small", 100),
    ("map_medium", "AP", "0.50:0.95", "medium", 100), ("map_large", "AP", "0.50:0.95", "large", 100),
    ("mar_1", "AR", "0.50:0.95", "all", 1), ("mar_10", "AR", "0.50:0.95", "all", 10),
    ("mar_100", "AR", "0.50:0.95", "all", 100), ("mar_small", "AR", "0.50:0.95", "small", 100),
    ("mar_medium", "AR", "0.50:0.95", "medium", 100), ("mar_large", "AR", "0.50:0.95", "large", 100),
]

# pycocotools' summarizeKps: 20 detections per image, no small range
_KEYPOINT_ROWS = [
    ("map", "AP", "0.50:0.95", "all", 20), ("map_50", "AP", "0.50", "all", 20),
    ("map_75", "AP", "0.75", "all", 20), ("map_medium", "AP", "0.50:0.95", "medium", 20),
    ("map_large", "AP", "0.50:0.95", "large", 20), ("mar", "AR", "0.50:0.95", "all", 20),
    ("mar_50", "AR", "0.50", "all", 20), ("mar_75", "AR", "0.75", "all", 20),
    ("mar_medium", "AR", "0.50:0.95", "medium", 20), ("mar_large", "AR", "0.50:0.95", "large", 20),
]


def _fmt(v: float) -> str:
    return "-1" if v == -1 else f"{v:.4f}"


def stats_table(result) -> Table:
    """The 12 COCO stats (10 for keypoints, IoU meaning OKS), in pycocotools' order, with the
    JSON key of each."""
    t = Table(title=f"COCO {result.iou_type} evaluation ({result.n_predictions} predictions, "
                    f"engine {result.engine})")
    for col, just in (("metric", "left"), ("IoU", "left"), ("area", "left"), ("maxDets", "right"),
                      ("value", "right"), ("key", "left")):
        t.add_column(col, justify=just, style="bold" if col == "value" else None)
    for key, kind, iou, area, md in (_KEYPOINT_ROWS if result.iou_type == "keypoints" else _ROWS):
        t.add_row(kind, iou, area, str(md), _fmt(result.stats[key]), key)
    return t


def per_class_table(result) -> Table:
    """AP, AP50, AP75, AR100 (AR20 for keypoints) and GT count per category, best AP first (-1: no GT)."""
    t = Table(title=f"per class ({result.iou_type})")
    ar = "ar_20" if result.iou_type == "keypoints" else "ar_100"
    for col in ("category", "id", "AP", "AP50", "AP75", ar.replace("ar_", "AR"), "GT"):
        t.add_column(col, justify="left" if col == "category" else "right")
    rows = sorted(result.per_class, key=lambda r: (-r["ap"], r["name"]))
    for r in rows:
        t.add_row(r["name"], str(r["category_id"]), _fmt(r["ap"]), _fmt(r["ap_50"]), _fmt(r["ap_75"]),
                  _fmt(r[ar]), str(r["gt_count"]))
    return t
