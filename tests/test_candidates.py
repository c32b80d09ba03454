"""The training-free candidates detector on seeded synthetic chests and a real study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoprompt_seg.config import Settings
from autoprompt_seg.detect.candidates import CandidatesDetector, CandidatesParams, create
from autoprompt_seg.errors import ConfigError
from autoprompt_seg.types import Box3D, Volume

SPACING = (2.5, 1.5, 1.5)


def synthetic_chest(seed: int = 0, tumour_mm: float = 9.0, spacing=SPACING
                    ) -> tuple[Volume, tuple[float, float, float], tuple[float, float]]:
    """Body (+40 HU) with two lungs (-850 HU), a spherical tumour (+40 HU, radius
    ``tumour_mm``) in the left lung and a vessel (tube of radius 2 mm along z) in the right.
    Returns the volume, the tumour centre (z, y, x in mm) and the tube centre (y, x in mm)."""
    rng = np.random.default_rng(seed)
    ext = (100.0, 150.0, 200.0)  # mm
    shape = tuple(int(round(e / s)) for e, s in zip(ext, spacing, strict=False))
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=False)],
                          indexing="ij")
    arr = np.full(shape, -1000.0, dtype=np.float32)
    body = ((y - 75) / 70) ** 2 + ((x - 100) / 95) ** 2 <= 1
    arr[body] = 40.0
    left = ((z - 50) / 42) ** 2 + ((y - 75) / 45) ** 2 + ((x - 55) / 32) ** 2 <= 1
    right = ((z - 50) / 42) ** 2 + ((y - 75) / 45) ** 2 + ((x - 145) / 32) ** 2 <= 1
    arr[left | right] = -850.0
    tc = (50.0, 70.0, 55.0)
    arr[(z - tc[0]) ** 2 + (y - tc[1]) ** 2 + (x - tc[2]) ** 2 <= tumour_mm ** 2] = 40.0
    vc = (80.0, 150.0)
    arr[right & ((y - vc[0]) ** 2 + (x - vc[1]) ** 2 <= 2.0 ** 2)] = 40.0
    arr += rng.normal(0, 15, shape).astype(np.float32)
    vol = Volume(array=arr.astype(np.float32), spacing=spacing, origin=(0.0, 0.0, 0.0),
                 direction=np.eye(3), source_format="synthetic")
    return vol, tc, vc


def _contains(box: Box3D, zyx_mm: tuple[float, float, float], spacing) -> bool:
    idx = [int(c / s) for c, s in zip(zyx_mm, spacing, strict=False)]
    return box.z0 <= idx[0] < box.z1 and box.y0 <= idx[1] < box.y1 and box.x0 <= idx[2] < box.x1


def test_info_and_factory() -> None:
    det = create(Settings(options={"candidates": {"min_score": 0.4}}))
    info = det.info()
    assert (info.name, info.kind, info.checkpoint) == ("candidates", "detector", "")
    assert det.params.min_score == 0.4


def test_bad_option_names_the_argument() -> None:
    with pytest.raises(ConfigError, match="field_radius_mm"):
        CandidatesParams(field_radius_mm=-1.0)
    with pytest.raises(ConfigError, match="bogus"):
        create(Settings(options={"candidates": {"bogus": 1}}))
    with pytest.raises(ConfigError, match=r"mass_score' must be <= 1; got 1\.5"):
        CandidatesParams(mass_score=1.5)
    with pytest.raises(ConfigError, match=r"large_mass_min_solidity' must be <= 1; got 1\.2"):
        CandidatesParams(large_mass_min_solidity=1.2)
    with pytest.raises(ConfigError, match=r"small_mass_min_contact' must be <= 1; got 1\.5"):
        CandidatesParams(small_mass_min_contact=1.5)
    with pytest.raises(ConfigError, match=r"deep_min_score' must be <= 1; got 2\.0"):
        CandidatesParams(deep_min_score=2.0)


def test_finds_tumour_not_vessel() -> None:
    vol, tc, vc = synthetic_chest()
    calls: list[tuple[int, int]] = []
    boxes = CandidatesDetector().detect(vol, progress=lambda i, n: calls.append((i, n)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert len(boxes) == 1, boxes
    b = boxes[0]
    assert _contains(b, tc, SPACING)
    assert b.source == "candidates" and 0 <= b.score <= 1
    # the box is tight: about the tumour's 18 mm diameter, not the lung
    dz, dy, dx = (n * s for n, s in zip(b.size, SPACING, strict=False))
    assert 12 <= dy <= 30 and 12 <= dx <= 30 and 10 <= dz <= 35
    # key slice near the tumour's equator
    assert abs(b.key_slice * SPACING[0] + SPACING[0] / 2 - tc[0]) <= 2 * SPACING[0]
    for bb in boxes:  # the vessel is never boxed
        assert not (bb.y0 * 1.5 <= vc[0] < bb.y1 * 1.5 and bb.x0 * 1.5 <= vc[1] < bb.x1 * 1.5)


def test_spacing_independent() -> None:
    vol, tc, _ = synthetic_chest(seed=1, spacing=(1.25, 0.75, 0.75))
    boxes = CandidatesDetector().detect(vol)
    assert len(boxes) == 1 and _contains(boxes[0], tc, (1.25, 0.75, 0.75))


def test_no_tumour_no_box() -> None:
    vol, _, _ = synthetic_chest(seed=2, tumour_mm=0.0)
    assert CandidatesDetector().detect(vol) == []


def test_tiny_blob_below_min_volume_is_ignored() -> None:
    vol, _, _ = synthetic_chest(seed=3, tumour_mm=3.0)  # 0.11 ml
    assert CandidatesDetector().detect(vol) == []


def test_real_pat4_tumour_detected(pat4_dir: Path) -> None:
    from autoprompt_seg.io.dicom import load_study
    from autoprompt_seg.io.rtstruct import find_rtstruct, load_roi_mask

    vol, _ = load_study(pat4_dir)
    rs = find_rtstruct(pat4_dir)
    assert rs is not None
    gt = load_roi_mask(rs, vol)
    boxes = CandidatesDetector().detect(vol)
    hits = [b for b in boxes if gt[b.slices()].any()]
    assert hits, boxes
    assert len(boxes) - len(hits) <= 1
    # the best hit holds most of the tumour
    assert max(gt[b.slices()].sum() for b in hits) / gt.sum() > 0.9


@pytest.mark.parametrize("radius_mm", [7.0, 8.0])
def test_isolated_nodule_counts_as_surrounded_by_lung(radius_mm: float) -> None:
    """A round nodule in the middle of the lung touches only lung. The voxels right at
    its surface are partial-volume tissue left out by the smoothed threshold; they must
    not count as a non-lung neighbour (a 14 mm nodule was once dropped for that)."""
    vol, tc, _ = synthetic_chest(seed=4, tumour_mm=radius_mm)
    det = CandidatesDetector()
    _, cands = det.candidates(vol.array, SPACING)
    assert cands, "no candidate"
    best = max(cands, key=lambda c: c.score)
    assert best.lung_contact >= 0.8, best
    boxes = det.detect(vol)
    assert len(boxes) == 1 and _contains(boxes[0], tc, SPACING)


def _grid(n: int = 41) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.ogrid[-(n // 2):n // 2 + 1, -(n // 2):n // 2 + 1, -(n // 2):n // 2 + 1]


def test_solidity_separates_masses_from_branching_and_curved_structures() -> None:
    """A mass is convex, even flattened against a wall; a vessel confluence branches and an
    organ's rim curves around, so each fills little of its convex hull."""
    from autoprompt_seg.detect.morphology import solidity

    z, y, x = _grid()
    sphere = z ** 2 + y ** 2 + x ** 2 <= 8 ** 2
    half = sphere & (x >= -2)  # a lesion pressed flat against the mediastinum
    # three tubes (radius 3) meeting at the centre: a hilar confluence
    tube_z = (y ** 2 + x ** 2 <= 9) & (np.abs(z) <= 14) & (z <= 0)
    tube_a = ((y - x) ** 2 / 2 + z ** 2 <= 9) & (x >= 0) & (x + y <= 28)
    tube_b = ((y + x) ** 2 / 2 + z ** 2 <= 9) & (x <= 0) & (y - x <= 28)
    confluence = np.broadcast_to(tube_z, sphere.shape) | tube_a | tube_b
    # the rim of a large organ: a 5-voxel shell of a 40-voxel ball, cut to a cap
    r2 = (z + 30) ** 2 + y ** 2 + x ** 2
    rim = (r2 <= 40 ** 2) & (r2 > 35 ** 2)
    assert solidity(sphere) > 0.85
    assert solidity(half) > 0.85
    assert solidity(confluence) < 0.5
    assert solidity(rim) < 0.6
    assert solidity(np.zeros((3, 3, 3), bool)) == 1.0  # empty: no evidence either way



def test_lung_components_tell_an_emphysematous_lung_from_outside_air_and_gas():
    """An enclosed air component with 40 % near-pure air is lung when it is lung-sized
    (>= 300 ml); outside air (it touches the image's sides) and a small enclosed gas
    pocket with the same share are not. The 0.2 rule alone keeps only normal lung."""
    from autoprompt_seg.detect.morphology import lung_components

    rng = np.random.default_rng(0)
    sp = (2.5, 2.0, 2.0)
    img = np.full((40, 120, 120), -1000.0, dtype=np.float32)  # outside air
    img[:, 5:115, 5:115] = 30.0  # the body
    lung = np.zeros(img.shape, dtype=bool)
    lung[5:35, 20:100, 15:55] = True  # 30 x 80 x 40 voxels: 960 ml
    pocket = np.zeros(img.shape, dtype=bool)
    pocket[10:30, 40:70, 75:90] = True  # 20 x 30 x 15: 90 ml, a gas pocket
    normal = np.zeros(img.shape, dtype=bool)
    normal[5:35, 20:100, 95:112] = True  # 408 ml of normal lung
    for m in (lung, pocket):
        img[m] = np.where(rng.random(int(m.sum())) < 0.4, -990.0, -850.0)
    img[normal] = -850.0

    def comps(**kw):
        args = dict(air_hu=-400.0, pure_air_hu=-950.0, max_pure_frac=0.2, min_ml=50.0,
                    enclosed_max_pure_frac=0.5, enclosed_min_ml=300.0)
        args.update(kw)
        return lung_components(img, sp, **args)

    out = comps()
    assert out[lung].all() and out[normal].all()
    assert not out[pocket].any() and not out[:, 0, :].any()
    # the pocket is lung only when small components may be enclosed lungs too
    assert comps(enclosed_min_ml=50.0)[pocket].all()
    # the v2.6 rule (0.2 everywhere) keeps only the normal lung
    only = comps(enclosed_max_pure_frac=0.0)
    assert only[normal].all() and not only[lung].any()


def test_gas_holes_take_a_cavity_not_lung():
    """In-plane holes of tissue that are gas inside their partial-volume rim: a ring of
    tissue around gas (a cavity) is one; lung (-850 HU) and an emphysematous lung (60 %
    near-pure air) in the same ring are not, nor is gas open to the outside."""
    from autoprompt_seg.detect.morphology import gas_holes

    rng = np.random.default_rng(0)
    img = np.full((6, 60, 200), -1000.0, dtype=np.float32)
    img[:, 5:55, 5:195] = 30.0  # tissue
    yy, xx = np.ogrid[:60, :200]
    fills = {30: -990.0, 80: -850.0, 130: None}
    holes = {}
    for cx, hu in fills.items():
        disk = (yy - 30) ** 2 + (xx - cx) ** 2 <= 12 ** 2
        holes[cx] = np.broadcast_to(disk, img.shape)
        v = (np.where(rng.random((6, 60, 200)) < 0.6, -990.0, -850.0) if hu is None
             else np.full(img.shape, hu))
        img[holes[cx]] = v[holes[cx]]
    img[:, 28:33, 165:200] = -990.0  # a gas channel to the outside ...
    gas_open = (yy - 30) ** 2 + (xx - 175) ** 2 <= 8 ** 2
    img[:, gas_open] = -990.0  # ... opens this gas pocket
    img[:, (yy - 30) ** 2 + (xx - 30) ** 2 == 144] = -600.0  # a partial-volume rim
    out = gas_holes(img >= -400, img, -950.0)
    assert out[holes[30]].mean() > 0.95
    assert not out[holes[80]].any() and not out[holes[130]].any()
    assert not out[:, gas_open].any()
