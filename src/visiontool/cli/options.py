"""Options every command shares (one spelling, one help text, one check) and format choice.

``-f/--format``, ``-o/--output``, ``-q/--quiet``, ``--device``, ``--dtype`` mean the same in
every command. Formats default to a table on a terminal and a machine format when piped
(DESIGN.md §2), or follow ``--output``'s extension.
"""
from __future__ import annotations

import os

import typer

DEVICE_HELP = "Device: auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps."
DTYPE_HELP = ("Precision: auto (float32 on CPU, float16 on CUDA) | float32 | float16 | bfloat16. "
              "Reduced precision runs under autocast; bfloat16 is fast only on CPUs with AVX512-BF16/AMX.")

DeviceOpt = typer.Option("auto", "--device", help=DEVICE_HELP, metavar="DEVICE")
DtypeOpt = typer.Option("auto", "--dtype", help=DTYPE_HELP, metavar="DTYPE")
RUNTIME_HELP = ("Inference runtime: torch | openvino | onnxruntime | auto (OpenVINO on an x86 CPU when "
                "visiontool[openvino] is installed, else torch). openvino/onnxruntime export the model once "
                "(cached on disk) and run it on the CPU in float32.")
RuntimeOpt = typer.Option("torch", "--runtime", help=RUNTIME_HELP, metavar="RUNTIME")
QuietOpt = typer.Option(False, "--quiet", "-q",
                        help="No progress bars, timing or status lines on stderr (warnings and errors still show).")
OutputOpt = typer.Option(None, "--output", "-o", metavar="FILE",
                         help="Write the data to FILE (atomically: a temp file renamed when complete) instead of "
                              "stdout.")
PlotOpt = typer.Option(None, "--plot", metavar="FILE.png|DIR",
                       help="Write the chart to FILE.png (an image extension), or into DIR (created) under its "
                            "default name.")


def format_option(formats: tuple[str, ...], piped: str):
    return typer.Option(None, "--format", "-f", metavar="FORMAT",
                        help=f"{' | '.join(formats)}. Default: table on a terminal, {piped} when piped, or from "
                             "the --output extension.")


_EXT_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "table",
                ".mot": "mot"}


def refuse_given(flags: dict[str, bool], context: str) -> None:
    """UsageError naming the flags that were given (``flag -> given``) where they change
    nothing: ``--x, --y apply to <context>``."""
    given = [flag for flag, on in flags.items() if on]
    if given:
        from visiontool.errors import UsageError

        raise UsageError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to {context}")


def format_from_output(output: str | None, allowed: tuple[str, ...]) -> str | None:
    """The format ``--output``'s extension names (None without a file): ``.csv`` -> csv, ...

    An extension naming a format this command does not write is exit 2 (``segment -o m.csv``
    must not quietly write JSON into a .csv); an extension that names no format writes json
    with one warning; a file without an extension writes json."""
    if not output or output == "-":
        return None
    ext = os.path.splitext(output)[1].lower()
    guess = _EXT_FORMATS.get(ext)
    if guess in allowed:
        return guess
    fallback = "json" if "json" in allowed else allowed[0]
    if guess is not None:
        from visiontool.errors import UsageError

        raise UsageError(f"--output '{output}' asks for {guess}, which this command does not write "
                         f"({'|'.join(allowed)}): give --format, or another extension")
    if ext:
        from visiontool.render.console import warn

        known = ", ".join(e for e, f in _EXT_FORMATS.items() if f in allowed)
        warn(f"--output '{output}': '{ext}' names no format ({known}); writing {fallback} (--format chooses)")
    return fallback


def choose_format(fmt: str | None, output: str | None, allowed: tuple[str, ...], piped: str | None = None) -> str:
    """Explicit --format wins; else the --output extension; else table on a terminal and
    ``piped`` (default: jsonl if allowed, else json) otherwise."""
    from visiontool.io.records import validate_format

    if fmt:
        return validate_format(fmt, allowed)
    from_output = format_from_output(output, allowed)
    if from_output:
        return from_output
    from visiontool.render.console import stdout_is_tty

    if stdout_is_tty():
        return "table"
    return piped or ("jsonl" if "jsonl" in allowed else "json")


def runtime_options(runtime: str | None) -> dict:
    """``--runtime`` checked (exit 2 for an unknown name) -> the detector load options."""
    from visiontool.models.runtimes import validate

    name = validate(runtime)
    return {} if name == "torch" else {"runtime": name}


def common_checks(*, device: str | None = None, dtype: str | None = None, output: str | None = None,
                  dirs: dict[str, str | None] | None = None, files: dict[str, str | None] | None = None,
                  inputs=()) -> None:
    """The checks every command makes before any model loads: device and dtype syntax, and
    that every output destination can be written (``dirs``/``files``: flag -> path) without
    replacing one of the ``inputs``."""
    from visiontool.device import validate_device_spec, validate_dtype_spec
    from visiontool.io.output import check_not_an_input, check_output_dir, check_output_file

    if device is not None:
        validate_device_spec(device)
    if dtype is not None:
        validate_dtype_spec(dtype)
    from visiontool.io.images import max_pixels

    max_pixels()  # a bad VISIONTOOL_MAX_PIXELS fails now
    check_output_file(output, "--output")
    for flag, path in (files or {}).items():
        check_output_file(path, flag)
    for flag, path in (dirs or {}).items():
        check_output_dir(path, flag)
    check_not_an_input({"--output": output, **(files or {})}, inputs)
