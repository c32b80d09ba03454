"""The node as a subprocess with real peers on loopback: dcmtk's storescu sends, storescp
receives the SEG; a destination down then up; a study failing geometry; 4 senders at once."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from conftest import tool
from test_listen_support import (
    NodeProc,
    StoreSCP,
    echo_ok,
    free_port,
    jobs,
    seg_study_refs,
    small_study,
    storescu,
    wait_until,
)

pytestmark = pytest.mark.network


def _ct_only(src: Path, dst: Path) -> list[Any]:
    """Copy the CT files of a study (what a scanner sends) and return their headers."""
    dst.mkdir(parents=True)
    out = []
    for p in sorted(src.iterdir()):
        ds = dcmread(p, stop_before_pixels=True)
        if ds.Modality == "CT":
            shutil.copy(p, dst / p.name)
            out.append(ds)
    return out


def _done(spool: Path, n: int = 1) -> list[Any]:
    js = jobs(spool)
    return js if len(js) >= n and all(j.state in ("sent", "done", "failed") for j in js) else []


def test_storescu_pycerr_study_seg_to_storescp(pycerr_root: Path, tmp_path: Path) -> None:
    tool("storescu")
    dciodvfy = tool("dciodvfy")
    headers = _ct_only(pycerr_root / "pat_2", tmp_path / "study")
    dest = StoreSCP(tmp_path / "dest", free_port())
    # pat_2's central tumour scores below the default operating point; this test is about
    # the transport, so every candidate is segmented (and --min-score is exercised)
    node = NodeProc(tmp_path / "spool", free_port(), "--dest", f"DEST@127.0.0.1:{dest.port}",
                    "--quiet-period", "1", "--min-score", "0")
    try:
        r = storescu(node.port, tmp_path / "study")
        assert r.returncode == 0, r.stderr
        (job,) = wait_until(lambda: _done(node.spool), 180, "the study to be processed and sent")
        assert job.state == "sent", (job.reason, node.log())
        assert job.instances == len(headers) and job.lesions and job.lesions >= 1
        (seg,) = dest.segs()
        study, refs = seg_study_refs(seg)
        assert study == headers[0].StudyInstanceUID
        assert refs <= {str(h.SOPInstanceUID) for h in headers} and refs
        assert str(seg.SOPInstanceUID) == job.seg_uid
        seg_file = next(p for p in dest.out.iterdir() if p.name.startswith("SG"))
        v = subprocess.run([dciodvfy, str(seg_file)], capture_output=True, text=True, timeout=120)
        errors = [ln for ln in (v.stdout + v.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, "\n".join(errors)
        assert not any(node.spool.joinpath("outbox").iterdir())  # accepted: outbox emptied
        log = node.log()
        assert "association from STORESCU" in log and "complete:" in log
        assert "PatientName" not in log and str(headers[0].PatientName) not in log
    finally:
        node.stop()
        dest.stop()


def test_destination_down_then_up(tmp_path: Path) -> None:
    s = small_study(tmp_path / "study", seed=1)
    port = free_port()
    cfg = tmp_path / "listen.toml"
    cfg.write_text(f'[listen]\nquiet_period = 0.5\nretry_backoff = 0.5\nretry_backoff_max = 1.0\n'
                   f'dest = ["DEST@127.0.0.1:{port}"]\n')
    node = NodeProc(tmp_path / "spool", free_port(), "--config", str(cfg))
    dest = None
    try:
        assert storescu(node.port, s.study_dir).returncode == 0
        from autoprompt_seg.listen.queue import JobQueue

        def failed_once() -> bool:
            q = JobQueue(node.spool / "queue.sqlite")
            try:
                return any(d.attempts >= 1 and d.state == "pending"
                           for j in q.jobs() for d in q.deliveries(j.id))
            finally:
                q.close()

        wait_until(failed_once, 120, "a failed delivery attempt")
        assert len(list((node.spool / "outbox").iterdir())) == 1  # kept until accepted
        dest = StoreSCP(tmp_path / "dest", port)
        (job,) = wait_until(lambda: _done(node.spool), 60, "delivery after the retry")
        assert job.state == "sent", job.reason
        (seg,) = dest.segs()
        assert str(seg.StudyInstanceUID) == s.study_uid
        assert "next try in" in node.log()
    finally:
        node.stop()
        if dest:
            dest.stop()


def test_geometry_failure_recorded_node_keeps_serving(tmp_path: Path) -> None:
    bad = small_study(tmp_path / "bad", seed=2)
    bad.paths[10].unlink()  # a missing slice in the middle of the series
    good = small_study(tmp_path / "good", seed=3)
    dest = StoreSCP(tmp_path / "dest", free_port())
    node = NodeProc(tmp_path / "spool", free_port(), "--dest", f"DEST@127.0.0.1:{dest.port}",
                    "--quiet-period", "0.5")
    try:
        assert storescu(node.port, bad.study_dir).returncode == 0
        assert storescu(node.port, good.study_dir).returncode == 0
        js = wait_until(lambda: _done(node.spool, 2), 120, "both studies to settle")
        by = {j.study_uid: j for j in js}
        assert by[bad.study_uid].state == "failed"
        assert "bad data" in by[bad.study_uid].reason and "missing slice" in \
            by[bad.study_uid].reason
        assert by[bad.study_uid].attempts == 1  # bad data is not retried
        assert by[good.study_uid].state == "sent"
        assert echo_ok(node.port)
        r = subprocess.run([*_cli(), "queue", "list", "--spool", str(node.spool)],
                           capture_output=True, text=True, timeout=60)
        assert "failed" in r.stdout and "missing slice" in r.stdout
    finally:
        node.stop()
        dest.stop()


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "autoprompt_seg.cli.listen"]


@pytest.mark.slow
def test_load_four_senders_two_studies_each(tmp_path: Path) -> None:
    studies = [small_study(tmp_path / f"s{i}", seed=10 + i) for i in range(8)]
    dest = StoreSCP(tmp_path / "dest", free_port())
    node = NodeProc(tmp_path / "spool", free_port(), "--dest", f"DEST@127.0.0.1:{dest.port}",
                    "--quiet-period", "1", "--workers", "2", "--max-associations", "8")
    results: list[int] = []

    def sender(k: int) -> None:
        for s in studies[2 * k: 2 * k + 2]:
            results.append(storescu(node.port, s.study_dir, calling=f"SENDER{k}").returncode)

    try:
        ts = [threading.Thread(target=sender, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(300)
        assert results == [0] * 8
        js = wait_until(lambda: _done(node.spool, 8), 240, "8 studies to be processed")
        assert len(js) == 8 and all(j.state == "sent" for j in js), [(j.state, j.reason)
                                                                      for j in js]
        segs = dest.segs()
        assert len(segs) == 8
        by_study = {s.study_uid: s for s in studies}
        for seg in segs:
            study_uid, refs = seg_study_refs(seg)
            src = by_study.pop(study_uid)  # each study exactly once
            src_sops = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                        for p in src.paths}
            assert refs and refs <= src_sops  # never mixed up
        assert not by_study
        assert all(j.instances == 24 and j.attempts == 1 for j in js)
    finally:
        node.stop()
        dest.stop()
