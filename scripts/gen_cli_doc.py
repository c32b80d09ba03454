#!/usr/bin/env python
"""Regenerate docs/cli.md from the commands' --help (tests/test_docs.py checks it is current).

    .venv/bin/python scripts/gen_cli_doc.py > docs/cli.md
"""

from __future__ import annotations

import click
from click.testing import CliRunner

from autoprompt_seg.cli import main


def render() -> str:
    runner = CliRunner()
    parts = ["# CLI reference", "",
             "Generated from `--help` by `scripts/gen_cli_doc.py`; do not edit by hand.", ""]

    def walk(cmd: click.Command, path: list[str]) -> None:
        res = runner.invoke(main, [*path[1:], "--help"], prog_name="autoseg",
                            terminal_width=100)
        parts.extend([f"## `{' '.join(path)}`", "", "```", res.output.rstrip(), "```", ""])
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], [*path, name])

    walk(main, ["autoseg"])
    return "\n".join(parts)


if __name__ == "__main__":
    print(render())
