"""The ``autoseg`` command: the only code that prints or exits.

One module per command group: ``app`` (the root group: predict, inspect, backends, demo),
``bench``, ``detector``, ``listen`` (listen and queue), ``train``, ``weights``; ``common``
holds what they share (context, the error wrapper, option decorators) and imports none of
them. ``main`` is loaded on first access so that ``python -m autoprompt_seg.cli.listen``
does not import the whole command tree first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    if name == "main":
        from .app import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
