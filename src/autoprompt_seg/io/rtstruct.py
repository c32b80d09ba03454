"""RTSTRUCT ground truth: list the ROIs of a structure set and rasterise one on a CT grid.

Contour points are LPS millimetres; they are mapped to voxel indices with the inverse
of :meth:`Volume.affine_lps`, each planar contour is assigned to the slice it lies on
(within half a slice spacing) and filled with :func:`skimage.draw.polygon`. Several
contours on one slice are combined with XOR, so that inner contours cut holes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import InputError
from ..types import Volume

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

#: A contour must lie on one slice: its points may spread this many slice spacings.
PLANARITY_TOL = 0.5
#: In-plane: contour points this many voxels beyond the grid's edge are clipped (warning).
OUTSIDE_TOL = 0.5


def _read(path: str | os.PathLike[str], stop_before_pixels: bool = True) -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such RTSTRUCT file")
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, AttributeError) as e:
        raise InputError(f"{p}: cannot be read as DICOM ({e})") from e
    if str(ds.get("Modality", "")) != "RTSTRUCT" and str(ds.get("SOPClassUID", "")) != \
            RTSTRUCT_SOP_CLASS:
        raise InputError(f"{p}: not an RTSTRUCT (Modality {ds.get('Modality', '?')!s}, "
                         f"SOP class {ds.get('SOPClassUID', '?')!s})")
    return ds


def list_rois(path: str | os.PathLike[str]) -> list[str]:
    """Names of the ROIs in the structure set at ``path``, in file order."""
    ds = _read(path)
    return [str(r.get("ROIName", "")) for r in ds.get("StructureSetROISequence", [])]


def _iter_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def find_rtstruct(study_dir: str | os.PathLike[str]) -> Path | None:
    """The first RTSTRUCT file (sorted walk) under ``study_dir``, or ``None``."""
    root = Path(study_dir)
    if root.is_file():
        candidates: Iterable[Path] = [root]
    elif root.is_dir():
        candidates = _iter_files(root)
    else:
        raise InputError(f"Argument 'study_dir' must be an existing folder; got {str(root)!r}")
    for path in candidates:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["Modality", "SOPClassUID"])
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, AttributeError):
            continue
        if str(ds.get("Modality", "")) == "RTSTRUCT" or \
                str(ds.get("SOPClassUID", "")) == RTSTRUCT_SOP_CLASS:
            return path
    return None


def _frames_of_reference(ds: Dataset, roi: Dataset) -> set[str]:
    uid = str(roi.get("ReferencedFrameOfReferenceUID", "") or "")
    if uid:
        return {uid}
    return {str(f.get("FrameOfReferenceUID", "")) for f in
            ds.get("ReferencedFrameOfReferenceSequence", []) if f.get("FrameOfReferenceUID")}


def contour_points_to_index(points_lps: npt.NDArray[np.float64], volume: Volume
                            ) -> npt.NDArray[np.float64]:
    """(N, 3) LPS mm points -> (N, 3) continuous voxel indices (i=x, j=y, k=z)."""
    inv = np.linalg.inv(volume.affine_lps())
    homo = np.c_[points_lps, np.ones(len(points_lps))]
    return (homo @ inv.T)[:, :3]


def load_roi_mask(rtstruct_path: str | os.PathLike[str], volume: Volume,
                  roi_name: str = "GTV-1") -> npt.NDArray[np.bool_]:
    """Rasterise ROI ``roi_name`` of an RTSTRUCT on ``volume``'s grid: bool (z, y, x).

    Raises :class:`InputError` naming the file and the ROI when the ROI is absent, has no
    contours, refers to another frame of reference, or has contours that lie off the
    volume's slices.
    """
    from skimage.draw import polygon

    path = Path(rtstruct_path)
    ds = _read(path)
    rois = list(ds.get("StructureSetROISequence", []))
    names = [str(r.get("ROIName", "")) for r in rois]
    match = [r for r in rois if str(r.get("ROIName", "")) == roi_name]
    if not match:
        raise InputError(f"{path}: ROI {roi_name!r} not found; ROIs present: "
                         f"{', '.join(repr(n) for n in names) or 'none'}")
    roi = match[0]
    number = int(roi.ROINumber)
    for_uids = _frames_of_reference(ds, roi)
    if volume.frame_of_reference_uid and for_uids and \
            volume.frame_of_reference_uid not in for_uids:
        raise InputError(f"{path}: ROI {roi_name!r} is in frame of reference "
                         f"{', '.join(sorted(for_uids))}, the volume in "
                         f"{volume.frame_of_reference_uid}")
    contours = None
    for rc in ds.get("ROIContourSequence", []):
        if int(rc.get("ReferencedROINumber", -1)) == number:
            contours = list(rc.get("ContourSequence", []))
            break
    if not contours:
        raise InputError(f"{path}: ROI {roi_name!r} has no contours")

    nz, ny, nx = volume.shape
    mask = np.zeros(volume.shape, dtype=bool)
    n_used = 0
    for ci, c in enumerate(contours):
        gtype = str(c.get("ContourGeometricType", "CLOSED_PLANAR"))
        data = c.get("ContourData")
        if data is None or len(data) < 3:
            continue
        if gtype == "POINT":
            log.debug("%s: ROI %r contour %d is a POINT; skipped", path, roi_name, ci)
            continue
        pts = np.asarray([float(v) for v in data], dtype=np.float64).reshape(-1, 3)
        ijk = contour_points_to_index(pts, volume)
        k = ijk[:, 2]
        if float(k.max() - k.min()) > 2 * PLANARITY_TOL:
            raise InputError(f"{path}: ROI {roi_name!r} contour {ci} is not in the plane of "
                             f"the volume's slices (spans {k.min():.2f}..{k.max():.2f} slices)")
        kc = float(k.mean())
        kz = int(round(kc))
        if abs(kc - kz) > PLANARITY_TOL or not 0 <= kz < nz:
            raise InputError(f"{path}: ROI {roi_name!r} contour {ci} lies at slice position "
                             f"{kc:.2f}, not on one of the volume's {nz} slices")
        if (ijk[:, 0].min() < -OUTSIDE_TOL or ijk[:, 0].max() > nx - 1 + OUTSIDE_TOL
                or ijk[:, 1].min() < -OUTSIDE_TOL or ijk[:, 1].max() > ny - 1 + OUTSIDE_TOL):
            log.warning("%s: ROI %r contour %d extends outside the image; clipped",
                        path, roi_name, ci)
        rr, cc = polygon(ijk[:, 1], ijk[:, 0], shape=(ny, nx))
        if rr.size == 0:
            # a contour smaller than a pixel: mark the pixel(s) its vertices fall in
            rr = np.clip(np.round(ijk[:, 1]).astype(int), 0, ny - 1)
            cc = np.clip(np.round(ijk[:, 0]).astype(int), 0, nx - 1)
        piece = np.zeros((ny, nx), bool)
        piece[rr, cc] = True
        mask[kz] ^= piece
        n_used += 1
    if n_used == 0:
        raise InputError(f"{path}: ROI {roi_name!r} has no planar contours")
    log.debug("%s: ROI %r rasterised from %d contours, %d voxels", path, roi_name, n_used,
              int(mask.sum()))
    return mask
