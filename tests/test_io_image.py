"""NIfTI / NRRD / MetaImage input through io/image.py, checked against SimpleITK's geometry."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import SimpleITK as sitk

from autoprompt_seg.errors import InputError
from autoprompt_seg.io.image import is_image_file, load_image, volume_to_sitk, write_label_nifti

SHAPE = (7, 9, 11)  # (z, y, x): all different, so any axis mix-up shows
SPACING_XYZ = (0.8, 1.1, 2.5)


def rotation(ax: float, ay: float, az: float) -> npt.NDArray[np.float64]:
    """A proper rotation matrix (degrees about x, then y, then z)."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTIONS = {
    "oblique": rotation(12.0, -20.0, 33.0),
    # flipped axes (a radiological-style storage order) -- improper is fine for ITK
    "flipped": np.diag([-1.0, 1.0, -1.0]),
    "permuted": np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]),
}


def make_image(direction: npt.NDArray[np.float64], dtype: type = np.int16
               ) -> tuple[sitk.Image, npt.NDArray[np.generic]]:
    rng = np.random.default_rng(0)
    arr = rng.integers(-1024, 3000, size=SHAPE).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin((-12.5, 40.25, -300.0))
    img.SetDirection(tuple(np.asarray(direction).ravel().tolist()))
    return img, arr


@pytest.mark.parametrize("suffix,fmt", [(".nii.gz", "nifti"), (".nii", "nifti"),
                                        (".nrrd", "nrrd"), (".mha", "nifti")])
@pytest.mark.parametrize("dname", list(DIRECTIONS))
def test_geometry_matches_simpleitk(tmp_path: Path, suffix: str, fmt: str, dname: str) -> None:
    img, arr = make_image(DIRECTIONS[dname])
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(img, str(path))
    ref = sitk.ReadImage(str(path))  # what the file really holds (NIfTI stores float32)
    vol = load_image(path)
    assert vol.source_format == fmt
    assert vol.array.dtype == np.float32
    assert vol.shape == SHAPE
    assert np.array_equal(vol.array, arr.astype(np.float32))
    assert vol.spacing == pytest.approx(SPACING_XYZ[::-1], abs=1e-5)
    assert np.allclose(vol.direction, DIRECTIONS[dname], atol=1e-5)
    nz, ny, nx = SHAPE
    for z, y, x in [(0, 0, 0), (nz - 1, 0, 0), (0, ny - 1, 0), (0, 0, nx - 1),
                    (nz - 1, ny - 1, nx - 1), (3, 4, 5)]:
        expected = ref.TransformIndexToPhysicalPoint((x, y, z))
        assert vol.index_to_lps(z, y, x) == pytest.approx(expected, abs=1e-4)
    # a continuous index too
    expected = ref.TransformContinuousIndexToPhysicalPoint((1.5, 2.25, 3.75))
    assert vol.index_to_lps(3.75, 2.25, 1.5) == pytest.approx(expected, abs=1e-4)
    assert not vol.has_dicom_sources


def test_float_values_are_kept(tmp_path: Path) -> None:
    img, arr = make_image(np.eye(3), dtype=np.float32)
    arr = arr + 0.25
    img2 = sitk.GetImageFromArray(arr)
    img2.CopyInformation(img)
    path = tmp_path / "f.nrrd"
    sitk.WriteImage(img2, str(path))
    assert np.array_equal(load_image(path).array, arr)


def test_round_trip_through_volume_to_sitk_and_label_writer(tmp_path: Path) -> None:
    img, _ = make_image(DIRECTIONS["oblique"])
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(img, str(path))
    vol = load_image(path)
    back = volume_to_sitk(vol)
    assert back.GetSize() == img.GetSize()
    assert np.allclose(back.GetOrigin(), img.GetOrigin())
    assert np.allclose(back.GetDirection(), img.GetDirection())
    labels = (vol.array > 1000).astype(np.uint8)
    out = tmp_path / "labels.nii.gz"
    write_label_nifti(vol, labels, out)
    lab = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(lab), labels)
    assert np.allclose(lab.GetOrigin(), img.GetOrigin(), atol=1e-4)
    assert np.allclose(lab.GetDirection(), img.GetDirection(), atol=1e-5)
    assert np.allclose(lab.GetSpacing(), img.GetSpacing(), atol=1e-5)


def test_is_image_file(tmp_path: Path) -> None:
    for name in ("a.nii.gz", "b.NII", "c.nrrd", "d.mha"):
        (tmp_path / name).write_bytes(b"x")
        assert is_image_file(tmp_path / name)
    (tmp_path / "e.dcm").write_bytes(b"x")
    assert not is_image_file(tmp_path / "e.dcm")
    assert not is_image_file(tmp_path / "missing.nii.gz")
    assert not is_image_file(tmp_path)


# ------------------------------------------------------------------------- bad files


def assert_input_error(path: Path, *fragments: str) -> None:
    with pytest.raises(InputError) as ei:
        load_image(path)
    assert type(ei.value) is InputError
    assert ei.value.exit_code == 65
    msg = str(ei.value)
    assert str(path) in msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"


def test_missing_file(tmp_path: Path) -> None:
    assert_input_error(tmp_path / "nope.nii.gz", "cannot be read")


def test_garbage_nifti(tmp_path: Path) -> None:
    p = tmp_path / "bad.nii.gz"
    p.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    assert_input_error(p, "cannot be read")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    """ITK reads a truncated NIfTI without an error (zeros for the missing voxels): the
    loader must refuse it, like the other formats."""
    img, _ = make_image(np.eye(3))
    p = tmp_path / f"cut{suffix}"
    sitk.WriteImage(img, str(p), useCompression=suffix != ".nii")
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * 0.7)])
    assert_input_error(p, "cannot be read")


def test_nifti_with_trailing_bytes_still_loads(tmp_path: Path) -> None:
    img, arr = make_image(np.eye(3))
    p = tmp_path / "extra.nii"
    sitk.WriteImage(img, str(p))
    p.write_bytes(p.read_bytes() + b"\0" * 16)
    assert np.array_equal(load_image(p).array, arr)


def test_empty_nrrd(tmp_path: Path) -> None:
    p = tmp_path / "empty.nrrd"
    p.write_bytes(b"")
    assert_input_error(p, "cannot be read")


def test_two_dimensional_image(tmp_path: Path) -> None:
    p = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((9, 11), np.int16)), str(p))
    assert_input_error(p, "3-D scalar", "2-D")


def test_vector_image(tmp_path: Path) -> None:
    p = tmp_path / "rgb.nrrd"
    img = sitk.GetImageFromArray(np.zeros((5, 9, 11, 3), np.uint8), isVector=True)
    sitk.WriteImage(img, str(p))
    assert_input_error(p, "3-D scalar", "3 component(s)")


def test_four_dimensional_image(tmp_path: Path) -> None:
    p = tmp_path / "t.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 5, 9, 11), np.int16), isVector=False), str(p))
    assert_input_error(p, "3-D scalar", "4-D")
