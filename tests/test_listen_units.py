"""Listener building blocks without the network: config, spool, job queue state machine."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from autoprompt_seg.errors import ConfigError
from autoprompt_seg.listen.config import Destination, build_config, read_toml
from autoprompt_seg.listen.queue import JobQueue
from autoprompt_seg.listen.spool import Spool, SpoolFullError, UnsafeUIDError, safe_uid

STUDY = "1.2.3.4"


# ----------------------------------------------------------------------------- config


def test_destination_parse_and_errors() -> None:
    d = Destination.parse("PACS@10.0.0.5:4242")
    assert (d.aet, d.host, d.port) == ("PACS", "10.0.0.5", 4242)
    assert str(Destination.parse("X@[::1]:104")) == "X@[::1]:104"
    with pytest.raises(ConfigError, match=r"'dest'.*AET@HOST:PORT.*'nope'"):
        Destination.parse("nope")
    with pytest.raises(ConfigError, match="port 70000"):
        Destination.parse("A@h:70000")
    with pytest.raises(ConfigError, match="'dest'.*AE title"):
        Destination.parse("THIS_AE_TITLE_IS_TOO_LONG@h:1")


def test_config_precedence_and_validation(tmp_path: Path) -> None:
    f = tmp_path / "l.toml"
    f.write_text('[listen]\nspool = "s"\nport = 2000\nworkers = 3\ndest = ["A@h:1"]\n'
                 'allow = ["CT01"]\nquiet_period = 2.5\n')
    cfg = build_config(read_toml(f), port=3000, workers=None, dest=None)
    assert cfg.port == 3000 and cfg.workers == 3 and cfg.quiet_period == 2.5
    assert [str(d) for d in cfg.dest] == ["A@h:1"] and cfg.allow == ("CT01",)
    with pytest.raises(ConfigError, match=r"'workers'.*>= 0.*-1"):
        build_config({"spool": "s"}, workers=-1)
    with pytest.raises(ConfigError, match=r"'spool' is required"):
        build_config({})
    f.write_text('[listen]\nspool = "s"\nbogus = 1\n')
    with pytest.raises(ConfigError, match="unknown key.*bogus"):
        read_toml(f)
    with pytest.raises(ConfigError, match="no such file"):
        read_toml(tmp_path / "missing.toml")
    cfg = build_config({"spool": "s", "retry_backoff": 2, "retry_backoff_max": 5})
    assert [cfg.backoff(a) for a in (0, 1, 2, 3, 4)] == [0, 2, 4, 5, 5]


# ----------------------------------------------------------------------------- spool


@pytest.mark.parametrize("bad", ["../../etc/passwd", "1.2/../../x", "1.2.3\\x", "", "1..2",
                                 "a.b", "1." + "2" * 70, "/abs", "1.2\x00.3"])
def test_safe_uid_refuses_non_uids(bad: str) -> None:
    with pytest.raises(UnsafeUIDError, match="'SOPInstanceUID' must be a DICOM UID"):
        safe_uid(bad, "SOPInstanceUID")


def test_safe_uid_accepts_uids() -> None:
    assert safe_uid("1.2.840.10008.5.1.4.1.1.2 ", "x") == "1.2.840.10008.5.1.4.1.1.2"
    assert safe_uid("1.2.3\x00", "x") == "1.2.3"


def test_spool_store_atomic_duplicate_watermark(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    s = sp.store(STUDY, "1.2.3.4.5", b"abc")
    assert s.path == tmp_path / "spool" / "studies" / STUDY / "1.2.3.4.5.dcm"
    assert s.path.read_bytes() == b"abc" and not s.duplicate
    again = sp.store(STUDY, "1.2.3.4.5", b"different")
    assert again.duplicate and again.path.read_bytes() == b"abc"
    assert list(sp.tmp.iterdir()) == []  # nothing left behind
    with pytest.raises(UnsafeUIDError):
        sp.store("../..", "1.2", b"x")
    assert not (tmp_path / "1.2.dcm").exists()
    (sp.tmp / "x.part").write_bytes(b"half")
    assert sp.clean_tmp() == 1
    full = Spool(tmp_path / "spool", min_free_bytes=10**18)
    with pytest.raises(SpoolFullError, match="below the watermark"):
        full.store(STUDY, "1.2.3.4.6", b"x")
    assert not (sp.study_dir(STUDY) / "1.2.3.4.6.dcm").exists()


# ----------------------------------------------------------------------------- queue


def _q(tmp_path: Path) -> JobQueue:
    return JobQueue(tmp_path / "q.sqlite")


def _add(q: JobQueue, sop: str, study: str = STUDY, now: float = 100.0) -> str:
    return q.record_instance(study_uid=study, series_uid="1.2.9", sop_uid=sop,
                             sop_class="1.2.840.10008.5.1.4.1.1.2", path=f"/x/{sop}.dcm",
                             size=1, calling_aet="T", now=now)


def test_queue_happy_path_and_exactly_once(tmp_path: Path) -> None:
    q = _q(tmp_path)
    assert _add(q, "1.1") == "new" and _add(q, "1.2") == "new"
    assert _add(q, "1.1") == "duplicate"
    assert _add(q, "1.1", study="9.9") == "conflict"
    # still in an open association, or not quiet yet: not queued
    assert q.queue_complete(1.0, busy={STUDY}, now=200) == []
    assert q.queue_complete(1.0, busy=set(), now=100.5) == []
    assert [j.study_uid for j in q.queue_complete(1.0, busy=set(), now=200)] == [STUDY]
    job = q.claim("w1", now=201)
    assert job is not None and job.state == "running" and job.attempts == 1
    assert q.claim("w2", now=201) is None
    assert q.finish(job, lesions=1, outbox="/o/1.dcm", seg_uid="5.5", dests=["A@h:1", "B@h:2"],
                    now=202) == "sending"
    due = q.due_deliveries(now=203)
    assert sorted(d.dest for d, _ in due) == ["A@h:1", "B@h:2"]
    a, b = (d for d, _ in sorted(due, key=lambda t: t[0].dest))
    assert q.delivery_result(a, ok=True, now=204) is None
    assert q.delivery_result(b, ok=False, error="down", retry_in=10, now=204) is None
    assert q.due_deliveries(now=205) == []
    (b2, _), = q.due_deliveries(now=215)
    assert b2.attempts == 1 and b2.last_error == "down"
    assert q.delivery_result(b2, ok=True, now=216) == "sent"
    j = q.get(job.id)
    assert j is not None and j.state == "sent" and j.instances == 2 and j.duplicates == 1
    assert q.due_deliveries(now=1e12) == []
    # a duplicate after 'sent' does not reopen; a new instance does (revision 2)
    assert _add(q, "1.2", now=300) == "duplicate" and q.get(job.id).state == "sent"  # type: ignore[union-attr]
    assert _add(q, "1.3", now=300) == "new"
    j = q.get(job.id)
    assert j is not None and j.state == "receiving" and j.revision == 2


def test_queue_bad_data_retry_and_recover(tmp_path: Path) -> None:
    q = _q(tmp_path)
    _add(q, "1.1")
    q.queue_complete(0, set(), now=200)
    job = q.claim("w", now=200)
    assert job is not None
    assert q.fail(job, "bad data: missing slice", retry_in=None, now=201) == "failed"
    assert q.get(job.id).reason == "bad data: missing slice"  # type: ignore[union-attr]
    job2 = q.retry(job.id, now=202)
    assert job2.state == "queued" and job2.revision == 2 and job2.attempts == 0
    job3 = q.claim("w", now=203)
    assert job3 is not None
    assert q.fail(job3, "backend hiccup", retry_in=30, now=204) == "queued"
    assert q.claim("w", now=205) is None and q.claim("w", now=235) is not None
    # the node dies while running: recover() requeues, until attempts are used up
    counts = q.recover(max_attempts=3, now=300)
    assert counts["requeued"] == 1
    j = q.claim("w", now=301)
    assert j is not None and j.attempts == 3
    assert q.recover(max_attempts=3, now=302)["failed"] == 1
    assert "died 3 time(s)" in q.get(j.id).reason  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="no job 99"):
        q.retry(99)
    gone = q.forget(j.id)
    assert gone.study_uid == STUDY and q.jobs() == [] and q.instances() == []


def test_queue_new_instance_while_running_reprocesses(tmp_path: Path) -> None:
    q = _q(tmp_path)
    _add(q, "1.1")
    q.queue_complete(0, set(), now=200)
    job = q.claim("w", now=200)
    assert job is not None
    _add(q, "1.2", now=201)
    assert q.finish(job, lesions=1, outbox="/o", seg_uid="5", dests=["A@h:1"],
                    now=202) == "receiving"
    j = q.get(job.id)
    assert j is not None and j.revision == 2 and j.instances == 2 and q.due_deliveries() == []


def test_queue_claim_is_exclusive_across_connections(tmp_path: Path) -> None:
    q = _q(tmp_path)
    for i in range(20):
        _add(q, f"1.{i}", study=f"2.{i}")
    q.queue_complete(0, set(), now=1e10)
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        mine = JobQueue(tmp_path / "q.sqlite")
        while (j := mine.claim(name)) is not None:
            with lock:
                claimed.append(j.id)
        mine.close()

    ts = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(claimed) == sorted(j.id for j in q.jobs())


def test_forget_job_removes_files_of_every_revision(tmp_path: Path) -> None:
    from autoprompt_seg.listen.queue import forget_job

    sp = Spool(tmp_path / "spool")
    q = JobQueue(sp.db_path)
    sp.store(STUDY, "1.1", b"x")
    _add(q, "1.1")
    q.queue_complete(0, set(), now=200)
    job = q.claim("w", now=200)
    assert job is not None
    q.fail(job, "bad data", retry_in=None, now=201)
    job = q.retry(job.id, now=202)  # revision 2
    for r in (1, 2):
        sp.result_dir(job.id, r).mkdir(parents=True)
        (sp.result_dir(job.id, r) / "report.json").write_text("{}")
        sp.outbox_path(job.id, r).parent.mkdir(parents=True, exist_ok=True)
        sp.outbox_path(job.id, r).write_bytes(b"seg")
    claimed = q.claim("w", now=203)
    assert claimed is not None
    with pytest.raises(ConfigError, match="running"):
        forget_job(q, sp, job.id)  # running: refused without force, nothing removed
    assert sp.study_dir(STUDY).exists() and sp.outbox_path(job.id, 2).exists()
    gone = forget_job(q, sp, job.id, force=True)
    assert gone.study_uid == STUDY and q.jobs() == []
    assert not sp.study_dir(STUDY).exists()
    for r in (1, 2):
        assert not sp.result_dir(job.id, r).exists() and not sp.outbox_path(job.id, r).exists()


def test_forget_job_keep_files(tmp_path: Path) -> None:
    from autoprompt_seg.listen.queue import forget_job

    sp = Spool(tmp_path / "spool")
    q = JobQueue(sp.db_path)
    sp.store(STUDY, "1.1", b"x")
    _add(q, "1.1")
    q.queue_complete(0, set(), now=200)
    jobs = q.jobs()
    forget_job(q, sp, jobs[0].id, keep_files=True)
    assert q.jobs() == [] and sp.study_dir(STUDY).exists()
