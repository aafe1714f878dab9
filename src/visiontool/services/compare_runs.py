"""compare's records: one :class:`CompareRun` per prediction set or model, the
:class:`CompareResult` holding them (baseline first), deltas and the ``--sort-by`` keys."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from visiontool.errors import UsageError

STAT_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
MODEL_KEYS = ("params", "ms_per_image", "images_per_s", "peak_memory_mb", "needs_nms", "duplicate_rate",
              "paradigm", "family", "backend")

# short names people type -> JSON keys (for --sort-by); "lower is better" keys sort ascending
SORT_ALIASES = {"ap": "map", "ap50": "map_50", "ap75": "map_75", "aps": "map_small", "apm": "map_medium",
                "apl": "map_large", "ar1": "mar_1", "ar10": "mar_10", "ar100": "mar_100", "ars": "mar_small",
                "arm": "mar_medium", "arl": "mar_large", "fps": "images_per_s", "ms": "inference",
                "memory": "peak_memory_mb", "mem": "peak_memory_mb", "dup": "duplicate_rate",
                "duplicates": "duplicate_rate", "preprocess": "preprocess", "inference": "inference",
                "postprocess": "postprocess"}
SORT_KEYS = STAT_KEYS + ("name", "params", "images_per_s", "peak_memory_mb", "duplicate_rate",
                         "preprocess", "inference", "postprocess")
_ASCENDING = {"name", "params", "peak_memory_mb", "duplicate_rate", "preprocess", "inference", "postprocess"}


@dataclass
class CompareRun:
    """One row: a prediction set or a model, its COCO numbers and (models) cost figures.

    ``stats``: the 12 COCO stats (torchmetrics key names, -1 where COCO says -1);
    ``delta``: ``stats - baseline stats`` (None where only one side is -1);
    ``error``: why the run has no numbers (a model that failed to load or run), or why its
    numbers are incomplete (``failed_images``: images that could not be read were scored as
    missed, so AP is a lower bound: ``incomplete`` in JSON, marked in the table).
    """

    name: str
    kind: str  # "file" | "model"
    source: str
    iou_type: str = "bbox"
    stats: dict[str, float] | None = None
    per_class: list[dict] = field(default_factory=list)
    delta: dict[str, float | None] | None = None
    error: str | None = None
    diagnostics: list[str] = field(default_factory=list)
    n_predictions: int = 0
    # model runs only
    params: int | None = None
    ms_per_image: dict[str, float] | None = None
    images_per_s: float | None = None
    peak_memory_mb: float | None = None
    needs_nms: bool | None = None
    duplicate_rate: float | None = None
    paradigm: str | None = None
    family: str | None = None
    backend: str | None = None
    images: int = 0
    failed_images: list[str] = field(default_factory=list)
    device: str | None = None
    dtype: str | None = None
    saved_to: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.stats is not None

    @property
    def incomplete(self) -> bool:
        """Numbers exist but some images could not be read (they count as missed)."""
        return self.ok and bool(self.failed_images)

    def value(self, key: str) -> Any:
        """A sortable/plottable value by JSON key (ms keys read ``ms_per_image``)."""
        if key in STAT_KEYS:
            return None if self.stats is None else self.stats[key]
        if key in ("preprocess", "inference", "postprocess"):
            return None if self.ms_per_image is None else self.ms_per_image[key]
        return getattr(self, key, None)

    def to_dict(self) -> dict:
        """DESIGN.md §3: name, every evaluate key, delta, and the model-only keys for models."""
        d: dict[str, Any] = {"name": self.name, "iou_type": self.iou_type}
        for k in STAT_KEYS:
            d[k] = None if self.stats is None else float(self.stats[k])
        d["per_class"] = [dict(r) for r in self.per_class]
        d["delta"] = None if self.delta is None else dict(self.delta)
        if self.kind == "model":
            d.update(params=self.params, ms_per_image=None if self.ms_per_image is None else dict(self.ms_per_image),
                     images_per_s=self.images_per_s, peak_memory_mb=self.peak_memory_mb,
                     needs_nms=self.needs_nms, duplicate_rate=self.duplicate_rate, paradigm=self.paradigm,
                     family=self.family, backend=self.backend)
        if self.error is not None:
            d["error"] = self.error
        elif self.failed_images:
            d["incomplete"] = True
            d["failed_images"] = len(self.failed_images)
            d["error"] = (f"{len(self.failed_images)} of {self.images + len(self.failed_images)} images could not "
                          "be read; they count as missed, so these numbers are a lower bound")
        return d


@dataclass
class CompareResult:
    """All runs, baseline first (``runs[0]``)."""

    runs: list[CompareRun]
    iou_type: str = "bbox"
    gt: str | None = None

    @property
    def baseline(self) -> CompareRun:
        return self.runs[0]

    @property
    def failed(self) -> list[CompareRun]:
        """Runs without numbers, or model runs on which some images could not be read."""
        return [r for r in self.runs if not r.ok or r.failed_images]

    def to_dict(self) -> dict:
        return {"runs": [r.to_dict() for r in self.runs]}

    def sorted(self, key: str | None) -> "CompareResult":
        """The baseline stays first; the other runs ordered by ``key`` (see :func:`parse_sort_key`),
        runs without a value last."""
        if not key:
            return self
        name, descending = parse_sort_key(key)
        head, rest = self.runs[:1], self.runs[1:]
        have = [r for r in rest if r.value(name) is not None]
        missing = [r for r in rest if r.value(name) is None]
        have.sort(key=lambda r: r.value(name), reverse=descending)
        return CompareResult(head + have + missing, self.iou_type, self.gt)

    def per_class_moves(self, top: int = 10) -> list[dict]:
        """Categories whose AP moved most between runs: ``{"category_id", "name", "gt_count",
        "ap": [per run, None where absent or -1], "move": max |AP - baseline AP|}``, largest first.
        Categories without ground truth (AP -1 everywhere) are left out."""
        ok = [r for r in self.runs if r.ok and r.per_class]
        if not ok:
            return []
        table: dict[int, dict] = {}
        for i, run in enumerate(self.runs):
            for row in run.per_class:
                entry = table.setdefault(int(row["category_id"]), {
                    "category_id": int(row["category_id"]), "name": row["name"], "gt_count": row["gt_count"],
                    "ap": [None] * len(self.runs)})
                entry["ap"][i] = None if row["ap"] == -1 else float(row["ap"])
        moves = []
        for entry in table.values():
            vals = [v for v in entry["ap"] if v is not None]
            if not vals:
                continue
            base = entry["ap"][0]
            if base is not None:
                move = max(abs(v - base) for v in vals)
            else:
                move = max(vals) - min(vals)
            moves.append(dict(entry, move=float(move)))
        moves.sort(key=lambda e: (-e["move"], e["name"]))
        return moves[:top] if top and top > 0 else moves


def parse_sort_key(key: str) -> tuple[str, bool]:
    """``--sort-by`` value -> (JSON key, descending). Accepts JSON keys and short names (AP,
    AP50, AR100, fps, ms, memory, dup, ...); a leading ``-`` or ``+`` forces descending or
    ascending. Default direction: best first (AP high, time/memory/duplicates low)."""
    raw = key.strip()
    forced = None
    if raw[:1] in "+-":
        forced = raw[0] == "-"
        raw = raw[1:]
    low = raw.lower()
    name = low if low in SORT_KEYS else SORT_ALIASES.get(low.replace("_", "").replace("-", ""), None)
    if name is None:
        name = SORT_ALIASES.get(low)
    if name is None:
        raise UsageError(f"invalid --sort-by '{key}': expected one of {', '.join(SORT_KEYS)} "
                         f"(or AP, AP50, AP75, APs, APm, APl, AR100, fps, ms, memory, dup)")
    descending = name not in _ASCENDING
    return name, (descending if forced is None else forced)


def deltas(stats: dict[str, float], base: dict[str, float]) -> dict[str, float | None]:
    """``stats - base`` per COCO key; 0 where both are -1, None where only one is."""
    out: dict[str, float | None] = {}
    for k in STAT_KEYS:
        a, b = float(stats[k]), float(base[k])
        if a == -1 and b == -1:
            out[k] = 0.0
        elif a == -1 or b == -1:
            out[k] = None
        else:
            out[k] = a - b
    return out
