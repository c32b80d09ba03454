"""Whole-chest detection: anatomy-aware candidates, the transplant generator, the
operating point (--min-score / --max-lesions) and the confidence reaching the SEG."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from scipy import ndimage as ndi

from autoprompt_seg.cli import main
from autoprompt_seg.detect.candidates import CandidatesDetector, CandidatesParams
from autoprompt_seg.errors import ConfigError
from autoprompt_seg.synthetic import synthetic_study
from autoprompt_seg.transplant import LesionSource, lung_map, transplant
from autoprompt_seg.types import Box3D, OperatingPoint, Volume
from conftest import tool
from thorax_phantom import thorax_phantom


def _hits(box: Box3D, mask: np.ndarray) -> int:
    return int(mask[box.z0:box.z1, box.y0:box.y1, box.x0:box.x1].sum())


def test_detector_keeps_the_nodule_and_rejects_heart_and_z_tube():
    vol, truth = thorax_phantom(seed=0)
    det = CandidatesDetector()
    lab, cands = det.candidates(vol.array, vol.spacing)
    # the z-tube against the right lung does become a candidate (it lies in the lung
    # field) - the score must be what rejects it
    tube_cands = [c for c in cands if ((lab == c.label) & truth["tube"]).any()]
    assert tube_cands, "the z-tube should reach the candidate stage"
    assert all(c.score < 0.5 for c in tube_cands)
    boxes = [b for b in det.detect(vol) if b.score >= 0.5]
    assert len(boxes) == 1
    assert _hits(boxes[0], truth["nodule"]) == int(truth["nodule"].sum())
    assert _hits(boxes[0], truth["heart"]) == 0 and _hits(boxes[0], truth["tube"]) == 0
    assert 0.5 <= boxes[0].score <= 1.0


def test_detector_without_a_tumour_reports_nothing_above_the_operating_point():
    vol, _ = thorax_phantom(seed=1, nodule=False)
    assert [b for b in CandidatesDetector().detect(vol) if b.score >= 0.5] == []


def test_an_emphysematous_lung_is_still_lung():
    """Severe emphysema: 40 % of the lung parenchyma is holes of near-pure air (v2.6
    took such a lung for outside air and found nothing). The nodule is still found, and
    the outside air (it touches the image's sides) is still no lung."""
    vol, truth = thorax_phantom(seed=4, heart=False, tube=False)
    rng = np.random.default_rng(4)
    arr = vol.array.copy()
    body = ndi.binary_fill_holes(vol.array > -500, structure=np.ones((1, 3, 3), bool))
    parench = (vol.array < -500) & body
    noise = ndi.gaussian_filter(rng.standard_normal(arr.shape), sigma=(1.5, 3, 3))
    holes = parench & (noise > np.quantile(noise[parench], 0.6))
    arr[holes] = -990.0 + rng.normal(0, 8, int(holes.sum()))
    emph = vol.with_array(arr.astype(np.float32))
    det = CandidatesDetector()
    img, wsp, _ = det.working_grid(emph)
    lung = det.lung_mask(img, wsp)
    assert (img[lung] < -950).mean() > 0.3  # far more than the 0.2 of a normal lung
    assert not lung[:, :, 0].any() and not lung[:, 0, :].any()  # outside air is not lung
    kept = [b for b in det.detect(emph) if b.score >= 0.5]
    assert len(kept) == 1 and _hits(kept[0], truth["nodule"]) == int(truth["nodule"].sum())
    assert _kept(emph, enclosed_max_pure_air_frac=0) == []  # the v2.6 rule alone


def _sphere_lesion(radius_mm: float = 8.0) -> LesionSource:
    sp = (2.0, 1.0, 1.0)
    n = (24, 40, 40)
    z, y, x = np.meshgrid(*(np.arange(k) * s for k, s in zip(n, sp, strict=True)),
                          indexing="ij")
    c = [k * s / 2 for k, s in zip(n, sp, strict=True)]
    m = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius_mm ** 2
    hu = np.where(m, 45.0, -860.0).astype(np.float32)
    vol = Volume(array=hu, spacing=sp, origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    return LesionSource.from_volume("sphere", vol, m, margin_mm=4.0)


def test_transplant_in_parenchyma_keeps_geometry_volume_and_labels():
    bg, _ = thorax_phantom(seed=2, heart=False, tube=False, nodule=False)
    src = _sphere_lesion(8.0)
    case = transplant(bg, [(src, "parenchyma", 1.25, False)], np.random.default_rng(0),
                      name="t", background_name="phantom")
    (les,) = case.lesions
    # same grid and geometry as the background
    assert case.volume.shape == bg.shape and case.volume.spacing == bg.spacing
    assert np.allclose(case.volume.direction, bg.direction)
    # volume scales with the cube of the linear factor (partial-volume tolerance)
    assert les.volume_ml == pytest.approx(src.volume_ml * 1.25 ** 3, rel=0.12)
    lab = case.labels == 1
    assert int(lab.sum()) * bg.voxel_volume_ml == pytest.approx(les.volume_ml)
    # the label lies in the lung of the background, and holds the lesion's HU
    lung = bg.array < -500
    assert lung[ndi.binary_erosion(lab)].mean() > 0.95
    assert float(np.median(case.volume.array[lab])) == pytest.approx(45.0, abs=25)
    # nothing changed away from the lesion
    far = ~ndi.binary_dilation(lab, iterations=8)
    assert np.array_equal(case.volume.array[far], bg.array[far])
    # seeded: the same seed gives the same case
    again = transplant(bg, [(src, "parenchyma", 1.25, False)], np.random.default_rng(0))
    assert np.array_equal(again.labels, case.labels)


@pytest.mark.parametrize("site", ["pleura", "mediastinum"])
def test_transplant_against_a_wall_touches_it(site):
    bg, _ = thorax_phantom(seed=3, heart=False, tube=False, nodule=False)
    case = transplant(bg, [(_sphere_lesion(9.0), site, 1.0, True)], np.random.default_rng(1))
    lab = case.labels == 1
    assert lab.any()
    # the lesion presses against non-lung tissue: its 3-mm shell reaches the wall
    shell = ndi.binary_dilation(lab, iterations=2) & ~lab
    assert (bg.array[shell] > -300).any()
    lmap = lung_map(bg)
    zc, yc, xc = (int(v) for v in np.argwhere(lab).mean(axis=0))
    xs = np.nonzero(lmap.lung)[2] * lmap.factor[2]
    mid = float(np.median(xs))
    towards_centre = abs(xc - mid) < abs(np.mean(xs[xs < mid]) - mid) if xc < mid \
        else abs(xc - mid) < abs(np.mean(xs[xs >= mid]) - mid)
    assert towards_centre == (site == "mediastinum")


def test_transplant_keeps_clear_of_the_backgrounds_own_lesion():
    # the whole right lung but a sliver counts as the background's lesion: every draw must
    # land in the left lung, at least 15 mm beyond the lesion's edge
    bg, _ = thorax_phantom(seed=2, heart=False, tube=False, nodule=False)
    nx = bg.shape[2]
    own = np.zeros(bg.shape, dtype=bool)
    own[:, :, : int(nx * 0.45)] = True
    lmap = lung_map(bg, lesions=own)
    free = lung_map(bg)
    assert free.clear_mm is None and lmap.clear_mm is not None
    src = _sphere_lesion(6.0)
    edge_mm = nx * 0.45 * bg.spacing[2]
    moved = 0
    for seed in range(6):
        case = transplant(bg, [(src, "parenchyma", 1.0, False)], np.random.default_rng(seed),
                          lmap=lmap)
        x_min_mm = float(np.nonzero(case.labels)[2].min()) * bg.spacing[2]
        assert x_min_mm >= edge_mm + 15.0 - 2 * 2.0  # less a working-grid voxel each side
        again = transplant(bg, [(src, "parenchyma", 1.0, False)], np.random.default_rng(seed),
                           lmap=free)
        moved += int(not np.array_equal(again.labels, case.labels))
    # without the lesion the same seeds go (in part) to the right lung
    assert moved >= 1
    with pytest.raises(ValueError, match="lesions"):
        lung_map(bg, lesions=own[:-1])


def test_transplant_refuses_bad_arguments():
    bg, _ = thorax_phantom(seed=2, heart=False, tube=False, nodule=False)
    with pytest.raises(ValueError, match="site"):
        transplant(bg, [(_sphere_lesion(), "liver", 1.0, False)], np.random.default_rng(0))
    with pytest.raises(ValueError, match="scale"):
        transplant(bg, [(_sphere_lesion(), "pleura", 9.0, False)], np.random.default_rng(0))


def _box(score: float, person: bool = False) -> Box3D:
    return Box3D(z0=0, z1=2, y0=0, y1=2, x0=0, x1=2, key_slice=1, score=score,
                 from_person=person)


def test_operating_point_splits_by_score_and_count():
    boxes = [_box(0.2), _box(0.9), _box(0.6), _box(0.55), _box(0.1, person=True)]
    keep, below = OperatingPoint(min_score=0.5, max_lesions=2).split(boxes)
    assert [b.score for b in keep] == [0.1, 0.9, 0.6]  # manual first, always kept
    assert [b.score for b in below] == [0.55, 0.2]
    with pytest.raises(ValueError, match="min_score"):
        OperatingPoint(min_score=1.5)
    with pytest.raises(ValueError, match="max_lesions"):
        OperatingPoint(max_lesions=0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return synthetic_study(tmp_path_factory.mktemp("wc") / "study", shape=(40, 160, 160),
                           spacing=(2.5, 1.5, 1.5), n_tumours=2, seed=3,
                           tumour_radius_mm=(10.0, 8.0))


def _predict(study_dir, out, *extra):
    r = CliRunner().invoke(main, ["-q", "predict", str(study_dir), "-o", str(out), *extra],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads((out / "report.json").read_text())


def test_max_lesions_and_confidence_reach_report_and_seg(study, tmp_path):
    full = _predict(study.study_dir, tmp_path / "all", "--min-score", "0")
    assert full["n_lesions"] == 2
    one = _predict(study.study_dir, tmp_path / "one", "--min-score", "0", "--max-lesions", "1")
    assert one["n_lesions"] == 1 and one["operating_point"] == {"min_score": 0.0,
                                                                "max_lesions": 1}
    (ns,) = one["not_segmented"]
    assert ns["rank"] == 2 and ns["status"].startswith("not segmented")
    assert ns["confidence"] <= one["lesions"][0]["confidence"]
    assert set(ns["prompt"]) == {"z", "y", "x", "key_slice"}
    seg = pydicom.dcmread(tmp_path / "one" / "seg.dcm")
    assert len(seg.SegmentSequence) == 1
    conf = one["lesions"][0]["confidence"]
    assert seg.SegmentSequence[0].SegmentDescription.startswith(f"confidence {conf:.2f}")
    res = subprocess.run([tool("dciodvfy"), str(tmp_path / "one" / "seg.dcm")],
                         capture_output=True, text=True)
    assert "Error" not in res.stdout + res.stderr, res.stderr


def test_min_score_above_every_candidate_segments_nothing(study, tmp_path):
    rep = _predict(study.study_dir, tmp_path / "none", "--min-score", "1.0")
    assert rep["n_lesions"] == 0 and not (tmp_path / "none" / "seg.dcm").exists()
    assert len(rep["not_segmented"]) >= 1
    assert all(c["confidence"] < 1.0 for c in rep["not_segmented"])


def test_min_score_out_of_range_is_a_usage_error(study, tmp_path):
    r = CliRunner().invoke(main, ["predict", str(study.study_dir), "-o", str(tmp_path / "x"),
                                  "--min-score", "1.5"])
    assert r.exit_code == 2 and not (tmp_path / "x").exists()


def test_listener_and_bench_take_the_operating_point(tmp_path):
    from autoprompt_seg.bench.runner import BenchConfig
    from autoprompt_seg.errors import ConfigError
    from autoprompt_seg.listen.config import build_config
    from autoprompt_seg.listen.worker import _settings

    cfg = build_config({"min_score": 0.7, "max_lesions": 2}, spool=str(tmp_path / "spool"))
    s = _settings(cfg)
    assert s.operating_point() == OperatingPoint(min_score=0.7, max_lesions=2)
    with pytest.raises(ConfigError, match="min_score"):
        build_config({"min_score": 2}, spool=str(tmp_path / "spool"))
    with pytest.raises(ConfigError, match="max_lesions"):
        build_config({"max_lesions": 0}, spool=str(tmp_path / "spool"))
    assert BenchConfig(min_score=0.3).operating_point().min_score == 0.3
    assert BenchConfig(min_score=0.3).config_hash() != BenchConfig().config_hash()
    with pytest.raises(ConfigError, match="min-score"):
        BenchConfig(min_score=-1)


def test_airways_are_grown_from_the_trachea_without_leaking_into_the_lung():
    vol, _ = thorax_phantom(seed=4, heart=False, tube=False, nodule=False)
    a = vol.array.copy()
    sz, sy, sx = vol.spacing
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(a.shape, vol.spacing,
                                                             strict=True)), indexing="ij")
    cy, cx = a.shape[1] * sy / 2, a.shape[2] * sx / 2
    trachea = (((y - cy) / 8) ** 2 + ((x - cx) / 8) ** 2 <= 1) & (z > 120)
    # a main bronchus from the trachea's foot into the right lung
    bronchus = ((y - cy) ** 2 + (z - 125) ** 2 <= 5 ** 2) & (x > cx - 80) & (x < cx)
    airway = trachea | bronchus
    a[airway] = -1000.0 + np.random.default_rng(0).normal(0, 5, int(airway.sum()))
    det = CandidatesDetector()
    lung = det.lung_mask(a, vol.spacing)
    assert (lung & trachea).sum() > 0.8 * trachea.sum()  # counted as lung before
    found = det.airways(a, lung, vol.spacing)
    assert (found & trachea).sum() > 0.8 * trachea.sum()
    parenchyma = lung & ~ndi.binary_dilation(airway, iterations=2)
    assert (found & parenchyma).sum() < 0.01 * parenchyma.sum()


def _mm_grid(vol: Volume):
    """Voxel-centre coordinates in mm (z, y, x) and the in-plane centre (cy, cx)."""
    sp = vol.spacing
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(vol.shape, sp, strict=True)),
                          indexing="ij")
    return z, y, x, vol.shape[1] * sp[1] / 2, vol.shape[2] * sp[2] / 2


def _with_part_solid(vol: Volume, glass: np.ndarray, solid: np.ndarray) -> Volume:
    """``vol`` with ground glass (-560 HU) over ``glass`` and tissue (30 HU) over ``solid``,
    both keeping the phantom's noise around its lung value (-850 HU)."""
    arr = vol.array.copy()
    arr[glass] = -560.0 + (arr[glass] + 850.0)
    arr[solid] = 30.0 + (vol.array[solid] + 850.0)
    return Volume(array=arr, spacing=vol.spacing, origin=vol.origin, direction=vol.direction)


def _bridged_nodule_phantom():
    """The phantom's right-lung nodule (r 9 mm), joined by a 5 mm-radius vessel-like bridge
    to a thicker soft-tissue mass (r 16 mm) nearer the mediastinum."""
    vol, truth = thorax_phantom(seed=4, heart=False, tube=False)
    sp = vol.spacing
    z, y, x, cy, cx = _mm_grid(vol)
    nod = np.array([120.0, cy - 30, cx - 95])
    big = np.array([120.0, cy - 30, cx - 52])
    mass = ((z - big[0]) ** 2 + (y - big[1]) ** 2 + (x - big[2]) ** 2) <= 16 ** 2
    bridge = ((z - nod[0]) ** 2 + (y - nod[1]) ** 2 <= 5 ** 2) & (x > nod[2]) & (x < big[2])
    arr = vol.array.copy()
    arr[(mass | bridge) & ~truth["nodule"]] = 35.0
    return Volume(array=arr, spacing=sp, origin=vol.origin, direction=vol.direction), truth


def test_a_nodule_bridged_to_a_thicker_mass_keeps_its_own_candidate():
    from autoprompt_seg.detect.candidates import CandidatesParams

    vol, truth = _bridged_nodule_phantom()
    nod = truth["nodule"]

    def nodule_candidates(det):
        lab, cands = det.candidates(vol.array, vol.spacing)
        return [c for c in cands if ((lab == c.label) & nod).sum() > 0.5 * (lab == c.label).sum()]

    # v2.0 behaviour: the component's core is the thicker mass; the nodule is lost with
    # the remainder
    assert nodule_candidates(CandidatesDetector(CandidatesParams(remainder_depth=0))) == []
    found = nodule_candidates(CandidatesDetector())
    assert len(found) == 1
    assert found[0].thickness_mm == pytest.approx(9.0, abs=2.0)


def test_a_nodule_behind_a_vessel_confluence_keeps_its_own_candidate():
    """A chain, as at a hilum: a thick mass on the mediastinum (r 14 mm), a thinner
    confluence (r 11 mm) and the nodule (r 8 mm), joined by a 4 mm-radius vessel. One
    remainder level (v2.1-v2.5) takes the confluence as the remainder's core and loses the
    nodule with what is left; the second level (v2.6) gives the nodule its own box, as
    long as it scores at least ``deep_min_score``."""
    from autoprompt_seg.detect.candidates import CandidatesParams

    vol, _ = thorax_phantom(seed=4, heart=False, tube=False, nodule=False)
    z, y, x, cy, cx = _mm_grid(vol)

    def ball(cx_off: float, r: float) -> np.ndarray:
        return (z - 120) ** 2 + (y - (cy - 30)) ** 2 + (x - (cx - cx_off)) ** 2 <= r ** 2

    nod, mid, big = ball(110, 8), ball(78, 11), ball(38, 14)
    vessel = ((z - 120) ** 2 + (y - (cy - 30)) ** 2 <= 4 ** 2) & (x > cx - 110) & (x < cx - 38)
    arr = vol.array.copy()
    arr[(big | mid | vessel) & ~nod] = 35.0
    arr[nod] = 30.0
    chain = Volume(array=arr, spacing=vol.spacing, origin=vol.origin, direction=vol.direction)

    def nodule_boxes(det):
        return [b for b in det.detect(chain) if _hits(b, nod) > 0]

    assert nodule_boxes(CandidatesDetector(CandidatesParams(remainder_depth=1))) == []
    (box,) = nodule_boxes(CandidatesDetector())
    assert _hits(box, nod) == int(nod.sum())
    assert _hits(box, big) == 0
    assert box.score >= 0.6  # the bar for a piece from the second level on
    # that bar, raised over the nodule's score, drops it
    raised = CandidatesDetector(CandidatesParams(deep_min_score=min(1.0, box.score + 0.05)))
    assert nodule_boxes(raised) == []


def test_a_candidate_brighter_than_soft_tissue_is_dropped():
    """The median-HU gate (v2.6). At thick slices a contrast-filled vessel blurs into the
    smoothed soft-tissue band while its own voxels stay at 300-500 HU; a phantom cannot
    blur like that, so the gate is moved to the nodule's level instead: a 30 HU nodule is
    kept at the default (200 HU), dropped once the gate is under its median."""
    from autoprompt_seg.detect.candidates import CandidatesParams

    vol, truth = thorax_phantom(seed=0, heart=False, tube=False)

    def nodule_boxes(**params):
        det = CandidatesDetector(CandidatesParams(**params))
        return [b for b in det.detect(vol) if _hits(b, truth["nodule"]) > 0]

    assert len(nodule_boxes()) == 1
    assert nodule_boxes(max_median_hu=20.0) == []
    assert len(nodule_boxes(max_median_hu=40.0)) == 1


def test_a_part_solid_nodule_gets_a_box_that_holds_its_ground_glass():
    vol, truth = thorax_phantom(seed=5, heart=False, tube=False, nodule=False)
    sp = vol.spacing
    z, y, x, cy, cx = _mm_grid(vol)
    r2 = (z - 120) ** 2 + (y - (cy - 30)) ** 2 + (x - (cx - 95)) ** 2
    ggo, solid = r2 <= 15 ** 2, r2 <= 7 ** 2
    part_solid = _with_part_solid(vol, ggo, solid)
    det = CandidatesDetector()
    (box,) = [b for b in det.detect(part_solid) if _hits(b, solid)]
    # the box holds most of the ground glass, not only the solid core
    assert _hits(box, ggo) >= 0.85 * int(ggo.sum())
    # a solid nodule of the same core keeps a tight box (no halo)
    arr2 = vol.array.copy()
    arr2[solid] = 30.0 + (vol.array[solid] + 850.0)
    solid_vol = Volume(array=arr2, spacing=sp, origin=vol.origin, direction=vol.direction)
    (tight,) = [b for b in det.detect(solid_vol) if _hits(b, solid)]
    assert tight.size[1] * sp[1] <= 2 * 7 + 2 * 2 + 2 * 2.0 + 1e-6  # core + margin + grid
    assert _hits(tight, ggo) < 0.6 * int(ggo.sum())


def _chest_with_mediastinal_mass(radius, z_stretch, x_left):
    """The seed-2 phantom chest (with heart) and a 35 HU ellipsoid in the right lung:
    ``radius`` mm in-plane, ``z_stretch`` times that along z, its centre ``x_left`` mm
    right of the midline (the mediastinum ends 15 mm from it)."""
    vol, truth = thorax_phantom(seed=2, heart=True, tube=False, nodule=False)
    z, y, x, cy, cx = _mm_grid(vol)
    mass = (((z - 110) / z_stretch) ** 2 + (y - (cy + 10)) ** 2 + (x - (cx - x_left)) ** 2
            <= radius ** 2)
    arr = vol.array.copy()
    arr[mass] = 35.0
    chest = Volume(array=arr, spacing=vol.spacing, origin=vol.origin, direction=vol.direction)
    return chest, mass, truth


def _kept(chest, **params):
    """The boxes a detector with ``params`` keeps at the default operating point."""
    from autoprompt_seg.detect.candidates import CandidatesParams
    from autoprompt_seg.types import OperatingPoint

    op = OperatingPoint().min_score
    return [b for b in CandidatesDetector(CandidatesParams(**params)).detect(chest)
            if b.score >= op]


def test_a_round_mass_pressed_on_the_mediastinum_is_kept_by_the_convex_mass_rule():
    """A tumour pressed on the mediastinum touches a large structure (low context), so
    the logistic score alone puts it below the operating point; its shape (thick, round,
    convex, on the lung) keeps it - and only that rule does."""
    from autoprompt_seg.detect.candidates import CandidatesParams
    from autoprompt_seg.types import OperatingPoint

    # 24 mm across, 31 mm along z, its centre 6 mm into the right lung from the mediastinum
    chest, mass, _ = _chest_with_mediastinal_mass(radius=12, z_stretch=1.3, x_left=21)
    op = OperatingPoint().min_score

    def best_on_mass(det):
        hits = [b for b in det.detect(chest) if _hits(b, mass) > 0.5 * int(mass.sum())]
        return max(b.score for b in hits)

    assert best_on_mass(CandidatesDetector()) >= op
    assert best_on_mass(CandidatesDetector(CandidatesParams(mass_score=0.0))) < op
    # the rule asks for a convex shape: the same mass with solidity demanded above what
    # it has is not lifted
    assert best_on_mass(CandidatesDetector(CandidatesParams(mass_min_solidity=0.99))) < op


def test_a_large_elongated_mass_on_the_mediastinum_is_kept_by_the_large_mass_tier():
    """A big tumour beside the mediastinum is longer along z (elongation about 2.3) than
    the convex-mass rule allows (2.1); at 15 mm thick, 0.9 solid and mostly on the lung,
    the large-mass tier (v2.4) keeps it - and only that tier does."""
    # 32 mm across, 70 mm along z, its medial edge on the mediastinum
    chest, mass, truth = _chest_with_mediastinal_mass(radius=16, z_stretch=2.2, x_left=30)
    (box,) = _kept(chest)
    assert _hits(box, mass) > 0.9 * int(mass.sum())
    assert _hits(box, truth["heart"]) < 0.05 * int(truth["heart"].sum())
    # (the lone-mass rule would keep this mass too: off here)
    off = {"lone_mass_min_thickness_mm": 0}
    assert _kept(chest, large_mass_min_thickness_mm=0, **off) == []
    # the tier asks for more solidity and more lung contact than the mass has
    assert _kept(chest, large_mass_min_solidity=0.99, **off) == []
    assert _kept(chest, large_mass_min_contact=0.9, **off) == []


def test_a_lone_large_mass_is_kept_only_when_no_other_large_mass_scores():
    """The lone-mass rule (v2.7): in a study where no candidate 13 mm thick or more
    reaches the mass score, the thickest big, compact mass on the lung is kept - beside a
    small nodule too, but not beside a large mass that scores. The large-mass tier is off
    here, so the rule alone decides."""
    chest, mass, truth = _chest_with_mediastinal_mass(radius=16, z_stretch=2.2, x_left=30)
    no_tier = {"large_mass_min_thickness_mm": 0}
    (box,) = _kept(chest, **no_tier)
    assert _hits(box, mass) > 0.9 * int(mass.sum())
    assert _hits(box, truth["heart"]) < 0.05 * int(truth["heart"].sum())
    assert box.score == pytest.approx(0.5)  # lifted to mass_score, no higher
    # thinner than the rule's gate (the mass is about 16 mm thick): not kept
    assert _kept(chest, lone_mass_min_thickness_mm=20, **no_tier) == []

    def with_ball(radius):
        z, y, x, cy, cx = _mm_grid(chest)
        ball_ = (z - 120) ** 2 + (y - (cy - 30)) ** 2 + (x - (cx + 95)) ** 2 <= radius ** 2
        arr = chest.array.copy()
        arr[ball_] = 30.0
        return chest.with_array(arr), ball_

    # a small round nodule in the other lung scores; the mass is still lifted
    both, nodule = with_ball(9)
    kept = _kept(both, **no_tier)
    assert len(kept) == 2
    assert sum(_hits(b, nodule) == int(nodule.sum()) for b in kept) == 1
    assert sum(_hits(b, mass) > 0.9 * int(mass.sum()) for b in kept) == 1
    # a large round mass there scores: the wrapped one is not lifted
    both, big = with_ball(15)
    (only,) = _kept(both, **no_tier)
    assert _hits(only, big) == int(big.sum()) and _hits(only, mass) == 0


def test_a_small_round_nodule_on_the_mediastinum_is_kept_by_the_small_mass_tier():
    """A nodule 18 mm across pressed on the mediastinum is under the convex-mass rule's
    8 mm thickness and its logistic score is low (low context); round (elongation about
    1.7), solid and mostly on the lung, the small-mass tier (v2.5) keeps it - and only
    that tier does."""
    # 18 mm across, 22 mm along z, its centre 4 mm into the right lung from the mediastinum
    chest, mass, truth = _chest_with_mediastinal_mass(radius=9, z_stretch=1.2, x_left=19)
    (box,) = _kept(chest)
    assert _hits(box, mass) > 0.8 * int(mass.sum())
    assert _hits(box, truth["heart"]) == 0
    assert _kept(chest, small_mass_min_thickness_mm=0) == []
    # the tier asks for a rounder, more solid nodule than this one
    assert _kept(chest, small_mass_max_elongation=1.4) == []
    assert _kept(chest, small_mass_min_solidity=0.995) == []


def test_a_tier_mass_beside_a_clear_lesion_is_only_listed():
    """Second masses (v2.9): a compact mass on the mediastinum that only a mass tier
    lifts to the mass score keeps that level when it is the study's best candidate (the
    test above); beside a nodule that the fitted score alone finds clear, it falls back
    to its fitted score and is listed, not segmented - a hilum at 5 mm slices looks just
    like it. ``mass_only_if_best=0`` turns this off."""
    from autoprompt_seg.types import OperatingPoint

    chest, mass, _ = _chest_with_mediastinal_mass(radius=9, z_stretch=1.2, x_left=19)
    z, y, x, cy, cx = _mm_grid(chest)
    nodule = (z - 120) ** 2 + (y - (cy - 30)) ** 2 + (x - (cx + 95)) ** 2 <= 9 ** 2
    arr = chest.array.copy()
    arr[nodule] = 30.0
    both = chest.with_array(arr)
    (kept,) = _kept(both)
    assert _hits(kept, nodule) == int(nodule.sum()) and kept.score > 0.5
    boxes = CandidatesDetector().detect(both)
    (listed,) = [b for b in boxes if _hits(b, mass) > 0.8 * int(mass.sum())]
    assert listed.score < OperatingPoint().min_score  # its fitted score, still reported
    old = _kept(both, mass_only_if_best=0)
    assert len(old) == 2 and any(_hits(b, mass) > 0.8 * int(mass.sum()) for b in old)
    with pytest.raises(ConfigError, match="mass_only_if_best"):
        CandidatesParams(mass_only_if_best=-1)


def test_a_large_second_mass_away_from_the_airways_keeps_its_tier_level():
    """v2.10: the v2.9 rule lists a second tier mass only at the hilum. With an airway
    tree in the chest (trachea and right main bronchus, 17 mm above the mass), an 11 ml
    round mass on the mediastinum beside a clear nodule keeps the mass score and is
    segmented; counted as at the hilum (``hilum_airway_mm``) or as small
    (``second_mass_min_ml``), it is only listed, as in v2.9."""
    from autoprompt_seg.types import OperatingPoint

    chest, mass, _ = _chest_with_mediastinal_mass(radius=14, z_stretch=1.3, x_left=23)
    z, y, x, cy, cx = _mm_grid(chest)
    nodule = (z - 120) ** 2 + (y - (cy - 30)) ** 2 + (x - (cx + 95)) ** 2 <= 9 ** 2
    trachea = (((y - cy) / 8) ** 2 + ((x - cx) / 8) ** 2 <= 1) & (z > 145)
    bronchus = ((y - cy) ** 2 + (z - 150) ** 2 <= 5 ** 2) & (x > cx - 80) & (x < cx)
    airway = trachea | bronchus
    arr = chest.array.copy()
    arr[nodule] = 30.0
    arr[airway] = -1000.0 + np.random.default_rng(1).normal(0, 5, int(airway.sum()))
    both = chest.with_array(arr)
    det = CandidatesDetector()
    lung = det.lung_mask(arr, both.spacing)
    assert (det.airways(arr, lung, both.spacing) & trachea).sum() > 0.8 * trachea.sum()
    op = OperatingPoint().min_score

    def mass_score(**params):
        from autoprompt_seg.detect.candidates import CandidatesParams

        boxes = CandidatesDetector(CandidatesParams(**params)).detect(both)
        (on_mass,) = [b for b in boxes if _hits(b, mass) > 0.8 * int(mass.sum())]
        assert any(_hits(b, nodule) == int(nodule.sum()) and b.score > 0.5 for b in boxes)
        return on_mass.score

    assert mass_score() >= op
    assert mass_score(hilum_airway_mm=30) < op   # the bronchus is 17 mm away
    assert mass_score(second_mass_min_ml=20) < op


def test_a_small_part_solid_nodule_is_found_by_its_ground_glass_blob():
    """A part-solid nodule whose solid part (3.5 mm radius) is under the thickness floor
    has no solid candidate; its ground-glass blob (10 mm radius) is the candidate, and
    the box holds all of it. The phantom's heart and z-tube stay rejected."""
    from autoprompt_seg.detect.candidates import CandidatesParams
    from autoprompt_seg.types import OperatingPoint

    vol, truth = thorax_phantom(seed=5, heart=True, tube=True, nodule=False)
    z, y, x, cy, cx = _mm_grid(vol)
    r2 = (z - 120) ** 2 + (y - (cy - 30)) ** 2 + (x - (cx - 95)) ** 2
    ggo, solid = r2 <= 10 ** 2, r2 <= 3.5 ** 2
    chest = _with_part_solid(vol, ggo, solid)
    op = OperatingPoint().min_score
    boxes = [b for b in CandidatesDetector().detect(chest) if b.score >= op]
    assert len(boxes) == 1, boxes
    assert _hits(boxes[0], ggo) == int(ggo.sum())
    assert _hits(boxes[0], truth["heart"]) == 0 and _hits(boxes[0], truth["tube"]) == 0
    # without the sub-solid pass there is no candidate at all
    assert CandidatesDetector(CandidatesParams(ggo_candidates=0)).detect(chest) == []


def test_a_part_solid_nodule_whose_ground_glass_runs_into_a_branching_blob_is_found():
    """v2.11 (``ggo_split``): the ground glass of a part-solid nodule that runs into a
    branching band of partial volume (here two 5 mm thick ground-glass tubes, one along z
    and one along y) makes one blob too branched for a sub-solid candidate; its thick core
    is searched as a piece of its own, and that is the nodule."""
    from autoprompt_seg.detect.candidates import CandidatesParams
    from autoprompt_seg.types import OperatingPoint

    vol, truth = thorax_phantom(seed=5, heart=True, tube=True, nodule=False)
    z, y, x, cy, cx = _mm_grid(vol)
    r2 = (z - 120) ** 2 + (y - (cy - 30)) ** 2 + (x - (cx - 95)) ** 2
    ggo, solid = r2 <= 10 ** 2, r2 <= 3.5 ** 2
    along_z = ((y - (cy - 30)) ** 2 + (x - (cx - 95)) ** 2 <= 5 ** 2) & (z > 50) & (z < 120)
    along_y = ((z - 60) ** 2 + (x - (cx - 95)) ** 2 <= 5 ** 2) & (y > cy - 30) & (y < cy + 40)
    chest = _with_part_solid(vol, ggo | along_z | along_y, solid)
    op = OperatingPoint().min_score
    boxes = [b for b in CandidatesDetector().detect(chest) if b.score >= op]
    assert len(boxes) == 1, boxes
    assert _hits(boxes[0], ggo) > 0.9 * int(ggo.sum())
    assert _hits(boxes[0], truth["heart"]) == 0 and _hits(boxes[0], truth["tube"]) == 0
    # the whole blob is the v2.10 candidate, and too branched to be kept
    old = CandidatesDetector(CandidatesParams(ggo_split=0)).detect(chest)
    assert not any(_hits(b, ggo) for b in old if b.score >= op)


def test_a_cavitating_mass_is_found_as_one_mass():
    """A 36 mm mass whose centre is a 24 mm gas cavity: the detector fills the cavity
    (v2.8), so the mass is one thick candidate that holds the cavity; before, its shell
    fell apart into thin pieces (boxes beside the centre, or none)."""
    vol, _ = thorax_phantom(seed=0, nodule=False)
    sp, (_, ny, nx) = vol.spacing, vol.shape
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(vol.shape, sp)), indexing="ij")
    d2 = (z - 110) ** 2 + (y - (ny * sp[1] / 2 - 10)) ** 2 + (x - (nx * sp[2] / 2 - 80)) ** 2
    mass, cavity = d2 <= 18 ** 2, d2 <= 12 ** 2
    rng = np.random.default_rng(1)
    a = vol.array.copy()
    a[mass] = 35.0 + rng.normal(0, 12, int(mass.sum()))
    a[cavity] = -1000.0 + rng.normal(0, 12, int(cavity.sum()))
    cavitating = vol.with_array(a.astype(np.float32))
    boxes = [b for b in CandidatesDetector().detect(cavitating)
             if b.score >= OperatingPoint().min_score]
    assert len(boxes) == 1
    assert _hits(boxes[0], mass) >= 0.9 * mass.sum()
    off = CandidatesDetector(CandidatesParams(cavities=0)).detect(cavitating)
    assert not any(_hits(b, mass) >= 0.9 * mass.sum() for b in off
                   if b.score >= OperatingPoint().min_score)
