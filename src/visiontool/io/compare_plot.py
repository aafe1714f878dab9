"""``compare --plot``: the speed/accuracy frontier and the COCO metrics per run (PNG; matplotlib
Agg, imported only here).

With model runs, the first panel places each model at (images/s on this machine, AP): one
marker per paradigm, the speed/accuracy frontier (models no other model beats on both) joined
by a line. The other panel is a grouped bar chart of the COCO metrics, metrics as groups and
runs as bars (baseline first); a metric COCO reports as -1 (no ground truth in that area
range) and runs without numbers (failed models) are left out.
"""
from __future__ import annotations

import os
from pathlib import Path

METRICS = (("AP", "map"), ("AP50", "map_50"), ("AP75", "map_75"), ("APs", "map_small"),
           ("APm", "map_medium"), ("APl", "map_large"), ("AR100", "mar_100"))
MARKERS = {"two-stage": "s", "one-stage": "^", "anchor-free": "D", "query-based": "o", "open-vocabulary": "*"}


def frontier(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (higher x and higher y),
    ordered by x: the speed/accuracy frontier."""
    idx = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    out, best = [], float("-inf")
    for i in idx:  # fastest first: a point is on the frontier if it is more accurate than every faster one
        if points[i][1] > best:
            out.append(i)
            best = points[i][1]
    return sorted(out, key=lambda i: points[i][0])


def write_compare_plot(result, path: str | os.PathLike) -> Path:
    """Write the chart for a :class:`~visiontool.services.compare.CompareResult` to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result.runs if r.ok]
    models = [r for r in runs if r.kind == "model" and r.images_per_s]
    ncols = 2 if models else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7 + 6 * (ncols - 1), 5.5), dpi=100, squeeze=False)
    if models:
        _frontier_panel(axes[0][0], models, result.iou_type)
    _metrics_panel(axes[0][ncols - 1], runs, result)
    fig.tight_layout()
    from visiontool.io.plots import save_figure

    out = save_figure(fig, Path(path))
    plt.close(fig)
    return out


def _frontier_panel(ax, models, iou_type: str) -> None:
    points = [(float(r.images_per_s), float(r.stats["map"])) for r in models]
    seen = set()
    for r, (x, y) in zip(models, points):
        paradigm = r.paradigm or "unknown"
        ax.scatter([x], [y], s=70, marker=MARKERS.get(paradigm, "o"), zorder=3,
                   label=paradigm if paradigm not in seen else None)
        seen.add(paradigm)
        ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    best = frontier(points)
    if len(best) > 1:
        ax.plot([points[i][0] for i in best], [points[i][1] for i in best], "--", color="grey", zorder=2,
                label="frontier")
    xs = [p[0] for p in points]
    if max(xs) / max(min(xs), 1e-9) > 20:
        ax.set_xscale("log")
    top = max(p[1] for p in points)
    ax.set_ylim(0, max(0.05, top * 1.25))
    ax.set_xlabel("images / s on this machine")
    ax.set_ylabel(f"COCO {iou_type} AP (0.50:0.95)")
    ax.set_title("speed / accuracy frontier")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _metrics_panel(ax, runs, result) -> None:
    import numpy as np

    metrics = [(label, key) for label, key in METRICS if any(r.stats[key] != -1 for r in runs)]
    x = np.arange(len(metrics))
    width = 0.8 / max(len(runs), 1)
    for i, r in enumerate(runs):
        vals = [r.stats[k] if r.stats[k] != -1 else np.nan for _, k in metrics]
        label = f"{r.name} (baseline)" if r is result.runs[0] else r.name
        bars = ax.bar(x - 0.4 + width * (i + 0.5), vals, width, label=label)
        if len(runs) * len(metrics) <= 40:
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1, rotation=90 if len(runs) > 2 else 0)
    ax.set_xticks(x, [m for m, _ in metrics])
    top = max([r.stats[k] for r in runs for _, k in metrics] + [0.0])
    ax.set_ylim(0, min(1.12, top * 1.2) if top > 0 else 1.0)  # headroom for the value labels
    ax.set_ylabel("COCO metric")
    ax.set_title(f"COCO {result.iou_type}: runs side by side")
    ax.grid(True, axis="y", alpha=0.3)
    if runs:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=min(len(runs), 4),
                  frameon=False)
