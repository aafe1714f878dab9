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


class BrokenExtraError(MissingExtraError):
    """An optional extra is installed but does not import (a missing native library, a
    dependency of the wrong version): exit 2, saying so rather than "not installed"."""

    def __init__(self, what: str, extra: str, module: str, reason: str):  # noqa: D107
        UsageError.__init__(self, f"{what} needs the optional extra '{extra}', which is installed but does not "
                                  f"import ('{module}': {reason}); reinstall it: pip install --force-reinstall "
                                  f"'visiontool[{extra}]'")


def require(module: str, what: str, extra: str):
    """Import ``module`` or raise MissingExtraError (exit 2 with the install line), or
    BrokenExtraError when it is there but fails to import."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        gone = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if gone and (module == gone or module.startswith(gone + ".")):  # the module or a package above it
            raise MissingExtraError(what, extra, module) from None
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BrokenExtraError(what, extra, module, reason) from exc
