"""Workers: claim a queued study, run the same pipeline as ``autoseg predict``, put the SEG
in the outbox. Each worker is a separate process (a crash or a leak in one study never
takes the receiver down); the node restarts dead workers and requeues their job."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
import traceback
from typing import Any

from ..errors import AutosegError, InputError
from .config import ListenConfig
from .queue import Job, JobQueue
from .spool import Spool

log = logging.getLogger(__name__)


def _settings(cfg: ListenConfig) -> Any:
    from ..config import Settings, default_weights_dir

    return Settings(device=cfg.device, threads=cfg.threads,
                    weights_dir=cfg.weights_dir or default_weights_dir(),
                    min_score=cfg.min_score, max_lesions=cfg.max_lesions)


def process_job(cfg: ListenConfig, spool: Spool, queue: JobQueue, job: Job) -> str:
    """Run one claimed job to its next state; returns that state. Never raises for a
    study's own failure: the reason is recorded in the queue."""
    from ..predict import predict_path

    t0 = time.perf_counter()
    res_dir = spool.result_dir(job.id, job.revision)
    if res_dir.exists():  # a previous attempt of this revision died half-way
        shutil.rmtree(res_dir, ignore_errors=True)
    try:
        res = predict_path(spool.study_dir(job.study_uid), res_dir, detector=cfg.detector,
                           segmenter=cfg.segmenter, settings=_settings(cfg))
    except InputError as e:  # bad data (geometry, no CT series...): retrying cannot help
        state = queue.fail(job, f"bad data: {e}", retry_in=None)
        log.warning("job %d study %s: %s: bad data: %s", job.id, job.study_uid, state, e)
        return state
    except Exception as e:  # noqa: BLE001 - backend failures, bugs: retry, then fail
        kind = "error" if isinstance(e, AutosegError) else f"unexpected {type(e).__name__}"
        reason = f"{kind}: {e}"
        log.debug("job %d traceback:\n%s", job.id, traceback.format_exc())
        retry = cfg.backoff(job.attempts) if job.attempts < cfg.max_attempts else None
        state = queue.fail(job, reason, retry_in=retry)
        log.warning("job %d study %s: attempt %d/%d: %s -> %s", job.id, job.study_uid,
                    job.attempts, cfg.max_attempts, reason, state)
        return state
    lesions = len(res.prediction.lesions)
    seg = res.outputs.get("seg")
    outbox: str | None = None
    seg_uid: str | None = None
    if seg is not None and seg.exists():
        from pydicom import dcmread

        dest = spool.outbox_path(job.id, job.revision)
        spool.write_atomic(dest, seg.read_bytes())
        seg_uid = str(dcmread(dest, stop_before_pixels=True).SOPInstanceUID)
        outbox = str(dest)
    state = queue.finish(job, lesions=lesions, outbox=outbox, seg_uid=seg_uid,
                         dests=[str(d) for d in cfg.dest])
    log.info("job %d study %s: %d lesion(s) in %.1f s -> %s", job.id, job.study_uid, lesions,
             time.perf_counter() - t0, state)
    return state


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the node process dies (kill -9 included)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort; the parent check below remains
        pass


def worker_main(cfg: ListenConfig, index: int, parent_pid: int, stop: Any) -> None:
    """Entry point of a worker process (multiprocessing, spawn)."""
    _die_with_parent()
    if os.getppid() != parent_pid:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops us through ``stop``
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s worker-{index} %(levelname)s %(name)s: "
                               "%(message)s")
    for noisy in ("pynetdicom", "highdicom", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    spool = Spool(cfg.spool, min_free_bytes=cfg.min_free_bytes, fsync=cfg.fsync)
    queue = JobQueue(spool.db_path)
    name = f"worker-{index}:{os.getpid()}"
    log.info("%s ready", name)
    while not stop.is_set():
        if os.getppid() != parent_pid:
            break
        try:
            job = queue.claim(name)
        except Exception as e:  # noqa: BLE001 - database busy for too long: try again
            log.warning("%s: cannot claim a job (%s)", name, e)
            job = None
        if job is None:
            stop.wait(cfg.poll_interval)
            continue
        log.info("job %d study %s: processing (attempt %d, revision %d)", job.id,
                 job.study_uid, job.attempts, job.revision)
        try:
            process_job(cfg, spool, queue, job)
        except Exception as e:  # noqa: BLE001 - e.g. outbox write failed: retry later
            log.error("job %d: %s: %s", job.id, type(e).__name__, e)
            try:
                retry = cfg.backoff(job.attempts) if job.attempts < cfg.max_attempts else None
                queue.fail(job, f"{type(e).__name__}: {e}", retry_in=retry)
            except Exception:  # noqa: BLE001
                log.exception("job %d: cannot record the failure", job.id)
    queue.close()
