"""The application, global options and the single error handler (DESIGN.md §4).

Every command module registers one function here, and is imported only when its command
runs or the commands are listed (VisionToolGroup.get_command / list_commands). Nothing
heavy is imported at module level (torch, transformers, segment_anything load inside the
commands), so ``visiontool --help`` stays instant.
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


class _Direct:
    """A parameter's coercion without pydantic when the value needs none.

    Typer (>= 0.2x) coerces each parameter value through a pydantic TypeAdapter built on
    first use, so merely parsing ``--help`` (value None) or a str option imports pydantic:
    ~0.1 s of every invocation. None and values that already have the parameter's type
    (str, bool) come back unchanged, as Typer's adapters return them; anything else (e.g.
    an environment variable's text for a flag) goes to Typer's own coercion."""

    def __init__(self, param):
        self.param, self.full = param, None

    def coerce(self, value, param=None, ctx=None):
        if value is None or type(value) is self.param.type_descriptor.annotation:
            return value
        if self.full is None:
            from typer.core import build_runtime_param

            self.full = build_runtime_param(self.param.type_descriptor)
        return self.full.coerce(value, param=param, ctx=ctx)


def direct_coercion(params) -> None:
    """Give the single-valued str/bool parameters of a Typer command a :class:`_Direct`
    coercion (no-op on Typer versions without runtime coercion)."""
    for p in params:
        ann = getattr(getattr(p, "type_descriptor", None), "annotation", None)
        if (ann in (str, bool) and hasattr(p, "get_runtime_param") and getattr(p, "_runtime_param", 0) is None
                and not p.multiple and p.nargs == 1):
            p._runtime_param = _Direct(p)


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

    def parse_args(self, ctx, args):
        direct_coercion(self.get_params(ctx))
        return super().parse_args(ctx, args)

    # commands load lazily: `visiontool evaluate` imports only evaluate's module; listing
    # the commands (--help, a mistyped name's suggestions) imports them all

    def _add_registered(self) -> None:
        from typer.main import get_command_from_info

        for info in app.registered_commands:
            name = info.name or info.callback.__name__.replace("_", "-")
            if name not in self.commands:
                self.add_command(get_command_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                                                       rich_markup_mode=app.rich_markup_mode), name)

    def get_command(self, ctx, cmd_name):
        if cmd_name not in self.commands:
            from visiontool.cli import commands

            if not commands.import_command(cmd_name):
                commands.import_all()
            self._add_registered()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx):
        from visiontool.cli import commands

        commands.import_all()
        self._add_registered()
        names = super().list_commands(ctx)
        return [n for n in commands.NAMES if n in names] + [n for n in names if n not in commands.NAMES]


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


def run() -> None:
    """Console-script entry point (commands are imported when invoked: VisionToolGroup)."""
    app()
