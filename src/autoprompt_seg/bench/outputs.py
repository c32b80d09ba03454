"""Writing a bench output folder's summaries (``cases.csv``, ``lesions.csv``,
``summary.json``, ``summary.md``, ``report.html``) from its JSONL rows: the one place that
uses both :mod:`.report` (tables, statistics, Markdown) and :mod:`.html` (the HTML report,
built on :mod:`.report`)."""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any

from .html import render_html
from .report import (
    CASE_COLUMNS,
    REPORT_HTML,
    SUMMARY_MD,
    _write_csv,
    latest_rows,
    markdown,
    read_costs,
    summarise,
    write_text_atomic,
)
from .rows import CASES_FILE, LESIONS_FILE, read_rows

log = logging.getLogger(__name__)


def write_outputs(out_dir: str | Path) -> dict[str, Any]:
    """(Re)write ``cases.csv``, ``lesions.csv``, ``summary.json``, ``summary.md`` and
    ``report.html`` from the JSONL files (and ``costs.jsonl`` if present); return the
    summary. A ``report.md`` left by an earlier version (now ``summary.md``) is removed."""
    out = Path(out_dir)
    rows = read_rows(out / CASES_FILE)
    done = {(r.get("config_hash"), r.get("case_id")) for r in rows}
    # keep lesion rows of completed cases only, once (a crash between the two appends
    # can leave a case's lesion rows written twice; they are identical)
    lrows = list({json.dumps(r, sort_keys=True): r for r in read_rows(out / LESIONS_FILE)
                  if (r.get("config_hash"), r.get("case_id")) in done}.values())
    _write_csv(out / "cases.csv", latest_rows(rows), first=CASE_COLUMNS)
    _write_csv(out / "lesions.csv", lrows)
    summary = summarise(rows, read_costs(out))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    write_text_atomic(out / SUMMARY_MD, markdown(summary, rows, generated=generated))
    write_text_atomic(out / REPORT_HTML, render_html(out, summary, rows, generated=generated))
    old = out / "report.md"
    if old.is_file() and old.read_text(encoding="utf-8", errors="replace").startswith(
            "# Benchmark report"):
        old.unlink()
        log.info("removed %s (now %s)", old, SUMMARY_MD)
    log.info("wrote %s and %s", out / SUMMARY_MD, out / REPORT_HTML)
    return summary
