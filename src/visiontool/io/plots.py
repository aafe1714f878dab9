"""Precision-recall curves as PNG (matplotlib, Agg backend; imported only when asked)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REC_THRS = np.linspace(0.0, 1.00, 101)


def mean_curve(precision: np.ndarray, t: int | None) -> np.ndarray:
    """Precision at the 101 recall points for area all / maxDets 100, averaged over classes
    (entries of -1, i.e. classes without GT, left out); ``t`` an IoU index or None for the
    mean over the 10 IoU thresholds."""
    p = precision[:, :, :, 0, -1] if t is None else precision[t:t + 1, :, :, 0, -1]
    valid = p > -1
    num = np.where(valid, p, 0.0).sum(axis=(0, 2))
    den = valid.sum(axis=(0, 2))
    return np.where(den > 0, num / np.maximum(den, 1), np.nan)


IMAGE_EXTENSIONS = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def plot_path(target: str | os.PathLike, default_name: str) -> Path:
    """``--plot`` in every command: a path with an image extension (or an existing file) is
    the file to write; anything else is a directory (created) that receives ``default_name``."""
    p = Path(target)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return p
    if p.exists() and not p.is_dir():
        from visiontool.errors import UsageError

        raise UsageError(f"--plot '{target}' is an existing file without an image extension; give FILE.png "
                         "(or .svg, .pdf) or a directory")
    return p / default_name


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure atomically (format from the extension, PNG otherwise)."""
    from visiontool.io.output import atomic_write

    ext = path.suffix.lower().lstrip(".")
    with atomic_write(path, "wb", fsync=False) as fh:
        fig.savefig(fh, format=ext if ext in ("png", "svg", "pdf", "jpg", "jpeg") else "png")
    return path


def write_pr_curves(precision: np.ndarray, path: str | os.PathLike, iou_type: str,
                    stats: dict | None = None) -> Path:
    """Write the IoU .50, .75 and mean precision-recall curves to ``path``; return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    labels = [(0, "IoU 0.50", "map_50"), (5, "IoU 0.75", "map_75"), (None, "IoU 0.50:0.95 (mean)", "map")]
    for t, name, key in labels:
        curve = mean_curve(precision, t)
        if stats is not None:
            name = f"{name}  AP {stats[key]:.3f}"
        ax.plot(REC_THRS, curve, label=name, linewidth=2)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated, mean over classes)")
    ax.set_title(f"COCO {iou_type} precision-recall (area all, maxDets 100)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    save_figure(fig, Path(path))
    plt.close(fig)
    return Path(path)
