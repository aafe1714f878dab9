"""Rich tables for detect and segment results."""
from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from visiontool.types import ImageResult


def _box(b) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in b) + "]"


def results_table(results: list[ImageResult], title: str | None = None) -> Table:
    """One row per detection (or mask), grouped by image (and frame, for videos)."""
    masks = any(r.kind == "segment" for r in results)
    frames = any(r.frame is not None for r in results)
    tracks = any("track_id" in r.detections.data or "object_id" in r.detections.data for r in results)
    t = Table(title=title, header_style="bold", show_lines=False)
    t.add_column("image", overflow="fold")
    if frames:
        t.add_column("frame", justify="right")
    if masks:
        t.add_column("id", justify="right")
    if tracks:
        t.add_column("track", justify="right")
    t.add_column("label", no_wrap=True)
    t.add_column("score", justify="right")
    if masks:
        t.add_column("area", justify="right")
    t.add_column("box (x1, y1, x2, y2)", justify="right", no_wrap=True)
    for r in results:
        name = escape(r.image if len(r.image) <= 48 else "…" + r.image[-47:])
        d = r.detections
        lead = [name] + ([str(r.frame)] if frames else [])
        blank = [""] * len(lead)
        if not len(d):
            empty = ["[dim]no masks[/dim]" if masks else "[dim]nothing found[/dim]"]
            t.add_row(*lead, *([""] * (masks + tracks)), *empty, *([""] * (2 + masks)))
        areas = d.areas() if masks else None
        track = d.data.get("track_id", d.data.get("object_id"))
        for i in range(len(d)):
            row = list(lead if i == 0 else blank)
            if masks:
                row.append(str(i))
            if tracks:
                row.append("" if track is None or int(track[i]) < 0 else str(int(track[i])))
            label = d.names[i]
            row += [escape("" if label is None else str(label)), f"{float(d.scores[i]):.3f}"]
            if masks:
                row.append(str(int(areas[i])))
            row.append(_box(d.xyxy[i]))
            t.add_row(*row)
        if len(results) > 1:
            t.add_section()
    return t
