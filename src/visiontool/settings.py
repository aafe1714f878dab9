"""Settings read from the environment (``VISIONTOOL_*``): one parser, one error line each."""
from __future__ import annotations

import os

from visiontool.errors import UsageError


def whole_number_env(name: str, expected: str) -> int | None:
    """The variable ``name`` as a whole number >= 1; None when unset or blank. Anything else
    (``abc``, ``2.5``, ``0``, ``-5``) is a UsageError (exit 2): ``NAME='raw': expected <expected>``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{name}='{raw}': expected {expected}")
    return value
