"""The application, global options and the single error handler (DESIGN.md §4).

Each command lives in its own module with its own ``typer.Typer()`` and is imported only
when it runs or the commands are listed: :class:`LazyGroup` is Click's documented lazy
subcommand recipe (override ``list_commands`` / ``get_command``) on Typer's documented
custom group class (``typer.Typer(cls=...)``), and each module's app becomes a command
through ``typer.main.get_command``. Nothing heavy is imported at module level (torch,
transformers, segment_anything load inside the commands), so ``visiontool --help`` stays
fast and torch-free.

:meth:`LazyGroup.main` is the only place exceptions become exit codes and one stderr line;
CliRunner tests and the installed executable go through it alike. SIGINT and SIGTERM raise
:class:`~visiontool.errors.Interrupted` (not KeyboardInterrupt, which Typer turns into a
silent exit): ``finally`` blocks remove temporary files, every line already flushed stays,
and the exit code is 130.
"""
from __future__ import annotations

import importlib
import importlib.util
import io
import math
import os
import signal
import sys
import traceback

import typer
from typer.core import TyperGroup

from visiontool import __version__
from visiontool.errors import ExitCode, Interrupted, UsageError, VisionToolError
from visiontool.render.text import clean, stderr_line

PROG = "visiontool"
# command -> (module, one-line help shown by `visiontool --help` without importing the module)
COMMANDS = {
    "detect": ("visiontool.cli.detect", "Detect objects in images, videos and streams (any --model family)."),
    "segment": ("visiontool.cli.segment", "Segment with the SAM family: points, boxes, text, everything, video."),
    "evaluate": ("visiontool.cli.evaluate", "COCO AP/AR (pycocotools' numbers) or MOT metrics for predictions."),
    "compare": ("visiontool.cli.compare", "Prediction files or models side by side on one ground truth."),
    "export": ("visiontool.cli.export", "Export a model to OpenVINO or ONNX (a deployable directory)."),
    "merge": ("visiontool.cli.merge", "Gather sharded outputs of --engine ray into one file."),
    "env": ("visiontool.cli.env", "Versions, devices, the dtype auto picks, caches."),
}
_debug = {"on": bool(os.environ.get("VISIONTOOL_DEBUG"))}
_no_teardown = {"on": False}


def exit_without_teardown() -> None:
    """Called by a command once nothing it holds needs closing or flushing at exit beyond
    stdout and stderr (evaluate, after scoring): the console entry point (:func:`run`) then
    ends the process with ``os._exit`` instead of freeing every object and finalizing the
    interpreter -- work the OS does at once. After a COCO-val-sized segm evaluation that is
    ~20 ms of freeing hotcoco's ground truth and ~10-20 ms of interpreter exit. CliRunner tests
    call the app, not :func:`run`, and are unaffected."""
    _no_teardown["on"] = True


def error_line(message: str) -> None:
    """The one stderr line a user error produces (nothing when stderr's reader went away)."""
    stderr_line(f"{PROG}: error: {clean(message) or 'unknown error'}")


def _on_signal(signum, frame):  # noqa: ARG001 - the signal handler signature
    raise Interrupted("interrupted" if signum == signal.SIGINT else "terminated")


class _ClosedStdout(io.TextIOBase):
    """``sys.stdout`` of a process started with descriptor 1 closed (``visiontool ... >&-``):
    Python leaves it None, and the first write of data failed inside whatever wrote it. Writing
    is now a usage error naming the cause; a command given ``-o FILE`` writes nothing here."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        from visiontool.errors import UsageError

        raise UsageError(f"stdout is closed: nowhere to write {self.what}")


# the flags that name a file or directory: given an empty value (an unset shell variable,
# `--gt "$GT"`), each would otherwise mean "not given" or the current directory
PATH_FLAGS = frozenset({"-o", "--output", "--output-dir", "--gt", "--pred", "--images", "--boxes-from", "--prompts",
                        "--mask-input", "--masks-dir", "--cache-dir", "--plot", "--save-crops", "--save-preds",
                        "--save-viz", "--name", "-n", "--address"})


def _no_empty_paths(args: list[str]) -> None:
    """UsageError for ``--gt ''`` or ``--gt=`` (one of PATH_FLAGS with an empty value)."""
    for i, arg in enumerate(args):
        if arg == "--":
            return
        flag, eq, value = arg.partition("=")
        if flag not in PATH_FLAGS:
            continue
        if not eq:
            if i + 1 >= len(args):
                continue  # click reports the missing value
            value = args[i + 1]
        if not value.strip():
            raise UsageError(f"{flag} was given an empty value ('{value}'); name a file or directory"
                             if flag not in ("--name", "-n", "--address") else f"{flag} was given an empty value")


def _stdout_if_closed(args: list[str]) -> None:
    """Put /dev/null on descriptor 1 if the process started with it closed (so no file this
    process opens gets descriptor 1, where native code's prints would land) and make
    ``sys.stdout`` a :class:`_ClosedStdout` naming what could not be written: the help and the
    version have no ``-o``, a command's data has."""
    if sys.stdout is not None:
        return
    if "--version" in args:
        what = "the version"
    elif "--help" in args or "-h" in args:
        what = "the help"
    else:
        what = "the output (give -o FILE)"
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        if fd != 1:
            os.dup2(fd, 1)
            os.close(fd)
    except OSError:
        pass
    sys.stdout = _ClosedStdout(what)


class _Signals:
    """SIGINT/SIGTERM raise Interrupted while a command runs (main thread only)."""

    def __enter__(self):
        self.saved = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread (an embedding application): leave signals alone
            pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False


def _finite_numbers_only(kind) -> None:
    """Make a float option type refuse ``nan`` and ``inf`` (exit 2): click's ranges let ``nan``
    through (every comparison with it is false) and ``inf`` wherever there is no upper bound."""
    convert = kind.convert
    if getattr(convert, "finite_only", False) or getattr(kind, "name", "") not in ("float", "float range"):
        return

    def finite(value, param, ctx):
        number = convert(value, param, ctx)
        if isinstance(number, float) and not math.isfinite(number):
            kind.fail(f"{value!r} is not a finite number.", param, ctx)
        return number

    finite.finite_only = True
    kind.convert = finite


class _ReaderGone(Exception):
    """A command's BrokenPipeError, carried past click, which would turn it into a silent exit 1."""


class LazyGroup(TyperGroup):
    """visiontool's commands, imported on demand, and the one place errors become exit codes."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise _ReaderGone() from exc

    def list_commands(self, ctx):
        return [name for name, (module, _) in COMMANDS.items() if importlib.util.find_spec(module) is not None]

    def resolve_command(self, ctx, args):
        name = args[0] if args else ""
        if name and name not in COMMANDS and not name.startswith("-") and not ctx.resilient_parsing:
            import difflib

            close = difflib.get_close_matches(name.lower(), self.list_commands(ctx), n=1)
            if close:  # `visiontool detecc`, `visiontool Detect`
                ctx.fail(f"No such command '{name}'; did you mean '{close[0]}'?")
        return super().resolve_command(ctx, args)

    def get_command(self, ctx, cmd_name):
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(entry[0])
        command = typer.main.get_command(module.app)
        for param in command.params:
            _finite_numbers_only(param.type)
        return command

    def format_commands(self, ctx, formatter):
        """The command list from COMMANDS' one-liners: `visiontool --help` imports no command."""
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        # per invocation (tests run many in one process); honoured before the group's own parsing
        _debug["on"] = bool(os.environ.get("VISIONTOOL_DEBUG")) or "--debug" in args
        _no_teardown["on"] = False
        _stdout_if_closed(args)
        code: int = ExitCode.OK
        with _Signals():
            try:
                _no_empty_paths(args)
                rv = super().main(args=args, prog_name=prog_name or PROG, complete_var=complete_var,
                                  standalone_mode=False, **extra)
                code = rv if isinstance(rv, int) else ExitCode.OK
            except typer.Exit as exc:
                code = exc.exit_code
            except (typer.Abort, Interrupted, KeyboardInterrupt) as exc:
                error_line(str(exc) if isinstance(exc, Interrupted) else "interrupted")
                code = ExitCode.INTERRUPTED
            except typer.TyperException as exc:  # click's usage errors (Typer's own click)
                code = _usage_error(exc)
            except VisionToolError as exc:
                _trace()
                error_line(str(exc))
                code = exc.exit_code
            except RecursionError:
                _trace()
                error_line("input nested too deeply to process")
                code = ExitCode.USAGE
            except (BrokenPipeError, _ReaderGone):
                _silence_gone_readers()  # the reader went away (`| head`): not an error of ours
                code = ExitCode.OK
            except Exception as exc:  # a bug: still one line, the traceback on --debug
                _trace()
                error_line(_disk_full(exc)
                           or f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
                code = ExitCode.FAILURE
        sys.exit(int(code))


def _disk_full(exc: Exception) -> str | None:
    """The error line for a write that found the disk (or the quota) full: not a bug of ours."""
    from visiontool.io.output import is_disk_full

    if not is_disk_full(exc):
        return None
    where = f"'{exc.filename}'" if exc.filename else "the output"
    return f"cannot write {where}: {exc.strerror or exc}"


def _trace() -> None:
    if _debug["on"]:
        traceback.print_exc()


def _usage_error(exc) -> int:
    _trace()
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    error_line(exc.format_message() + hint)
    code = int(getattr(exc, "exit_code", ExitCode.USAGE))
    return ExitCode.USAGE if code == 2 or ctx is not None else code


def _silence_gone_readers() -> None:
    """Point stdout, and stderr if its reader went away too (``2>&1 | head``), at /dev/null, so
    the flush at exit neither fails nor changes the exit code."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
            continue
        except (OSError, ValueError, AttributeError):
            pass
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass


app = typer.Typer(
    cls=LazyGroup,
    name=PROG,
    help="Object detection and segmentation from the shell, with exact COCO evaluation.",
    invoke_without_command=True,
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
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Object detection and segmentation from the shell, with exact COCO evaluation.

    Exit codes: 0 success; 1 runtime failure or some inputs failed; 2 usage or invalid input; 130 interrupted.
    """
    if debug:
        _debug["on"] = True
    if ctx.invoked_subcommand is None:  # `visiontool` alone: the help, and a usage error
        sys.stderr.write(ctx.get_help() + "\n")
        raise typer.Exit(ExitCode.USAGE)


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as exc:
        if not _no_teardown["on"]:
            raise
        code = exc.code
        from visiontool.io.readers import remove_spooled

        remove_spooled()  # atexit would, but os._exit runs no exit handlers
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader gone, a closed stream: nothing left to save
                pass
        os._exit(code if isinstance(code, int) else 0 if code is None else ExitCode.FAILURE)
