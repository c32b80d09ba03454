"""The node: SCP + quiet-period scheduler + worker processes + sender, over one spool."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from .config import Destination, ListenConfig
from .queue import JobQueue
from .scp import StoreHandler, build_ae, server_ssl_context
from .sender import send_file
from .spool import Spool

log = logging.getLogger(__name__)


class Node:
    """``autoseg listen``. ``start()`` returns once it listens; ``stop()`` shuts it down."""

    def __init__(self, cfg: ListenConfig) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool, min_free_bytes=cfg.min_free_bytes, fsync=cfg.fsync)
        self.queue = JobQueue(self.spool.db_path)
        self.handler = StoreHandler(cfg, self.spool, self.queue)
        self._server: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._mp = multiprocessing.get_context("spawn")
        self._worker_stop: Any = self._mp.Event()
        self._workers: dict[int, Any] = {}
        self._dests = {str(d): d for d in cfg.dest}
        self._lock_fh: Any = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The port it listens on (useful with ``port=0``)."""
        return int(self._server.server_address[1]) if self._server else self.cfg.port

    def _lock_spool(self) -> None:
        """One node per spool: an exclusive ``flock`` on ``SPOOL/node.lock`` (released by
        the kernel when the process dies, kill -9 included)."""
        import fcntl

        from ..errors import ConfigError

        fh = open(self.spool.root / "node.lock", "a+")  # noqa: SIM115 - held while running
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise ConfigError(f"Argument 'spool': {str(self.spool.root)!r} is in use by "
                              "another autoseg listen process") from None
        self._lock_fh = fh

    def start(self) -> None:
        self._lock_spool()
        for noisy in ("pynetdicom", "highdicom"):
            if logging.getLogger(noisy).level == logging.NOTSET:
                logging.getLogger(noisy).setLevel(logging.WARNING)
        self.spool.clean_tmp()
        rec = self.queue.recover(self.cfg.max_attempts)
        if any(rec.values()):
            log.info("recovered after restart: %d job(s) requeued, %d failed (attempts used "
                     "up), %d still receiving", rec["requeued"], rec["failed"], rec["receiving"])
        self.reconcile()
        ae = build_ae(self.cfg)
        try:
            self._server = ae.start_server(
                (self.cfg.host, self.cfg.port), block=False,
                evt_handlers=self.handler.handlers(),
                ssl_context=server_ssl_context(self.cfg))
        except OSError as e:
            from ..errors import ConfigError

            raise ConfigError(f"Argument 'port': cannot listen on {self.cfg.host}:"
                              f"{self.cfg.port} ({e})") from e
        for i in range(self.cfg.workers):
            self._start_worker(i)
        for target, name in ((self._schedule_loop, "autoseg-scheduler"),
                             (self._send_loop, "autoseg-sender")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("listening on %s:%d as %s (spool %s, %d worker(s), quiet period %g s, "
                 "destinations: %s, allowed callers: %s%s)", self.cfg.host, self.port,
                 self.cfg.aet, self.cfg.spool, self.cfg.workers, self.cfg.quiet_period,
                 ", ".join(self._dests) or "none",
                 ", ".join(self.cfg.allow) or "any", ", TLS" if self.cfg.tls else "")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._worker_stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for t in self._threads:
            t.join(timeout)
        deadline = time.monotonic() + timeout
        for p in self._workers.values():
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(2)
        self._workers.clear()
        self.queue.close()
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None
        log.info("stopped")

    def serve_forever(self) -> None:
        """Start, then run until SIGTERM or SIGINT."""
        done = threading.Event()

        def _quit(signum: int, _frame: Any) -> None:
            log.info("signal %d: stopping", signum)
            done.set()

        old = {s: signal.signal(s, _quit) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not done.wait(1.0):
                pass
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.stop()

    # ------------------------------------------------------------------ recovery

    def reconcile(self) -> int:
        """Index instance files that are on disk but not in the queue (the node died
        between the rename and the database commit)."""
        from pydicom import dcmread

        n = 0
        known: dict[str, set[str]] = {}
        for study, path in self.spool.iter_instance_files():
            if study not in known:
                known[study] = self.queue.known_sops(study)
            if path.stem in known[study]:
                continue
            try:
                ds = dcmread(path, stop_before_pixels=True)
                self.queue.record_instance(
                    study_uid=study, series_uid=str(ds.get("SeriesInstanceUID", "")),
                    sop_uid=path.stem, sop_class=str(ds.get("SOPClassUID", "")),
                    path=str(path), size=path.stat().st_size, calling_aet="(recovered)")
                n += 1
            except Exception as e:  # noqa: BLE001 - unreadable file: keep it, say so
                log.warning("spool: %s cannot be indexed (%s)", path, e)
        if n:
            log.info("spool: %d instance file(s) indexed after a crash", n)
        return n

    # ------------------------------------------------------------------ workers

    def _start_worker(self, index: int) -> None:
        from .worker import worker_main

        p = self._mp.Process(target=worker_main, name=f"autoseg-worker-{index}",
                             args=(self.cfg, index, os.getpid(), self._worker_stop),
                             daemon=True)
        p.start()
        self._workers[index] = p

    def _supervise(self) -> None:
        for i, p in list(self._workers.items()):
            if p.is_alive() or self._stop.is_set():
                continue
            n = self.queue.requeue_worker(f"worker-{i}:{p.pid}", self.cfg.max_attempts)
            log.error("worker %d (pid %s) died with exit code %s; %d job(s) requeued; "
                      "restarting it", i, p.pid, p.exitcode, n)
            self._start_worker(i)

    # ------------------------------------------------------------------ loops

    def _schedule_loop(self) -> None:
        while not self._stop.wait(self.cfg.poll_interval):
            try:
                for job in self.queue.queue_complete(self.cfg.quiet_period,
                                                     self.handler.busy_studies()):
                    self._log_study(job.id, job.study_uid, job.instances)
                self._supervise()
            except Exception:  # noqa: BLE001 - keep scheduling
                log.exception("scheduler")

    def _log_study(self, job_id: int, study_uid: str, instances: int) -> None:
        series = {i["series_uid"] for i in self.queue.instances(study_uid)}
        extra = ""
        if self.cfg.log_patient:
            files = sorted(self.spool.study_dir(study_uid).glob("*.dcm"))
            if files:
                from pydicom import dcmread

                try:
                    pid = dcmread(files[0], stop_before_pixels=True).get("PatientID", "?")
                    extra = f", patient ID {pid}"
                except Exception:  # noqa: BLE001
                    extra = ""
        log.info("study %s complete: %d instance(s) in %d series%s; queued as job %d",
                 study_uid, instances, len(series), extra, job_id)

    def _send_loop(self) -> None:
        while not self._stop.wait(self.cfg.poll_interval):
            try:
                self.send_due()
            except Exception:  # noqa: BLE001 - keep sending
                log.exception("sender")

    def send_due(self) -> int:
        """One pass of the sender: every due delivery is tried once. Returns how many."""
        n = 0
        for d, job in self.queue.due_deliveries():
            if self._stop.is_set():
                break
            dest = self._dests.get(d.dest) or Destination.parse(d.dest)
            path = Path(job.outbox or "")
            if not path.is_file():
                res_ok, detail = False, f"outbox file {path} is missing"
            else:
                r = send_file(path, dest, self.cfg)
                res_ok, detail = r.ok, r.detail
            attempts = d.attempts + 1
            retry = None if attempts >= self.cfg.send_attempts else self.cfg.backoff(attempts)
            new = self.queue.delivery_result(d, ok=res_ok, error=detail, retry_in=retry)
            n += 1
            if res_ok:
                log.info("job %d study %s: SEG %s accepted by %s (%s)", job.id, job.study_uid,
                         job.seg_uid, d.dest, detail)
            else:
                log.warning("job %d study %s: SEG to %s, attempt %d/%d: %s%s", job.id,
                            job.study_uid, d.dest, attempts, self.cfg.send_attempts, detail,
                            f"; next try in {retry:g} s" if retry is not None else
                            "; giving up")
            if new in ("sent", "receiving") and new is not None:
                log.info("job %d study %s: %s", job.id, job.study_uid,
                         "sent to every destination" if new == "sent" else
                         "sent; new instances arrived meanwhile: reprocessing")
                path.unlink(missing_ok=True)
            elif new == "failed":
                log.error("job %d study %s: failed: SEG not delivered (kept in %s)", job.id,
                          job.study_uid, path)
        return n
