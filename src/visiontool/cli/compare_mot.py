"""`visiontool compare --mot`: tracking runs side by side (the body of the ``--mot`` branch of
cli/compare.py, kept here so that command only routes to it).

stdout carries the data (the comparison table, or its JSON); progress lines, warnings and
per-run errors go to stderr. ``--runtime`` applies to the ``--model`` runs as it does in a
COCO comparison (the detector's cached export). Exit 1 when a model run failed (its row
says why; the other runs are still scored), 2 for bad flags or files.
"""
from __future__ import annotations

import json
from typing import Optional

from visiontool.errors import UsageError

COCO_ONLY = ("--iou-type", "--per-class", "--images", "--save-preds", "--plot", "--sort-by", "--backend", "--lenient")


def run(gt: str, preds: list[str], *, models: list[str] | None = None, video: Optional[str] = None,
        trackers: list[str] | None = None, names: list[str] | None = None, preproc: str = "auto",
        threshold: float = 0.5, max_det: int = 100, batch_size: int = 1, device: str = "auto", dtype: str = "auto",
        runtime: str = "torch", fmt: Optional[str] = None, output: Optional[str] = None, quiet: bool = False,
        coco_flags: dict | None = None) -> None:
    """Score MOT prediction files / (model x tracker) runs on ``video`` against MOT ground truth
    ``gt`` and print them. ``coco_flags``: {flag: given?} of compare's COCO-only options (exit 2
    when one is given with --mot)."""
    from visiontool.cli.main import error_line
    from visiontool.cli.options import choose_format, common_checks, runtime_options
    from visiontool.errors import PartialFailure
    from visiontool.io.output import open_output
    from visiontool.render.console import info, print_tables, set_quiet, warn
    from visiontool.render.mot_tables import comparison_table
    from visiontool.services.compare_tracking import compare_tracking

    used = [flag for flag, given in (coco_flags or {}).items() if given]
    if used:
        raise UsageError(f"{', '.join(used)} appl{'y' if len(used) > 1 else 'ies'} to COCO comparisons, not --mot")
    out_format = choose_format(fmt, output, ("table", "json"))
    common_checks(device=device, dtype=dtype, output=output, inputs=[gt, *preds, video])
    # an unknown runtime: exit 2 before any run; a missing extra: exit 2 when the first model loads
    load_options = runtime_options(runtime)
    set_quiet(quiet)
    result = compare_tracking(gt, list(preds or []), models=list(models or []), video=video,
                              trackers=list(trackers or []) or None, names=list(names or []), preproc=preproc,
                              threshold=threshold, max_det=max_det, batch_size=batch_size, device=device,
                              dtype=dtype, load_options=load_options, on_event=info, warn=warn)
    for line in result.diagnostics:
        warn(line)
    for r in result.failed:
        error_line(f"{r.name}: {r.extra['error']}")
    with open_output(output) as fh:
        if out_format == "json":
            fh.write(json.dumps(result.to_dict()) + "\n")
        else:
            print_tables(fh, comparison_table(result))
    if result.failed:
        raise PartialFailure(f"{len(result.failed)} of {len(result.runs)} runs failed: "
                             f"{', '.join(r.name for r in result.failed)} (see their rows)")
