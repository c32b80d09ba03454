"""Durable job queue: one SQLite database (WAL) inside the spool.

One job per study (Study Instance UID). States::

    receiving -> queued -> running -> sending -> sent
                                   \\-> done     (no tumour found: nothing to send)
                                   \\-> failed   (with its reason; ``autoseg queue retry``)

* ``receiving``: instances are arriving. The study is *complete* once no association that
  sent to it is still open and ``quiet_period`` seconds passed with no new instance; then
  it becomes ``queued``.
* ``running``: a worker claimed it (``BEGIN IMMEDIATE``: one worker per job). A node that
  dies here finds it ``running`` on restart and queues it again; ``attempts`` counts
  every start, so a study that keeps crashing the worker ends ``failed``.
* ``sending``: the SEG is in the outbox (written before this state is committed), one
  ``deliveries`` row per destination. The job is ``sent`` when every destination accepted
  the SEG. The SEG keeps its SOP Instance UID across retries, so a C-STORE repeated
  after a crash (between the peer's answer and our commit) is a duplicate of the same
  instance at the destination, never a second SEG.
* New instances for a study already past ``queued`` (a late series, a re-send that adds
  files) set ``dirty``: the running or sending revision finishes, then the study goes back
  to ``receiving`` with ``revision + 1``. Duplicates (same SOP Instance UID) never do.

Every C-STORE request is accounted for: a row in ``instances`` (stored), a count in
``jobs.duplicates`` (already stored) or a row in ``refusals`` (answered with a failure).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, OutputError

if TYPE_CHECKING:
    from .spool import Spool

log = logging.getLogger(__name__)

STATES = ("receiving", "queued", "running", "sending", "sent", "done", "failed")
FINAL_STATES = ("sent", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 1,
    dirty INTEGER NOT NULL DEFAULT 0,
    instances INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    worker TEXT,
    reason TEXT NOT NULL DEFAULT '',
    lesions INTEGER,
    seg_uid TEXT,
    outbox TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    last_received REAL NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_aet TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    dest TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    sent REAL,
    PRIMARY KEY (job_id, revision, dest)
);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    calling_aet TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``."""

    id: int
    study_uid: str
    state: str
    revision: int
    dirty: bool
    instances: int
    duplicates: int
    attempts: int
    next_try: float
    worker: str | None
    reason: str
    lesions: int | None
    seg_uid: str | None
    outbox: str | None
    created: float
    updated: float
    last_received: float
    finished: float | None

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True)
class Delivery:
    """One row of ``deliveries``: a job revision's SEG going to one destination."""

    job_id: int
    revision: int
    dest: str
    state: str  # pending | sent | failed
    attempts: int
    next_try: float
    last_error: str
    sent: float | None


def _job(row: sqlite3.Row) -> Job:
    d = dict(row)
    d["dirty"] = bool(d["dirty"])
    return Job(**d)


class JobQueue:
    """The queue. One instance per process; thread-safe inside the process."""

    def __init__(self, path: str | Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as e:
            raise OutputError(f"job queue {str(self.path)!r} cannot be opened ({e})") from e
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, tuple(args)).fetchall())

    # ------------------------------------------------------------------ receiving

    def record_instance(self, *, study_uid: str, series_uid: str, sop_uid: str, sop_class: str,
                        path: str, size: int, calling_aet: str, now: float | None = None) -> str:
        """Account for one stored instance. Returns ``new``, ``duplicate`` or ``conflict``
        (the SOP Instance UID is already stored for another study)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT study_uid FROM instances WHERE sop_uid=?",
                             (sop_uid,)).fetchone()
            if row is not None and row["study_uid"] != study_uid:
                return "conflict"
            job = db.execute("SELECT id, state FROM jobs WHERE study_uid=?",
                             (study_uid,)).fetchone()
            if job is None:
                db.execute("INSERT INTO jobs (study_uid, state, created, updated, last_received)"
                           " VALUES (?, 'receiving', ?, ?, ?)", (study_uid, now, now, now))
                job = db.execute("SELECT id, state FROM jobs WHERE study_uid=?",
                                 (study_uid,)).fetchone()
            if row is not None:
                db.execute("UPDATE jobs SET duplicates=duplicates+1, updated=? WHERE id=?",
                           (now, job["id"]))
                if job["state"] == "receiving":
                    db.execute("UPDATE jobs SET last_received=? WHERE id=?", (now, job["id"]))
                return "duplicate"
            # not in the index: new (a file already on disk without a row was stored by a
            # node that died before answering; the peer is sending it again)
            db.execute("INSERT INTO instances VALUES (?,?,?,?,?,?,?,?)",
                       (sop_uid, study_uid, series_uid, sop_class, path, size, calling_aet, now))
            self._touch(db, job["id"], job["state"], now)
            return "new"

    def _touch(self, db: sqlite3.Connection, job_id: int, state: str, now: float) -> None:
        """A new instance arrived for the job: back to (or stay in) ``receiving``."""
        if state in ("receiving", "queued"):
            db.execute("UPDATE jobs SET state='receiving', instances=instances+1, "
                       "last_received=?, updated=? WHERE id=?", (now, now, job_id))
        elif state in ("running", "sending"):
            db.execute("UPDATE jobs SET dirty=1, instances=instances+1, last_received=?, "
                       "updated=? WHERE id=?", (now, now, job_id))
        else:  # sent, done, failed: the study grew after it was processed
            db.execute("UPDATE jobs SET state='receiving', revision=revision+1, dirty=0, "
                       "attempts=0, next_try=0, instances=instances+1, last_received=?, "
                       "updated=?, reason=? WHERE id=?",
                       (now, now, f"reopened: new instance after '{state}'", job_id))
            log.info("job %d: new instance after %s: reopened", job_id, state)

    def record_refusal(self, *, calling_aet: str, sop_class: str, sop_uid: str, status: int,
                       reason: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("INSERT INTO refusals (at, calling_aet, sop_class, sop_uid, status, "
                       "reason) VALUES (?,?,?,?,?,?)",
                       (now, calling_aet, sop_class, sop_uid[:200], status, reason[:1000]))

    def touch_studies(self, study_uids: Iterable[str], now: float | None = None) -> None:
        """Restart the quiet period of these studies (their association just ended)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            for uid in study_uids:
                db.execute("UPDATE jobs SET last_received=MAX(last_received, ?) "
                           "WHERE study_uid=? AND state='receiving'", (now, uid))

    def queue_complete(self, quiet_period: float, busy: set[str],
                       now: float | None = None) -> list[Job]:
        """``receiving`` studies quiet for ``quiet_period`` s and not in an open
        association become ``queued``. Returns them."""
        now = time.time() if now is None else now
        out: list[Job] = []
        with self._tx() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state='receiving' AND last_received<=?",
                              (now - quiet_period,)).fetchall()
            for r in rows:
                if r["study_uid"] in busy:
                    continue
                db.execute("UPDATE jobs SET state='queued', next_try=0, updated=? WHERE id=?",
                           (now, r["id"]))
                out.append(_job(r))
        return out

    # ------------------------------------------------------------------ recovery

    def recover(self, max_attempts: int, now: float | None = None) -> dict[str, int]:
        """On start: requeue ``running`` jobs (or fail those that used up their attempts)
        and restart the quiet period of ``receiving`` ones, so that a sender retrying
        after our crash can complete its study first."""
        now = time.time() if now is None else now
        counts = {"requeued": 0, "failed": 0, "receiving": 0}
        with self._tx() as db:
            for r in db.execute("SELECT id, attempts, dirty FROM jobs WHERE state='running'")\
                    .fetchall():
                if r["attempts"] >= max_attempts:
                    db.execute("UPDATE jobs SET state='failed', worker=NULL, finished=?, "
                               "updated=?, reason=? WHERE id=?",
                               (now, now, f"the worker died {r['attempts']} time(s) while "
                                "processing this study", r["id"]))
                    counts["failed"] += 1
                else:
                    db.execute("UPDATE jobs SET state=?, worker=NULL, dirty=0, updated=?, "
                               "last_received=?, reason='recovered: was running when the "
                               "node stopped' WHERE id=?",
                               ("receiving" if r["dirty"] else "queued", now, now, r["id"]))
                    counts["requeued"] += 1
            cur = db.execute("UPDATE jobs SET last_received=? WHERE state='receiving'", (now,))
            counts["receiving"] = cur.rowcount
        return counts

    def requeue_worker(self, worker: str, max_attempts: int) -> int:
        """A worker process died: its ``running`` job goes back to the queue (or fails)."""
        now = time.time()
        n = 0
        with self._tx() as db:
            for r in db.execute("SELECT id, attempts FROM jobs WHERE state='running' AND "
                                "worker=?", (worker,)).fetchall():
                if r["attempts"] >= max_attempts:
                    db.execute("UPDATE jobs SET state='failed', worker=NULL, finished=?, "
                               "updated=?, reason=? WHERE id=?",
                               (now, now, f"the worker died {r['attempts']} time(s) while "
                                "processing this study", r["id"]))
                else:
                    db.execute("UPDATE jobs SET state='queued', worker=NULL, updated=?, "
                               "reason='requeued: its worker died' WHERE id=?", (now, r["id"]))
                n += 1
        return n

    # ------------------------------------------------------------------ processing

    def claim(self, worker: str, now: float | None = None) -> Job | None:
        """Take the oldest due ``queued`` job for ``worker`` (exclusive)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            r = db.execute("SELECT * FROM jobs WHERE state='queued' AND next_try<=? "
                           "ORDER BY next_try, id LIMIT 1", (now,)).fetchone()
            if r is None:
                return None
            db.execute("UPDATE jobs SET state='running', worker=?, attempts=attempts+1, "
                       "dirty=0, updated=? WHERE id=?", (worker, now, r["id"]))
            r = db.execute("SELECT * FROM jobs WHERE id=?", (r["id"],)).fetchone()
            return _job(r)

    def _still_mine(self, db: sqlite3.Connection, job: Job) -> sqlite3.Row | None:
        r = db.execute("SELECT * FROM jobs WHERE id=?", (job.id,)).fetchone()
        if r is None or r["state"] != "running" or r["revision"] != job.revision \
                or r["worker"] != job.worker:
            log.warning("job %d: no longer running for %s (state %s); result dropped",
                        job.id, job.worker, r["state"] if r else "forgotten")
            return None
        return r

    @staticmethod
    def _reopen(db: Any, job: Job, now: float, reason: str) -> str:
        """New instances arrived while ``job`` ran: back to ``receiving`` as a new revision."""
        db.execute("UPDATE jobs SET state='receiving', revision=revision+1, dirty=0, "
                   "attempts=0, worker=NULL, updated=?, last_received=?, reason=? WHERE id=?",
                   (now, now, reason, job.id))
        return "receiving"

    def finish(self, job: Job, *, lesions: int, outbox: str | None, seg_uid: str | None,
               dests: Iterable[str], now: float | None = None) -> str:
        """A worker finished ``job``: ``sending`` (a SEG to deliver), ``done`` (no tumour)
        or, when new instances arrived meanwhile, back to ``receiving``. Returns the new
        state."""
        now = time.time() if now is None else now
        dests = list(dests)
        with self._tx() as db:
            r = self._still_mine(db, job)
            if r is None:
                return "dropped"
            if r["dirty"]:
                return self._reopen(db, job, now, "new instances arrived while processing: "
                                    "study reprocessed")
            if outbox is None or not dests:
                reason = ("no tumour found: nothing to send" if outbox is None
                          else "SEG kept in the outbox: no destination configured")
                db.execute("UPDATE jobs SET state='done', worker=NULL, lesions=?, seg_uid=?, "
                           "outbox=?, finished=?, updated=?, reason=? WHERE id=?",
                           (lesions, seg_uid, outbox, now, now, reason, job.id))
                return "done"
            db.execute("UPDATE jobs SET state='sending', worker=NULL, lesions=?, seg_uid=?, "
                       "outbox=?, updated=?, reason='' WHERE id=?",
                       (lesions, seg_uid, outbox, now, job.id))
            for d in dests:
                db.execute("INSERT OR REPLACE INTO deliveries (job_id, revision, dest, state, "
                           "attempts, next_try, last_error) VALUES (?,?,?,'pending',0,0,'')",
                           (job.id, job.revision, d))
            return "sending"

    def fail(self, job: Job, reason: str, *, retry_in: float | None,
             now: float | None = None) -> str:
        """Processing failed. ``retry_in`` seconds: back to ``queued`` (if attempts
        remain, decided by the caller); ``None``: ``failed`` for good."""
        now = time.time() if now is None else now
        with self._tx() as db:
            r = self._still_mine(db, job)
            if r is None:
                return "dropped"
            if r["dirty"]:
                return self._reopen(db, job, now, f"reprocessing after new instances; "
                                    f"last error: {reason}")
            if retry_in is None:
                db.execute("UPDATE jobs SET state='failed', worker=NULL, finished=?, updated=?,"
                           " reason=? WHERE id=?", (now, now, reason, job.id))
                return "failed"
            db.execute("UPDATE jobs SET state='queued', worker=NULL, next_try=?, updated=?, "
                       "reason=? WHERE id=?", (now + retry_in, now, f"will retry: {reason}",
                                               job.id))
            return "queued"

    # ------------------------------------------------------------------ sending

    def due_deliveries(self, now: float | None = None) -> list[tuple[Delivery, Job]]:
        now = time.time() if now is None else now
        rows = self._rows("SELECT d.* FROM deliveries d JOIN jobs j ON j.id=d.job_id AND "
                          "j.revision=d.revision WHERE d.state='pending' AND j.state='sending' "
                          "AND d.next_try<=? ORDER BY d.next_try, d.job_id", (now,))
        out = []
        for r in rows:
            job = self.get(r["job_id"])
            if job is not None:
                out.append((Delivery(**dict(r)), job))
        return out

    def delivery_result(self, d: Delivery, *, ok: bool, error: str = "",
                        retry_in: float | None = None, now: float | None = None) -> str | None:
        """Record one C-STORE attempt. Returns the job's new state when this settled the
        job (``sent``, ``failed`` or ``receiving``), else ``None``."""
        now = time.time() if now is None else now
        with self._tx() as db:
            key = (d.job_id, d.revision, d.dest)
            if ok:
                db.execute("UPDATE deliveries SET state='sent', attempts=attempts+1, sent=?, "
                           "last_error='' WHERE job_id=? AND revision=? AND dest=?",
                           (now, *key))
            elif retry_in is None:
                db.execute("UPDATE deliveries SET state='failed', attempts=attempts+1, "
                           "last_error=? WHERE job_id=? AND revision=? AND dest=?",
                           (error, *key))
            else:
                db.execute("UPDATE deliveries SET attempts=attempts+1, next_try=?, "
                           "last_error=? WHERE job_id=? AND revision=? AND dest=?",
                           (now + retry_in, error, *key))
            states = [r["state"] for r in db.execute(
                "SELECT state FROM deliveries WHERE job_id=? AND revision=?",
                (d.job_id, d.revision)).fetchall()]
            if "pending" in states:
                return None
            job = db.execute("SELECT * FROM jobs WHERE id=?", (d.job_id,)).fetchone()
            if job is None or job["state"] != "sending" or job["revision"] != d.revision:
                return None
            if "failed" in states:
                failed = db.execute("SELECT dest, last_error FROM deliveries WHERE job_id=? "
                                    "AND revision=? AND state='failed'",
                                    (d.job_id, d.revision)).fetchall()
                reason = "; ".join(f"{r['dest']}: {r['last_error']}" for r in failed)
                new = "failed"
                db.execute("UPDATE jobs SET state='failed', finished=?, updated=?, reason=? "
                           "WHERE id=?", (now, now, f"SEG not delivered: {reason}", d.job_id))
            else:
                new = "sent"
                db.execute("UPDATE jobs SET state='sent', finished=?, updated=?, reason=? "
                           "WHERE id=?", (now, now, f"SEG delivered to {len(states)} "
                                          "destination(s)", d.job_id))
            if job["dirty"]:
                db.execute("UPDATE jobs SET state='receiving', revision=revision+1, dirty=0, "
                           "attempts=0, last_received=?, reason=? WHERE id=?",
                           (now, f"previous revision {new}; new instances arrived: "
                            "reprocessing", d.job_id))
                return "receiving"
            return new

    # ------------------------------------------------------------------ admin

    def get(self, job_id: int) -> Job | None:
        rows = self._rows("SELECT * FROM jobs WHERE id=?", (job_id,))
        return _job(rows[0]) if rows else None

    def by_study(self, study_uid: str) -> Job | None:
        rows = self._rows("SELECT * FROM jobs WHERE study_uid=?", (study_uid,))
        return _job(rows[0]) if rows else None

    def jobs(self, state: str | None = None) -> list[Job]:
        if state is not None and state not in STATES:
            raise ConfigError(f"Argument 'state' must be one of {', '.join(STATES)}; "
                              f"got {state!r}")
        if state:
            return [_job(r) for r in self._rows("SELECT * FROM jobs WHERE state=? ORDER BY id",
                                                (state,))]
        return [_job(r) for r in self._rows("SELECT * FROM jobs ORDER BY id")]

    def deliveries(self, job_id: int) -> list[Delivery]:
        return [Delivery(**dict(r)) for r in self._rows(
            "SELECT * FROM deliveries WHERE job_id=? ORDER BY revision, dest", (job_id,))]

    def instances(self, study_uid: str | None = None) -> list[dict[str, Any]]:
        if study_uid is None:
            return [dict(r) for r in self._rows("SELECT * FROM instances ORDER BY received")]
        return [dict(r) for r in self._rows("SELECT * FROM instances WHERE study_uid=? "
                                            "ORDER BY received", (study_uid,))]

    def known_sops(self, study_uid: str) -> set[str]:
        return {r["sop_uid"] for r in self._rows("SELECT sop_uid FROM instances WHERE "
                                                 "study_uid=?", (study_uid,))}

    def refusals(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._rows("SELECT * FROM refusals ORDER BY id")]

    def retry(self, job_id: int, now: float | None = None) -> Job:
        """``failed`` (or ``done``) job: process it again from scratch; a job whose SEG is
        in the outbox and failed to deliver: send it again."""
        now = time.time() if now is None else now
        with self._tx() as db:
            r = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if r is None:
                raise ConfigError(f"Argument 'ID': no job {job_id} in the queue")
            if r["state"] not in ("failed", "done", "sent"):
                raise ConfigError(f"Argument 'ID': job {job_id} is {r['state']}; only failed, "
                                  "done or sent jobs can be retried")
            failed_sends = db.execute("SELECT COUNT(*) FROM deliveries WHERE job_id=? AND "
                                      "revision=? AND state='failed'",
                                      (job_id, r["revision"])).fetchone()[0]
            if r["state"] == "failed" and failed_sends and r["outbox"] \
                    and Path(r["outbox"]).exists():
                db.execute("UPDATE deliveries SET state='pending', attempts=0, next_try=0 "
                           "WHERE job_id=? AND revision=? AND state='failed'",
                           (job_id, r["revision"]))
                db.execute("UPDATE jobs SET state='sending', finished=NULL, updated=?, "
                           "reason='retry asked: sending again' WHERE id=?", (now, job_id))
            else:
                db.execute("UPDATE jobs SET state='queued', revision=revision+1, attempts=0, "
                           "next_try=0, dirty=0, finished=NULL, updated=?, "
                           "reason='retry asked: processing again' WHERE id=?", (now, job_id))
            out = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            return _job(out)

    def forget(self, job_id: int, *, force: bool = False) -> Job:
        """Remove a job, its instances' rows and deliveries (the caller removes files)."""
        with self._tx() as db:
            r = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if r is None:
                raise ConfigError(f"Argument 'ID': no job {job_id} in the queue")
            if r["state"] in ("running", "sending") and not force:
                raise ConfigError(f"Argument 'ID': job {job_id} is {r['state']}; stop the "
                                  "node first or use --force")
            db.execute("DELETE FROM deliveries WHERE job_id=?", (job_id,))
            db.execute("DELETE FROM instances WHERE study_uid=?", (r["study_uid"],))
            db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
            return _job(r)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for r in self._rows("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            out[r["state"]] = r["n"]
        return out


def forget_job(queue: JobQueue, spool: Spool, job_id: int, *, force: bool = False,
               keep_files: bool = False) -> Job:
    """Remove job ``job_id`` from ``queue`` and, unless ``keep_files``, its received
    instances, its result folders and its outbox SEGs (every revision) from ``spool``.

    Refuses a running or sending job without ``force`` (``ConfigError``)."""
    import shutil

    j = queue.forget(job_id, force=force)
    if not keep_files:
        spool.remove_study(j.study_uid)
        for r in range(1, j.revision + 1):
            shutil.rmtree(spool.result_dir(j.id, r), ignore_errors=True)
            spool.outbox_path(j.id, r).unlink(missing_ok=True)
    return j
