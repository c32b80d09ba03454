"""Weights: the known checkpoints, where they live, their sha256, and how they get installed.

The manifest is ``weights/manifest.toml`` in the source tree (shipped as package data
``autoprompt_seg/weights_manifest.toml``). Installed files live in the weights folder
(``--weights-dir`` / ``AUTOSEG_WEIGHTS_DIR`` / the user data folder), named as the
manifest's ``file``; ``installed.json`` in that folder records, per name, the sha256 of the
installed copy, where it came from and whether that sha256 is a known one.

Provenance rule: a checkpoint counts as a trained release only when its sha256 equals the
non-empty sha256 of its manifest entry. Any other file (for example random weights made by
the tests) installs as *unverified* and the segmenter reports it as an "untrained test
checkpoint". A file whose sha256 contradicts a non-empty manifest sha256 is refused.

Errors (exit codes of :mod:`autoprompt_seg.errors`):

* 69 :class:`UnavailableError` -- the file is missing, truncated or corrupt, its sha256
  contradicts the manifest, or a download failed;
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
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnavailableError

log = logging.getLogger(__name__)

INSTALLED_JSON = "installed.json"
FETCH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    file: str
    architecture: str
    source: str
    sha256: str = ""
    description: str = ""


def load_manifest() -> dict[str, WeightsEntry]:
    text = resources.files(__package__).joinpath("weights_manifest.toml").read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"weights manifest is not valid TOML: {e}") from e
    out = {}
    for name, d in data.get("weights", {}).items():
        out[name] = WeightsEntry(name=name, file=d["file"], architecture=d["architecture"],
                                 source=d.get("source", ""), sha256=d.get("sha256", ""),
                                 description=d.get("description", ""))
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


@dataclass(frozen=True)
class InstalledWeights:
    """One installed checkpoint as recorded in ``installed.json``."""

    name: str
    file: str
    architecture: str
    sha256: str
    known: bool  # sha256 equals the manifest's (non-empty) sha256
    source: str  # where it was added or fetched from
    added: str  # ISO time (UTC)

    @property
    def status(self) -> str:
        return "verified release" if self.known else "unverified (untrained test checkpoint)"


def _read_installed(weights_dir: Path) -> dict[str, InstalledWeights]:
    p = Path(weights_dir) / INSTALLED_JSON
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text())
        return {k: InstalledWeights(**v) for k, v in data.items()}
    except (json.JSONDecodeError, TypeError, AttributeError) as e:
        raise ConfigError(f"{p}: not a valid installed-weights record ({e}); remove it and "
                          "add the weights again") from e


def _write_installed(weights_dir: Path, records: Mapping[str, InstalledWeights]) -> None:
    p = Path(weights_dir) / INSTALLED_JSON
    fd, tmp = tempfile.mkstemp(dir=weights_dir, prefix=".installed-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({k: asdict(v) for k, v in sorted(records.items())}, f, indent=2)
    os.replace(tmp, p)


# --------------------------------------------------------------------------- checks


def check_fits(path: Path, architecture: str) -> None:
    """Prove that ``path`` fits ``architecture`` (a strict load where possible).

    Raises :class:`UnavailableError` (unreadable, or the checker's package is missing) or
    :class:`ConfigError` (wrong format or architecture), naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise UnavailableError(f"weights file {str(path)!r}: no such file or folder")
    if architecture == "sam2.1_hiera_tiny_512":
        try:
            from .segment.medsam2 import check_checkpoint
        except ImportError as e:  # pragma: no cover - sam2 is a dependency
            raise UnavailableError(f"cannot check {str(path)!r}: the sam2 package is needed "
                                   f"({e})") from e
        if path.is_dir():
            raise ConfigError(f"weights {str(path)!r} is a folder; a MedSAM2 checkpoint is one "
                              f".pt file")
        check_checkpoint(path)
    elif architecture == "sam_vit_b":
        _check_sam_vit_b(path)
    elif architecture == "nnunetv2_model_folder":
        _check_nnunet_folder(path)
    else:
        raise ConfigError(f"weights {str(path)!r}: no checker for architecture {architecture!r}")


def _torch_load(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - many failure types for damaged files
        raise UnavailableError(f"weights file {str(path)!r} is truncated or corrupt and cannot be "
                               f"read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e


def _check_sam_vit_b(path: Path) -> None:
    """MedSAM's ``medsam_vit_b.pth``: a plain SAM ViT-B state dict. Strict load when the
    ``segment_anything`` package is installed, else a check of the ViT-B keys and shapes."""
    sd = _torch_load(path)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise ConfigError(f"weights file {str(path)!r} is not a state dict; got "
                          f"{type(sd).__name__}")
    try:
        from segment_anything import sam_model_registry  # type: ignore[import-not-found]
    except ImportError:
        pe = sd.get("image_encoder.patch_embed.proj.weight")
        ok = (pe is not None and tuple(pe.shape) == (768, 3, 16, 16)
              and "image_encoder.blocks.11.attn.qkv.weight" in sd
              and "image_encoder.blocks.12.attn.qkv.weight" not in sd
              and any(k.startswith("mask_decoder.") for k in sd)
              and any(k.startswith("prompt_encoder.") for k in sd))
        if not ok:
            raise ConfigError(f"weights file {str(path)!r} does not fit the SAM ViT-B "
                              f"architecture (patch embedding, 12 blocks, prompt encoder and "
                              f"mask decoder expected)") from None
        log.info("%s: ViT-B keys and shapes checked (segment_anything not installed for a "
                 "strict load)", path)
        return
    model = sam_model_registry["vit_b"]()
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"weights file {str(path)!r} does not load strictly into SAM ViT-B: "
                          f"{str(e)[:300]}") from e


def _check_nnunet_folder(path: Path) -> None:
    """An nnU-Net v2 model folder: dataset.json, plans.json, fold_X/checkpoint_final.pth with
    ``network_weights`` and ``inference_allowed_mirroring_axes``."""
    if not path.is_dir():
        raise ConfigError(f"weights {str(path)!r} must be an nnU-Net v2 model folder "
                          f"(dataset.json, plans.json, fold_X/checkpoint_final.pth)")
    for f in ("dataset.json", "plans.json"):
        if not (path / f).is_file():
            raise ConfigError(f"nnU-Net model folder {str(path)!r} has no {f}")
    ckpts = sorted(path.glob("fold_*/checkpoint_final.pth"))
    if not ckpts:
        raise ConfigError(f"nnU-Net model folder {str(path)!r} has no "
                          f"fold_X/checkpoint_final.pth")
    import numpy as np
    import torch

    core = getattr(np, "_core", None) or np.core
    safe: list[Any] = [core.multiarray.scalar, np.dtype]
    safe += [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType")
             if hasattr(np, "dtypes") and hasattr(np.dtypes, n)]
    for c in ckpts:
        try:
            with torch.serialization.safe_globals(safe):
                obj = torch.load(c, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise UnavailableError(f"nnU-Net checkpoint {str(c)!r} cannot be read safely "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
        for key in ("network_weights", "inference_allowed_mirroring_axes"):
            if not isinstance(obj, dict) or key not in obj:
                raise ConfigError(f"nnU-Net checkpoint {str(c)!r} has no {key!r} (without "
                                  f"it nnU-Net's predictor cannot run as trained)")


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
                source: str | None = None) -> InstalledWeights:
    """Prove that ``file`` fits its architecture, copy it atomically into ``weights_dir``
    as the manifest's file name and record its sha256 in ``installed.json``.

    ``name`` (a manifest name) defaults to the entry whose file name matches. A sha256 that
    contradicts the manifest's is refused (:class:`UnavailableError`, 69); a file that does
    not fit is refused (:class:`ConfigError`, 78, or 69 when unreadable). Nothing is
    installed when a check fails.
    """
    manifest = load_manifest() if manifest is None else manifest
    src = Path(file).expanduser()
    if not src.exists():
        raise UnavailableError(f"Argument 'file': {str(src)!r} does not exist")
    name = name or guess_name(src, manifest)
    entry = _entry(name, manifest)
    sha = sha256_path(src)
    if entry.sha256 and sha != entry.sha256.lower():
        raise UnavailableError(f"weights file {str(src)!r} has sha256 {sha}, but the manifest "
                               f"says {name} is {entry.sha256.lower()}: a damaged or different "
                               "file; refusing to install it")
    check_fits(src, entry.architecture)
    wdir = Path(weights_dir)
    try:
        wdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Argument 'weights_dir': cannot create {str(wdir)!r} ({e})") from e
    dest = wdir / entry.file
    tmp = Path(tempfile.mkdtemp(dir=wdir, prefix=f".adding-{entry.file}-"))
    try:
        staged = tmp / entry.file
        if src.is_dir():
            shutil.copytree(src, staged)
        else:
            shutil.copyfile(src, staged)
        if sha256_path(staged) != sha:
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
    rec = InstalledWeights(name=name, file=entry.file, architecture=entry.architecture,
                           sha256=sha, known=bool(entry.sha256), source=source or str(src),
                           added=_now())
    records = _read_installed(wdir)
    records[name] = rec
    _write_installed(wdir, records)
    if rec.known:
        log.info("installed %s (%s): sha256 matches the manifest", name, dest)
    else:
        log.warning("installed %s (%s) as UNVERIFIED: the manifest has no sha256 for it, so "
                    "it is reported as an untrained test checkpoint", name, dest)
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

    @property
    def state(self) -> str:
        if not self.installed:
            return "not installed"
        return "verified release" if self.known else "unverified"


def list_weights(weights_dir: Path, *, manifest: Mapping[str, WeightsEntry] | None = None
                 ) -> list[WeightsStatus]:
    """Every manifest entry with its install state (no hashing: reads ``installed.json``)."""
    manifest = load_manifest() if manifest is None else manifest
    records = _read_installed(Path(weights_dir))
    out = []
    for e in manifest.values():
        p = Path(weights_dir) / e.file
        rec = records.get(e.name)
        out.append(WeightsStatus(name=e.name, file=e.file, architecture=e.architecture,
                                 installed=p.exists(), path=str(p),
                                 sha256=rec.sha256 if rec else "",
                                 known=bool(rec and rec.known and e.sha256
                                            and rec.sha256 == e.sha256.lower()),
                                 description=e.description, source=e.source))
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


def verify(weights_dir: Path, *, manifest: Mapping[str, WeightsEntry] | None = None,
           deep: bool = True) -> list[VerifyResult]:
    """Recheck every installed file: present, same sha256 as recorded, not contradicting the
    manifest, and (``deep``) still loading strictly. Never raises for a bad file: each
    result says what is wrong (and the exit code it maps to)."""
    manifest = load_manifest() if manifest is None else manifest
    wdir = Path(weights_dir)
    records = _read_installed(wdir)
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
            if e.sha256 and sha != e.sha256.lower():
                problem, code = (f"{p}: sha256 {sha} does not match the manifest's "
                                 f"{e.sha256.lower()}"), 69
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
        out.append(VerifyResult(name=e.name, path=str(p), ok=not problem, sha256=sha,
                                known=bool(e.sha256 and sha == e.sha256.lower()),
                                problem=problem, exit_code=code))
    return out


def fetch(name: str, weights_dir: Path, *, timeout: float = FETCH_TIMEOUT_S,
          manifest: Mapping[str, WeightsEntry] | None = None) -> InstalledWeights:
    """Download ``name`` from the manifest's source, then install it like :func:`add_weights`.

    Fails fast (``timeout`` seconds per connection attempt) with :class:`UnavailableError`
    where no network is reachable, naming the URL and the manual alternative.
    """
    import urllib.error
    import urllib.request

    manifest = load_manifest() if manifest is None else manifest
    entry = _entry(name, manifest)
    if not entry.source:
        raise UnavailableError(f"weights {name!r} have no download source in the manifest; "
                               f"install a copy with `autoseg weights add FILE --name {name}`")
    if not entry.source.startswith(("https://", "http://")):
        raise ConfigError(f"weights {name!r}: the manifest source must be an http(s) URL; got "
                          f"{entry.source!r}")
    wdir = Path(weights_dir)
    wdir.mkdir(parents=True, exist_ok=True)
    hint = (f"download {entry.source} on a machine with network access and run "
            f"`autoseg weights add {entry.file} --name {name}`")
    with tempfile.TemporaryDirectory(dir=wdir, prefix=f".fetch-{name}-") as tmp:
        part = Path(tmp) / entry.file
        try:
            req = urllib.request.Request(entry.source, headers={"User-Agent": "autoprompt_seg"})
            with urllib.request.urlopen(req, timeout=timeout) as resp, open(part, "wb") as f:
                shutil.copyfileobj(resp, f, length=1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise UnavailableError(f"cannot download {name} from {entry.source} ({reason}); "
                                   f"{hint}") from e
        return add_weights(part, name, wdir, manifest=manifest, source=entry.source)
