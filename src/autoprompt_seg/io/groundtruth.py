"""Ground-truth masks read onto a volume's grid: NIfTI/NRRD/MetaImage label images, an
RTSTRUCT ROI (:mod:`.rtstruct`) or a DICOM-SEG (:mod:`.seg`), whichever a path holds
(the oracle detector's ``--prompts-from``, the detector training data).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from ..types import Volume

log = logging.getLogger(__name__)

#: The RTSTRUCT ROI read when none is named.
DEFAULT_ROI = "GTV-1"
#: File name endings read as mask images (SimpleITK), not as DICOM.
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: How far from a whole voxel index a mapped index may be and still count as on the grid.
INDEX_TOL = 1e-3


def _fmt(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(a):.4g}" for a in v) + ")"


def load_mask_image(path: str | os.PathLike[str], volume: Volume) -> npt.NDArray[np.int64]:
    """Read a NIfTI/NRRD/MetaImage mask onto ``volume``'s grid as a (z, y, x) int array.

    The mask must lie on the volume's grid; a pure re-indexing (other axis order or
    direction, same voxel centres) is applied exactly, anything else is an
    :class:`InputError` that shows both geometries.
    """
    import SimpleITK as sitk

    from .image import volume_to_sitk

    p = Path(path)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        raise InputError(f"{p}: cannot be read as a mask image "
                         f"({str(e).strip().splitlines()[-1]})") from e
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p}: a mask must be a 3-D scalar image; got {img.GetDimension()}-D "
                         f"with {img.GetNumberOfComponentsPerPixel()} component(s)")
    arr = sitk.GetArrayFromImage(img)
    if not (np.issubdtype(arr.dtype, np.integer) or np.array_equal(arr, np.round(arr))):
        raise InputError(f"{p}: a mask must hold integer labels; got non-integer values "
                         f"(dtype {arr.dtype})")
    # voxel (i, j, k) of the CT -> continuous index of the mask
    m_aff = np.eye(4)
    m_aff[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    m_aff[:3, 3] = img.GetOrigin()
    to_mask = np.linalg.inv(m_aff) @ volume.affine_lps()
    lin, shift = to_mask[:3, :3], to_mask[:3, 3]
    reindex = (np.allclose(np.abs(lin), np.round(np.abs(lin)), atol=INDEX_TOL)
               and np.allclose(np.abs(np.round(lin)).sum(axis=0), 1)
               and np.allclose(np.abs(np.round(lin)).sum(axis=1), 1)
               and np.allclose(shift, np.round(shift), atol=INDEX_TOL))
    if reindex:
        nz, ny, nx = volume.shape
        corners = np.array([[i, j, k, 1.0] for i in (0, nx - 1) for j in (0, ny - 1)
                            for k in (0, nz - 1)])
        mapped = np.round(corners @ to_mask.T)[:, :3]
        size = np.array(img.GetSize())
        reindex = bool((mapped >= 0).all() and (mapped < size).all())
    if not reindex:
        sz, sy, sx = volume.spacing
        raise InputError(
            f"{p}: the mask is not on the CT's voxel grid (prompts are never interpolated): "
            f"mask size (x, y, z) {img.GetSize()}, spacing {_fmt(img.GetSpacing())} mm, origin "
            f"{_fmt(img.GetOrigin())}, direction {_fmt(img.GetDirection())}; CT size "
            f"{volume.shape[::-1]}, spacing {_fmt((sx, sy, sz))} mm, origin "
            f"{_fmt(volume.origin)}, direction {_fmt(volume.direction.ravel().tolist())}. Resample the "
            "mask onto the CT grid (nearest neighbour) first")
    if arr.shape == volume.shape and np.allclose(lin, np.eye(3), atol=INDEX_TOL) \
            and np.allclose(shift, 0, atol=INDEX_TOL):
        return arr.astype(np.int64, copy=False)
    log.info("%s: mask stored in another axis order/direction; re-indexed onto the CT grid", p)
    ref = volume_to_sitk(volume, np.zeros(volume.shape, dtype=np.uint8))
    out = sitk.Resample(sitk.Cast(img, sitk.sitkInt32), ref, sitk.Transform(),
                        sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out).astype(np.int64, copy=False)


def _dicom_modality(p: Path) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["Modality",
                                                                         "SOPClassUID"])
    except Exception as e:  # noqa: BLE001 - any parse failure is an input error
        raise InputError(f"--prompts-from {p}: neither a NIfTI/NRRD mask nor readable DICOM "
                         f"({type(e).__name__}: {e})") from e
    return str(ds.get("Modality", "") or "")


def mask_from_ground_truth(path: str | os.PathLike[str], volume: Volume,
                           roi_name: str = DEFAULT_ROI) -> npt.NDArray[Any]:
    """The ground-truth mask (bool) or label map (int) of ``path`` on ``volume``'s grid."""
    p = Path(path)
    if p.is_dir():
        from .rtstruct import find_rtstruct

        found = find_rtstruct(p)
        if found is None:
            raise InputError(f"--prompts-from {p}: the folder holds no RTSTRUCT")
        p = found
    if not p.is_file():
        raise InputError(f"--prompts-from {p}: no such file or folder")
    if p.name.lower().endswith(IMAGE_SUFFIXES):
        return load_mask_image(p, volume)
    modality = _dicom_modality(p)
    if modality == "RTSTRUCT":
        from .rtstruct import load_roi_mask

        return load_roi_mask(p, volume, roi_name=roi_name)
    if modality == "SEG":
        from .seg import read_seg_labels

        return read_seg_labels(p, volume)
    raise InputError(f"--prompts-from {p}: expected an RTSTRUCT, a DICOM-SEG or a "
                     f"NIfTI/NRRD mask; got a DICOM file of modality {modality or '?'}")
