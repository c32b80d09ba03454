"""Export: SEG content, report measurements, preview, NIfTI and atomic output folders."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from autoprompt_seg.errors import InputError, OutputError
from autoprompt_seg.export import OUTPUT_NAMES, lesion_colour
from autoprompt_seg.export import writer as writer_mod
from autoprompt_seg.export.dicom_seg import NoDicomSourcesError, build_seg
from autoprompt_seg.export.preview import write_preview
from autoprompt_seg.export.report import build_report, feret_diameter_mm
from autoprompt_seg.export.writer import write_outputs
from autoprompt_seg.io.dicom import load_study
from autoprompt_seg.io.seg import read_seg_labels
from autoprompt_seg.synthetic import synthetic_study
from autoprompt_seg.types import BackendInfo, Box3D, LesionMask, Prediction, Volume

DETECTOR = BackendInfo(name="nnunet-lung", kind="detector", version="2.5",
                       checkpoint="det.pth", checkpoint_sha256="ab" * 32)
SEGMENTER = BackendInfo(name="medsam2", kind="segmenter", version="2025.1",
                        checkpoint="MedSAM2_CTLesion.pt", checkpoint_sha256="cd" * 32)
UNTRAINED = BackendInfo(name="tiny-unet", kind="segmenter", version="0", trained=False)


# --------------------------------------------------------------------------- helpers
def lesion(full: npt.NDArray[np.bool_], *, score: float = 0.8, from_person: bool = False,
           key: int | None = None) -> LesionMask:
    nz = np.nonzero(full)
    lo = [int(a.min()) for a in nz]
    hi = [int(a.max()) + 1 for a in nz]
    k = (lo[0] + hi[0]) // 2 if key is None else key
    box = Box3D(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2], key_slice=k, score=score,
                from_person=from_person)
    return LesionMask.from_full(full, box)


def plain_volume(shape: tuple[int, int, int] = (10, 40, 50),
                 spacing: tuple[float, float, float] = (3.0, 0.7, 1.3)) -> Volume:
    """An in-memory CT-like volume with no DICOM sources (anisotropic pixels)."""
    rng = np.random.default_rng(0)
    arr = rng.normal(-800.0, 50.0, size=shape).astype(np.float32)
    return Volume(array=arr, spacing=spacing, origin=(-10.0, 20.0, -30.0),
                  direction=np.eye(3), description="in-memory", source_format="nifti")


def disc(shape: tuple[int, int], centre_mm: tuple[float, float], radius_mm: float,
         spacing: tuple[float, float]) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (((yy + 0.5) * spacing[0] - centre_mm[0]) ** 2
            + ((xx + 0.5) * spacing[1] - centre_mm[1]) ** 2) <= radius_mm**2


def brute_force_feret(mask: npt.NDArray[np.bool_], spacing: tuple[float, float]) -> float:
    """Max distance between any two corners of any two mask pixels (no hull)."""
    rr, cc = np.nonzero(mask)
    pts = np.concatenate([np.stack([rr + a, cc + b], 1) for a in (0, 1) for b in (0, 1)])
    pts = pts * np.array(spacing)
    d = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt((d**2).sum(-1).max()))


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, Any]:
    """A small synthetic DICOM study with two known tumours, loaded."""
    study = synthetic_study(tmp_path_factory.mktemp("export") / "study", shape=(16, 64, 72),
                            spacing=(2.5, 1.5, 1.5), n_tumours=2, seed=3,
                            tumour_radius_mm=(6.0, 5.0))
    volume, _ = load_study(study.study_dir)
    return volume, study


def truth_prediction(volume: Volume, labels: npt.NDArray[np.uint8], *,
                     from_person: bool = False, segmenter: BackendInfo = SEGMENTER
                     ) -> Prediction:
    lesions = tuple(lesion(labels == i, from_person=from_person)
                    for i in range(1, int(labels.max()) + 1))
    return Prediction(volume=volume, lesions=lesions, detector=DETECTOR, segmenter=segmenter,
                      timings={"detect_s": 1.5, "segment_s": 2.5})


# --------------------------------------------------------------------------- Feret
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 1.3), (1.3, 0.7)])
def test_feret_rectangle_is_exact(spacing: tuple[float, float]) -> None:
    m = np.zeros((30, 40), bool)
    m[5:12, 3:30] = True  # 7 rows x 27 columns
    assert feret_diameter_mm(m, spacing) == pytest.approx(np.hypot(7 * spacing[0],
                                                                   27 * spacing[1]))


def test_feret_single_pixel_line_and_empty() -> None:
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    assert feret_diameter_mm(one, (0.5, 2.0)) == pytest.approx(np.hypot(0.5, 2.0))
    line = np.zeros((5, 9), bool)
    line[2, 1:8] = True  # collinear outline: the hull must not break
    assert feret_diameter_mm(line, (0.5, 2.0)) == pytest.approx(np.hypot(0.5, 14.0))
    assert feret_diameter_mm(np.zeros((4, 4), bool), (1.0, 1.0)) == 0.0


@pytest.mark.parametrize("spacing", [(0.6, 1.4), (1.0, 1.0)])
def test_feret_disc_and_random_blob(spacing: tuple[float, float]) -> None:
    radius = 12.0
    d = disc((80, 60), (24.0, 40.0), radius, spacing)
    got = feret_diameter_mm(d, spacing)
    assert 2 * radius <= got <= 2 * radius + np.hypot(*spacing) + 1e-9
    assert got == pytest.approx(brute_force_feret(d, spacing))
    rng = np.random.default_rng(1)
    blob = rng.random((25, 25)) > 0.7
    assert feret_diameter_mm(blob, spacing) == pytest.approx(brute_force_feret(blob, spacing))


def test_feret_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="spacing_yx"):
        feret_diameter_mm(np.ones((2, 2), bool), (0.0, 1.0))
    with pytest.raises(ValueError, match="mask2d"):
        feret_diameter_mm(np.ones((2, 2, 2), bool), (1.0, 1.0))


# --------------------------------------------------------------------------- report
def test_report_content() -> None:
    vol = plain_volume()
    sz, sy, sx = vol.spacing
    block = np.zeros(vol.shape, bool)
    block[2:5, 4:14, 6:26] = True  # 3 slices of 10 rows x 20 columns
    round_ = np.zeros(vol.shape, bool)
    round_[6] = disc(vol.shape[1:], (20.0, 45.0), 6.0, (sy, sx))
    pred = Prediction(volume=vol, lesions=(lesion(block, score=0.93), lesion(round_, key=6)),
                      detector=DETECTOR, segmenter=UNTRAINED, timings={"detect_s": 1.25},
                      warnings=("box 3 gave an empty mask and was dropped",))
    rep = build_report(pred, input_info={"path": "/data/x.nii.gz", "slices": 10},
                       timings={"write_s": 0.5}, extra={"note": "test"})
    json.dumps(rep, allow_nan=False)  # JSON-ready, no NaN

    assert rep["n_lesions"] == 2 and rep["tumour_found"] is True
    first, second = rep["lesions"]
    assert first["label"] == 1 and first["segment_label"] == "Lung tumour 1"
    assert first["voxels"] == 3 * 10 * 20
    assert first["volume_ml"] == pytest.approx(600 * sz * sy * sx / 1000.0, abs=1e-4)
    assert first["longest_axial_diameter_mm"] == pytest.approx(np.hypot(10 * sy, 20 * sx),
                                                               abs=0.01)
    assert first["box_voxels"] == {"z0": 2, "z1": 5, "y0": 4, "y1": 14, "x0": 6, "x1": 26}
    assert first["key_slice"]["index"] == 3
    assert first["detection_score"] == pytest.approx(0.93)
    # identity direction: the LPS corners are the voxel edges of the box
    corners = np.array(first["box_lps_mm"]["corners"])
    np.testing.assert_allclose(corners.min(0), [-10 + (6 - 0.5) * sx, 20 + (4 - 0.5) * sy,
                                                -30 + (2 - 0.5) * sz], atol=1e-3)
    np.testing.assert_allclose(corners.max(0), [-10 + (26 - 0.5) * sx, 20 + (14 - 0.5) * sy,
                                                -30 + (5 - 0.5) * sz], atol=1e-3)
    assert second["voxels"] == int(round_.sum())
    assert 12.0 <= second["longest_axial_diameter_mm"] <= 12.0 + np.hypot(sy, sx)
    assert second["longest_axial_diameter_slice"] == 6
    assert rep["total_volume_ml"] == pytest.approx((600 + round_.sum()) * sz * sy * sx / 1000,
                                                   abs=1e-3)

    assert rep["input"]["format"] == "nifti" and rep["input"]["slices"] == 10
    assert rep["input"]["spacing_zyx_mm"] == [3.0, 0.7, 1.3]
    assert rep["input"]["path"] == "/data/x.nii.gz"
    det, seg = rep["backends"]["detector"], rep["backends"]["segmenter"]
    assert det["checkpoint_sha256"] == "ab" * 32 and det["checkpoint_status"] == "trained"
    assert seg["checkpoint_status"] == "untrained test checkpoint"
    assert any("untrained test checkpoint" in w for w in rep["warnings"])
    assert "box 3 gave an empty mask and was dropped" in rep["warnings"]
    assert rep["timings_s"] == {"detect_s": 1.25, "write_s": 0.5}
    assert rep["peak_memory_mb"] > 10
    assert rep["software"]["autoprompt_seg"]
    assert rep["extra"] == {"note": "test"}
    assert rep["prompt_mode"] == "automatic"


def test_report_rejects_wrong_tracking_uids() -> None:
    vol = plain_volume()
    m = np.zeros(vol.shape, bool)
    m[1:3, 1:3, 1:3] = True
    pred = Prediction(volume=vol, lesions=(lesion(m),), detector=DETECTOR, segmenter=SEGMENTER)
    with pytest.raises(ValueError, match="tracking_uids"):
        build_report(pred, input_info={}, tracking_uids=["1.2", "1.3"])


# --------------------------------------------------------------------------- SEG
def test_seg_attributes(dicom_case: tuple[Volume, Any]) -> None:
    volume, study = dicom_case
    pred = truth_prediction(volume, study.chest.labels)
    seg = build_seg(pred, series_number=4242)
    assert seg.SeriesNumber == 4242 and seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == study.study_uid
    assert seg.SeriesInstanceUID not in (study.series_uid, "")
    assert len(seg.SegmentSequence) == 2
    tracking_uids = set()
    for i, item in enumerate(seg.SegmentSequence, start=1):
        assert item.SegmentNumber == i
        assert item.SegmentLabel == f"Lung tumour {i}"
        assert item.TrackingID == f"Lung tumour {i}"
        tracking_uids.add(item.TrackingUID)
        cat = item.SegmentedPropertyCategoryCodeSequence[0]
        typ = item.SegmentedPropertyTypeCodeSequence[0]
        reg = item.AnatomicRegionSequence[0]
        assert (cat.CodeValue, cat.CodingSchemeDesignator) == ("49755003", "SCT")
        assert cat.CodeMeaning == "Morphologically abnormal structure"
        assert (typ.CodeValue, typ.CodingSchemeDesignator, typ.CodeMeaning) == \
            ("108369006", "SCT", "Neoplasm")
        assert (reg.CodeValue, reg.CodingSchemeDesignator, reg.CodeMeaning) == \
            ("39607008", "SCT", "Lung")
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "medsam2" and algo.AlgorithmVersion == "2025.1"
        assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert "detector=nnunet-lung 2.5" in algo.AlgorithmParameters
        assert item.RecommendedDisplayCIELabValue is not None
    assert len(tracking_uids) == 2
    # the source images are the CT slices, in slice order
    refs = [r.ReferencedSOPInstanceUID
            for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert set(refs) == {s.sop_instance_uid for s in volume.sources}
    # segment colours are the preview's
    from highdicom.color import CIELabColor

    lab = CIELabColor.from_dicom_value(tuple(seg.SegmentSequence[1].RecommendedDisplayCIELabValue))
    assert np.allclose(lab.to_rgb(), lesion_colour(2), atol=2)


def test_seg_manual_prompts_are_semiautomatic(dicom_case: tuple[Volume, Any]) -> None:
    volume, study = dicom_case
    seg = build_seg(truth_prediction(volume, study.chest.labels, from_person=True))
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"SEMIAUTOMATIC"}


def test_seg_needs_dicom_sources_and_lesions(dicom_case: tuple[Volume, Any]) -> None:
    vol = plain_volume()
    m = np.zeros(vol.shape, bool)
    m[2:4, 5:9, 5:9] = True
    pred = Prediction(volume=vol, lesions=(lesion(m),), detector=DETECTOR, segmenter=SEGMENTER)
    with pytest.raises(NoDicomSourcesError, match="no DICOM-SEG can be made without DICOM "
                                                  "sources") as exc:
        build_seg(pred)
    assert isinstance(exc.value, OutputError) and exc.value.exit_code == 73
    volume, _ = dicom_case
    empty = Prediction(volume=volume, lesions=(), detector=DETECTOR, segmenter=SEGMENTER)
    with pytest.raises(OutputError, match="no lesions"):
        build_seg(empty)
    with pytest.raises(ValueError, match="series_number"):
        build_seg(truth_prediction(volume, (np.arange(volume.array.size).reshape(volume.shape)
                                            == 5).astype(np.uint8)), series_number=0)


def test_seg_overlapping_lesions_keep_both_masks(dicom_case: tuple[Volume, Any],
                                                 tmp_path: Path) -> None:
    volume, _ = dicom_case
    a = np.zeros(volume.shape, bool)
    a[4:9, 10:30, 10:30] = True
    b = np.zeros(volume.shape, bool)
    b[6:12, 20:40, 20:40] = True  # overlaps a
    pred = Prediction(volume=volume, lesions=(lesion(a), lesion(b)), detector=DETECTOR,
                      segmenter=SEGMENTER)
    seg = build_seg(pred)
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    import highdicom as hd

    back = hd.seg.segread(path)
    uids = [s.sop_instance_uid for s in volume.sources]
    px = back.get_pixels_by_source_instance(uids, segment_numbers=[1, 2],
                                            skip_overlap_checks=True)
    np.testing.assert_array_equal(px[..., 0] > 0, a)
    np.testing.assert_array_equal(px[..., 1] > 0, b)
    labels = read_seg_labels(path, volume)
    np.testing.assert_array_equal(labels, pred.label_map())  # lesion 1 wins where both


def test_read_seg_labels_rejects_another_series(dicom_case: tuple[Volume, Any],
                                                tmp_path: Path) -> None:
    volume, study = dicom_case
    path = tmp_path / "seg.dcm"
    build_seg(truth_prediction(volume, study.chest.labels)).save_as(path)
    other = synthetic_study(tmp_path / "other", shape=(16, 64, 72), n_tumours=1, seed=5,
                            tumour_radius_mm=(5.0,))
    other_volume, _ = load_study(other.study_dir)
    with pytest.raises(InputError, match="references none of the 16 slices"):
        read_seg_labels(path, other_volume)
    not_seg = tmp_path / "x.dcm"
    not_seg.write_bytes(b"not dicom")
    with pytest.raises(InputError, match="cannot be read as a DICOM-SEG"):
        read_seg_labels(not_seg, volume)


# --------------------------------------------------------------------------- writer
def test_write_outputs_with_lesions(dicom_case: tuple[Volume, Any], tmp_path: Path) -> None:
    volume, study = dicom_case
    out = tmp_path / "a" / "b" / "out"  # parents are created
    files = write_outputs(truth_prediction(volume, study.chest.labels), out,
                          input_info={"path": str(study.study_dir)})
    assert set(files) == {"seg", "nifti", "report", "preview"}
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    report = json.loads(files["report"].read_text())
    seg = pydicom.dcmread(files["seg"], stop_before_pixels=True)
    # the report's tracking UIDs are the SEG's
    assert [les["tracking_uid"] for les in report["lesions"]] == \
        [s.TrackingUID for s in seg.SegmentSequence]
    assert report["outputs"]["seg"] == "seg.dcm"
    assert set(report["timings_s"]) >= {"detect_s", "segment_s", "write_seg_s",
                                        "write_nifti_s", "write_preview_s"}
    for i, les in enumerate(report["lesions"], start=1):
        assert les["volume_ml"] == pytest.approx(
            (study.chest.labels == i).sum() * volume.voxel_volume_ml, abs=1e-4)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_zero_lesions_no_seg(dicom_case: tuple[Volume, Any], tmp_path: Path) -> None:
    volume, _ = dicom_case
    pred = Prediction(volume=volume, lesions=(), detector=DETECTOR, segmenter=SEGMENTER)
    out = tmp_path / "out"
    files = write_outputs(pred, out, input_info={})
    assert set(files) == {"nifti", "report", "preview"}
    assert not (out / "seg.dcm").exists()
    report = json.loads(files["report"].read_text())
    assert report["n_lesions"] == 0 and report["lesions"] == []
    assert report["tumour_found"] is False
    assert report["extra"]["seg_not_written"] == "no tumour found"
    import SimpleITK as sitk

    assert sitk.GetArrayFromImage(sitk.ReadImage(str(files["nifti"]))).max() == 0


def test_nifti_input_gets_no_seg_and_a_warning(tmp_path: Path) -> None:
    vol = plain_volume()
    m = np.zeros(vol.shape, bool)
    m[2:5, 10:20, 10:20] = True
    pred = Prediction(volume=vol, lesions=(lesion(m),), detector=DETECTOR, segmenter=SEGMENTER)
    files = write_outputs(pred, tmp_path / "out", input_info={})
    assert "seg" not in files and not (tmp_path / "out" / "seg.dcm").exists()
    report = json.loads(files["report"].read_text())
    assert any("no DICOM-SEG can be made without DICOM sources" in w
               for w in report["warnings"])
    import SimpleITK as sitk

    img = sitk.ReadImage(str(files["nifti"]))
    np.testing.assert_allclose(img.GetSpacing(), (1.3, 0.7, 3.0))
    np.testing.assert_allclose(img.GetOrigin(), vol.origin, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), m.astype(np.uint8))


def test_failure_midway_leaves_nothing(dicom_case: tuple[Volume, Any], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    volume, study = dicom_case

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(writer_mod, "write_preview", boom)
    out = tmp_path / "new" / "out"
    with pytest.raises(OutputError, match="disk on fire") as exc:
        write_outputs(truth_prediction(volume, study.chest.labels), out, input_info={})
    assert str(out) in str(exc.value)
    assert list(tmp_path.iterdir()) == []  # no out_dir, no staging folder, no parents


def test_failure_keeps_an_existing_folder_untouched(dicom_case: tuple[Volume, Any],
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    volume, study = dicom_case
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("old")
    monkeypatch.setattr(writer_mod, "write_nifti", lambda *a, **k: (_ for _ in ()).throw(
        OSError(28, "No space left on device")))
    with pytest.raises(OutputError, match="No space left on device"):
        write_outputs(truth_prediction(volume, study.chest.labels), out, input_info={})
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["report.json"]
    assert (out / "report.json").read_text() == "old"


def test_existing_folder_gets_the_new_set(dicom_case: tuple[Volume, Any],
                                          tmp_path: Path) -> None:
    """Files are moved into a non-empty folder; a stale seg.dcm does not survive."""
    volume, study = dicom_case
    out = tmp_path / "out"
    write_outputs(truth_prediction(volume, study.chest.labels), out, input_info={})
    assert (out / "seg.dcm").exists()
    (out / "notes.txt").write_text("mine")
    pred = Prediction(volume=volume, lesions=(), detector=DETECTOR, segmenter=SEGMENTER)
    files = write_outputs(pred, out, input_info={})
    assert sorted(p.name for p in out.iterdir()) == ["mask.nii.gz", "notes.txt",
                                                     "preview.png", "report.json"]
    assert json.loads(files["report"].read_text())["n_lesions"] == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unwritable_output_folder(tmp_path: Path) -> None:
    vol = plain_volume()
    pred = Prediction(volume=vol, lesions=(), detector=DETECTOR, segmenter=SEGMENTER)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="a-file") as exc:
        write_outputs(pred, blocker / "out", input_info={})
    assert exc.value.exit_code == 73
    with pytest.raises(OutputError, match="not a folder"):
        write_outputs(pred, blocker, input_info={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_read_only_parent(tmp_path: Path) -> None:  # pragma: no cover - not as root
    vol = plain_volume()
    pred = Prediction(volume=vol, lesions=(), detector=DETECTOR, segmenter=SEGMENTER)
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="ro"):
            write_outputs(pred, parent / "out", input_info={})
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


# --------------------------------------------------------------------------- preview
def _png(path: Path) -> npt.NDArray[np.uint8]:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_preview_shows_lesions(dicom_case: tuple[Volume, Any], tmp_path: Path) -> None:
    volume, study = dicom_case
    path = write_preview(truth_prediction(volume, study.chest.labels), tmp_path / "p.png")
    img = _png(path)
    assert img.shape[0] >= 300 and img.shape[1] >= 900  # overview + 2 lesion panels
    assert img.std() > 20  # not a blank canvas
    for i in (1, 2):  # each lesion's contour is drawn in its colour
        colour = np.array(lesion_colour(i))
        near = np.abs(img.astype(int) - colour).sum(-1) < 40
        assert near.sum() > 30, f"lesion {i} colour not found in the preview"


def test_preview_without_lesions(dicom_case: tuple[Volume, Any], tmp_path: Path) -> None:
    volume, _ = dicom_case
    pred = Prediction(volume=volume, lesions=(), detector=DETECTOR, segmenter=SEGMENTER)
    img = _png(write_preview(pred, tmp_path / "p.png"))
    assert img.std() > 10
    for i in (1, 2):
        near = np.abs(img.astype(int) - np.array(lesion_colour(i))).sum(-1) < 40
        assert near.sum() < 5


def test_existing_empty_folder_is_replaced_whole(tmp_path: Path) -> None:
    vol = plain_volume()
    pred = Prediction(volume=vol, lesions=(), detector=DETECTOR, segmenter=SEGMENTER)
    out = tmp_path / "out"
    out.mkdir()
    files = write_outputs(pred, out, input_info={}, preview=False)
    assert set(files) == {"nifti", "report"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["mask.nii.gz", "report.json"]
