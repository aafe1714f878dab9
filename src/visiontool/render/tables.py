"""Rich tables for detect and segment results."""
from __future__ import annotations

from rich.table import Table

from visiontool.types import ImageResult


def _box(b) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in b) + "]"


def results_table(results: list[ImageResult], title: str | None = None) -> Table:
    """One row per detection (or mask), grouped by image."""
    masks = any(r.masks is not None for r in results)
    t = Table(title=title, header_style="bold", show_lines=False)
    t.add_column("image", overflow="fold")
    if masks:
        t.add_column("id", justify="right")
    t.add_column("label", no_wrap=True)
    t.add_column("score", justify="right")
    if masks:
        t.add_column("area", justify="right")
    t.add_column("box (x1, y1, x2, y2)", justify="right", no_wrap=True)
    for r in results:
        name = r.image if len(r.image) <= 48 else "…" + r.image[-47:]
        if r.masks is not None:
            if not r.masks:
                t.add_row(name, "", "[dim]no masks[/dim]", "", "", "")
            for i, m in enumerate(r.masks):
                t.add_row(name if i == 0 else "", str(m.id), m.label or "", f"{m.score:.3f}", str(m.area),
                          _box(m.box))
        else:
            items = r.detections.to_list()
            if not items:
                t.add_row(name, "[dim]nothing found[/dim]", "", "")
            for i, d in enumerate(items):
                t.add_row(name if i == 0 else "", d["label"], f"{d['score']:.3f}", _box(d["box"]))
        if len(results) > 1:
            t.add_section()
    return t
