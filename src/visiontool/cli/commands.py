"""Imports every command module so each registers itself on the app."""
import importlib

for _name in ("detect", "segment", "evaluate", "compare", "env"):
    try:
        importlib.import_module(f"visiontool.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a command module not present in this build
        if _exc.name != f"visiontool.cli.{_name}":
            raise
