"""The spool: where received instances, results and outgoing SEGs live on disk.

Layout (all inside one folder, hence one file system, so ``rename(2)`` is atomic)::

    SPOOL/
      queue.sqlite          job queue (see :mod:`.queue`), WAL mode
      tmp/                  temporary files being written; emptied on start
      studies/STUDY_UID/    one file per received instance: SOP_INSTANCE_UID.dcm
      results/JOB-rREV/     outputs of ``predict_path`` for one job revision
      outbox/JOB-rREV.dcm   the SEG to send, kept until every destination accepted it

Every file is written as: temporary file in ``tmp/``, ``fsync``, ``rename`` into place,
``fsync`` of the folder. Only then does the caller answer success to the peer. File names
are UIDs checked against the DICOM UID grammar (digits and dots, at most 64 characters):
nothing a peer sends can name a path outside the spool.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, OutputError

log = logging.getLogger(__name__)

#: DICOM UID grammar, relaxed to accept leading zeros (common in the wild, harmless here).
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class SpoolError(OutputError):
    """The spool cannot be written."""


class SpoolFullError(SpoolError):
    """The spool's file system is below its free-space watermark."""


class UnsafeUIDError(InputError):
    """A UID that is not a DICOM UID (and so cannot become a file name)."""


def safe_uid(value: object, argument: str) -> str:
    """Return ``value`` as a UID usable as a file name, or raise :class:`UnsafeUIDError`."""
    text = str(value).strip().rstrip("\x00").strip() if value is not None else ""
    if not text or len(text) > 64 or not _UID_RE.match(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise UnsafeUIDError(f"Argument {argument!r} must be a DICOM UID (digits and dots, "
                             f"at most 64 characters); got {shown!r}")
    return text


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Stored:
    """Where an instance went and whether it was already there."""

    path: Path
    duplicate: bool
    size: int


class Spool:
    """Durable file storage for the node. Thread-safe; several processes may share it."""

    def __init__(self, root: str | os.PathLike[str], *, min_free_bytes: int = 0,
                 fsync: bool = True) -> None:
        self.root = Path(root)
        self.min_free_bytes = int(min_free_bytes)
        self.fsync = fsync
        self.tmp = self.root / "tmp"
        self.studies = self.root / "studies"
        self.results = self.root / "results"
        self.outbox = self.root / "outbox"
        try:
            for d in (self.root, self.tmp, self.studies, self.results, self.outbox):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpoolError(f"Argument 'spool': cannot create {str(self.root)!r} ({e})") from e
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise SpoolError(f"Argument 'spool': {str(self.root)!r} is not writable")
        self._dir_lock = threading.Lock()

    @property
    def db_path(self) -> Path:
        return self.root / "queue.sqlite"

    def clean_tmp(self) -> int:
        """Remove temporary files left by a crash (they were never acknowledged)."""
        n = 0
        for p in self.tmp.iterdir():
            try:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                n += 1
            except OSError as e:  # pragma: no cover - racing another process
                log.warning("spool: cannot remove stale temporary file %s (%s)", p, e)
        if n:
            log.info("spool: removed %d unacknowledged temporary file(s) left by a crash", n)
        return n

    # ------------------------------------------------------------------ space

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_space(self, needed: int = 0) -> None:
        """Raise :class:`SpoolFullError` when writing ``needed`` bytes would cross the
        watermark."""
        free = self.free_bytes()
        if free - needed < self.min_free_bytes:
            raise SpoolFullError(f"spool {str(self.root)!r}: {free / 2**20:.0f} MiB free, "
                                 f"below the watermark of {self.min_free_bytes / 2**20:.0f} MiB")

    # ------------------------------------------------------------------ paths

    def study_dir(self, study_uid: str) -> Path:
        return self.studies / safe_uid(study_uid, "StudyInstanceUID")

    def instance_path(self, study_uid: str, sop_uid: str) -> Path:
        return self.study_dir(study_uid) / f"{safe_uid(sop_uid, 'SOPInstanceUID')}.dcm"

    def result_dir(self, job_id: int, revision: int) -> Path:
        return self.results / f"{int(job_id)}-r{int(revision)}"

    def outbox_path(self, job_id: int, revision: int) -> Path:
        return self.outbox / f"{int(job_id)}-r{int(revision)}.dcm"

    # ------------------------------------------------------------------ writes

    def write_atomic(self, dest: Path, data: bytes) -> None:
        """Write ``data`` to ``dest`` (inside the spool): temp file, fsync, rename, fsync
        of the folder. ``dest``'s folder must exist."""
        tmp = self.tmp / f"{dest.name}.{secrets.token_hex(6)}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
            if self.fsync:
                fsync_dir(dest.parent)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise

    def store(self, study_uid: str, sop_uid: str, data: bytes) -> Stored:
        """Store one received instance durably (see the module docstring).

        Raises :class:`UnsafeUIDError` for a UID that is not a DICOM UID,
        :class:`SpoolFullError` below the watermark and :class:`OSError` when the write
        fails. A file already present with the same SOP Instance UID is a duplicate:
        kept as it is, reported with ``duplicate=True``.
        """
        path = self.instance_path(study_uid, sop_uid)
        if path.exists():
            return Stored(path, True, path.stat().st_size)
        self.check_space(len(data))
        folder = path.parent
        if not folder.exists():
            with self._dir_lock:
                if not folder.exists():
                    folder.mkdir(parents=True, exist_ok=True)
                    if self.fsync:
                        fsync_dir(folder.parent)
        self.write_atomic(path, data)
        return Stored(path, False, len(data))

    def iter_instance_files(self) -> Iterator[tuple[str, Path]]:
        """(study UID, path) of every stored instance file."""
        for d in sorted(self.studies.iterdir()):
            if not d.is_dir() or not _UID_RE.match(d.name):
                continue
            for p in sorted(d.glob("*.dcm")):
                yield d.name, p

    def remove_study(self, study_uid: str) -> None:
        shutil.rmtree(self.study_dir(study_uid), ignore_errors=True)
