"""Errors that carry their exit code (DESIGN.md §4).

Domain code raises these; the single handler in :mod:`visiontool.cli.main` prints
``visiontool: error: <message>`` on one stderr line and exits with ``exit_code``.
"""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # runtime failure, or some inputs failed while the rest were processed
    USAGE = 2  # bad flag, missing file, malformed input
    INTERRUPTED = 130


class VisionToolError(Exception):
    """Base class: a failure the user should see as one line, not a traceback."""

    exit_code: ExitCode = ExitCode.FAILURE


class UsageError(VisionToolError):
    """A bad flag value, a missing file, an unknown device: the user must change the command."""

    exit_code = ExitCode.USAGE


class InvalidInputError(UsageError):
    """An input file exists but its content is invalid (malformed JSON, bad record)."""


class ModelLoadError(VisionToolError):
    """Weights or configuration could not be obtained (offline, missing, corrupt)."""


class ImageLoadError(VisionToolError):
    """One image could not be read or decoded; batch commands report it and go on."""


class PartialFailure(VisionToolError):
    """Some inputs failed (each already reported on stderr) while the others were processed."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM while a command runs. A BaseException, like KeyboardInterrupt, so no
    ``except Exception`` on the way swallows it; ``finally`` blocks still clean up."""

    exit_code = ExitCode.INTERRUPTED


class MissingExtraError(UsageError):
    """An optional extra (ultralytics, ray, openvino, onnxruntime, ...) is not installed."""

    def __init__(self, what: str, extra: str, module: str | None = None):
        super().__init__(f"{what} needs the optional extra '{extra}': pip install 'visiontool[{extra}]'"
                         + (f" (module '{module}' is not installed)" if module else ""))


def require(module: str, what: str, extra: str):
    """Import ``module`` or raise MissingExtraError (exit 2 with the install line)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the extra is there but broken: a real error, not a missing install
        raise MissingExtraError(what, extra, module) from None
