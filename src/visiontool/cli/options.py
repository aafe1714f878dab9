"""Options shared by several commands, and format choice."""
from __future__ import annotations

import os

import typer

DEVICE_HELP = "Device: auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps."
DTYPE_HELP = ("Precision: auto (float32 on CPU, float16 on CUDA) | float32 | float16 | bfloat16. "
              "Reduced precision runs under autocast; bfloat16 is fast only on CPUs with AVX512-BF16/AMX.")

DeviceOpt = typer.Option("auto", "--device", help=DEVICE_HELP, metavar="DEVICE")
DtypeOpt = typer.Option("auto", "--dtype", help=DTYPE_HELP, metavar="DTYPE")
QuietOpt = typer.Option(False, "--quiet", "-q",
                        help="No progress bars, timing or status lines on stderr (warnings and errors still show).")
OutputOpt = typer.Option(None, "--output", "-o", metavar="FILE",
                         help="Write the data to FILE (atomically: a temp file renamed when complete) instead of "
                              "stdout.")

_EXT_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "table"}


def choose_format(fmt: str | None, output: str | None, allowed: tuple[str, ...]) -> str:
    """Explicit --format wins; else the --output extension; else table on a terminal, jsonl otherwise."""
    from visiontool.io.records import validate_format
    from visiontool.render.console import stdout_is_tty

    if fmt:
        return validate_format(fmt, allowed)
    if output and output != "-":
        guess = _EXT_FORMATS.get(os.path.splitext(output)[1].lower())
        if guess in allowed:
            return guess
        return "json" if "json" in allowed else allowed[0]
    return "table" if stdout_is_tty() else ("jsonl" if "jsonl" in allowed else "json")
