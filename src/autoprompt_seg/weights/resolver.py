"""The one checkpoint resolver of the backends (:func:`resolve`): a path or an installed
weights name -> a :class:`CheckpointChoice` with its sha256 and provenance."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UnavailableError
from . import (
    UNKNOWN,
    WeightsEntry,
    checkpoint_provenance,
    installed_path,
    sha256_path,
    training_record,
)

log = logging.getLogger(__name__)


def load_manifest() -> dict[str, WeightsEntry]:
    """The package's :func:`autoprompt_seg.weights.load_manifest`, looked up when called
    (so that a replaced one is used)."""
    out: dict[str, WeightsEntry] = importlib.import_module(__package__ or "").load_manifest()
    return out


#: The provenance state of a checkpoint with a valid training record beside it.
TRAINED_HERE = "trained here"


@dataclass(frozen=True)
class CheckpointChoice:
    """The checkpoint a backend loads, and what is known about it (:func:`resolve`)."""

    path: Path
    name: str  # the manifest (or installed) name when known, else the file name
    sha256: str
    trained: bool  # not an unknown file: a pinned release, an official download, a user
    #              # pin (checkpoint_provenance) or trained here (training record)
    provenance: str = UNKNOWN  # one line for report.json and the SEG
    state: str = UNKNOWN  # PINNED | OFFICIAL | USER_PIN | TRAINED_HERE | UNKNOWN
    record: Mapping[str, Any] | None = None  # the training record, when trained here

    @property
    def training(self) -> Mapping[str, Any] | None:
        """The training record (another name for :attr:`record`)."""
        return self.record


def training_provenance(record: Mapping[str, Any], model: str) -> str:
    """``"trained here: MODEL, N case(s), E epoch(s), data <hash>"`` for a training record
    written by :mod:`autoprompt_seg.train`."""
    n = record.get("n_cases", len(record.get("cases", []) or []))
    return (f"trained here: {record.get('model', model)}, {n} case(s), "
            f"{record.get('epochs', '?')} epoch(s), data {record.get('data_hash', '?')}")


def resolve(architecture: str, ref: str | os.PathLike[str], weights_dir: Path | None, *,
            model: str, option: str, label: str = "", add_file: str | None = None,
            add_hint: str = "", training_records: bool = True, record_model: str | None = None
            ) -> CheckpointChoice:
    """The one checkpoint resolver of the backends: find ``ref`` (a file or folder path, or
    a manifest name installed in ``weights_dir``) and decide its provenance.

    Its sha256 decides first (:func:`checkpoint_provenance`): a pinned release, an official
    download (hash not pinned) or a user pin count as trained; else (``training_records``)
    a valid training record beside it (:func:`training_record`; of ``record_model`` when
    given) makes it *trained here*, never a release; else it is an untrained test
    checkpoint. ``model`` names the backend in the texts, ``option`` the option that gave
    ``ref``, ``label`` the weights in the not-installed error (default ``model``) and
    ``add_file`` the file that error tells to ``weights add`` (default the manifest's) and
    ``add_hint`` what it says after.
    """
    manifest = load_manifest()
    ref = str(ref)
    p = Path(ref).expanduser()
    if ref in manifest and not p.exists():
        entry = manifest[ref]
        if entry.architecture != architecture:
            raise ConfigError(f"Option '{option}' names {ref!r}, a {entry.architecture} "
                              f"checkpoint; {model} needs {architecture}")
        found = installed_path(ref, weights_dir) if weights_dir is not None else None
        if found is None:
            raise UnavailableError(
                f"{label or model} weights {ref!r} ({entry.file}) are not installed in "
                f"{weights_dir}: run `autoseg weights fetch {ref}` or "
                f"`autoseg weights add {add_file or entry.file} --name {ref}`{add_hint}")
        p = found
    elif not p.exists():
        names = ", ".join(k for k, e in manifest.items() if e.architecture == architecture)
        raise UnavailableError(f"Option '{option}' must be a known weights name ({names}) or "
                               f"an existing file; got {ref!r}")
    sha = sha256_path(p)
    prov = checkpoint_provenance(sha, architecture, weights_dir, manifest=manifest, path=p)
    fallback = ref if ref in manifest else p.name
    if prov.state != UNKNOWN:
        return CheckpointChoice(p, prov.name or fallback, sha, True, prov.text, prov.state)
    rec = training_record(p) if training_records else None
    if rec is not None and record_model is not None and rec.get("model") != record_model:
        log.warning("%s: its training record is of model %r, not %s; ignored", p,
                    rec.get("model"), record_model)
        rec = None
    if rec is not None:
        return CheckpointChoice(p, fallback, sha, True, training_provenance(rec, model),
                                TRAINED_HERE, rec)
    return CheckpointChoice(p, fallback, sha, False)


def read_torch_file(path: str | os.PathLike[str]) -> Any:
    """A checkpoint file's contents, read with ``torch.load(weights_only=True)`` (no pickled
    code runs) onto the CPU. :class:`UnavailableError` for a missing, truncated or corrupt
    file; what the contents must be is the caller's check."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise UnavailableError(f"checkpoint {str(p)!r}: no such file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        raise UnavailableError(f"checkpoint {str(p)!r} is truncated or corrupt and cannot be "
                               f"read ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                               ) from e


def state_dict_mismatch(own: Mapping[str, Any], state_dict: Mapping[str, Any]) -> str:
    """How ``state_dict`` differs from a network's own state dict ``own`` in keys and
    shapes ("" when it fits): the counts of missing and unexpected keys and of shape
    mismatches, each with its first examples. The one wording of every model's strict
    load (MedSAM, MedSAM2/SAM 2.1, the 2-D CNNs, the RetinaNet)."""
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: file {tuple(getattr(state_dict[k], 'shape', ()))} vs model "
              f"{tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and tuple(getattr(state_dict[k], "shape", ())) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {'; '.join(shapes[:2])})")
    return "; ".join(parts)


def load_state_strict(net: Any, state_dict: Mapping[str, Any], subject: str,
                      target: str) -> None:
    """``net.load_state_dict(state_dict, strict=True)``, the one strict load of every
    model's checkpoint; a mismatch raises :class:`ConfigError` "``subject`` does not fit
    ``target``: ..." (:func:`state_dict_mismatch`), any other refusal "``subject`` does not
    load strictly into ``target``: ..."."""
    problems = state_dict_mismatch(net.state_dict(), state_dict)
    if problems:
        raise ConfigError(f"{subject} does not fit {target}: {problems}")
    try:
        net.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as e:  # dtype or other problems that keys/shapes do not show
        raise ConfigError(f"{subject} does not load strictly into {target}: "
                          f"{str(e)[:300]}") from e
