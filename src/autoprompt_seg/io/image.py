"""NIfTI / NRRD input and NIfTI output through SimpleITK (research use; no DICOM-SEG)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from ..types import Volume

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_image_file(path: str | os.PathLike[str]) -> bool:
    name = str(path).lower()
    return Path(path).is_file() and name.endswith(IMAGE_SUFFIXES)


def load_image(path: str | os.PathLike[str]) -> Volume:
    """Read a NIfTI/NRRD/MetaImage file as a HU volume in LPS geometry."""
    import SimpleITK as sitk

    p = Path(path)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        raise InputError(f"{p}: cannot be read as an image ({str(e).strip().splitlines()[-1]})"
                         ) from e
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p}: expected a 3-D scalar image, got {img.GetDimension()}-D with "
                         f"{img.GetNumberOfComponentsPerPixel()} component(s)")
    arr = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
    sx, sy, sz = img.GetSpacing()
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    fmt = "nrrd" if p.name.lower().endswith((".nrrd", ".nhdr")) else "nifti"
    try:
        return Volume(array=np.ascontiguousarray(arr), spacing=(sz, sy, sx),
                      origin=img.GetOrigin(), direction=direction, description=p.name,
                      source_format=fmt)
    except ValueError as e:
        raise InputError(f"{p}: {e}") from e


def volume_to_sitk(volume: Volume, array: npt.NDArray[np.generic] | None = None):  # type: ignore[no-untyped-def]
    """A SimpleITK image with the volume's geometry and ``array`` (default: the HU data)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(volume.array if array is None else array)
    sz, sy, sx = volume.spacing
    img.SetSpacing((sx, sy, sz))
    img.SetOrigin(volume.origin)
    img.SetDirection(tuple(volume.direction.ravel().tolist()))
    return img


def write_label_nifti(volume: Volume, labels: npt.NDArray[np.uint8], path: str | os.PathLike[str]
                      ) -> None:
    """Write a (z, y, x) label map in the volume's geometry."""
    import SimpleITK as sitk

    sitk.WriteImage(volume_to_sitk(volume, labels.astype(np.uint8)), str(path),
                    useCompression=True)
