"""The command modules, imported on demand: each registers its command on the app when
imported, and a command's module is named after the command."""
import importlib

NAMES = ("detect", "segment", "evaluate", "compare", "env")  # the order `--help` lists them in


def import_command(name: str) -> bool:
    """Import the module of command ``name`` (False: not a command of this build)."""
    if name not in NAMES:
        return False
    try:
        importlib.import_module(f"visiontool.cli.{name}")
    except ModuleNotFoundError as exc:  # a command module not present in this build
        if exc.name != f"visiontool.cli.{name}":
            raise
        return False
    return True


def import_all() -> None:
    for name in NAMES:
        import_command(name)
