"""Weights: the known checkpoints, where they live, their sha256, and how they get installed.

The one manifest is ``src/autoprompt_seg/weights_manifest.toml`` (package data; the tests
check that no other copy exists). Installed files live in the weights folder
(``--weights-dir`` / ``AUTOSEG_WEIGHTS_DIR`` / the user data folder), named as the
manifest's ``file``; ``installed.json`` in that folder records, per name, the sha256 of the
installed copy, how it got there (``origin``: add, fetch or trust), from where and when.

Provenance: three states, decided from the file's sha256 each time a model is loaded
(:func:`checkpoint_provenance`) and shown in report.json, the SEG and ``weights list``:

* **pinned release** -- the sha256 equals the hash pinned in the manifest;
* **official download, hash not pinned** -- ``weights fetch`` downloaded it from the
  manifest's URL, and its sha256 is still the one recorded at download;
* **unknown file** -- anything else (for example the random weights the tests make): an
  "untrained test checkpoint", no accuracy may be claimed -- unless the user pinned its
  sha256 themselves with ``weights add FILE --name N --trust`` (**pinned by the user**,
  reported as such, never as a release).

A file whose sha256 contradicts a pinned manifest sha256 is refused.

The download (``weights fetch``) is in :mod:`.download`; the backends' checkpoint resolver
(:func:`resolve`) in :mod:`.resolver`; both are importable from here.

Errors (exit codes of :mod:`autoprompt_seg.errors`):

* 69 :class:`UnavailableError` -- the file is missing, truncated or corrupt, its sha256
  or size contradicts the manifest, or a download failed;
* 78 :class:`ConfigError` -- the file reads but is the wrong thing: not ``{"model": ...}``,
  another architecture (e.g. Hiera-small), an unknown weights name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UnavailableError

log = logging.getLogger(__name__)

INSTALLED_JSON = "installed.json"
MANIFEST_FILE = "weights_manifest.toml"
FETCH_TIMEOUT_S = 10.0
FETCH_RETRIES = 2

#: The provenance states (see the module docstring).
PINNED = "pinned release"
OFFICIAL = "official download, hash not pinned"
USER_PIN = "pinned by the user"
UNKNOWN = "untrained test checkpoint"
#: ``origin`` values of an installed record
ORIGINS = ("add", "fetch", "trust")

ProgressFn = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    file: str
    architecture: str
    source: str
    sha256: str = ""
    description: str = ""
    size: int = 0  # bytes; 0 = not known


def manifest_text() -> str:
    return resources.files("autoprompt_seg").joinpath(MANIFEST_FILE).read_text(encoding="utf-8")


def load_manifest() -> dict[str, WeightsEntry]:
    try:
        data = tomllib.loads(manifest_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"weights manifest is not valid TOML: {e}") from e
    out = {}
    for name, d in data.get("weights", {}).items():
        out[name] = WeightsEntry(name=name, file=d["file"], architecture=d["architecture"],
                                 source=d.get("source", ""), sha256=d.get("sha256", "").lower(),
                                 description=d.get("description", ""),
                                 size=int(d.get("size", 0)))
    return out


def installed_path(name: str, weights_dir: Path) -> Path | None:
    entry = load_manifest().get(name)
    if entry is None:
        return None
    p = Path(weights_dir) / entry.file
    return p if p.exists() else None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


TRAINING_RECORD_SUFFIX = ".train.json"


def training_record(checkpoint: str | os.PathLike[str], *,
                    require_trained_base: bool = True) -> dict[str, Any] | None:
    """The record ``autoseg`` training wrote beside ``checkpoint`` (``<file>.train.json``),
    when its ``sha256`` matches the file; else None.

    A checkpoint with such a record was trained here (by :mod:`autoprompt_seg.train`), so
    backends report it as trained, with the record's paradigm, cases and epochs as
    provenance, and never as a published release. ``checkpoint`` may be a folder (an
    nnU-Net model folder; its :func:`sha256_path`). A model fine-tuned from an untrained
    test checkpoint (``base_trained: false`` or ``base_checkpoint.trained: false`` in the
    record) gets None: training a few steps on random weights never makes a trained model
    (``require_trained_base=False`` returns its record anyway, for inspection).
    """
    p = Path(checkpoint)
    side = p.with_name(p.name + TRAINING_RECORD_SUFFIX)
    if not (p.exists() and side.is_file()):
        return None
    try:
        rec = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable training record (%s); ignored", side, e)
        return None
    if not isinstance(rec, dict) or rec.get("sha256") != sha256_path(p):
        log.warning("%s: its sha256 does not match %s; the record is ignored", side, p.name)
        return None
    base = rec.get("base_checkpoint")
    if require_trained_base and (rec.get("base_trained") is False or (isinstance(base, dict)
                                                and base.get("trained") is False)):
        log.warning("%s was fine-tuned from an untrained test checkpoint: it is reported as "
                    "untrained", p.name)
        return None
    return rec


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder (its sorted relative paths and file hashes)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(p.relative_to(path).as_posix().encode() + b"\0")
        h.update(sha256_file(p).encode() + b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------- records


def _state_of(known: bool, origin: str) -> str:
    if known:
        return PINNED
    return {"fetch": OFFICIAL, "trust": USER_PIN}.get(origin, f"unknown file ({UNKNOWN})")


@dataclass(frozen=True)
class InstalledWeights:
    """One installed checkpoint as recorded in ``installed.json``."""

    name: str
    file: str
    architecture: str
    sha256: str
    known: bool  # sha256 equals the manifest's (non-empty) pinned sha256
    source: str  # where it was added or fetched from (a path or the download URL)
    added: str  # ISO time (UTC)
    origin: str = "add"  # add | fetch (weights fetch from the manifest URL) | trust (user pin)
    size: int = 0

    @property
    def state(self) -> str:
        """:data:`PINNED`, :data:`OFFICIAL`, :data:`USER_PIN` or "unknown file (...)"."""
        return _state_of(self.known, self.origin)

    @property
    def status(self) -> str:
        return self.state


def _read_installed(weights_dir: Path) -> dict[str, InstalledWeights]:
    p = Path(weights_dir) / INSTALLED_JSON
    if not p.exists():
        return {}
    names = {f.name for f in fields(InstalledWeights)}
    try:
        data = json.loads(p.read_text())
        return {k: InstalledWeights(**{kk: vv for kk, vv in v.items() if kk in names})
                for k, v in data.items()}
    except (json.JSONDecodeError, TypeError, AttributeError) as e:
        raise ConfigError(f"{p}: not a valid installed-weights record ({e}); remove it and "
                          "add the weights again") from e


# --------------------------------------------------------------------------- provenance


@dataclass(frozen=True)
class Provenance:
    """What is known about a checkpoint file, from its sha256 (:func:`checkpoint_provenance`)."""

    state: str  # PINNED | OFFICIAL | USER_PIN | UNKNOWN
    name: str  # the manifest name when known, else ""
    text: str  # one line for report.json and the SEG
    url: str = ""
    date: str = ""  # YYYY-MM-DD of the download or the user's pin

    @property
    def trusted(self) -> bool:
        """Not an unknown file (the segmenters report it as trained)."""
        return self.state != UNKNOWN

    @property
    def short(self) -> str:
        """A few words for the SEG's ContentDescription (64 characters in all)."""
        return {PINNED: "pinned release", OFFICIAL: "official download, unpinned",
                USER_PIN: "user-pinned weights"}.get(self.state, "UNTRAINED test weights")


def checkpoint_provenance(sha256: str, architecture: str, weights_dir: Path | None, *,
                          manifest: Mapping[str, WeightsEntry] | None = None,
                          path: Path | None = None) -> Provenance:
    """The provenance state of a file with this ``sha256`` for ``architecture``.

    Pinned release when a manifest entry of that architecture pins this sha256; else an
    official download or a user pin when ``installed.json`` in ``weights_dir`` records
    this very sha256 with origin ``fetch`` or ``trust`` (so the download's hash is
    re-checked at every load: a file changed since is an unknown file again); else
    :data:`UNKNOWN`. ``path`` only improves the warning for a changed installed file.
    """
    manifest = load_manifest() if manifest is None else manifest
    sha = sha256.lower()
    for e in manifest.values():
        if e.sha256 and e.sha256 == sha and e.architecture == architecture:
            return Provenance(PINNED, e.name, f"{e.name}: pinned release (sha256 {sha} "
                                              "equals the hash pinned in the weights manifest)",
                              e.source)
    records = _read_installed(Path(weights_dir)) if weights_dir is not None else {}
    for rec in records.values():
        if rec.sha256 != sha or rec.architecture != architecture:
            continue
        date = rec.added[:10]
        if rec.origin == "fetch":
            return Provenance(OFFICIAL, rec.name,
                              f"{rec.name}, downloaded from its official source on {date}, "
                              f"sha256 {sha}, not independently pinned ({rec.source})",
                              rec.source, date)
        if rec.origin == "trust":
            return Provenance(USER_PIN, rec.name,
                              f"{rec.name}: sha256 {sha} pinned by the user on {date} "
                              "(autoseg weights add --trust); not a release pinned in the "
                              "weights manifest", "", date)
    if path is not None:
        for rec in records.values():
            if (rec.origin in ("fetch", "trust") and weights_dir is not None
                    and Path(path).resolve() == (Path(weights_dir) / rec.file).resolve()):
                log.warning("%s: its sha256 %s differs from the one recorded when it was "
                            "installed (%s): it changed, and is reported as an %s", path,
                            sha[:16], rec.sha256[:16], UNKNOWN)
    return Provenance(UNKNOWN, "", UNKNOWN)


def _with_installed_extras(manifest: Mapping[str, WeightsEntry],
                           records: Mapping[str, InstalledWeights]) -> dict[str, WeightsEntry]:
    """The manifest plus an entry for every installed name it does not list (models
    installed under a name of the user's choice, e.g. ``weights add-nnunet --name N``)."""
    out = dict(manifest)
    for rec in records.values():
        if rec.name not in out:
            out[rec.name] = WeightsEntry(name=rec.name, file=rec.file,
                                         architecture=rec.architecture, source="",
                                         description="installed under this name (not in "
                                                     "the manifest)")
    return out


def _write_installed(weights_dir: Path, records: Mapping[str, InstalledWeights]) -> None:
    p = Path(weights_dir) / INSTALLED_JSON
    fd, tmp = tempfile.mkstemp(dir=weights_dir, prefix=".installed-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({k: asdict(v) for k, v in sorted(records.items())}, f, indent=2)
    os.replace(tmp, p)


# --------------------------------------------------------------------------- checks


#: Format checkers, ``architecture -> fn(path)``: registered by the model modules
#: (:func:`register_checker`) when they are imported.
_CHECKERS: dict[str, Callable[[Path], None]] = {}

#: Where each architecture's checker lives, ``"module:function"``: imported on first use
#: by :func:`check_fits`, so that ``weights add/verify`` can check a file without the
#: caller importing the model first (like ``registry.py``'s factories; weights imports no
#: model).
CHECKER_MODULES: dict[str, str] = {
    "sam2.1_hiera_tiny_512": "autoprompt_seg.models.medsam2:check_medsam2_file",
    "sam2.1_hiera_tiny": "autoprompt_seg.models.medsam2:check_sam2_file",
    "sam_vit_b": "autoprompt_seg.models.medsam:check_checkpoint",
    "nnunetv2_model_folder": "autoprompt_seg.models.nnunet.checkpoint:check_model_folder",
    "monai_retinanet_resnet50_fpn_luna16":
        "autoprompt_seg.models.monai_retinanet.checkpoint:check_checkpoint",
}

#: The nnU-Net zip installer that :func:`fetch` hands a downloaded zip to.
NNUNET_ZIP_INSTALLER = "autoprompt_seg.models.nnunet.install:add_nnunet"

#: What each architecture's checker needs installed (for the error when it is missing).
_CHECKER_PACKAGES = {"sam2.1_hiera_tiny_512": "sam2", "sam2.1_hiera_tiny": "sam2",
                     "monai_retinanet_resnet50_fpn_luna16": "monai"}


def register_checker(architecture: str, fn: Callable[[Path], None]) -> None:
    """Make ``fn(path)`` the format checker of ``architecture`` (:func:`check_fits`)."""
    _CHECKERS[architecture] = fn


def _import_string(target: str) -> Any:
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _checker(architecture: str, path: Path) -> Callable[[Path], None]:
    fn = _CHECKERS.get(architecture)
    if fn is not None:
        return fn
    target = CHECKER_MODULES.get(architecture)
    if target is None:
        raise ConfigError(f"weights {str(path)!r}: no checker for architecture {architecture!r}")
    try:
        fn = _import_string(target)
    except ImportError as e:  # pragma: no cover - the checkers' packages are dependencies
        package = _CHECKER_PACKAGES.get(architecture, e.name or "a")
        raise UnavailableError(f"cannot check {str(path)!r}: the {package} package is needed "
                               f"({e})") from e
    _CHECKERS.setdefault(architecture, fn)
    return fn


def check_fits(path: Path, architecture: str) -> None:
    """Prove that ``path`` fits ``architecture`` (a strict load where possible).

    Raises :class:`UnavailableError` (unreadable, or the checker's package is missing) or
    :class:`ConfigError` (wrong format or architecture), naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise UnavailableError(f"weights file {str(path)!r}: no such file or folder")
    _checker(architecture, path)(path)


# --------------------------------------------------------------------------- operations


def _entry(name: str, manifest: Mapping[str, WeightsEntry]) -> WeightsEntry:
    e = manifest.get(name)
    if e is None:
        raise ConfigError(f"Argument 'name' must be a weights name from the manifest "
                          f"({', '.join(manifest)}); got {name!r}")
    return e


def guess_name(file: Path, manifest: Mapping[str, WeightsEntry] | None = None) -> str:
    """The manifest name whose file name (or name) matches ``file``'s name."""
    manifest = load_manifest() if manifest is None else manifest
    fname = Path(file).name
    for e in manifest.values():
        if fname in (e.file, e.name):
            return e.name
    raise ConfigError(f"cannot tell which weights {fname!r} are from its name: give "
                      f"--name, one of {', '.join(manifest)}")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def add_weights(file: str | os.PathLike[str], name: str | None, weights_dir: Path, *,
                manifest: Mapping[str, WeightsEntry] | None = None,
                source: str | None = None, trust: bool = False) -> InstalledWeights:
    """Prove that ``file`` fits its architecture, copy it atomically into ``weights_dir``
    as the manifest's file name and record its sha256 in ``installed.json``.

    ``name`` (a manifest name) defaults to the entry whose file name matches. A sha256 that
    contradicts the manifest's pin is refused (:class:`UnavailableError`, 69); a file that
    does not fit is refused (:class:`ConfigError`, 78, or 69 when unreadable). Nothing is
    installed when a check fails. ``trust`` pins the file's sha256 locally (origin
    ``trust``): it is then reported as "pinned by the user", not as an untrained test
    checkpoint (and never as a release).
    """
    manifest = load_manifest() if manifest is None else manifest
    src = Path(file).expanduser()
    if not src.exists():
        raise UnavailableError(f"Argument 'file': {str(src)!r} does not exist")
    name = name or guess_name(src, manifest)
    entry = _entry(name, manifest)
    sha = sha256_path(src)
    _check_pin(entry, sha, str(src))
    check_fits(src, entry.architecture)
    origin = "trust" if trust and not entry.sha256 else "add"
    if trust and entry.sha256:
        log.info("%s: the manifest pins its sha256 already; --trust is not needed", name)
    return _install(src, entry, sha, Path(weights_dir), origin=origin,
                    source=source or str(src), move=False)


def _check_pin(entry: WeightsEntry, sha: str, what: str) -> None:
    if entry.sha256 and sha != entry.sha256:
        raise UnavailableError(f"weights file {what!r} has sha256 {sha}, but the manifest "
                               f"pins {entry.name} at {entry.sha256}: a damaged or different "
                               "file; refusing to install it")


def _install(src: Path, entry: WeightsEntry, sha: str, wdir: Path, *, origin: str,
             source: str, move: bool) -> InstalledWeights:
    """Copy (or move) ``src`` into ``wdir`` as ``entry.file`` atomically and record it."""
    try:
        wdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Argument 'weights_dir': cannot create {str(wdir)!r} ({e})") from e
    dest = wdir / entry.file
    tmp = Path(tempfile.mkdtemp(dir=wdir, prefix=f".adding-{entry.file}-"))
    try:
        staged = tmp / entry.file
        if move:
            os.replace(src, staged)
        elif src.is_dir():
            shutil.copytree(src, staged)
        else:
            shutil.copyfile(src, staged)
        if not move and sha256_path(staged) != sha:
            raise UnavailableError(f"copying {str(src)!r} into {str(wdir)!r} changed its "
                                   "content (disk full or failing?)")
        if dest.is_dir() and not dest.is_symlink():
            old = wdir / f".old-{entry.file}-{os.getpid()}"
            dest.rename(old)
            staged.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staged, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = dest.stat().st_size if dest.is_file() else 0
    rec = InstalledWeights(name=entry.name, file=entry.file, architecture=entry.architecture,
                           sha256=sha, known=bool(entry.sha256 and sha == entry.sha256),
                           source=source, added=_now(), origin=origin, size=size)
    records = _read_installed(wdir)
    records[entry.name] = rec
    _write_installed(wdir, records)
    if origin == "add" and not rec.known:
        log.warning("installed %s (%s) as an unknown file: the manifest pins no sha256 for it "
                    "and it was not downloaded from the manifest's URL, so it is reported as "
                    "an %s", entry.name, dest, UNKNOWN)
    else:
        log.info("installed %s (%s): %s", entry.name, dest, rec.state)
    return rec


@dataclass(frozen=True)
class WeightsStatus:
    """One manifest entry and its state in a weights folder."""

    name: str
    file: str
    architecture: str
    installed: bool
    path: str
    sha256: str
    known: bool
    description: str
    source: str
    origin: str = ""
    added: str = ""
    pinned_sha256: str = ""

    @property
    def state(self) -> str:
        if not self.installed:
            return "not installed"
        if not self.sha256:
            return f"unknown file ({UNKNOWN}): not recorded in {INSTALLED_JSON}"
        return _state_of(self.known, self.origin)


def list_weights(weights_dir: Path, *, manifest: Mapping[str, WeightsEntry] | None = None
                 ) -> list[WeightsStatus]:
    """Every manifest entry with its install state (no hashing: reads ``installed.json``)."""
    manifest = load_manifest() if manifest is None else manifest
    records = _read_installed(Path(weights_dir))
    manifest = _with_installed_extras(manifest, records)
    out = []
    for e in manifest.values():
        p = Path(weights_dir) / e.file
        rec = records.get(e.name)
        out.append(WeightsStatus(name=e.name, file=e.file, architecture=e.architecture,
                                 installed=p.exists(), path=str(p),
                                 sha256=rec.sha256 if rec else "",
                                 known=bool(rec and e.sha256 and rec.sha256 == e.sha256),
                                 description=e.description, source=e.source,
                                 origin=rec.origin if rec else "",
                                 added=rec.added if rec else "", pinned_sha256=e.sha256))
    return out


@dataclass(frozen=True)
class VerifyResult:
    name: str
    path: str
    ok: bool
    sha256: str
    known: bool
    problem: str = ""
    exit_code: int = 0
    state: str = ""


def verify(weights_dir: Path, *, manifest: Mapping[str, WeightsEntry] | None = None,
           deep: bool = True) -> list[VerifyResult]:
    """Recheck every installed file: present, same sha256 as recorded, not contradicting the
    manifest, and (``deep``) still loading strictly. Never raises for a bad file: each
    result says what is wrong (and the exit code it maps to)."""
    manifest = load_manifest() if manifest is None else manifest
    wdir = Path(weights_dir)
    records = _read_installed(wdir)
    manifest = _with_installed_extras(manifest, records)
    out = []
    for e in manifest.values():
        p = wdir / e.file
        rec = records.get(e.name)
        if rec is None and not p.exists():
            continue
        problem, code, sha = "", 0, ""
        if not p.exists():
            problem, code = f"{p} is recorded as installed but missing", 69
        else:
            sha = sha256_path(p)
            if e.sha256 and sha != e.sha256:
                problem, code = (f"{p}: sha256 {sha} does not match the manifest's "
                                 f"{e.sha256}"), 69
            elif rec is not None and sha != rec.sha256:
                problem, code = (f"{p}: sha256 {sha} differs from the one recorded when it was "
                                 f"added ({rec.sha256}); the file changed"), 69
            elif rec is None:
                problem, code = (f"{p} is not recorded in {INSTALLED_JSON}; install it with "
                                 f"`autoseg weights add {p} --name {e.name}`"), 78
            elif deep:
                try:
                    check_fits(p, e.architecture)
                except (UnavailableError, ConfigError) as err:
                    problem, code = str(err), err.exit_code
        known = bool(e.sha256 and sha == e.sha256)
        state = _state_of(known, rec.origin if rec else "add") if not problem else ""
        out.append(VerifyResult(name=e.name, path=str(p), ok=not problem, sha256=sha,
                                known=known, problem=problem, exit_code=code, state=state))
    return out


# The download and the resolver use the names above; imported last (they import this package).
from .download import fetch as fetch  # noqa: E402
from .resolver import TRAINED_HERE as TRAINED_HERE  # noqa: E402
from .resolver import CheckpointChoice as CheckpointChoice  # noqa: E402
from .resolver import load_state_strict as load_state_strict  # noqa: E402
from .resolver import read_torch_file as read_torch_file  # noqa: E402
from .resolver import resolve as resolve  # noqa: E402
from .resolver import state_dict_mismatch as state_dict_mismatch  # noqa: E402
from .resolver import training_provenance as training_provenance  # noqa: E402
