"""``autoseg listen`` / ``autoseg queue`` command lines (registered on a test group)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from autoprompt_seg.cli.listen import listen, queue, register
from autoprompt_seg.listen.queue import JobQueue
from autoprompt_seg.listen.spool import Spool


@pytest.fixture(scope="module")
def group() -> click.Group:
    @click.group()
    def g() -> None:
        """test group"""

    register(g)
    return g


def test_help_has_examples(group: click.Group) -> None:
    r = CliRunner().invoke(group, ["listen", "--help"])
    assert r.exit_code == 0
    for opt in ("--aet", "--port", "--spool", "--dest", "--allow", "--workers",
                "--quiet-period", "--config", "Examples:", "echoscu"):
        assert opt in r.output
    r = CliRunner().invoke(group, ["queue", "--help"])
    assert r.exit_code == 0 and "retry" in r.output and "forget" in r.output
    assert listen.name == "listen" and queue.name == "queue"


def _spool(tmp_path: Path) -> tuple[Spool, JobQueue, int]:
    sp = Spool(tmp_path / "spool")
    q = JobQueue(sp.db_path)
    sp.store("1.2.3", "1.2.3.1", b"x")
    q.record_instance(study_uid="1.2.3", series_uid="1.2.4", sop_uid="1.2.3.1",
                      sop_class="1.2.840.10008.5.1.4.1.1.2", path="p", size=1,
                      calling_aet="T", now=1.0)
    q.queue_complete(0, set(), now=2.0)
    job = q.claim("w")
    assert job is not None
    q.fail(job, "bad data: test reason", retry_in=None)
    return sp, q, job.id


def test_queue_list_retry_forget(group: click.Group, tmp_path: Path) -> None:
    sp, q, jid = _spool(tmp_path)
    run = CliRunner().invoke
    r = run(group, ["queue", "list", "--spool", str(sp.root)])
    assert r.exit_code == 0 and "failed" in r.output and "test reason" in r.output
    r = run(group, ["queue", "list", "--spool", str(sp.root), "--json"])
    data = json.loads(r.output)
    assert data["jobs"][0]["state"] == "failed" and data["counts"]["failed"] == 1
    r = run(group, ["queue", "retry", str(jid), "--spool", str(sp.root)])
    assert r.exit_code == 0 and "queued" in r.output
    assert q.get(jid).state == "queued"  # type: ignore[union-attr]
    r = run(group, ["queue", "forget", str(jid), "--spool", str(sp.root)])
    assert r.exit_code == 0 and "forgotten" in r.output
    assert q.jobs() == [] and not sp.study_dir("1.2.3").exists()


def test_standalone_errors_name_argument_and_value(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "autoprompt_seg.cli.listen"]
    r = subprocess.run([*cmd, "listen", "--spool", str(tmp_path / "s"), "--dest", "nowhere"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and "'dest'" in r.stderr and "'nowhere'" in r.stderr
    r = subprocess.run([*cmd, "queue", "list", "--spool", str(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 78 and "no job queue" in r.stderr
    r = subprocess.run([*cmd, "queue", "retry", "7", "--spool", str(_spool(tmp_path)[0].root)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and "no job 7" in r.stderr
