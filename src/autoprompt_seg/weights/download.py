"""``autoseg weights fetch``: download a manifest entry from its URL (resumable, size and
sha256 checked), check that it fits its architecture and install it
(:func:`fetch`)."""

from __future__ import annotations

import importlib
import json
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError, UnavailableError
from . import (
    FETCH_RETRIES,
    FETCH_TIMEOUT_S,
    NNUNET_ZIP_INSTALLER,
    InstalledWeights,
    ProgressFn,
    WeightsEntry,
    _entry,
    _import_string,
    _install,
    check_fits,
    sha256_file,
)

log = logging.getLogger(__name__)


def load_manifest() -> dict[str, WeightsEntry]:
    """The package's :func:`autoprompt_seg.weights.load_manifest`, looked up when called
    (so that a replaced one is used)."""
    out: dict[str, WeightsEntry] = importlib.import_module(__package__ or "").load_manifest()
    return out


class _Interrupted(Exception):
    """The body of a download stopped early (closed, stalled past the timeout)."""


def _part_paths(wdir: Path, entry: WeightsEntry) -> tuple[Path, Path]:
    return wdir / f".{entry.file}.part", wdir / f".{entry.file}.part.json"


def fetch(name: str, weights_dir: Path, *, timeout: float = FETCH_TIMEOUT_S,
          manifest: Mapping[str, WeightsEntry] | None = None,
          progress: ProgressFn | None = None, retries: int = FETCH_RETRIES,
          chunk: int = 1 << 20) -> InstalledWeights:
    """Download ``name`` from the manifest's URL, check it and install it atomically.

    * The download goes to ``.FILE.part`` in the weights folder, never to the installed
      name; an interrupted or stalled transfer keeps it, and the next attempt (up to
      ``retries`` more in this call, or a later call) resumes it with an HTTP ``Range``
      request. A server that ignores ``Range`` restarts it from the beginning.
    * The size (the manifest's ``size``, else the server's ``Content-Length``) and, where
      the manifest pins one, the sha256 are checked; a mismatch deletes the partial file
      and raises :class:`UnavailableError` (69).
    * The file must load strictly into its architecture; it is then moved into place and
      recorded with origin ``fetch``, the URL and the date: reported as "official download,
      hash not pinned" (or "pinned release" when the manifest pins its sha256).
    * Proxies come from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``).
    * ``timeout`` seconds bound the connection and every read; no network fails fast
      with :class:`UnavailableError` naming the URL and the manual alternative.

    ``progress(done_bytes, total_bytes or None)`` is called as data arrives.
    """
    manifest = load_manifest() if manifest is None else manifest
    entry = _entry(name, manifest)
    if not entry.source:
        raise UnavailableError(f"weights {name!r} have no download source in the manifest; "
                               f"install a copy with `autoseg weights add FILE --name {name}`")
    if not entry.source.startswith(("https://", "http://")):
        raise ConfigError(f"weights {name!r}: the manifest source must be an http(s) URL; got "
                          f"{entry.source!r}")
    if retries < 0:
        raise ValueError(f"Argument 'retries' must be >= 0; got {retries}")
    wdir = Path(weights_dir)
    try:
        wdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Argument 'weights_dir': cannot create {str(wdir)!r} ({e})") from e
    part, meta = _part_paths(wdir, entry)
    ident = {"url": entry.source, "sha256": entry.sha256, "size": entry.size}
    try:
        same = json.loads(meta.read_text()) == ident
    except (OSError, json.JSONDecodeError):
        same = False
    if part.exists() and not same:
        log.info("%s: a partial download of another source or version; starting afresh", part)
        part.unlink()
    meta.write_text(json.dumps(ident))
    try:
        return _fetch_into(entry, wdir, part, timeout=timeout, progress=progress,
                           retries=retries, chunk=chunk)
    finally:
        if not part.exists():
            meta.unlink(missing_ok=True)


def _fetch_into(entry: WeightsEntry, wdir: Path, part: Path, *, timeout: float,
                progress: ProgressFn | None, retries: int, chunk: int) -> InstalledWeights:
    name = entry.name
    hint = (f"download {entry.source} on a machine with network access and run "
            f"`autoseg weights add {entry.file} --name {name}`")
    attempt = 0
    while True:
        try:
            _download(entry, part, timeout=timeout, progress=progress, chunk=chunk, hint=hint)
            break
        except _Interrupted as e:
            attempt += 1
            have = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                raise UnavailableError(
                    f"download of {name} from {entry.source} was interrupted ({e}); "
                    f"{have} bytes are kept in {part}: run `autoseg weights fetch {name}` "
                    f"again to resume, or {hint}") from e
            log.warning("download of %s interrupted (%s) after %d bytes; resuming (%d/%d)",
                        name, e, have, attempt, retries)
    size = part.stat().st_size
    if entry.size and size != entry.size:
        part.unlink()
        raise UnavailableError(f"download of {name} from {entry.source} has {size} bytes; the "
                               f"manifest says {entry.size}: the partial file is deleted")
    sha = sha256_file(part)
    if entry.sha256 and sha != entry.sha256:
        part.unlink()
        raise UnavailableError(f"download of {name} from {entry.source} has sha256 {sha}; the "
                               f"manifest pins {entry.sha256}: the file is deleted, nothing "
                               "was installed")
    if entry.architecture == "nnunetv2_model_folder" and zipfile.is_zipfile(part):
        # an nnU-Net model zip (e.g. TotalSegmentator's): checked and installed by add-nnunet
        add_nnunet = _import_string(NNUNET_ZIP_INSTALLER)
        try:
            rec: InstalledWeights = add_nnunet(part, name, wdir, origin="fetch",
                                               source_text=entry.source)
        finally:
            part.unlink(missing_ok=True)
        return rec
    try:
        check_fits(part, entry.architecture)
    except (ConfigError, UnavailableError):
        part.unlink()
        raise
    return _install(part, entry, sha, wdir, origin="fetch", source=entry.source, move=True)


def _download(entry: WeightsEntry, part: Path, *, timeout: float,
              progress: ProgressFn | None, chunk: int, hint: str) -> None:
    """One request: append to ``part`` from its current size (HTTP Range) to the end.

    Raises :class:`_Interrupted` when the body stops early (resumable) and
    :class:`UnavailableError` for everything that a retry would not fix."""
    import http.client
    import urllib.error
    import urllib.request

    url = entry.source
    have = part.stat().st_size if part.exists() else 0
    if entry.size and have > entry.size:
        part.unlink()
        have = 0
    if entry.size and have == entry.size:
        return  # complete already; the checks follow
    headers = {"User-Agent": "autoprompt_seg", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    # ProxyHandler() reads HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler())
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            complete = _content_range_total(e.headers.get("Content-Range", "")) == have
            e.close()
            if complete:
                return  # the partial file is already complete
            part.unlink()
            raise _Interrupted("the server refused to resume; restarting") from e
        e.close()
        raise UnavailableError(f"cannot download {entry.name} from {url}: HTTP {e.code} "
                               f"{e.reason}; {hint}") from e
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise UnavailableError(f"cannot download {entry.name} from {url} ({reason}); "
                               f"{hint}") from e
    with resp:
        if have and resp.status == 206:
            start = _content_range_start(resp.headers.get("Content-Range", ""))
            if start != have:
                part.unlink()
                raise _Interrupted(f"the server resumed at byte {start}, not {have}; "
                                   "restarting")
            mode = "ab"
        else:
            if have:
                log.info("%s: the server ignored the Range request; downloading afresh", url)
            have, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        total: int | None = have + int(length) if length and length.isdigit() else None
        if entry.size and total is not None and total != entry.size:
            part.unlink(missing_ok=True)
            raise UnavailableError(f"download of {entry.name} from {url}: the server announces "
                                   f"{total} bytes; the manifest says {entry.size}: refused")
        total = total or entry.size or None
        if progress is not None:
            progress(have, total)
        with open(part, mode) as f:
            while True:
                try:  # read1: whatever has arrived (read() would wait for a whole chunk)
                    buf = resp.read1(chunk)
                except (OSError, http.client.HTTPException) as e:  # timeouts included
                    raise _Interrupted(f"{type(e).__name__}: {e} (timeout {timeout:g} s)"
                                       ) from e
                if not buf:
                    break
                f.write(buf)
                have += len(buf)
                if entry.size and have > entry.size:
                    f.close()
                    part.unlink()
                    raise UnavailableError(f"download of {entry.name} from {url} exceeds the "
                                           f"{entry.size} bytes of the manifest: refused")
                if progress is not None:
                    progress(have, total)
        if total is not None and have < total:
            raise _Interrupted(f"the connection closed after {have} of {total} bytes")


def _content_range_start(value: str) -> int:
    """``bytes 100-199/200`` -> 100 (-1 when unreadable)."""
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1


def _content_range_total(value: str) -> int:
    """``bytes */200`` or ``bytes 0-1/200`` -> 200 (-1 when unreadable)."""
    try:
        return int(value.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return -1
