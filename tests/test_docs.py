"""The docs match the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_cli_doc", ROOT / "scripts" / "gen_cli_doc.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current.strip() == mod.render().strip(), (
        "docs/cli.md is stale: run `.venv/bin/python scripts/gen_cli_doc.py > docs/cli.md`")


def test_readme_starts_with_the_two_commands():
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.strip()]
    fence = lines.index("```bash")
    assert lines[fence + 1].startswith("make run")
    assert lines[fence + 2].startswith("make test")
    assert fence <= 2
