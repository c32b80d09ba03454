"""The manual-prompt detector (detect/oracle.py): prompts JSON, masks, SEG and RTSTRUCT."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from autoprompt_seg import registry
from autoprompt_seg.config import Settings
from autoprompt_seg.detect.oracle import OracleDetector, boxes_from_mask, create
from autoprompt_seg.errors import ConfigError, InputError
from autoprompt_seg.io.image import volume_to_sitk
from autoprompt_seg.synthetic import oblique_direction
from autoprompt_seg.types import Box3D, Volume

SHAPE = (20, 40, 50)


def make_volume(direction: np.ndarray | None = None) -> Volume:
    arr = np.zeros(SHAPE, dtype=np.float32)
    return Volume(array=arr, spacing=(2.5, 0.8, 0.7), origin=(-20.0, 35.0, -140.0),
                  direction=oblique_direction(25.0) if direction is None else direction,
                  source_format="synthetic")


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


def detector(tmp_path: Path, doc: Any) -> OracleDetector:
    return OracleDetector(prompts=write_json(tmp_path / "prompts.json", doc))


def box(z0: int, z1: int, y0: int, y1: int, x0: int, x1: int, key: int) -> Box3D:
    return Box3D(z0=z0, z1=z1, y0=y0, y1=y1, x0=x0, x1=x1, key_slice=key, source="oracle",
                 from_person=True)


VOXEL_DOC = {"version": 1, "coordinates": "voxel", "comment": "two nodules",
             "boxes": [{"z": [2, 9], "y": [5, 17], "x": [30, 44], "key_slice": 4,
                        "label": "right"},
                       {"z": [10, 13], "y": [0, 40], "x": [0, 1]}]}


# --------------------------------------------------------------------------- create


def test_create_needs_prompts_or_prompts_from() -> None:
    with pytest.raises(ConfigError) as ei:
        create(Settings(options={}))
    assert "--prompts" in str(ei.value) and "--prompts-from" in str(ei.value)
    assert ei.value.exit_code == 78


def test_create_both_and_missing_files(tmp_path: Path) -> None:
    p = write_json(tmp_path / "p.json", VOXEL_DOC)
    with pytest.raises(ConfigError, match="either --prompts or --prompts-from"):
        OracleDetector(prompts=p, prompts_from=p)
    with pytest.raises(ConfigError, match=r"missing\.json: no such file"):
        OracleDetector(prompts=tmp_path / "missing.json")
    with pytest.raises(ConfigError, match=r"--prompts-from .*gt\.nii\.gz: no such file"):
        OracleDetector(prompts_from=tmp_path / "gt.nii.gz")
    with pytest.raises(ConfigError, match="'roi_name'.*''"):
        OracleDetector(prompts=p, roi_name="")


def test_registry_factory_and_info(tmp_path: Path) -> None:
    p = write_json(tmp_path / "p.json", VOXEL_DOC)
    det = registry.get("detector", "oracle").create(Settings(options={"prompts": str(p)}))
    assert isinstance(det, OracleDetector)
    info = det.info()
    assert (info.name, info.kind, info.family) == ("oracle", "detector", "Manual prompt")
    assert info.details["prompts"] == str(p)


# ---------------------------------------------------------------------- prompts JSON


def test_voxel_boxes(tmp_path: Path) -> None:
    boxes = detector(tmp_path, VOXEL_DOC).detect(make_volume())
    assert boxes == [box(2, 9, 5, 17, 30, 44, 4), box(10, 13, 0, 40, 0, 1, 11)]
    assert all(b.from_person and b.source == "oracle" for b in boxes)


def test_empty_box_list_gives_no_prompts(tmp_path: Path) -> None:
    doc = {"version": 1, "coordinates": "voxel", "boxes": []}
    assert detector(tmp_path, doc).detect(make_volume()) == []


@pytest.mark.parametrize("direction", ["oblique", "flipped"])
@pytest.mark.parametrize("convention", ["centres", "edges"])
def test_lps_boxes_map_to_voxels(tmp_path: Path, direction: str, convention: str) -> None:
    d = oblique_direction(25.0) if direction == "oblique" else np.diag([-1.0, -1.0, 1.0])
    vol = make_volume(d)
    expected = box(3, 11, 6, 21, 12, 40, 8)
    off = 0.0 if convention == "centres" else 0.5
    c1 = vol.index_to_lps(expected.z0 - off, expected.y0 - off, expected.x0 - off)
    c2 = vol.index_to_lps(expected.z1 - 1 + off, expected.y1 - 1 + off, expected.x1 - 1 + off)
    key = vol.index_to_lps(8.3, 14.0, 20.0)
    doc = {"version": 1, "coordinates": "lps",
           "boxes": [{"corner1": list(c2), "corner2": list(c1), "key_point": list(key)},
                     {"corner1": list(c1), "corner2": list(c2)}]}
    boxes = detector(tmp_path, doc).detect(vol)
    assert boxes[0] == expected
    assert boxes[1] == box(3, 11, 6, 21, 12, 40, 6)  # default key: the middle slice


def test_lps_point_box_takes_the_nearest_voxel(tmp_path: Path) -> None:
    vol = make_volume()
    p = vol.index_to_lps(5.2, 7.1, 9.4)
    doc = {"version": 1, "coordinates": "lps", "boxes": [{"corner1": list(p),
                                                          "corner2": list(p)}]}
    assert detector(tmp_path, doc).detect(vol) == [box(5, 6, 7, 8, 9, 10, 5)]


def _with(path: str, value: Any, base: dict[str, Any] = VOXEL_DOC) -> dict[str, Any]:
    """A copy of ``base`` with ``value`` set at a dotted path ('boxes.1.z'); value
    ``...`` deletes it."""
    doc = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return doc


LPS_DOC = {"version": 1, "coordinates": "lps",
           "boxes": [{"corner1": [0, 0, 0], "corner2": [5, 5, 5], "key_point": [1, 1, 1]}]}

BAD_DOCS = [
    ("version missing", _with("version", ...), ["'version'", "None", "must be 1"]),
    ("version 2", _with("version", 2), ["'version'", "2"]),
    ("version bool", _with("version", True), ["'version'", "True"]),
    ("coordinates", _with("coordinates", "ras"), ["'coordinates'", "'ras'"]),
    ("boxes not list", _with("boxes", {"z": [1, 2]}), ["'boxes'", "must be a list"]),
    ("unknown top key", _with("boxs", []), ["'boxs'", "unknown key"]),
    ("box not object", _with("boxes.1", [1, 2]), ["box 1", "[1, 2]"]),
    ("unknown box field", _with("boxes.1.key", 3), ["box 1", "'key'", "unknown field"]),
    ("z missing", _with("boxes.1.z", ...), ["box 1", "'z'", "required"]),
    ("z one value", _with("boxes.0.z", [3]), ["box 0", "'z'", "[3]"]),
    ("z float", _with("boxes.0.z", [1.5, 4]), ["box 0", "'z'", "[1.5, 4]"]),
    ("z string", _with("boxes.0.z", "1:4"), ["box 0", "'z'", "'1:4'"]),
    ("y negative", _with("boxes.1.y", [-1, 4]), ["box 1", "'y'", "[-1, 4]", "0 or above"]),
    ("x reversed", _with("boxes.0.x", [9, 9]), ["box 0", "'x'", "[9, 9]", "stop > start"]),
    ("x bool", _with("boxes.0.x", [True, 9]), ["box 0", "'x'", "[True, 9]"]),
    ("key outside", _with("boxes.0.key_slice", 9), ["box 0", "'key_slice'", "9",
                                                    "[2, 9)"]),
    ("key float", _with("boxes.0.key_slice", 4.0), ["box 0", "'key_slice'", "4.0"]),
    ("label", _with("boxes.0.label", 7), ["box 0", "'label'", "7"]),
    ("lps field in voxel file", _with("boxes.0.corner1", [1, 2, 3]),
     ["box 0", "'corner1'", "unknown field"]),
    ("corner missing", _with("boxes.0.corner2", ..., LPS_DOC), ["box 0", "'corner2'",
                                                                "required"]),
    ("corner 2-D", _with("boxes.0.corner1", [1, 2], LPS_DOC), ["box 0", "'corner1'",
                                                               "[1, 2]"]),
    ("corner nan", _with("boxes.0.corner1", [1, 2, float("nan")], LPS_DOC),
     ["box 0", "'corner1'", "nan"]),
    ("key_point text", _with("boxes.0.key_point", ["a", 1, 2], LPS_DOC),
     ["box 0", "'key_point'", "'a'"]),
    ("voxel field in lps file", _with("boxes.0.z", [1, 2], LPS_DOC),
     ["box 0", "'z'", "unknown field"]),
]


@pytest.mark.parametrize("doc,fragments", [(d, f) for _n, d, f in BAD_DOCS],
                         ids=[n for n, _d, _f in BAD_DOCS])
def test_every_bad_field_is_a_config_error(tmp_path: Path, doc: Any,
                                           fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as ei:
        detector(tmp_path, doc)
    msg = str(ei.value)
    assert type(ei.value) is ConfigError and ei.value.exit_code == 78
    assert "prompts.json" in msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"


def test_not_json_and_not_an_object(tmp_path: Path) -> None:
    p = tmp_path / "prompts.json"
    p.write_text('{"version": 1,\n "boxes": [}')
    with pytest.raises(ConfigError, match=r"prompts\.json: not valid JSON \(line 2"):
        OracleDetector(prompts=p)
    with pytest.raises(ConfigError, match="must hold a JSON object; got list"):
        detector(tmp_path, [VOXEL_DOC])


@pytest.mark.parametrize("field,value,axis", [("z", [15, 21], "z = [15, 21)"),
                                              ("y", [0, 41], "y = [0, 41)"),
                                              ("x", [50, 51], "x = [50, 51)")])
def test_voxel_box_outside_the_volume_is_an_input_error(tmp_path: Path, field: str,
                                                        value: list[int], axis: str) -> None:
    doc = _with(f"boxes.1.{field}", value)
    det = detector(tmp_path, doc)  # valid as a file
    with pytest.raises(InputError) as ei:
        det.detect(make_volume())
    assert type(ei.value) is InputError and ei.value.exit_code == 65
    msg = str(ei.value)
    for f in ("prompts.json", "box 1", axis, "outside the volume", str(SHAPE)):
        assert f in msg, f"{f!r} not in {msg!r}"


def test_lps_box_outside_and_key_point_outside(tmp_path: Path) -> None:
    vol = make_volume()
    c1, c2 = vol.index_to_lps(2, 2, 2), vol.index_to_lps(25, 10, 10)
    doc = {"version": 1, "coordinates": "lps", "boxes": [{"corner1": list(c1),
                                                          "corner2": list(c2)}]}
    with pytest.raises(InputError, match=r"box 0: z = \[2, 26\) lies outside the volume"):
        detector(tmp_path, doc).detect(vol)
    c2 = vol.index_to_lps(6, 10, 10)
    doc = {"version": 1, "coordinates": "lps",
           "boxes": [{"corner1": list(c1), "corner2": list(c2),
                      "key_point": list(vol.index_to_lps(9, 5, 5))}]}
    with pytest.raises(InputError, match=r"box 0: key_point .* slice 9\.00, outside the "
                                         r"box's slices \[2, 7\)"):
        detector(tmp_path, doc).detect(vol)


# ------------------------------------------------------------------------ mask -> boxes


def two_lesions() -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    # lesion A: a stack of squares whose largest slice is z = 6 (not the middle)
    for z, half in [(3, 1), (4, 2), (5, 3), (6, 5), (7, 2)]:
        m[z, 10 - half:10 + half + 1, 10 - half:10 + half + 1] = True
    # lesion B: a block plus a single voxel touching it diagonally (26-connected)
    m[12:16, 25:30, 30:40] = True
    m[16, 30, 40] = True
    return m


def test_boxes_from_binary_mask_two_lesions() -> None:
    boxes = boxes_from_mask(two_lesions())
    assert boxes == [box(3, 8, 5, 16, 5, 16, 6), box(12, 17, 25, 31, 30, 41, 14)]  # ties: nearest centroid
    assert all(b.from_person and b.source == "oracle" for b in boxes)
    auto = boxes_from_mask(two_lesions().astype(np.uint8), source="gt", from_person=False)
    assert [(b.source, b.from_person) for b in auto] == [("gt", False)] * 2
    assert [b.slices() for b in auto] == [b.slices() for b in boxes]


def test_key_slice_is_the_largest_slice_ties_nearest_centroid() -> None:
    m = np.zeros(SHAPE, dtype=bool)
    m[4:11, 5:9, 5:9] = True  # equal areas on 7 slices: the middle one (7)
    m[4, 0:20, 0:20] = True  # ...unless one slice is bigger
    assert boxes_from_mask(m)[0].key_slice == 4
    m2 = np.zeros(SHAPE, dtype=bool)
    m2[4:11, 5:9, 5:9] = True
    assert boxes_from_mask(m2)[0].key_slice == 7


def test_boxes_from_label_map() -> None:
    lab = np.zeros(SHAPE, dtype=np.int16)
    lab[2:4, 1:3, 1:3] = 3
    lab[10, 20, 20] = 3  # same label, not connected: still one box
    lab[5:6, 30:35, 40:45] = 2
    boxes = boxes_from_mask(lab)
    assert boxes == [box(5, 6, 30, 35, 40, 45, 5), box(2, 11, 1, 21, 1, 21, 3)]


def test_boxes_from_mask_edge_cases() -> None:
    assert boxes_from_mask(np.zeros(SHAPE, dtype=bool)) == []
    with pytest.raises(InputError, match=r"volume's shape \(20, 40, 50\); got \(20, 40, 49\)"):
        boxes_from_mask(np.zeros((20, 40, 49), bool), make_volume())
    with pytest.raises(InputError, match="3-D"):
        boxes_from_mask(np.zeros((40, 50), bool))
    with pytest.raises(InputError, match="integer labels"):
        boxes_from_mask(np.full(SHAPE, 0.5, dtype=np.float32))


# ---------------------------------------------------------------- NIfTI / NRRD masks


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_nifti_mask_prompts(tmp_path: Path, suffix: str) -> None:
    vol = make_volume()
    m = two_lesions()
    path = tmp_path / f"gt{suffix}"
    sitk.WriteImage(volume_to_sitk(vol, m.astype(np.uint8)), str(path))
    boxes = OracleDetector(prompts_from=path).detect(vol)
    assert boxes == boxes_from_mask(m)
    assert len(boxes) == 2


def test_mask_stored_flipped_is_reindexed_exactly(tmp_path: Path) -> None:
    vol = make_volume(np.eye(3))
    m = two_lesions()
    img = volume_to_sitk(vol, m.astype(np.uint8))
    flipped = sitk.Flip(img, [True, False, True])  # same voxels, other storage order
    assert not np.array_equal(sitk.GetArrayFromImage(flipped), m)
    path = tmp_path / "flipped.nrrd"
    sitk.WriteImage(flipped, str(path))
    assert OracleDetector(prompts_from=path).detect(vol) == boxes_from_mask(m)


@pytest.mark.parametrize("change", ["spacing", "origin", "shape"])
def test_mask_on_another_grid_is_refused(tmp_path: Path, change: str) -> None:
    vol = make_volume()
    img = volume_to_sitk(vol, two_lesions().astype(np.uint8))
    if change == "spacing":
        img.SetSpacing((0.7, 0.8, 3.0))
    elif change == "origin":
        img.SetOrigin((-20.0, 35.3, -140.0))
    else:
        img = img[:, :, :10]  # fewer slices
    path = tmp_path / "gt.nii.gz"
    sitk.WriteImage(img, str(path))
    with pytest.raises(InputError) as ei:
        OracleDetector(prompts_from=path).detect(vol)
    msg = str(ei.value)
    assert "gt.nii.gz" in msg and "not on the CT's voxel grid" in msg and "Resample" in msg


def test_bad_mask_files(tmp_path: Path) -> None:
    vol = make_volume()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match="bad.nii.gz: cannot be read as a mask"):
        OracleDetector(prompts_from=bad).detect(vol)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(InputError, match="notes.txt: neither a NIfTI/NRRD mask nor "
                                         "readable DICOM"):
        OracleDetector(prompts_from=other).detect(vol)


# ----------------------------------------------------------------------- DICOM ground truth


def test_dicom_seg_prompts(tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from autoprompt_seg.io.dicom import load_study
    from autoprompt_seg.synthetic import write_series

    hu = np.zeros((12, 32, 32), dtype=np.float32)
    rng = np.random.default_rng(0)
    names = [f"s{int(v)}" for v in rng.permutation(12)]
    write_series(tmp_path / "ct", hu, (2.5, 1.0, 1.0), direction=oblique_direction(15.0),
                 file_names=names, reverse_instance_numbers=True)
    vol, _ = load_study(tmp_path / "ct")
    labels = np.zeros(vol.shape, dtype=np.uint8)
    labels[2:5, 3:8, 4:9] = 1
    labels[4, 4:9, 4:6] = 1  # largest slice of lesion 1: z = 4
    labels[8:11, 20:25, 20:30] = 2
    sources = [pydicom.dcmread(s.path) for s in vol.sources]  # in volume order
    descs = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=f"lesion {n}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for n in (1, 2)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=labels, segmentation_type="BINARY",
        segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="0", device_serial_number="0")
    seg_path = tmp_path / "gt_seg.dcm"
    seg.save_as(seg_path)
    boxes = OracleDetector(prompts_from=seg_path).detect(vol)
    assert boxes == [box(2, 5, 3, 9, 4, 9, 4), box(8, 11, 20, 25, 20, 30, 9)]


def test_non_ground_truth_dicom_is_refused(tmp_path: Path) -> None:
    from autoprompt_seg.io.dicom import load_study
    from autoprompt_seg.synthetic import write_series

    paths = write_series(tmp_path / "ct", np.zeros((4, 16, 16), np.float32), (2.0, 1.0, 1.0))
    vol, _ = load_study(tmp_path / "ct")
    with pytest.raises(InputError, match="expected an RTSTRUCT, a DICOM-SEG or a NIfTI/NRRD "
                                         "mask; got a DICOM file of modality CT"):
        OracleDetector(prompts_from=paths[0]).detect(vol)


def test_rtstruct_prompts_on_a_real_study(pat4_dir: Path) -> None:
    """pycerr pat_4: a real lung tumour CT with the RTSTRUCT ROI GTV-1 (about 123 ml)."""
    from autoprompt_seg.io.dicom import load_study
    from autoprompt_seg.io.rtstruct import find_rtstruct, load_roi_mask

    t0 = time.perf_counter()
    vol, _ = load_study(pat4_dir)
    rs = find_rtstruct(pat4_dir)
    assert rs is not None
    det = OracleDetector(prompts_from=rs, roi_name="GTV-1")
    boxes = det.detect(vol)
    mask = load_roi_mask(rs, vol, "GTV-1")
    assert boxes == boxes_from_mask(mask)
    assert len(boxes) >= 1
    main = max(boxes, key=lambda b: np.prod(b.size))
    inside = mask[main.slices()]
    assert inside.sum() > 0.95 * mask.sum()  # the main box holds (nearly) the whole GTV
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    assert areas[main.key_slice] == areas[main.z0:main.z1].max()
    # a folder works too (its first RTSTRUCT), and a wrong ROI name is an input error
    assert OracleDetector(prompts_from=pat4_dir).detect(vol) == boxes
    with pytest.raises(InputError, match="'GTV-9' not found"):
        OracleDetector(prompts_from=rs, roi_name="GTV-9").detect(vol)
    assert time.perf_counter() - t0 < 60
