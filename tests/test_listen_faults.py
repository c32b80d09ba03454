"""Faults: kill -9 of the node mid-transfer and mid-inference, then restart. Every received
instance is accounted for, and each study is processed and sent exactly once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

from autoprompt_seg.listen.queue import JobQueue
from test_listen_support import (
    NodeProc,
    StoreSCP,
    free_port,
    jobs,
    small_study,
    storescu,
    wait_until,
)

pytestmark = pytest.mark.network


def _files(spool: Path) -> set[str]:
    return {p.stem for p in (spool / "studies").glob("*/*.dcm")}


def _settled(spool: Path) -> list:  # type: ignore[type-arg]
    js = jobs(spool)
    return js if js and all(j.state in ("sent", "done", "failed") for j in js) else []


def test_kill9_mid_transfer_then_sender_retry_completes(tmp_path: Path) -> None:
    s = small_study(tmp_path / "study", seed=21, n_slices=60)
    sops = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in s.paths}
    dest = StoreSCP(tmp_path / "dest", free_port())
    port = free_port()
    args = ("--dest", f"DEST@127.0.0.1:{dest.port}", "--quiet-period", "3")
    spool = tmp_path / "spool"
    node = NodeProc(spool, port, *args)
    try:
        import subprocess

        from conftest import tool

        scu = subprocess.Popen([tool("storescu"), "-aec", "AUTOSEG", "+sd", "+r", "127.0.0.1",
                                str(port), str(s.study_dir)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        wait_until(lambda: len(_files(spool)) >= 10, 60, "10 instances in the spool", 0.02)
        node.kill9()
        assert scu.wait(60) != 0  # the transfer broke
        before = _files(spool)
        assert 10 <= len(before) < 60
        node = NodeProc(spool, port, *args)  # restart
        r = storescu(port, s.study_dir)  # the sender's retry: the whole study again
        assert r.returncode == 0, r.stderr
        (job,) = wait_until(lambda: _settled(spool), 120, "the study to be sent")
        assert job.state == "sent", job.reason
        q = JobQueue(spool / "queue.sqlite")
        rows = {i["sop_uid"] for i in q.instances()}
        q.close()
        assert _files(spool) == sops == rows  # every instance, once, indexed
        assert job.instances == 60
        assert job.duplicates >= len(before) - 1  # the re-sent ones were recognised
        assert list((spool / "tmp").iterdir()) == []
        (seg,) = dest.segs()
        assert str(seg.StudyInstanceUID) == s.study_uid
    finally:
        node.stop()
        dest.stop()


def test_kill9_mid_inference_then_restart_sent_exactly_once(pycerr_root: Path,
                                                              tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    for p in (pycerr_root / "pat_2").iterdir():
        if dcmread(p, stop_before_pixels=True).Modality == "CT":
            shutil.copy(p, study / p.name)
    dest = StoreSCP(tmp_path / "dest", free_port())
    port = free_port()
    # --min-score 0: pat_2 is kept small for speed; its tumour scores below the default
    args = ("--dest", f"DEST@127.0.0.1:{dest.port}", "--quiet-period", "0.5", "--min-score", "0")
    spool = tmp_path / "spool"
    node = NodeProc(spool, port, *args)
    try:
        assert storescu(port, study).returncode == 0
        wait_until(lambda: any(j.state == "running" for j in jobs(spool)), 60,
                   "the worker to start inference", 0.05)
        node.kill9()
        (job,) = jobs(spool)
        assert job.state == "running" and not dest.segs()
        node = NodeProc(spool, port, *args)
        (job,) = wait_until(lambda: _settled(spool), 180, "the study after the restart")
        assert job.state == "sent", job.reason
        assert job.attempts == 2 and job.revision == 1
        assert len(dest.segs()) == 1  # sent exactly once
        assert "requeued" in node.log() or "recovered" in node.log()
        q = JobQueue(spool / "queue.sqlite")
        (d,) = q.deliveries(job.id)
        q.close()
        assert d.state == "sent" and d.attempts == 1
    finally:
        node.stop()
        dest.stop()
