"""DICOM-SEG / NIfTI geometry round trips on studies whose answer is known exactly.

Each synthetic study is written as real DICOM (oblique, reversed, shuffled, anisotropic),
loaded with ``io.dicom.load_study``, turned into a Prediction whose lesions are the known
truth labels, written with ``write_outputs``, and read back four independent ways:

1. ``read_seg_labels`` (highdicom, frames matched by referenced SOP Instance UID);
2. plain pydicom: each frame's DerivationImageSequence UID and its PlanePosition;
3. dcmqi ``segimage2itkimage`` (a C++ reader), mapped onto the CT grid through
   physical LPS points (not through array shapes);
4. the NIfTI mask, mapped through physical points the same way.

``dciodvfy`` must report no error. Tools that are missing skip their checks outside CI.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from autoprompt_seg.export.writer import write_outputs
from autoprompt_seg.io.dicom import load_study
from autoprompt_seg.io.seg import read_seg_labels
from autoprompt_seg.synthetic import oblique_direction, synthetic_study
from autoprompt_seg.types import BackendInfo, Box3D, LesionMask, Prediction, Volume
from conftest import tool

log = logging.getLogger(__name__)

DETECTOR = BackendInfo(name="oracle", kind="detector", version="test")
SEGMENTER = BackendInfo(name="truth", kind="segmenter", version="test")


# --------------------------------------------------------------------------- helpers
tool_path = tool  # PATH, then the venv's bin; skip outside CI, fail in CI


def dciodvfy_messages(path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of ``dciodvfy path``."""
    exe = tool_path("dciodvfy")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if "Error" in ln]
    warnings = [ln for ln in lines if "Warning" in ln]
    for w in warnings:
        log.info("dciodvfy %s: %s", path.name, w)
    return errors, warnings


def truth_prediction(volume: Volume, labels: npt.NDArray[np.uint8],
                     from_person: bool = False) -> Prediction:
    """A Prediction whose lesion i is exactly ``labels == i``."""
    lesions = []
    for i in range(1, int(labels.max()) + 1):
        full = labels == i
        nz = np.nonzero(full)
        lo = [int(a.min()) for a in nz]
        hi = [int(a.max()) + 1 for a in nz]
        key = lo[0] + int(np.argmax(full[lo[0]:hi[0]].sum(axis=(1, 2))))
        box = Box3D(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2], key_slice=key, score=0.9,
                    source="truth", from_person=from_person)
        lesions.append(LesionMask.from_full(full, box))
    return Prediction(volume=volume, lesions=tuple(lesions), detector=DETECTOR,
                      segmenter=SEGMENTER, timings={"detect_s": 0.0})


def labels_via_pydicom(seg_path: Path, volume: Volume) -> npt.NDArray[np.uint8]:
    """Read a SEG without highdicom: frames placed by referenced UID, positions checked."""
    ds = pydicom.dcmread(seg_path)
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    uid_to_k = {ref.sop_instance_uid: k for k, ref in enumerate(volume.sources)}
    out = np.zeros(volume.shape, dtype=np.uint8)
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0]
                  .ReferencedSOPInstanceUID)
        k = uid_to_k[uid]
        # The frame's plane position must be the position of the slice it references.
        ipp = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(ipp, volume.index_to_lps(k, 0, 0), atol=1e-3)
        region = out[k]
        region[(frames[f] > 0) & (region == 0)] = number
    return out


def to_volume_grid(image: Any, volume: Volume) -> npt.NDArray[np.uint8]:
    """Place the non-zero voxels of a SimpleITK image onto ``volume``'s grid through their
    physical (LPS) positions; every voxel must land on a grid point inside the volume."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)
    kji = np.argwhere(arr != 0)
    values = arr[arr != 0]
    ijk = kji[:, ::-1].astype(np.float64)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = (direction @ (ijk * np.array(image.GetSpacing())).T).T + np.array(image.GetOrigin())
    inv = np.linalg.inv(volume.affine_lps())
    idx = (inv @ np.c_[lps, np.ones(len(lps))].T).T[:, :3]  # (i, j, k) continuous
    rounded = np.round(idx)
    assert np.abs(idx - rounded).max(initial=0.0) < 0.05, "voxels fall between grid points"
    rounded = rounded.astype(int)
    assert (rounded >= 0).all() and (rounded < np.array(volume.shape[::-1])).all(), \
        "voxels fall outside the CT volume"
    out = np.zeros(volume.shape, dtype=np.uint8)
    out[rounded[:, 2], rounded[:, 1], rounded[:, 0]] = values.astype(np.uint8)
    return out


def labels_via_dcmqi(seg_path: Path, volume: Volume, work: Path) -> npt.NDArray[np.uint8]:
    """Convert the SEG with dcmqi's segimage2itkimage and map it onto the CT grid."""
    import SimpleITK as sitk

    exe = tool_path("segimage2itkimage")
    out_dir = work / "dcmqi"
    out_dir.mkdir()
    proc = subprocess.run([exe, "--inputDICOM", str(seg_path), "--outputDirectory",
                           str(out_dir), "-t", "nrrd"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads((out_dir / "meta.json").read_text())
    # meta.json lists, per output file (1.nrrd, 2.nrrd, ...), the segments it holds.
    labels = np.zeros(volume.shape, dtype=np.uint8)
    files = sorted(out_dir.glob("*.nrrd"), key=lambda p: int(p.stem))
    assert len(files) == len(meta["segmentAttributes"]), (files, meta)
    for f in files:
        grid = to_volume_grid(sitk.ReadImage(str(f)), volume)
        labels[(grid > 0) & (labels == 0)] = grid[(grid > 0) & (labels == 0)]
    return labels


# --------------------------------------------------------------------------- cases
FLIP_Z = np.diag([1.0, -1.0, -1.0])  # rows run anterior, normal runs inferior (right-handed)
FLIP_XZ = np.diag([-1.0, 1.0, -1.0])  # columns run to the right, normal runs inferior

CASES: dict[str, dict[str, Any]] = {
    "axial": {},
    "oblique": {"direction": oblique_direction(25.0)},
    "normal_reversed": {"direction": FLIP_Z, "reverse_instance_numbers": True},
    "instances_reversed": {"reverse_instance_numbers": True},
    "shuffled_names_no_suffix": {"shuffle_names": True, "suffix": ""},
    "anisotropic": {"spacing": (3.0, 0.8, 1.3)},
    "everything": {"direction": oblique_direction(-15.0) @ FLIP_XZ,
                   "spacing": (2.0, 1.1, 0.7), "shuffle_names": True, "suffix": "",
                   "reverse_instance_numbers": True},
}


def _write_case(root: Path, name: str) -> Any:
    """Write the synthetic study of case ``name`` under ``root``."""
    kw = dict(CASES[name])
    spacing = kw.pop("spacing", (2.5, 1.5, 1.5))
    return synthetic_study(root / name, shape=(20, 72, 88), spacing=spacing, n_tumours=2,
                           seed=7, tumour_radius_mm=(7.0, 5.0), **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_seg_roundtrip(case: str, tmp_path: Path) -> None:
    study = _write_case(tmp_path, case)
    truth = study.chest.labels
    assert truth.max() == 2 and (truth == 1).any() and (truth == 2).any()
    volume, _reason = load_study(study.study_dir)
    # The loader's slice order is the truth's order (k increasing along the normal).
    stored = np.clip(np.round(study.chest.hu + 1024.0), 0, 65535) - 1024.0
    np.testing.assert_array_equal(volume.array, stored.astype(np.float32))
    assert volume.direction[:, 2] @ np.asarray(study.direction)[:, 2] > 0.999

    pred = truth_prediction(volume, truth)
    outputs = write_outputs(pred, tmp_path / "out", input_info={"case": case})
    seg_path = outputs["seg"]
    assert seg_path.name == "seg.dcm"

    errors, _warnings = dciodvfy_messages(seg_path)
    assert errors == [], "\n".join(errors)

    via_highdicom = read_seg_labels(seg_path, volume)
    np.testing.assert_array_equal(via_highdicom, truth)
    via_pydicom = labels_via_pydicom(seg_path, volume)
    np.testing.assert_array_equal(via_pydicom, truth)
    via_dcmqi = labels_via_dcmqi(seg_path, volume, tmp_path)
    np.testing.assert_array_equal(via_dcmqi, truth)

    import SimpleITK as sitk

    via_nifti = to_volume_grid(sitk.ReadImage(str(outputs["nifti"])), volume)
    np.testing.assert_array_equal(via_nifti, truth)

    # The SEG belongs to the source study and frame of reference, in a new series.
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    assert seg.StudyInstanceUID == study.study_uid
    assert seg.FrameOfReferenceUID == study.frame_of_reference_uid
    assert seg.SeriesInstanceUID != study.series_uid
    # Empty frames are omitted: one frame per (slice, lesion) that holds the lesion.
    expected_frames = sum(int((truth == i).any(axis=(1, 2)).sum()) for i in (1, 2))
    assert int(seg.NumberOfFrames) == expected_frames


def test_roundtrip_detects_a_flipped_seg(tmp_path: Path) -> None:
    """The comparison above can fail: a SEG built on a z-flipped volume does not match."""
    study = _write_case(tmp_path, "oblique")
    volume, _ = load_study(study.study_dir)
    flipped = Volume(array=volume.array, spacing=volume.spacing, origin=volume.origin,
                     direction=volume.direction, study_uid=volume.study_uid,
                     series_uid=volume.series_uid,
                     frame_of_reference_uid=volume.frame_of_reference_uid,
                     sources=tuple(reversed(volume.sources)), source_format="dicom")
    pred = truth_prediction(flipped, study.chest.labels)
    outputs = write_outputs(pred, tmp_path / "out", input_info={})
    back = read_seg_labels(outputs["seg"], volume)
    assert not np.array_equal(back, study.chest.labels)
    np.testing.assert_array_equal(back, study.chest.labels[::-1])


# --------------------------------------------------------------------------- real CT
def test_real_ct_seg(pycerr_root: Path, tmp_path: Path) -> None:
    """A cube lesion in the middle of a real lung CT (pycerr pat_2): valid and exact.

    ``pycerr_root`` comes from tests/conftest.py (fetched once into the user cache).
    """
    volume, _ = load_study(pycerr_root / "pat_2")
    nz, ny, nx = volume.shape
    truth = np.zeros(volume.shape, dtype=np.uint8)
    cz, cy, cx = nz // 2, ny // 2, nx // 2
    truth[cz - 3:cz + 4, cy - 10:cy + 10, cx - 12:cx + 12] = 1
    truth[cz - 1:cz + 2, cy + 20:cy + 26, cx - 30:cx - 22] = 2
    pred = truth_prediction(volume, truth, from_person=True)
    outputs = write_outputs(pred, tmp_path / "out", input_info={"patient": "pat_2"})
    errors, _warnings = dciodvfy_messages(outputs["seg"])
    assert errors == [], "\n".join(errors)
    np.testing.assert_array_equal(read_seg_labels(outputs["seg"], volume), truth)
    np.testing.assert_array_equal(labels_via_pydicom(outputs["seg"], volume), truth)
    np.testing.assert_array_equal(labels_via_dcmqi(outputs["seg"], volume, tmp_path), truth)
    seg = pydicom.dcmread(outputs["seg"], stop_before_pixels=True)
    src = pydicom.dcmread(volume.sources[0].path, stop_before_pixels=True)
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.PatientID == src.PatientID
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    report = json.loads(outputs["report"].read_text())
    assert report["n_lesions"] == 2
    assert report["lesions"][0]["voxels"] == 7 * 20 * 24
    assert report["input"]["patient"] == "pat_2"

