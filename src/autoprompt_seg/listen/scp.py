"""The SCP side of the node: association policy and the C-ECHO / C-STORE handlers.

* Presentation contexts: Verification, and CT Image Storage and Enhanced CT Image Storage
  with the uncompressed transfer syntaxes and the compressed ones the loader decodes
  (deflate, RLE, JPEG, JPEG-LS, JPEG 2000). Any other SOP class is refused during
  negotiation (context result "abstract syntax not supported"); a C-STORE that still
  names another class is answered 0x0122.
* Calling AE titles: limited to ``allow`` when it is not empty (the association is
  rejected, reason "calling AE title not recognised"). At most ``max_associations`` open
  at once (reason "local limit exceeded").
* A handler never raises at the peer: every failure is logged, recorded in the queue's
  ``refusals`` table and answered with a status:

  ======  ==========================================================================
  0x0000  stored (fsynced into the spool and indexed), or a duplicate already stored
  0x0122  SOP class not supported
  0xA700  out of resources: spool below its free-space watermark, or the write failed
  0xA900  data set does not match the SOP class (a required UID or attribute missing,
          or the SOP Instance UID differs from the request's)
  0xC210  cannot understand: the data set cannot be decoded
  0xC211  cannot understand: a UID is not a DICOM UID (e.g. built for path traversal)
  0xC212  cannot understand: this SOP Instance UID is already stored for another study
  ======  ==========================================================================
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..io.dicom import SUPPORTED_TRANSFER_SYNTAXES
from .config import ListenConfig
from .queue import JobQueue
from .spool import Spool, SpoolFullError, UnsafeUIDError, safe_uid

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"
STORAGE_CLASSES = (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE)

#: Uncompressed first (what most senders prefer), then every compressed syntax the loader
#: decodes (one list: autoprompt_seg.io.dicom.SUPPORTED_TRANSFER_SYNTAXES).
_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
TRANSFER_SYNTAXES = _UNCOMPRESSED + tuple(
    sorted(set(SUPPORTED_TRANSFER_SYNTAXES) - set(_UNCOMPRESSED)))

OK = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210
BAD_UID = 0xC211
UID_CONFLICT = 0xC212


@dataclass
class AssocStats:
    """What one association did (for its log line)."""

    calling_aet: str
    peer: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    studies: set[str] = field(default_factory=set)


def server_ssl_context(cfg: ListenConfig) -> ssl.SSLContext | None:
    """TLS context for the SCP, or ``None`` without ``[listen.tls]``."""
    if cfg.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cfg.tls.cert), str(cfg.tls.key))
    if cfg.tls.ca is not None:
        ctx.load_verify_locations(str(cfg.tls.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def build_ae(cfg: ListenConfig) -> Any:
    """The pynetdicom application entity with the node's policy."""
    from pynetdicom import AE

    ae = AE(ae_title=cfg.aet)
    ae.maximum_associations = cfg.max_associations
    ae.require_calling_aet = list(cfg.allow)
    ae.acse_timeout = cfg.acse_timeout
    ae.dimse_timeout = cfg.dimse_timeout
    ae.network_timeout = cfg.network_timeout
    ae.maximum_pdu_size = 0  # no limit on what peers send us: fewer, larger PDUs
    ae.add_supported_context(VERIFICATION)
    for cls in STORAGE_CLASSES:
        ae.add_supported_context(cls, list(TRANSFER_SYNTAXES))
    return ae


class StoreHandler:
    """Event handlers of the SCP, bound to one spool and one queue."""

    def __init__(self, cfg: ListenConfig, spool: Spool, queue: JobQueue) -> None:
        self.cfg = cfg
        self.spool = spool
        self.queue = queue
        self._lock = threading.Lock()
        self._assocs: dict[int, AssocStats] = {}
        self._busy: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()

    # ------------------------------------------------------------------ bookkeeping

    def busy_studies(self) -> set[str]:
        """Studies that an open association has sent instances to."""
        with self._lock:
            return {k for k, v in self._busy.items() if v > 0}

    def open_associations(self) -> int:
        with self._lock:
            return len(self._assocs)

    def _stats(self, event: Any) -> AssocStats:
        key = id(event.assoc)
        with self._lock:
            st = self._assocs.get(key)
            if st is None:
                req = event.assoc.requestor
                st = AssocStats(calling_aet=str(req.ae_title).strip(),
                                peer=f"{req.address}:{req.port}")
                self._assocs[key] = st
            return st

    def handlers(self) -> list[tuple[Any, Any]]:
        from pynetdicom import evt

        return [
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_CONN_CLOSE, self.on_closed),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
        ]

    def on_accepted(self, event: Any) -> None:
        st = self._stats(event)
        log.info("association from %s (%s) accepted", st.calling_aet, st.peer)

    def on_rejected(self, event: Any) -> None:
        req = event.assoc.requestor
        log.warning("association from %s (%s:%s) rejected (calling AE not allowed, or too "
                    "many associations)", str(req.ae_title).strip(), req.address, req.port)
        self.totals["rejected_associations"] += 1

    def on_released(self, event: Any) -> None:
        self._end(event, "released")

    def on_aborted(self, event: Any) -> None:
        self._end(event, "aborted")

    def on_closed(self, event: Any) -> None:
        self._end(event, "closed")

    def _end(self, event: Any, how: str) -> None:
        with self._lock:
            st = self._assocs.pop(id(event.assoc), None)
            if st is None:
                return
            for s in st.studies:
                self._busy[s] -= 1
                if self._busy[s] <= 0:
                    del self._busy[s]
        try:
            self.queue.touch_studies(st.studies)
        except Exception as e:  # noqa: BLE001 - never raise in a handler
            log.error("cannot restart the quiet period of %d studies: %s", len(st.studies), e)
        log.info("association from %s (%s) %s after %.1f s: %d stored, %d duplicate(s), "
                 "%d refused, %d study(ies)", st.calling_aet, st.peer, how,
                 time.monotonic() - st.started, st.stored, st.duplicates, st.refused,
                 len(st.studies))

    def on_echo(self, event: Any) -> int:
        return OK

    # ------------------------------------------------------------------ C-STORE

    def on_store(self, event: Any) -> int:
        st = self._stats(event)
        sop_class, sop_uid = "?", "?"
        try:
            sop_class = str(event.request.AffectedSOPClassUID or "")
            sop_uid = str(event.request.AffectedSOPInstanceUID or "")
            status, reason, _study = self._store(event, st, sop_class, sop_uid)
        except Exception as e:  # noqa: BLE001 - the last line of defence
            log.exception("C-STORE from %s: unexpected failure", st.calling_aet)
            status, reason, _study = OUT_OF_RESOURCES, f"unexpected {type(e).__name__}: {e}", None
        if status == OK:
            return OK
        st.refused += 1
        self.totals["refused"] += 1
        log.warning("C-STORE from %s refused with 0x%04X: %s", st.calling_aet, status, reason)
        try:
            self.queue.record_refusal(calling_aet=st.calling_aet, sop_class=sop_class,
                                      sop_uid=sop_uid, status=status, reason=reason)
        except Exception as e:  # noqa: BLE001
            log.error("cannot record the refusal in the queue: %s", e)
        return status

    def _store(self, event: Any, st: AssocStats, sop_class: str,
               sop_uid: str) -> tuple[int, str, str | None]:
        if sop_class not in STORAGE_CLASSES:
            return SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class} is not CT", None
        try:
            self.spool.check_space()
        except SpoolFullError as e:
            return OUT_OF_RESOURCES, str(e), None
        try:
            ds = event.dataset
            study = ds.get("StudyInstanceUID")
            series = ds.get("SeriesInstanceUID")
            ds_sop = ds.get("SOPInstanceUID")
            ds_class = ds.get("SOPClassUID")
            has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData",
                                               "DoubleFloatPixelData"))
        except Exception as e:  # noqa: BLE001 - pydicom raises many types on bad bytes
            return CANNOT_UNDERSTAND, f"data set cannot be decoded ({type(e).__name__}: {e})", \
                None
        missing = [n for n, v in (("StudyInstanceUID", study), ("SeriesInstanceUID", series),
                                  ("SOPInstanceUID", ds_sop), ("SOPClassUID", ds_class))
                   if not v]
        if missing:
            return DOES_NOT_MATCH, f"required attribute(s) missing: {', '.join(missing)}", None
        if not has_pixels:
            return DOES_NOT_MATCH, "no pixel data in a CT image", None
        try:
            study = safe_uid(study, "StudyInstanceUID")
            series = safe_uid(series, "SeriesInstanceUID")
            sop = safe_uid(ds_sop, "SOPInstanceUID")
        except UnsafeUIDError as e:
            return BAD_UID, str(e), None
        if sop != sop_uid.strip() or str(ds_class) != sop_class:
            return DOES_NOT_MATCH, (f"data set has SOP {ds_class}/{sop}, the request says "
                                    f"{sop_class}/{sop_uid}"), None
        data = event.encoded_dataset(include_meta=True)
        try:
            stored = self.spool.store(study, sop, data)
        except SpoolFullError as e:
            return OUT_OF_RESOURCES, str(e), None
        except OSError as e:
            return OUT_OF_RESOURCES, f"spool write failed ({e})", None
        try:
            outcome = self.queue.record_instance(
                study_uid=study, series_uid=series, sop_uid=sop, sop_class=sop_class,
                path=str(stored.path), size=stored.size, calling_aet=st.calling_aet)
        except Exception as e:  # noqa: BLE001 - database locked too long, disk error
            return OUT_OF_RESOURCES, f"job queue cannot record the instance ({e})", None
        if outcome == "conflict":
            if not stored.duplicate:
                stored.path.unlink(missing_ok=True)
            return UID_CONFLICT, f"SOP Instance UID {sop} is already stored for another " \
                                 "study", None
        with self._lock:
            if study not in st.studies:
                st.studies.add(study)
                self._busy[study] += 1
        if outcome == "duplicate":
            st.duplicates += 1
            self.totals["duplicates"] += 1
        else:
            st.stored += 1
            self.totals["stored"] += 1
        return OK, "", study
