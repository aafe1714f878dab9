"""Rich tables for tracking metrics: ``evaluate --mot`` and ``compare --mot``.

Fractions are shown x100 with TrackEval's own formatting (5 significant digits), so a table
reads like TrackEval's printout; counts as integers. JSON keeps TrackEval's fractions.
"""
from __future__ import annotations

from rich.table import Table
from rich.text import Text

# (column, key, percent?) — HOTA family, CLEAR MOT, Identity, counts
COLUMNS = [
    ("HOTA", "HOTA", True), ("DetA", "DetA", True), ("AssA", "AssA", True), ("LocA", "LocA", True),
    ("MOTA", "MOTA", True), ("MOTP", "MOTP", True), ("IDF1", "IDF1", True), ("IDP", "IDP", True),
    ("IDR", "IDR", True), ("IDSW", "IDSW", False), ("Frag", "Frag", False), ("FP", "CLR_FP", False),
    ("FN", "CLR_FN", False), ("MT", "MT", False), ("PT", "PT", False), ("ML", "ML", False),
    ("IDs", "IDs", False), ("GT IDs", "GT_IDs", False),
]
COMPARE_KEYS = ("HOTA", "DetA", "AssA", "MOTA", "IDF1")


def fmt(value, percent: bool) -> str:
    if value is None:
        return "—"
    if percent:
        return "{0:1.5g}".format(100 * float(value))
    return str(int(value))


def metrics_table(evaluation) -> Table:
    """``evaluate --mot``: one row per sequence (when there are several) and the combined row."""
    run = evaluation.runs[0]
    pre = f"{evaluation.benchmark} preprocessing" if evaluation.preprocessing else "no preprocessing"
    t = Table(title=f"MOT metrics ({evaluation.backend}, {pre}; % except counts)", header_style="bold")
    t.add_column("sequence", overflow="fold")
    for col, _key, _pct in COLUMNS:
        t.add_column(col, justify="right")
    rows = list(run.sequences.items()) if len(run.sequences) > 1 else []
    for name, m in rows:
        t.add_row(name, *(fmt(m.get(k), p) for _c, k, p in COLUMNS))
    if rows:
        t.add_section()
    label = "COMBINED" if rows else (evaluation.sequences[0] if evaluation.sequences else "all")
    t.add_row(Text(label, style="bold"), *(fmt(run.metrics.get(k), p) for _c, k, p in COLUMNS))
    return t


def _delta(v, base) -> Text:
    if v is None or base is None:
        return Text("")
    d = 100 * (float(v) - float(base))
    if abs(d) < 5e-4:
        return Text("±0", style="dim")
    return Text(f"{d:+.2f}", style="green" if d > 0 else "red")


def comparison_table(result) -> Table:
    """``compare --mot``: runs side by side, Δ against the first (the baseline), and frames/s
    for runs that were timed (models run on a video)."""
    t = Table(title=f"tracking runs ({result.evaluation.backend}; % except counts; Δ vs "
                    f"{result.runs[0].name if result.runs else '—'})", header_style="bold")
    t.add_column("run", overflow="fold")
    for key in COMPARE_KEYS:
        t.add_column(key, justify="right")
        t.add_column("Δ", justify="right")
    for col in ("IDSW", "FP", "FN", "frames/s"):
        t.add_column(col, justify="right")
    base = result.runs[0].metrics if result.runs else {}
    for i, run in enumerate(result.runs):
        if run.extra.get("error"):
            t.add_row(run.name, Text(run.extra["error"][:80], style="red"), *([""] * (2 * len(COMPARE_KEYS) + 3)))
            continue
        cells: list = []
        for key in COMPARE_KEYS:
            cells.append(fmt(run.metrics.get(key), True))
            cells.append(_delta(run.metrics.get(key), base.get(key)) if i else Text(""))
        fps = run.extra.get("fps")
        cells += [fmt(run.metrics.get("IDSW"), False), fmt(run.metrics.get("CLR_FP"), False),
                  fmt(run.metrics.get("CLR_FN"), False), "" if fps is None else f"{fps:.2f}"]
        t.add_row(run.name, *cells)
    return t
