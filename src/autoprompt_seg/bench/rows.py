"""The bench's JSONL row files (``cases.jsonl``, ``lesions.jsonl``, ``costs.jsonl``):
appended durably by the runner, read back by the runner (resume) and the report."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CASES_FILE = "cases.jsonl"
LESIONS_FILE = "lesions.jsonl"
COSTS_FILE = "costs.jsonl"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a truncated last line (a crash mid-write) is ignored."""
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not valid JSON (interrupted write?); ignored", path,
                        i + 1)
    return rows


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows as JSON lines, durably; a truncated last line is closed first so the
    new rows start on a line of their own."""
    needs_newline = False
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        if needs_newline:
            f.write("\n")
        for r in rows:
            f.write(json.dumps(r, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _json_default(o: object) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)
