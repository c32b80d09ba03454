"""Write every output of one prediction, atomically.

Files (nothing else is ever written into ``out_dir``):

* ``seg.dcm``     -- DICOM-SEG, only when the volume came from DICOM and there is at least
  one lesion;
* ``mask.nii.gz`` -- label map in source geometry (lesion *i* = *i*; all zero if none);
* ``report.json`` -- see :mod:`.report`;
* ``preview.png`` -- see :mod:`.preview`.

Atomicity
---------
Everything is first written into a hidden staging folder created next to ``out_dir``
(``.NAME.partial-XXXXXXXX``, same parent, hence the same file system) and fsynced.

* ``out_dir`` does not exist (or is an empty folder): the staging folder is renamed to
  ``out_dir`` in one ``rename(2)`` -- readers see all files or none.
* ``out_dir`` exists and holds files: the run's files are moved in one by one with
  ``os.replace`` (each move is atomic, so no file is ever half-written). Before that, the
  previous run's managed outputs (the four names above) are removed, ``report.json``
  first, and the new ``report.json`` is moved in *last*: a ``report.json`` in the folder
  always describes a complete set, and a stale ``seg.dcm`` from an earlier run never
  survives next to a new report that has no SEG. Other files in the folder are left
  alone.

Any failure raises :class:`OutputError` naming the folder, after removing the staging
folder and any parent folders this call created, so nothing is left behind.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import AutosegError, OutputError
from ..types import Prediction
from . import NIFTI_NAME, OUTPUT_NAMES, PREVIEW_NAME, REPORT_NAME, SEG_NAME
from .dicom_seg import DEFAULT_SERIES_NUMBER, build_seg
from .nifti import write_nifti
from .preview import write_preview
from .report import build_report

log = logging.getLogger(__name__)

NO_SOURCES_WARNING = ("no DICOM-SEG can be made without DICOM sources: input is {fmt}; "
                      "NIfTI output only")


def _fsync(path: Path) -> None:
    """Flush a file (or folder) to disk; best effort on file systems that refuse."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders created (deepest last)."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    created: list[Path] = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            _remove_created(created)
            raise OutputError(f"{folder}: cannot create the folder {d} "
                              f"({e.strerror or e})") from e
        created.append(d)
    return created


def _remove_created(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            log.debug("could not remove the folder %s this call created", d)


def _staging_dir(out: Path) -> Path:
    parent = out.parent
    for _ in range(10):
        tmp = parent / f".{out.name}.partial-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()  # mode 0o777 minus the umask, like the final folder
        except FileExistsError:
            continue
        except OSError as e:
            raise OutputError(f"{out}: cannot write into {parent} "
                              f"({e.strerror or e})") from e
        return tmp
    raise OutputError(f"{out}: cannot create a unique temporary folder in {parent}")


def _commit(staging: Path, out: Path, names: list[str]) -> None:
    """Move the staged files into ``out`` (see the module docstring)."""
    for name in names:
        _fsync(staging / name)
    _fsync(staging)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        try:
            os.rename(staging, out)  # replaces an empty folder atomically on POSIX
            _fsync(out.parent)
            return
        except OSError as e:
            if out.exists() and out.is_dir():
                log.debug("%s appeared while writing (%s); moving files in", out, e)
            else:
                raise
    # Existing, non-empty folder: drop the previous managed outputs, report first.
    for name in (REPORT_NAME, *[n for n in OUTPUT_NAMES if n != REPORT_NAME]):
        old = out / name
        if old.is_file() or old.is_symlink():
            old.unlink()
    ordered = [n for n in names if n != REPORT_NAME] + [n for n in names if n == REPORT_NAME]
    for name in ordered:
        os.replace(staging / name, out / name)
    _fsync(out)
    staging.rmdir()


def write_outputs(prediction: Prediction, out_dir: str | os.PathLike[str], *,
                  input_info: Mapping[str, Any], series_number: int = DEFAULT_SERIES_NUMBER,
                  preview: bool = True, extra: Mapping[str, Any] | None = None
                  ) -> dict[str, Path]:
    """Write the outputs of ``prediction`` into ``out_dir``; return ``{kind: final path}``.

    Kinds: ``"seg"`` (only with DICOM sources and at least one lesion), ``"nifti"``,
    ``"report"``, ``"preview"`` (unless ``preview=False``). Zero lesions is not an error:
    the report says ``"n_lesions": 0`` and no SEG is written.
    Raises :class:`OutputError` naming the folder; nothing is left behind on failure.
    """
    from pydicom.uid import generate_uid

    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if out.exists() and not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: the folder is not writable (permission denied)")
    created = _make_parents(out.parent)
    try:
        staging = _staging_dir(out)
    except BaseException:
        _remove_created(created)
        raise
    vol = prediction.volume
    n = len(prediction.lesions)
    try:
        timings: dict[str, float] = {}
        written: dict[str, str] = {}
        warnings: list[str] = []
        tracking_uids = [str(generate_uid()) for _ in range(n)]
        seg_note = ""
        if not vol.has_dicom_sources:
            msg = NO_SOURCES_WARNING.format(fmt=vol.source_format)
            if not any("no DICOM-SEG" in w for w in prediction.warnings):
                warnings.append(msg)
            seg_note = "no DICOM sources"
        elif n == 0:
            seg_note = "no tumour found"
        elif not vol.study_uid:
            warnings.append("the source series has no StudyInstanceUID: a DICOM-SEG could not "
                            "join its study, so none was written")
            seg_note = "source has no StudyInstanceUID"
        else:
            t0 = time.perf_counter()
            seg = build_seg(prediction, series_number=series_number,
                            tracking_uids=tracking_uids)
            seg.save_as(staging / SEG_NAME, enforce_file_format=True)
            written["seg"] = SEG_NAME
            timings["write_seg_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_nifti(prediction, staging / NIFTI_NAME)
        written["nifti"] = NIFTI_NAME
        timings["write_nifti_s"] = time.perf_counter() - t0
        if preview:
            t0 = time.perf_counter()
            write_preview(prediction, staging / PREVIEW_NAME)
            written["preview"] = PREVIEW_NAME
            timings["write_preview_s"] = time.perf_counter() - t0
        written["report"] = REPORT_NAME
        info = dict(extra or {})
        if seg_note:
            info["seg_not_written"] = seg_note
        report = build_report(prediction, input_info=input_info,
                              tracking_uids=tracking_uids if "seg" in written else None,
                              outputs=written, timings=timings, warnings=warnings,
                              extra=info or None)
        import json

        (staging / REPORT_NAME).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n",
                                           encoding="utf-8")
        _commit(staging, out, list(written.values()))
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_created(created)
        if isinstance(e, AutosegError):
            raise
        if isinstance(e, OSError):
            raise OutputError(f"{out}: cannot write the outputs ({e.strerror or e}"
                              f"{': ' + str(e.filename) if e.filename else ''})") from e
        if isinstance(e, Exception):
            raise OutputError(f"{out}: writing the outputs failed "
                              f"({type(e).__name__}: {e})") from e
        raise
    log.info("outputs written to %s: %s", out, ", ".join(written.values()))
    return {kind: out / name for kind, name in written.items()}
