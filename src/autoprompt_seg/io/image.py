"""NIfTI / NRRD input and NIfTI output through SimpleITK (research use; no DICOM-SEG)."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from ..types import Volume

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_image_file(path: str | os.PathLike[str]) -> bool:
    name = str(path).lower()
    return Path(path).is_file() and name.endswith(IMAGE_SUFFIXES)


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Bytes a complete single-file NIfTI-1/2 needs (vox_offset + voxel data), from its
    header; ``None`` when the header is not one of a single-file NIfTI."""
    for endian in ("<", ">"):
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
            break
    else:
        return None
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    nvox = 1
    for d in dims[1:ndim + 1]:
        nvox *= max(int(d), 1)
    return offset + nvox * bitpix // 8


def _check_nifti_complete(p: Path) -> None:
    """ITK's NIfTI reader fills a truncated file's missing voxels with zeros without an
    error; refuse such a file (and a broken gzip stream) here."""
    name = p.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    try:
        if name.endswith(".gz"):
            with gzip.open(p, "rb") as f:
                header = f.read(540)
                size = len(header)
                while chunk := f.read(1 << 22):
                    size += len(chunk)
        else:
            with open(p, "rb") as f:
                header = f.read(540)
            size = p.stat().st_size
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{p}: cannot be read as an image (corrupt or truncated: {e})") from e
    expected = _nifti_expected_bytes(header)
    if expected is not None and size < expected:
        raise InputError(f"{p}: cannot be read as an image (truncated: {size} bytes of "
                         f"NIfTI data, the header needs {expected})")


def load_image(path: str | os.PathLike[str]) -> Volume:
    """Read a NIfTI/NRRD/MetaImage file as a HU volume in LPS geometry."""
    import SimpleITK as sitk

    p = Path(path)
    if p.is_file():
        _check_nifti_complete(p)
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
