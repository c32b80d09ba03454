"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed (a crash
never leaves a half-written file). Used by training runs and the embedding cache."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through ``write(binary file)`` atomically: a temporary file in the
    same folder, fsynced, then renamed (a crash never leaves a half-written file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))
