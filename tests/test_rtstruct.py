"""RTSTRUCT reading and rasterisation on a synthetic structure set and a real study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from autoprompt_seg.errors import InputError
from autoprompt_seg.io.rtstruct import find_rtstruct, list_rois, load_roi_mask
from autoprompt_seg.types import Volume

FOR_UID = generate_uid()
SPACING = (3.0, 0.8, 0.8)
ORIGIN = (-40.0, -30.0, 100.0)


def grid_volume(direction: np.ndarray | None = None) -> Volume:
    return Volume(array=np.zeros((10, 80, 100), np.float32), spacing=SPACING, origin=ORIGIN,
                  direction=np.eye(3) if direction is None else direction,
                  frame_of_reference_uid=FOR_UID, source_format="synthetic")


def circle_contours(vol: Volume, centre_ij: tuple[float, float], radius_mm: float,
                    slices: range, hole_mm: float = 0.0) -> list[list[float]]:
    out = []
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    for k in slices:
        for r in [radius_mm] + ([hole_mm] if hole_mm else []):
            pts = []
            for a in t:
                i = centre_ij[0] + r * np.cos(a) / SPACING[2]
                j = centre_ij[1] + r * np.sin(a) / SPACING[1]
                pts.extend(vol.index_to_lps(k, j, i))
            out.append(pts)
    return out


def write_rtstruct(path: Path, rois: dict[str, list[list[float]]], for_uid: str = FOR_UID
                   ) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ref = Dataset()
    ref.FrameOfReferenceUID = for_uid
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    ssr, rcs = [], []
    for n, (name, contours) in enumerate(rois.items(), start=1):
        r = Dataset()
        r.ROINumber = n
        r.ROIName = name
        r.ReferencedFrameOfReferenceUID = for_uid
        ssr.append(r)
        rc = Dataset()
        rc.ReferencedROINumber = n
        seq = []
        for pts in contours:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts) // 3
            c.ContourData = [f"{v:.4f}" for v in pts]
            seq.append(c)
        rc.ContourSequence = Sequence(seq)
        rcs.append(rc)
    ds.StructureSetROISequence = Sequence(ssr)
    ds.ROIContourSequence = Sequence(rcs)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_list_and_find(tmp_path: Path) -> None:
    vol = grid_volume()
    (tmp_path / "study" / "a").mkdir(parents=True)
    (tmp_path / "study" / "a" / "notes.txt").write_text("not dicom")
    rs = write_rtstruct(tmp_path / "study" / "b" / "rs.dcm",
                        {"GTV-1": circle_contours(vol, (50, 40), 10, range(3, 6)),
                         "Lung": circle_contours(vol, (50, 40), 20, range(2, 7))})
    assert list_rois(rs) == ["GTV-1", "Lung"]
    assert find_rtstruct(tmp_path / "study") == rs
    assert find_rtstruct(tmp_path / "study" / "a") is None


@pytest.mark.parametrize("flip", [False, True])
def test_circle_area_and_slices(tmp_path: Path, flip: bool) -> None:
    # flip: a volume whose slice axis points the other way (feet first) still rasterises
    direction = np.diag([1.0, 1.0, -1.0]) if flip else None
    vol = grid_volume(direction)
    rs = write_rtstruct(tmp_path / "rs.dcm",
                        {"GTV-1": circle_contours(vol, (50, 40), 10, range(3, 6))})
    m = load_roi_mask(rs, vol)
    assert m.dtype == np.bool_ and m.shape == vol.shape
    assert list(np.nonzero(m.any(axis=(1, 2)))[0]) == [3, 4, 5]
    area_mm2 = m[4].sum() * SPACING[1] * SPACING[2]
    assert abs(area_mm2 - np.pi * 100) / (np.pi * 100) < 0.08
    yy, xx = np.nonzero(m[4])
    assert abs(yy.mean() - 40) < 0.5 and abs(xx.mean() - 50) < 0.5


def test_hole_is_cut(tmp_path: Path) -> None:
    vol = grid_volume()
    rs = write_rtstruct(tmp_path / "rs.dcm",
                        {"GTV-1": circle_contours(vol, (50, 40), 12, range(4, 5), hole_mm=5)})
    m = load_roi_mask(rs, vol)
    assert not m[4, 40, 50] and m[4, 40, 50 + int(8 / SPACING[2])]


def test_missing_roi_lists_present(tmp_path: Path) -> None:
    vol = grid_volume()
    rs = write_rtstruct(tmp_path / "rs.dcm",
                        {"Lung": circle_contours(vol, (50, 40), 10, range(3, 4))})
    with pytest.raises(InputError, match=r"rs\.dcm.*'GTV-1' not found.*'Lung'"):
        load_roi_mask(rs, vol)


def test_other_frame_of_reference(tmp_path: Path) -> None:
    vol = grid_volume()
    rs = write_rtstruct(tmp_path / "rs.dcm",
                        {"GTV-1": circle_contours(vol, (50, 40), 10, range(3, 4))},
                        for_uid=generate_uid())
    with pytest.raises(InputError, match="frame of reference"):
        load_roi_mask(rs, vol)


def test_contour_between_slices_is_rejected(tmp_path: Path) -> None:
    vol = grid_volume()
    pts = circle_contours(vol, (50, 40), 10, range(3, 4))[0]
    pts = [v + (1.0 if i % 3 == 2 else 0.0) for i, v in enumerate(pts)]  # 1 mm off: fine
    rs = write_rtstruct(tmp_path / "ok.dcm", {"GTV-1": [pts]})
    assert load_roi_mask(rs, vol)[3].any()
    far = circle_contours(vol, (50, 40), 10, range(3, 4))[0]
    far = [v + (40.0 if i % 3 == 2 else 0.0) for i, v in enumerate(far)]  # beyond the volume
    rs2 = write_rtstruct(tmp_path / "far.dcm", {"GTV-1": [far]})
    with pytest.raises(InputError, match="GTV-1"):
        load_roi_mask(rs2, vol)


def test_not_an_rtstruct(tmp_path: Path) -> None:
    p = tmp_path / "x.dcm"
    p.write_bytes(b"nothing")
    with pytest.raises(InputError, match="x.dcm"):
        list_rois(p)


def test_real_pat4_gtv_volume(pat4_dir: Path) -> None:
    from autoprompt_seg.io.dicom import load_study

    vol, _ = load_study(pat4_dir)
    rs = find_rtstruct(pat4_dir)
    assert rs is not None and list_rois(rs) == ["GTV-1"]
    m = load_roi_mask(rs, vol, "GTV-1")
    ml = m.sum() * vol.voxel_volume_ml
    assert 115 < ml < 132  # about 123 ml
