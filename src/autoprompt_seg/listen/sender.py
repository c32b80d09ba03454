"""Send a SEG from the outbox to one destination by C-STORE (the node is the SCU here)."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from .config import Destination, ListenConfig

log = logging.getLogger(__name__)

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: C-STORE answers that mean "stored": success and the three warnings of PS3.4 B.2.3.
ACCEPTED = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class SendResult:
    ok: bool
    detail: str


def client_ssl_context(cfg: ListenConfig) -> ssl.SSLContext | None:
    """TLS context for destinations (``dest_tls = true``): our certificate, their CA."""
    if not cfg.dest_tls or cfg.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(cfg.tls.ca) if cfg.tls.ca else None)
    ctx.check_hostname = False  # DICOM peers are addressed by IP; the CA is what we trust
    ctx.load_cert_chain(str(cfg.tls.cert), str(cfg.tls.key))
    return ctx


def send_file(path: Path, dest: Destination, cfg: ListenConfig) -> SendResult:
    """C-STORE the DICOM file at ``path`` to ``dest``. Never raises: a failure is a
    :class:`SendResult` with ``ok=False`` and the reason."""
    from pydicom import dcmread
    from pynetdicom import AE

    try:
        ds = dcmread(path)
    except Exception as e:  # noqa: BLE001 - unreadable outbox file
        return SendResult(False, f"cannot read {path.name} ({type(e).__name__}: {e})")
    ts = ds.file_meta.TransferSyntaxUID
    ae = AE(ae_title=cfg.aet)
    ae.acse_timeout = cfg.acse_timeout
    ae.dimse_timeout = cfg.dimse_timeout
    ae.network_timeout = cfg.network_timeout
    ae.connection_timeout = cfg.acse_timeout
    ae.add_requested_context(ds.SOPClassUID, [ts])
    if ts != "1.2.840.10008.1.2.1":
        ae.add_requested_context(ds.SOPClassUID, ["1.2.840.10008.1.2.1"])
    tls_args = None
    ctx = client_ssl_context(cfg)
    if ctx is not None:
        tls_args = (ctx, dest.host)
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet, tls_args=tls_args)
    except Exception as e:  # noqa: BLE001 - socket errors, bad addresses
        return SendResult(False, f"cannot connect ({type(e).__name__}: {e})")
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else (
            "association aborted" if assoc.is_aborted else "no association (peer down?)")
        return SendResult(False, why)
    try:
        status = assoc.send_c_store(ds)
    except Exception as e:  # noqa: BLE001 - e.g. no accepted presentation context
        assoc.abort()
        return SendResult(False, f"C-STORE failed ({type(e).__name__}: {e})")
    code = getattr(status, "Status", None) if status else None
    try:
        assoc.release()
    except Exception:  # noqa: BLE001 - the store already succeeded or failed
        pass
    if code is None:
        return SendResult(False, "no C-STORE response (timeout or connection lost)")
    if int(code) in ACCEPTED:
        return SendResult(True, f"status 0x{int(code):04X}")
    return SendResult(False, f"refused with status 0x{int(code):04X}")
