"""Rich tables for ``visiontool compare``: accuracy with Δ rows, model cost, per-class movers."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text

ACCURACY_COLUMNS = (("AP", "map"), ("AP50", "map_50"), ("AP75", "map_75"), ("APs", "map_small"),
                    ("APm", "map_medium"), ("APl", "map_large"), ("AR100", "mar_100"))


def _v(x) -> str:
    if x is None:
        return "–"
    return "-1" if x == -1 else f"{x:.4f}"


def _d(x) -> Text:
    if x is None:
        return Text("–", style="dim")
    if abs(x) < 5e-5:
        return Text("0", style="dim")
    return Text(f"{x:+.4f}", style="green" if x > 0 else "red")


def short_error(message: str | None, limit: int = 90) -> str:
    """The first clause of an error for a table cell (the whole line is on stderr)."""
    if not message:
        return ""
    first = message.split("; ")[0]
    return first if len(first) <= limit else first[:limit - 1] + "…"


def accuracy_table(result) -> Table:
    """One row per run (baseline first), each other run followed by its Δ row."""
    t = Table(title=f"COCO {result.iou_type} accuracy (Δ = run − baseline '{result.baseline.name}')")
    t.add_column("run", justify="left")
    for label, _ in ACCURACY_COLUMNS:
        t.add_column(label, justify="right")
    with_error = any(r.error or r.incomplete for r in result.runs)
    if with_error:
        t.add_column("error", justify="left", overflow="fold")
    for i, run in enumerate(result.runs):
        name = f"{run.name} (baseline)" if i == 0 else run.name
        # an incomplete run's numbers are lower bounds (unread images count as missed): marked ≥
        mark = "≥" if run.incomplete else ""
        cells = [mark + _v(None if run.stats is None else run.stats[k]) for _, k in ACCURACY_COLUMNS]
        note = run.error or (f"incomplete: {len(run.failed_images)} image(s) unread, numbers are lower bounds"
                             if run.incomplete else "")
        t.add_row(name, *cells, *([short_error(note)] if with_error else []))
        if i > 0 and run.delta is not None:
            t.add_row(Text("  Δ", style="dim"), *[_d(run.delta[k]) for _, k in ACCURACY_COLUMNS],
                      *([""] if with_error else []))
    return t


def _fmt_params(n) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _f(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


DETECTOR_STATS = (("AP", "map"), ("AP50", "map_50"), ("AP75", "map_75"), ("APs", "map_small"),
                  ("APm", "map_medium"), ("APl", "map_large"))


def detector_table(result) -> Table | None:
    """The detector comparison, one row per model: paradigm, NMS, parameters, throughput and ms
    per stage on this machine, peak memory, COCO AP (all, .50, .75, small/medium/large) and the
    duplicate rate. Failed models keep their row (dashes)."""
    runs = [r for r in result.runs if r.kind == "model"]
    if not runs:
        return None
    t = Table(title=f"detectors on this machine ({result.iou_type} AP; duplicate = overlaps a higher-scoring "
                    "same-class detection at IoU > 0.7)")
    cols = ("model", "paradigm", "NMS", "params", "img/s", "pre ms", "infer ms", "post ms", "peak MB",
            *[label for label, _ in DETECTOR_STATS], "dup rate")
    for col in cols:
        t.add_column(col, justify="left" if col in ("model", "paradigm", "NMS") else "right")
    for r in runs:
        ms = r.ms_per_image or {}
        nms = "–" if r.error else ("no" if r.needs_nms is False else "yes" if r.needs_nms else "unknown")
        mark = "≥" if r.incomplete else ""
        stats = [mark + _v(None if r.stats is None else r.stats[k]) for _, k in DETECTOR_STATS]
        t.add_row(r.name, r.paradigm or "–", nms, _fmt_params(r.params), _f(r.images_per_s, ".2f"),
                  _f(ms.get("preprocess"), ".1f"), _f(ms.get("inference"), ".1f"), _f(ms.get("postprocess"), ".1f"),
                  _f(r.peak_memory_mb, ".0f"), *stats,
                  _f(None if r.duplicate_rate is None else 100 * r.duplicate_rate, ".1f") +
                  ("%" if r.duplicate_rate is not None else ""))
    return t


cost_table = detector_table  # the former name


def per_class_table(result, top: int = 10) -> Table | None:
    """The categories whose AP moved most from the baseline, with each run's AP."""
    moves = result.per_class_moves(top)
    if not moves:
        return None
    t = Table(title=f"per class: the {len(moves)} categor{'y' if len(moves) == 1 else 'ies'} whose AP moved most")
    t.add_column("category", justify="left")
    t.add_column("GT", justify="right")
    shown = [i for i, r in enumerate(result.runs) if r.ok]  # failed runs have no per-class numbers
    for i in shown:
        t.add_column(result.runs[i].name, justify="right")
    t.add_column("max |Δ|", justify="right")
    for m in moves:
        t.add_row(m["name"], str(m["gt_count"]), *[_v(m["ap"][i]) for i in shown], f"{m['move']:.4f}")
    return t
