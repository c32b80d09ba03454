"""DICOM study scanning, series selection and series -> :class:`Volume` loading.

Geometry rules (see docs/architecture.md):

* slices are sorted along the slice normal (cross product of the row and column
  direction cosines), never by z alone or by file name;
* one orientation, equal rows/columns, no duplicate or missing positions and uniform
  spacing (relative tolerance ``SPACING_RTOL``) are required;
* a gantry tilt (slice positions not along the normal) is rejected with a clear message;
* rescale slope/intercept is applied, and pixel padding values are set to -1024 HU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..errors import GeometryError, InputError
from ..types import SliceRef, Volume

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
CT_SOP_CLASSES = {CT_IMAGE_STORAGE}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR

SPACING_RTOL = 0.02  # 2 % of the nominal slice spacing
ORIENTATION_ATOL = 1e-3
TILT_ATOL = 1e-2  # cosine tolerance between slice offsets and the slice normal
AIR_HU = -1024.0

#: Transfer syntaxes that pydicom can decode with the installed plug-ins.
SUPPORTED_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
}


@dataclass
class SeriesInfo:
    """One series found while scanning a study folder (headers only)."""

    series_uid: str
    modality: str
    sop_class_uid: str
    description: str
    headers: list[Dataset] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    #: DICOM-looking files of the whole study that could not be parsed: (path, reason).
    unreadable_in_study: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_instances(self) -> int:
        return len(self.paths)

    @property
    def is_ct_image(self) -> bool:
        return self.modality == "CT" and self.sop_class_uid in CT_SOP_CLASSES

    @property
    def is_axial(self) -> bool:
        normal = _normal(self.headers[0]) if self.headers else None
        return normal is not None and abs(normal[2]) > 0.8

    @property
    def slice_thickness(self) -> float:
        vals = [float(h.get("SliceThickness", 0) or 0) for h in self.headers[:1]]
        return vals[0] if vals and vals[0] > 0 else float("inf")

    def summary(self) -> dict[str, object]:
        h = self.headers[0] if self.headers else Dataset()
        return {
            "series_uid": self.series_uid,
            "modality": self.modality,
            "sop_class_uid": self.sop_class_uid,
            "description": self.description,
            "instances": self.n_instances,
            "rows": int(h.get("Rows", 0) or 0),
            "columns": int(h.get("Columns", 0) or 0),
            "slice_thickness": None if self.slice_thickness == float("inf") else self.slice_thickness,
            "axial": bool(self.is_axial) if self.is_ct_image else None,
        }


def _normal(ds: Dataset) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    row = np.array([float(v) for v in iop[:3]])
    col = np.array([float(v) for v in iop[3:]])
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else None


def _iter_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # deterministic order (and so deterministic messages)
        for name in sorted(filenames):
            yield Path(dirpath) / name


class TruncatedError(ValueError):
    """An image file whose data set ends before its Pixel Data element."""


def _read_header(path: Path) -> Dataset:
    """Read the header of ``path`` (no pixels).

    pydicom reads a file cut inside its header without complaint and returns the elements
    before the cut. An image instance must go on to its Pixel Data, so reaching the end of
    the file while reading the header means the file is truncated: raise
    :class:`TruncatedError` then.
    """
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        end = fp.tell()
        fp.seek(0, os.SEEK_END)
        size = fp.tell()
    sop_class = str(ds.get("SOPClassUID", "") or "") or _meta_uid(ds, "MediaStorageSOPClassUID")
    is_image = sop_class in CT_SOP_CLASSES or UID(sop_class).name.endswith("Image Storage")
    ts = UID(_meta_uid(ds, "TransferSyntaxUID") or "1.2.840.10008.1.2")
    deflated = ts.is_transfer_syntax and ts.is_deflated  # read from an inflated buffer
    if is_image and not deflated and end >= size and "PixelData" not in ds:
        raise TruncatedError(f"the file ends after {size} bytes, before its Pixel Data "
                             "(truncated)")
    return ds


def _looks_like_dicom(path: Path) -> bool:
    """True when the file has the 'DICM' magic of a DICOM Part 10 file at offset 128."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _meta_uid(ds: Dataset, keyword: str) -> str:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return ""
    return str(meta.get(keyword, "") or "")


def _fill_sop_uids(ds: Dataset) -> bool:
    """Copy SOP class/instance UIDs from the file meta information where the dataset's own
    are empty (seen in anonymised files). Returns True when something was filled in."""
    filled = False
    for own, meta in (("SOPClassUID", "MediaStorageSOPClassUID"),
                      ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not str(ds.get(own, "") or "") and _meta_uid(ds, meta):
            setattr(ds, own, _meta_uid(ds, meta))
            filled = True
    return filled


def _mentions(path: str, uid: str) -> bool:
    """True when the raw bytes of ``path`` contain ``uid`` (used to attribute a file that
    cannot be parsed to a series: the header usually survives a truncation)."""
    if not uid or uid.startswith("no-SeriesInstanceUID:"):
        return False
    try:
        return uid.encode("ascii") in Path(path).read_bytes()
    except (OSError, UnicodeEncodeError):
        return False


def _fallback_series_key(ds: Dataset) -> str:
    """A grouping key for instances whose SeriesInstanceUID is empty or absent."""
    parts = [str(ds.get(k, "") or "") for k in
             ("Modality", "FrameOfReferenceUID", "SeriesNumber", "SeriesDescription")]
    return "no-SeriesInstanceUID:" + "|".join(parts)


def scan_study(study_dir: str | os.PathLike[str]) -> list[SeriesInfo]:
    """Read the headers of every DICOM file under ``study_dir``, grouped by series.

    Files that are not DICOM are skipped (debug log). Raises :class:`InputError` for a
    missing or empty folder or one with no DICOM at all.
    """
    root = Path(study_dir)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    series: dict[str, SeriesInfo] = {}
    unreadable: list[tuple[str, str]] = []
    n_files = n_filled = n_no_series = 0
    for path in _iter_files(root):
        n_files += 1
        try:
            ds = _read_header(path)
        except Exception as e:  # noqa: BLE001 - any parse failure means "not usable DICOM"
            if _looks_like_dicom(path):
                # A DICOM file that cannot be parsed: remember it, so that a gap it leaves
                # in the chosen series is explained by name.
                log.warning("%s: a DICOM file that cannot be read (%s: %s)", path,
                            type(e).__name__, e)
                unreadable.append((str(path), f"{type(e).__name__}: {e}"))
            else:
                log.debug("skipping %s: not readable as DICOM (%s)", path, e)
            continue
        n_filled += _fill_sop_uids(ds)
        sop_class = str(ds.get("SOPClassUID", "") or "")
        if not sop_class or sop_class == MEDIA_STORAGE_DIRECTORY:
            log.debug("skipping %s: no SOPClassUID (DICOMDIR or not an instance)", path)
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            uid = _fallback_series_key(ds)
            n_no_series += 1
        info = series.get(uid)
        if info is None:
            info = SeriesInfo(series_uid=uid, modality=str(ds.get("Modality", "")),
                              sop_class_uid=sop_class,
                              description=str(ds.get("SeriesDescription", "") or ""))
            series[uid] = info
        info.headers.append(ds)
        info.paths.append(str(path))
    if n_files == 0:
        raise InputError(f"{root}: the folder is empty")
    if not series:
        extra = (f"; {len(unreadable)} of them look like DICOM but cannot be read, e.g. "
                 f"{unreadable[0][0]} ({unreadable[0][1]})" if unreadable else "")
        raise InputError(f"{root}: no DICOM files found among {n_files} file(s){extra}")
    if n_filled:
        log.warning("%s: %d file(s) have an empty SOPClassUID/SOPInstanceUID; taken from their "
                    "file meta information", root, n_filled)
    if n_no_series:
        log.warning("%s: %d file(s) have no SeriesInstanceUID; grouped by modality, frame of "
                    "reference, series number and description", root, n_no_series)
    for info in series.values():
        info.unreadable_in_study = list(unreadable)
    return list(series.values())


def _describe(series: Sequence[SeriesInfo], limit: int = 5) -> str:
    """'MR series 1.2.3 (12 instances, SOP class ...)', ... for error messages."""
    parts = [f"{s.modality or '?'} series {s.series_uid} ({s.n_instances} instance(s), "
             f"SOP class {s.sop_class_uid} {UID(s.sop_class_uid).name})" for s in series[:limit]]
    if len(series) > limit:
        parts.append(f"... and {len(series) - limit} more")
    return "; ".join(parts)


def choose_series(series: Sequence[SeriesInfo], series_uid: str | None = None
                  ) -> tuple[SeriesInfo, str]:
    """Pick the CT series to segment; return it and a human-readable reason.

    Rule: axial CT image series with the most slices; ties broken by thinner slices.
    ``series_uid`` overrides the rule.
    """
    if series_uid:
        for s in series:
            if s.series_uid == series_uid:
                if not s.is_ct_image:
                    raise InputError(f"series {series_uid}: modality {s.modality or '?'} "
                                     f"(SOP class {s.sop_class_uid}) is not a CT image series")
                return s, "chosen with --series"
        raise InputError(f"series {series_uid}: not found in the study "
                         f"({len(series)} series present)")
    ct = [s for s in series if s.is_ct_image]
    if not ct:
        raise InputError("no CT image series in the study; found: " + _describe(series))
    axial = [s for s in ct if s.is_axial]
    if not axial:
        raise InputError("no axial CT series in the study (slice normal not along the "
                         "patient's feet-head axis); found: " + _describe(ct))
    best = sorted(axial, key=lambda s: (-s.n_instances, s.slice_thickness, s.series_uid))[0]
    reason = (f"axial CT with the most slices ({best.n_instances}"
              + (f", {best.slice_thickness:g} mm" if best.slice_thickness != float("inf") else "")
              + f"; {len(axial)} axial CT series of {len(series)} in total)")
    return best, reason


def _decode(path: str) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # noqa: BLE001 - any parse failure is an input error
        raise InputError(f"{path}: cannot be read as DICOM ({e})") from e
    ts = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        uid = UID(ts)
        name = uid.name if uid.is_transfer_syntax else "unknown or private transfer syntax"
        raise InputError(f"{path}: unsupported transfer syntax {ts} ({name}); this loader "
                         "decodes uncompressed, deflated, RLE, JPEG, JPEG-LS and JPEG 2000 "
                         "pixel data")
    return ds


def _pixels(ds: Dataset, path: str) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - decoder errors come in many types
        raise InputError(f"{path}: pixel data cannot be decoded ({type(e).__name__}: {e})") from e
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a single-frame 2-D image, got shape {arr.shape}")
    raw = arr
    out = arr.astype(np.float32)
    pad = ds.get("PixelPaddingValue")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    out *= slope
    out += intercept
    if pad is not None:
        pad_mask = raw == int(pad)
        rng = ds.get("PixelPaddingRangeLimit")
        if rng is not None:
            lo, hi = sorted((int(pad), int(rng)))
            pad_mask = (raw >= lo) & (raw <= hi)
        out[pad_mask] = AIR_HU
    return out


def load_series(info: SeriesInfo,
                progress: Callable[[int, int], None] | None = None) -> Volume:
    """Check the geometry of a series, decode its pixels and return a HU volume."""
    where = f"series {info.series_uid}"
    headers, paths = info.headers, info.paths
    for bad_path, why in info.unreadable_in_study:
        if _mentions(bad_path, info.series_uid):
            raise InputError(f"{where}: {bad_path} belongs to this series but cannot be read "
                             f"as DICOM ({why}); the file is corrupt or truncated")
    if len(headers) < 2:
        raise GeometryError(f"{where}: a single slice ({paths[0] if paths else '?'}) "
                            "is not a volume")
    for h, p in zip(headers, paths, strict=True):
        for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
                    "Rows", "Columns"):
            if tag not in h:
                raise GeometryError(f"{where}: {p} has no {tag}")
    iop0 = np.array([float(v) for v in headers[0].ImageOrientationPatient])
    for h, p in zip(headers, paths, strict=True):
        iop = np.array([float(v) for v in h.ImageOrientationPatient])
        if not np.allclose(iop, iop0, atol=ORIENTATION_ATOL):
            raise GeometryError(f"{where}: mixed orientations ({p} has "
                                f"{np.round(iop, 4).tolist()}, first has "
                                f"{np.round(iop0, 4).tolist()})")
    rows0, cols0 = int(headers[0].Rows), int(headers[0].Columns)
    ps0 = [float(v) for v in headers[0].PixelSpacing]
    for h, p in zip(headers, paths, strict=True):
        if (int(h.Rows), int(h.Columns)) != (rows0, cols0):
            raise GeometryError(f"{where}: {p} is {int(h.Rows)}x{int(h.Columns)}, "
                                f"others are {rows0}x{cols0}")
        if not np.allclose([float(v) for v in h.PixelSpacing], ps0, rtol=1e-4):
            raise GeometryError(f"{where}: {p} has pixel spacing {list(h.PixelSpacing)}, "
                                f"others {ps0}")
    row_cos, col_cos = iop0[:3], iop0[3:]
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    dist = positions @ normal
    order = np.argsort(dist, kind="stable")
    dist, positions = dist[order], positions[order]
    headers = [headers[i] for i in order]
    paths = [paths[i] for i in order]
    gaps = np.diff(dist)
    dup = np.nonzero(gaps < 1e-3)[0]
    if dup.size:
        i = int(dup[0])
        raise GeometryError(f"{where}: duplicate slice position {dist[i]:.3f} mm along the "
                            f"normal ({paths[i]} and {paths[i + 1]})")
    # Gantry tilt: consecutive offsets must be parallel to the normal.
    offsets = np.diff(positions, axis=0)
    cos = np.abs(offsets @ normal) / np.linalg.norm(offsets, axis=1)
    if np.any(cos < 1 - TILT_ATOL):
        angle = float(np.degrees(np.arccos(np.clip(cos.min(), -1, 1))))
        raise GeometryError(f"{where}: gantry tilt of about {angle:.1f} degrees (slice "
                            "positions do not follow the slice normal); tilted series are "
                            "rejected, resample it to an untilted grid first")
    step = float(np.median(gaps))
    bad = np.nonzero(np.abs(gaps - step) > SPACING_RTOL * step)[0]
    if bad.size:
        i = int(bad[0])
        g = float(gaps[i])
        hint = ""
        if info.unreadable_in_study:
            bad_path, why = info.unreadable_in_study[0]
            hint = (f"; {len(info.unreadable_in_study)} DICOM file(s) in the study cannot be "
                    f"read and may be the missing slice(s), e.g. {bad_path} ({why})")
        if abs(g / step - round(g / step)) < SPACING_RTOL and round(g / step) >= 2:
            raise GeometryError(f"{where}: missing slice(s) between {paths[i]} and "
                                f"{paths[i + 1]} (gap {g:.3f} mm, spacing {step:.3f} mm)"
                                + hint)
        raise GeometryError(f"{where}: non-uniform slice spacing ({g:.3f} mm between "
                            f"{paths[i]} and {paths[i + 1]}, median {step:.3f} mm)" + hint)
    arr = np.empty((len(headers), rows0, cols0), dtype=np.float32)
    sources = []
    for k, p in enumerate(paths):
        ds = _decode(p)
        px = _pixels(ds, p)
        if px.shape != (rows0, cols0):
            raise GeometryError(f"{where}: {p} pixel data is {px.shape}, header says "
                                f"{rows0}x{cols0}")
        arr[k] = px
        if progress is not None:
            progress(k + 1, len(paths))
        sop_class = str(headers[k].get("SOPClassUID", "") or "")
        sop_instance = str(headers[k].get("SOPInstanceUID", "") or "")
        if not sop_instance:
            raise InputError(f"{where}: {p} has no SOPInstanceUID (neither in the dataset nor "
                             "in its file meta information)")
        sources.append(SliceRef(sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                                path=p, dataset=headers[k]))
    direction = np.stack([row_cos, col_cos, normal], axis=1)
    h0 = headers[0]
    return Volume(
        array=arr,
        spacing=(step, ps0[0], ps0[1]),  # PixelSpacing = (row spacing = y, column spacing = x)
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=direction,
        study_uid=str(h0.get("StudyInstanceUID", "")),
        series_uid=str(h0.get("SeriesInstanceUID", "") or ""),  # "" when the files lack it
        frame_of_reference_uid=str(h0.get("FrameOfReferenceUID", "")),
        sources=tuple(sources),
        description=info.description,
        source_format="dicom",
    )


def load_study(study_dir: str | os.PathLike[str], series_uid: str | None = None,
               progress: Callable[[int, int], None] | None = None
               ) -> tuple[Volume, str]:
    """Scan ``study_dir``, choose the CT series and load it. Returns (volume, reason)."""
    series = scan_study(study_dir)
    try:
        info, reason = choose_series(series, series_uid)
    except InputError as e:
        raise InputError(f"{study_dir}: {e}") from e
    return load_series(info, progress), reason
