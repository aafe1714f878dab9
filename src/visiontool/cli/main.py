"""The application, global options and the single error handler (DESIGN.md §4).

Every command module registers one function here. Nothing heavy is imported at module
level (torch, transformers, segment_anything load inside the commands), so
``visiontool --help`` stays instant.
"""
from __future__ import annotations

import os
import sys
import traceback

import click
import typer
from typer.core import TyperGroup

from visiontool import __version__
from visiontool.errors import ExitCode, VisionToolError

try:  # Typer >= 0.20 vendors its own click (typer._click) and has its own Exit/Abort
    from typer._click import exceptions as _tcx
except ImportError:  # pragma: no cover
    _tcx = click.exceptions


def _classes(*candidates) -> tuple[type, ...]:
    return tuple({c for c in candidates if isinstance(c, type)})


_EXIT = _classes(click.exceptions.Exit, getattr(typer, "Exit", None), getattr(_tcx, "Exit", None))
_ABORT = _classes(click.exceptions.Abort, getattr(typer, "Abort", None), getattr(_tcx, "Abort", None))
_CLICK_ERROR = _classes(click.exceptions.ClickException, getattr(_tcx, "ClickException", None))
_USAGE_ERROR = _classes(click.exceptions.UsageError, getattr(_tcx, "UsageError", None))
_NO_ARGS = _classes(getattr(click.exceptions, "NoArgsIsHelpError", None), getattr(_tcx, "NoArgsIsHelpError", None))
PROG = "visiontool"
_debug = {"on": bool(os.environ.get("VISIONTOOL_DEBUG"))}


def error_line(message: str) -> None:
    """The one stderr line a user error produces."""
    message = " ".join(str(message).split()) or "unknown error"
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()


class VisionToolGroup(TyperGroup):
    """A click group whose ``main`` maps every failure to one line and an exit code.

    ``program()`` (click's parsing + the command) runs with ``standalone_mode=False``;
    this ``main`` is the only place exceptions become exit codes, so CliRunner tests and
    the installed executable behave the same.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if args is None:
            args = sys.argv[1:]
        args = list(args)
        # per invocation (tests run many in one process); honoured before the group's own parsing
        _debug["on"] = bool(os.environ.get("VISIONTOOL_DEBUG")) or "--debug" in args
        try:
            rv = super().main(args=args, prog_name=prog_name or PROG, complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else ExitCode.OK
        except _EXIT as exc:
            code = exc.exit_code
        except _ABORT:
            error_line("interrupted")
            code = ExitCode.INTERRUPTED
        except _NO_ARGS:  # `visiontool` alone: Typer has printed the help; a usage error
            code = ExitCode.USAGE
        except _CLICK_ERROR as exc:  # usage errors, bad parameters
            if _debug["on"]:
                traceback.print_exc()
            msg = exc.format_message()
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            error_line(msg + hint)
            code = ExitCode.USAGE if isinstance(exc, _USAGE_ERROR) else exc.exit_code
        except VisionToolError as exc:
            if _debug["on"]:
                traceback.print_exc()
            error_line(str(exc))
            code = exc.exit_code
        except KeyboardInterrupt:
            error_line("interrupted")
            code = ExitCode.INTERRUPTED
        except BrokenPipeError:
            # the reader went away (`| head`): not an error of ours; silence the flush at exit
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            code = ExitCode.OK
        except Exception as exc:  # a bug: still one line, the traceback on --debug
            if _debug["on"]:
                traceback.print_exc()
            error_line(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
            code = ExitCode.FAILURE
        sys.exit(int(code))


app = typer.Typer(
    cls=VisionToolGroup,
    name=PROG,
    help="Object detection (DETR family) and segmentation (SAM) from the shell, with exact COCO evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Object detection (DETR family) and segmentation (SAM) from the shell, with exact COCO evaluation.

    Exit codes: 0 success; 1 runtime failure or some inputs failed; 2 usage or invalid input; 130 interrupted.
    """
    if debug:
        _debug["on"] = True


def _register() -> None:
    from visiontool.cli import commands  # noqa: F401  (each module adds its command to `app`)


def run() -> None:
    """Console-script entry point."""
    _register()
    app()


_register()
