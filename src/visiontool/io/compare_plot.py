"""``compare --plot``: a grouped bar chart of COCO metrics per run (PNG; matplotlib Agg, imported only here).

Metrics are the groups, runs are the bars (baseline first). A metric that COCO reports as -1
(no ground truth in that area range) is left out; runs without numbers (failed models) are
left out too. When model runs are present a second panel shows each model's ms per image,
stacked by stage.
"""
from __future__ import annotations

import os
from pathlib import Path

METRICS = (("AP", "map"), ("AP50", "map_50"), ("AP75", "map_75"), ("APs", "map_small"),
           ("APm", "map_medium"), ("APl", "map_large"), ("AR100", "mar_100"))


def write_compare_plot(result, path: str | os.PathLike) -> Path:
    """Write the chart for a :class:`~visiontool.services.compare.CompareResult` to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [r for r in result.runs if r.ok]
    metrics = [(label, key) for label, key in METRICS if any(r.stats[key] != -1 for r in runs)]
    models = [r for r in runs if r.kind == "model" and r.ms_per_image]
    ncols = 2 if models else 1
    fig, axes = plt.subplots(1, ncols, figsize=(10 + 4 * (ncols - 1), 5), dpi=100,
                             gridspec_kw={"width_ratios": [3, 1]} if ncols == 2 else None, squeeze=False)
    ax = axes[0][0]
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
    if models:
        ax2 = axes[0][1]
        bottom = np.zeros(len(models))
        for stage in ("preprocess", "inference", "postprocess"):
            vals = np.array([m.ms_per_image[stage] for m in models])
            ax2.bar(np.arange(len(models)), vals, 0.6, bottom=bottom, label=stage)
            bottom += vals
        ax2.set_xticks(np.arange(len(models)), [m.name for m in models], rotation=20, ha="right", fontsize=8)
        ax2.set_ylabel("ms per image")
        ax2.set_title("model time per image")
        ax2.grid(True, axis="y", alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    from visiontool.io.plots import save_figure

    out = save_figure(fig, Path(path))
    plt.close(fig)
    return out
