"""Pieces shared by the ``autoseg`` command modules (cli.py and its sub-command groups)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import EXIT_CODES

F = TypeVar("F", bound=Callable[..., Any])

#: The exit-code table shown at the end of every command's --help.
EXIT_HELP = "\b\nExit codes:\n" + "\n".join(f"  {k:>3}  {v}" for k, v in EXIT_CODES.items())


def handled(f: F) -> F:
    """Apply ``cli.handle_errors`` at call time (no import cycle with cli.py)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .cli import handle_errors

        return handle_errors(f)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
