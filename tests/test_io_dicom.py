"""Tests of the DICOM series loader (io/dicom.py) on small synthetic series.

Every series is written into ``tmp_path`` with :func:`autoprompt_seg.synthetic.write_series`
from a known, seeded HU array, then (for the bad-input cases) corrupted with pydicom, so that
every expected answer is exact. Nothing here reads ``../shared``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from autoprompt_seg.errors import GeometryError, InputError
from autoprompt_seg.io.dicom import choose_series, load_series, load_study, scan_study
from autoprompt_seg.synthetic import oblique_direction, synthetic_study, write_series

SHAPE = (12, 64, 64)
SPACING = (2.5, 1.5, 1.25)


def known_hu(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> npt.NDArray[np.float32]:
    """Integer HU values that the uint16 / intercept -1024 encoding stores exactly."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 2500, size=shape).astype(np.float32)


def write(out: Path, hu: npt.NDArray[np.float32] | None = None, **kw: object) -> list[Path]:
    return write_series(out, known_hu() if hu is None else hu, SPACING, **kw)  # type: ignore[arg-type]


def edit(path: Path, fn: Callable[[Dataset], None]) -> None:
    """Read ``path``, apply ``fn`` to the dataset, write it back."""
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path, enforce_file_format=True)


def assert_error(excinfo: pytest.ExceptionInfo[BaseException], cls: type[Exception],
                 *fragments: str) -> None:
    """The error is exactly of class ``cls`` (exit code 65) and names every fragment."""
    err = excinfo.value
    assert type(err) is cls, f"{type(err).__name__}: {err}"
    assert getattr(err, "exit_code", None) == 65
    msg = str(err)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"


# --------------------------------------------------------------------------- good input


def test_load_matches_known_array_and_geometry(tmp_path: Path) -> None:
    hu = known_hu()
    origin = (-40.0, -50.0, -60.0)
    paths = write(tmp_path, hu, origin=origin)
    vol, reason = load_study(tmp_path)
    assert np.array_equal(vol.array, hu)
    assert vol.array.dtype == np.float32
    assert vol.spacing == pytest.approx(SPACING)
    assert vol.origin == pytest.approx(origin)
    assert np.allclose(vol.direction, np.eye(3))
    assert [s.path for s in vol.sources] == [str(p) for p in paths]
    assert "12" in reason
    ds0 = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert vol.series_uid == ds0.SeriesInstanceUID
    assert vol.study_uid == ds0.StudyInstanceUID
    assert vol.frame_of_reference_uid == ds0.FrameOfReferenceUID
    assert vol.sources[0].sop_instance_uid == ds0.SOPInstanceUID
    # the last voxel lies where the geometry says
    assert vol.index_to_lps(11, 63, 63) == pytest.approx(
        (origin[0] + 63 * 1.25, origin[1] + 63 * 1.5, origin[2] + 11 * 2.5))


def test_sort_along_normal_shuffled_names_reversed_numbers_no_suffix_nested(
        tmp_path: Path) -> None:
    hu = known_hu(seed=1)
    rng = np.random.default_rng(3)
    names = [f"IM{int(v):05d}" for v in rng.permutation(SHAPE[0])]  # no .dcm suffix
    study = tmp_path / "study"
    paths = write(study, hu, file_names=names, reverse_instance_numbers=True)
    # scatter the slices over nested folders
    for k, p in enumerate(paths):
        sub = study / f"a{k % 3}" / "b"
        sub.mkdir(parents=True, exist_ok=True)
        p.rename(sub / p.name)
    vol, _ = load_study(study)
    assert np.array_equal(vol.array, hu)
    assert all("/a" in s.path for s in vol.sources)


@pytest.mark.parametrize("angle", [20.0, -25.0])
def test_oblique_orientation(tmp_path: Path, angle: float) -> None:
    hu = known_hu(seed=2)
    direction = oblique_direction(angle)
    rng = np.random.default_rng(5)
    names = [f"x{int(v)}.dcm" for v in rng.permutation(SHAPE[0])]
    write(tmp_path, hu, direction=direction, file_names=names)
    vol, _ = load_study(tmp_path)
    assert np.array_equal(vol.array, hu)
    assert np.allclose(vol.direction, direction, atol=1e-6)
    # the slice normal of the volume is the cross product of the row and column cosines
    assert np.allclose(np.cross(vol.direction[:, 0], vol.direction[:, 1]), vol.direction[:, 2])


def test_feet_first_normal_pointing_down(tmp_path: Path) -> None:
    """Columns flipped: the normal points to the feet; slice 0 must be the lowest index
    along the normal, not the lowest z."""
    hu = known_hu(seed=4)
    direction = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]])
    write(tmp_path, hu, direction=direction, origin=(0.0, 0.0, 100.0))
    vol, _ = load_study(tmp_path)
    assert np.array_equal(vol.array, hu)
    assert vol.origin == pytest.approx((0.0, 0.0, 100.0))
    assert vol.index_to_lps(1, 0, 0)[2] == pytest.approx(100.0 - SPACING[0])


def test_synthetic_study_helper_round_trip(tmp_path: Path) -> None:
    st = synthetic_study(tmp_path, shape=SHAPE, spacing=(2.5, 1.5, 1.5), n_tumours=0, seed=3,
                         shuffle_names=True, suffix="", reverse_instance_numbers=True)
    vol, _ = load_study(tmp_path)
    stored = np.clip(np.round(st.chest.hu + 1024.0), 0, 65535)  # write_series' encoding
    assert np.array_equal(vol.array, stored - 1024)
    assert vol.series_uid == st.series_uid


def test_rescale_slope_intercept_signed(tmp_path: Path) -> None:
    hu = known_hu(seed=6)
    paths = write(tmp_path, hu)
    stored = (hu + 1024).astype(np.int32)  # what write_series stored

    def to_signed(ds: Dataset) -> None:
        raw = ds.pixel_array.astype(np.int32)
        ds.PixelRepresentation = 1
        # signed stored values s = raw - 2000, HU = 0.5 * s - 100 (exact in float32)
        ds.PixelData = (raw - 2000).astype(np.int16).tobytes()
        ds.RescaleSlope = "0.5"
        ds.RescaleIntercept = "-100"

    for p in paths:
        edit(p, to_signed)
    vol, _ = load_study(tmp_path)
    expected = ((stored - 2000) * 0.5 - 100).astype(np.float32)
    assert np.array_equal(vol.array, expected)


def test_pixel_padding_value_and_range(tmp_path: Path) -> None:
    hu = known_hu(seed=7)
    hu[:, :4, :] = -1024  # stored 0
    hu[:, -4:, :] = -1023  # stored 1
    paths = write(tmp_path, hu)

    def pad(ds: Dataset) -> None:
        ds.RescaleIntercept = "-1000"  # without padding, stored 0 would read as -1000 HU
        ds.add_new(0x00280120, "US", 0)  # PixelPaddingValue

    for p in paths[:6]:
        edit(p, pad)

    def pad_range(ds: Dataset) -> None:
        ds.RescaleIntercept = "-1000"
        ds.add_new(0x00280120, "US", 0)  # PixelPaddingValue
        ds.add_new(0x00280121, "US", 1)  # PixelPaddingRangeLimit

    for p in paths[6:]:
        edit(p, pad_range)
    vol, _ = load_study(tmp_path)
    stored = hu + 1024
    expected = stored - 1000
    expected[:6][stored[:6] == 0] = -1024
    expected[6:][stored[6:] <= 1] = -1024
    assert np.array_equal(vol.array, expected)
    assert (vol.array[:6, -4:, :] == -999).all()  # 1 is padding only in the range slices
    assert (vol.array[6:, -4:, :] == -1024).all()


# --------------------------------------------------------------------- series grouping


def _mr(ds: Dataset) -> None:
    ds.Modality = "MR"
    ds.SOPClassUID = dcm_uid.MRImageStorage
    ds.file_meta.MediaStorageSOPClassUID = dcm_uid.MRImageStorage


def write_rtstruct(path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dcm_uid.RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = dcm_uid.ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = dcm_uid.RTStructureSetStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.StructureSetLabel = "GT"
    ds.save_as(path, enforce_file_format=True)


def test_most_slices_wins_and_other_series_and_junk_ignored(tmp_path: Path) -> None:
    write(tmp_path / "short", known_hu((6, 64, 64)))
    hu = known_hu(seed=8)
    long = write(tmp_path / "long", hu)
    mr = write(tmp_path / "mr", known_hu((20, 64, 64)))
    for p in mr:
        edit(p, _mr)
    write_rtstruct(tmp_path / "rs.dcm")
    (tmp_path / "README.txt").write_text("not dicom")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "noise.bin").write_bytes(np.random.default_rng(0).bytes(3000))
    series = scan_study(tmp_path)
    assert sorted(s.modality for s in series) == ["CT", "CT", "MR", "RTSTRUCT"]
    info, reason = choose_series(series)
    assert info.n_instances == 12
    assert "most slices" in reason
    vol, _ = load_study(tmp_path)
    assert np.array_equal(vol.array, hu)
    assert vol.sources[0].path == str(long[0])


def test_tie_goes_to_thinner_slices(tmp_path: Path) -> None:
    thick = write(tmp_path / "thick", known_hu(seed=9))
    thin = write(tmp_path / "thin", known_hu(seed=10))
    for p in thick:
        edit(p, lambda ds: setattr(ds, "SliceThickness", "5"))
    for p in thin:
        edit(p, lambda ds: setattr(ds, "SliceThickness", "1"))
    info, reason = choose_series(scan_study(tmp_path))
    assert info.paths[0].startswith(str(tmp_path / "thin"))
    assert "1 mm" in reason


def test_series_uid_override(tmp_path: Path) -> None:
    write(tmp_path / "big", known_hu((14, 64, 64)))
    small_uid = generate_uid()
    hu = known_hu(seed=11)
    write(tmp_path / "small", hu, series_uid=small_uid)
    vol, reason = load_study(tmp_path, series_uid=small_uid)
    assert vol.series_uid == small_uid
    assert np.array_equal(vol.array, hu)
    assert "--series" in reason
    with pytest.raises(InputError) as ei:
        load_study(tmp_path, series_uid="1.2.3.999")
    assert_error(ei, InputError, "1.2.3.999", "not found")


def test_series_uid_override_of_non_ct_series(tmp_path: Path) -> None:
    mr_uid = generate_uid()
    for p in write(tmp_path, series_uid=mr_uid):
        edit(p, _mr)
    with pytest.raises(InputError) as ei:
        load_study(tmp_path, series_uid=mr_uid)
    assert_error(ei, InputError, mr_uid, "MR", "not a CT image series")


def test_empty_series_uid_and_sop_uids_fall_back(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Anonymised files with empty UIDs (like real de-identified test data) still load;
    SOP UIDs come from the file meta information, the series is grouped by other keys."""
    hu = known_hu(seed=12)
    paths = write(tmp_path, hu)

    def blank(ds: Dataset) -> None:
        ds.SeriesInstanceUID = ""
        ds.SOPInstanceUID = ""
        ds.SOPClassUID = ""

    for p in paths:
        edit(p, blank)
    with caplog.at_level(logging.WARNING, logger="autoprompt_seg.io.dicom"):
        vol, _ = load_study(tmp_path)
    assert np.array_equal(vol.array, hu)
    assert vol.series_uid == ""
    assert vol.sources[0].sop_instance_uid == \
        pydicom.dcmread(paths[0]).file_meta.MediaStorageSOPInstanceUID
    assert "no SeriesInstanceUID" in caplog.text


# ------------------------------------------------------------------------ bad input


def test_missing_folder_and_file_instead_of_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError) as ei:
        load_study(tmp_path / "nope")
    assert_error(ei, InputError, "nope", "no such file or folder")
    f = tmp_path / "f.dcm"
    f.write_text("x")
    with pytest.raises(InputError) as ei:
        load_study(f)
    assert_error(ei, InputError, "f.dcm", "not a folder")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError) as ei:
        load_study(tmp_path)
    assert_error(ei, InputError, str(tmp_path), "empty")


def test_no_dicom_at_all(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.dcm").write_bytes(b"\0" * 500)
    with pytest.raises(InputError) as ei:
        load_study(tmp_path)
    assert_error(ei, InputError, str(tmp_path), "no DICOM files", "2 file(s)")


def test_only_mr(tmp_path: Path) -> None:
    paths = write(tmp_path)
    for p in paths:
        edit(p, _mr)
    uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    with pytest.raises(InputError) as ei:
        load_study(tmp_path)
    assert_error(ei, InputError, str(tmp_path), "no CT image series", "MR", uid,
                 "12 instance(s)")


def test_only_rtstruct(tmp_path: Path) -> None:
    write_rtstruct(tmp_path / "rs.dcm")
    with pytest.raises(InputError) as ei:
        load_study(tmp_path)
    assert_error(ei, InputError, str(tmp_path), "no CT image series", "RTSTRUCT")


def test_only_sagittal_ct(tmp_path: Path) -> None:
    # rows along +y (P), columns along -z (towards the feet), normal along -x
    sag = np.stack([[0.0, 1, 0], [0, 0, -1], [-1, 0, 0]], axis=1)
    write(tmp_path, direction=sag)
    with pytest.raises(InputError) as ei:
        load_study(tmp_path)
    assert_error(ei, InputError, "no axial CT series", "CT series")


def test_truncated_pixel_data(tmp_path: Path) -> None:
    paths = write(tmp_path)
    bad = paths[5]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - 3000])  # header intact, pixels cut
    with pytest.raises(InputError) as ei:
        load_study(tmp_path)
    assert_error(ei, InputError, str(bad))
    assert "decoded" in str(ei.value) or "cannot be read" in str(ei.value)


@pytest.mark.parametrize("index", [0, 5, 11])
def test_truncated_header_of_a_slice(tmp_path: Path, index: int) -> None:
    """A file cut inside its header cannot be parsed at all; it must still be named, also
    when it is the first or last slice (where no gap would reveal it)."""
    paths = write(tmp_path)
    bad = paths[index]
    data = bad.read_bytes()
    series_uid = pydicom.dcmread(bad).SeriesInstanceUID.encode()
    bad.write_bytes(data[: data.index(series_uid) + len(series_uid) + 30])  # mid-header
    with pytest.raises(InputError) as ei:
        load_study(tmp_path)
    assert_error(ei, InputError, str(bad), "cannot be read")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_garbage_file_with_dicom_magic(tmp_path: Path) -> None:
    """A DICOM-looking file of another series that cannot be parsed does not stop the load."""
    hu = known_hu(seed=13)
    write(tmp_path / "ct", hu)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"\xff" * 40)
    vol, _ = load_study(tmp_path)
    assert np.array_equal(vol.array, hu)


def test_missing_slice(tmp_path: Path) -> None:
    paths = write(tmp_path)
    paths[6].unlink()
    with pytest.raises(GeometryError) as ei:
        load_study(tmp_path)
    assert_error(ei, GeometryError, "missing slice", str(paths[5]), str(paths[7]),
                 "5.000 mm", "2.500 mm")


def test_duplicate_positions(tmp_path: Path) -> None:
    paths = write(tmp_path)
    dup = tmp_path / "copy_of_7.dcm"
    shutil.copy(paths[7], dup)
    edit(dup, lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))
    with pytest.raises(GeometryError) as ei:
        load_study(tmp_path)
    assert_error(ei, GeometryError, "duplicate slice position", str(dup), str(paths[7]))


def test_mixed_orientations(tmp_path: Path) -> None:
    paths = write(tmp_path)
    edit(paths[4], lambda ds: setattr(ds, "ImageOrientationPatient",
                                      [1, 0, 0, 0, 0.9848, 0.1736]))
    with pytest.raises(GeometryError) as ei:
        load_study(tmp_path)
    assert_error(ei, GeometryError, "mixed orientations", str(paths[4]))


def test_non_uniform_spacing(tmp_path: Path) -> None:
    paths = write(tmp_path)

    def shift(ds: Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 1.0]

    edit(paths[8], shift)
    with pytest.raises(GeometryError) as ei:
        load_study(tmp_path)
    assert_error(ei, GeometryError, "non-uniform slice spacing", str(paths[8]))


@pytest.mark.parametrize("style", ["positions", "orientation"])
def test_gantry_tilt_rejected(tmp_path: Path, style: str) -> None:
    """Tilt as scanners write it: axial cosines with positions drifting in y, or tilted
    cosines with positions straight along z. Both are rejected."""
    paths = write(tmp_path)
    tilt = np.radians(15.0)

    def tilted(ds: Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        if style == "positions":
            ds.ImagePositionPatient = [x, y + (z + 200.0) * np.tan(tilt), z]
        else:
            ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(tilt)), float(np.sin(tilt))]

    for p in paths:
        edit(p, tilted)
    with pytest.raises(GeometryError) as ei:
        load_study(tmp_path)
    assert_error(ei, GeometryError, "gantry tilt", "15.0 degrees")


def test_single_slice_series(tmp_path: Path) -> None:
    paths = write(tmp_path, known_hu((1, 64, 64)))
    with pytest.raises(GeometryError) as ei:
        load_study(tmp_path)
    assert_error(ei, GeometryError, "single slice", str(paths[0]))


def test_different_rows_columns(tmp_path: Path) -> None:
    paths = write(tmp_path)

    def crop(ds: Dataset) -> None:
        arr = ds.pixel_array[:32]
        ds.Rows = 32
        ds.PixelData = arr.tobytes()

    edit(paths[3], crop)
    with pytest.raises(GeometryError) as ei:
        load_study(tmp_path)
    assert_error(ei, GeometryError, str(paths[3]), "32x64", "64x64")


def test_different_pixel_spacing(tmp_path: Path) -> None:
    paths = write(tmp_path)
    edit(paths[3], lambda ds: setattr(ds, "PixelSpacing", [0.7, 0.7]))
    with pytest.raises(GeometryError) as ei:
        load_study(tmp_path)
    assert_error(ei, GeometryError, str(paths[3]), "pixel spacing")


def test_missing_position_tag(tmp_path: Path) -> None:
    paths = write(tmp_path)

    def drop(ds: Dataset) -> None:
        del ds.ImagePositionPatient

    edit(paths[2], drop)
    with pytest.raises(GeometryError) as ei:
        load_study(tmp_path)
    assert_error(ei, GeometryError, str(paths[2]), "ImagePositionPatient")


@pytest.mark.parametrize("ts", [dcm_uid.MPEG2MPML, "1.2.826.0.1.3680043.9.9999.1"],
                         ids=["mpeg2", "private"])
def test_unsupported_transfer_syntax(tmp_path: Path, ts: str) -> None:
    paths = write(tmp_path)

    def retag(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = ts
        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"

    ds = pydicom.dcmread(paths[4])
    retag(ds)
    pydicom.dcmwrite(paths[4], ds, enforce_file_format=True, implicit_vr=False,
                     little_endian=True)
    with pytest.raises(InputError) as ei:
        load_study(tmp_path)
    assert_error(ei, InputError, str(paths[4]), "unsupported transfer syntax", ts)
    if ts == dcm_uid.MPEG2MPML:
        assert "MPEG2" in str(ei.value)
    else:
        assert "private" in str(ei.value)


def test_load_series_directly_with_no_instances_is_an_error(tmp_path: Path) -> None:
    write(tmp_path)
    info = scan_study(tmp_path)[0]
    info.headers, info.paths = info.headers[:1], info.paths[:1]
    with pytest.raises(GeometryError) as ei:
        load_series(info)
    assert_error(ei, GeometryError, info.series_uid, "single slice")


# ------------------------------------------------------------ compressed transfer syntaxes


def _compress_all(paths: list[Path], ts: str) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(ts)
        ds.save_as(p, enforce_file_format=True)


@pytest.mark.parametrize("ts", [dcm_uid.JPEG2000Lossless, dcm_uid.JPEGLSLossless,
                                dcm_uid.RLELossless],
                         ids=["jpeg2000-lossless", "jpegls-lossless", "rle"])
def test_compressed_round_trip_is_exact(tmp_path: Path, ts: str) -> None:
    from pydicom.pixels import get_encoder

    enc = get_encoder(ts)
    if not enc.is_available:
        pytest.skip(f"no encoder for {ts} ({enc.missing_dependencies})")
    hu = known_hu(seed=20)
    hu[0, 0, :8] = [-1024, 3071, 0, -1, 1, 2470, -1000, 2499]  # extremes and sign changes
    paths = write(tmp_path, hu, direction=oblique_direction(10.0))
    _compress_all(paths, ts)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == ts
    vol, _ = load_study(tmp_path)
    assert np.array_equal(vol.array, hu)


def test_jpeg2000_signed_12_bit(tmp_path: Path) -> None:
    """Signed 12-bit pixels (a common scanner encoding) through JPEG 2000."""
    hu = known_hu(seed=21)
    hu[hu > 2000] = 2000
    paths = write(tmp_path, hu)

    def signed12(ds: Dataset) -> None:
        raw = ds.pixel_array.astype(np.int32) - 1024  # = HU
        ds.PixelRepresentation = 1
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.RescaleIntercept = "0"
        ds.PixelData = raw.astype(np.int16).tobytes()
        ds.compress(dcm_uid.JPEG2000Lossless)

    for p in paths:
        edit(p, signed12)
    vol, _ = load_study(tmp_path)
    assert np.array_equal(vol.array, hu)


def test_deflated_explicit_vr_little_endian(tmp_path: Path) -> None:
    hu = known_hu(seed=22)
    paths = write(tmp_path, hu)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = dcm_uid.DeflatedExplicitVRLittleEndian
        ds.save_as(p, enforce_file_format=True)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == \
        dcm_uid.DeflatedExplicitVRLittleEndian
    vol, _ = load_study(tmp_path)
    assert np.array_equal(vol.array, hu)


def test_implicit_vr_and_big_endian(tmp_path: Path) -> None:
    hu = known_hu(seed=23)
    paths = write(tmp_path, hu)
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        if i % 2:
            ds.file_meta.TransferSyntaxUID = dcm_uid.ImplicitVRLittleEndian
            ds.save_as(p, enforce_file_format=True)
        else:
            big = ds.pixel_array.astype(">u2").tobytes()  # decode before the TS changes
            ds.file_meta.TransferSyntaxUID = dcm_uid.ExplicitVRBigEndian
            ds.PixelData = big
            pydicom.dcmwrite(p, ds, enforce_file_format=True, implicit_vr=False,
                             little_endian=False)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == dcm_uid.ExplicitVRBigEndian
    vol, _ = load_study(tmp_path)
    assert np.array_equal(vol.array, hu)


@pytest.mark.parametrize("option,ts", [("+e1", dcm_uid.JPEGLosslessSV1),
                                       ("+el", dcm_uid.JPEGLossless)],
                         ids=["jpeg-lossless-sv1", "jpeg-lossless-p14"])
def test_jpeg_lossless_encoded_by_dcmtk(tmp_path: Path, option: str, ts: str) -> None:
    """pydicom has no JPEG Lossless encoder; dcmtk's dcmcjpeg writes it when installed."""
    exe = shutil.which("dcmcjpeg")
    if exe is None:
        pytest.skip("dcmtk's dcmcjpeg is not installed (no JPEG Lossless encoder)")
    hu = known_hu(seed=24)
    src = write(tmp_path / "src", hu)
    out = tmp_path / "jpeg"
    out.mkdir()
    for p in src:
        subprocess.run([exe, option, str(p), str(out / p.name)], check=True,
                       capture_output=True)
    assert pydicom.dcmread(out / src[0].name).file_meta.TransferSyntaxUID == ts
    vol, _ = load_study(out)
    assert np.array_equal(vol.array, hu)
