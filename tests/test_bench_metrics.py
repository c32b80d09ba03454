"""Bench metrics on analytic cases with answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoprompt_seg.bench.metrics import (
    case_metrics,
    dice_2d_tumour_slices,
    lesion_metrics,
    overlap_surface,
)

SPACING = (3.0, 0.7, 0.9)  # anisotropic (z, y, x) mm


def shifted_plates(n: int = 4, k: int = 1, side: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Two boxes of n x side x side voxels, the second shifted by k slices along z."""
    a = np.zeros((n + k + 4, side + 4, side + 4), bool)
    b = np.zeros_like(a)
    a[2:2 + n, 2:2 + side, 2:2 + side] = True
    b[2 + k:2 + k + n, 2:2 + side, 2:2 + side] = True
    return a, b


@pytest.mark.parametrize("k", [1, 2])
def test_shifted_boxes_dice_iou_hd95_by_hand(k: int) -> None:
    n = 6
    a, b = shifted_plates(n=n, k=k)
    m = overlap_surface(a, b, SPACING)
    # overlap n-k slices of n: Dice = 2(n-k)/(2n), IoU = (n-k)/(n+k)
    assert m.dice == pytest.approx((n - k) / n, abs=1e-6)
    assert m.iou == pytest.approx((n - k) / (n + k), abs=1e-6)
    # Every surface distance is <= k*sz and the whole bottom (top) face -- more than 5 %
    # of the surface -- lies exactly k*sz from the other surface: HD95 = k * sz.
    assert m.hd95_mm == pytest.approx(k * SPACING[0], abs=1e-6)
    assert 0 < m.assd_mm < k * SPACING[0]


def test_shift_in_plane_uses_the_axis_spacing() -> None:
    a = np.zeros((10, 30, 30), bool)
    a[2:8, 5:25, 5] = True
    b = np.roll(a, 3, axis=2)  # one-voxel-thick plates 3 voxels apart along x:
    # every surface voxel's nearest surface voxel of the other plate is 3 * sx away
    m = overlap_surface(a, b, SPACING)
    assert m.dice == 0.0
    assert m.hd95_mm == pytest.approx(3 * SPACING[2], abs=1e-6)
    assert m.assd_mm == pytest.approx(3 * SPACING[2], abs=1e-6)
    # every surface point is 2.7 mm away: NSD@2mm = 0, NSD@3mm = 1
    assert m.nsd_2mm == pytest.approx(0.0, abs=1e-6)
    assert overlap_surface(a, b, SPACING, nsd_tolerance_mm=3.0).nsd_2mm == pytest.approx(1.0)


def test_identical_and_empty_conventions() -> None:
    a, _ = shifted_plates()
    same = overlap_surface(a, a, SPACING)
    assert (same.dice, same.iou, same.hd95_mm, same.assd_mm, same.nsd_2mm) == \
        pytest.approx((1, 1, 0, 0, 1))
    empty = np.zeros_like(a)
    both = overlap_surface(empty, empty, SPACING)
    assert (both.dice, both.hd95_mm, both.nsd_2mm) == (1.0, 0.0, 1.0)
    miss = overlap_surface(empty, a, SPACING)
    assert miss.dice == 0.0 and miss.nsd_2mm == 0.0
    assert math.isnan(miss.hd95_mm) and math.isnan(miss.assd_mm)


def test_volume_error_ml_and_dice2d() -> None:
    a, b = shifted_plates(n=4, k=1, side=10)
    b[2, 2:4, 2:12] = False
    vals, _ = case_metrics(b, a, SPACING)
    vox = 3.0 * 0.7 * 0.9 / 1000
    assert vals["vol_gt_ml"] == pytest.approx(400 * vox)
    assert vals["vol_err_ml"] == pytest.approx((b.sum() - 400) * vox)
    # GT slices 2..5; pred covers slices 3..5 fully (Dice 1 each) and none of slice 2
    assert dice_2d_tumour_slices(b, a) == pytest.approx(3 / 4)


def test_lesion_matching_rule_and_counts() -> None:
    gt = np.zeros((20, 40, 40), bool)
    gt[2:6, 2:10, 2:10] = True      # lesion 1: found
    gt[10:14, 20:30, 20:30] = True  # lesion 2: missed
    pred = np.zeros_like(gt)
    pred[2:6, 2:10, 2:10] = True
    pred[15:18, 2:6, 30:35] = True  # a false positive
    s = lesion_metrics(pred, gt, SPACING)
    assert (s.n_gt, s.n_pred, s.tp, s.fp, s.fn) == (2, 2, 1, 1, 1)
    assert s.sensitivity == pytest.approx(0.5)
    assert s.precision == pytest.approx(0.5)
    assert s.f1 == pytest.approx(2 / (2 + 1 + 1))
    kinds = sorted(r.kind for r in s.rows)
    assert kinds == ["fp", "gt", "gt"]
    # a sliver touching lesion 2 matches under "any overlap" but not under Dice > 0.1
    pred[10, 20, 20] = True
    assert lesion_metrics(pred, gt, SPACING, match_dice=0.0).tp == 2
    assert lesion_metrics(pred, gt, SPACING).tp == 1  # default: pairwise Dice > 0.1


def test_lesion_empty_conventions() -> None:
    z = np.zeros((5, 5, 5), bool)
    s = lesion_metrics(z, z, (1, 1, 1))
    assert math.isnan(s.sensitivity) and math.isnan(s.precision) and math.isnan(s.f1)
    g = z.copy()
    g[1:3, 1:3, 1:3] = True
    s = lesion_metrics(z, g, (1, 1, 1))
    assert s.sensitivity == 0.0 and math.isnan(s.precision) and s.f1 == 0.0


def test_bad_arguments_name_argument_and_value() -> None:
    a = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="'spacing'.*-1"):
        overlap_surface(a, a, (1, 1, -1))
    with pytest.raises(ValueError, match="'pred'"):
        overlap_surface(np.zeros((4, 4, 5), bool), a, (1, 1, 1))
    with pytest.raises(ValueError, match="'match_dice'"):
        lesion_metrics(a, a, (1, 1, 1), match_dice=1.5)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_cropping_agrees_with_monai_on_the_full_volume() -> None:
    """The crop-to-union speed-up changes nothing: same numbers as MONAI on full arrays."""
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:24, :40, :40]
    a = ((zz - 11) / 6) ** 2 + ((yy - 18) / 9) ** 2 + ((xx - 20) / 8) ** 2 <= 1
    b = ((zz - 13) / 5) ** 2 + ((yy - 20) / 10) ** 2 + ((xx - 19) / 7) ** 2 <= 1
    b &= rng.random(b.shape) > 0.05
    m = overlap_surface(a, b, SPACING)
    ta = torch.from_numpy(a.astype(np.float32))[None, None]
    tb = torch.from_numpy(b.astype(np.float32))[None, None]
    sp = list(SPACING)
    assert m.hd95_mm == pytest.approx(float(compute_hausdorff_distance(
        ta, tb, include_background=True, percentile=95, spacing=sp)), abs=1e-6)
    assert m.assd_mm == pytest.approx(float(compute_average_surface_distance(
        ta, tb, include_background=True, symmetric=True, spacing=sp)), abs=1e-6)
    assert m.nsd_2mm == pytest.approx(float(compute_surface_dice(
        ta, tb, class_thresholds=[2.0], include_background=True, spacing=sp)), abs=1e-6)
    inter = (a & b).sum()
    assert m.dice == pytest.approx(2 * inter / (a.sum() + b.sum()), abs=1e-6)


def test_match_threshold_is_strictly_greater() -> None:
    """Pairwise Dice exactly 0.1 (1 shared voxel, 10 + 10 voxels) does not match at 0.1."""
    gt = np.zeros((3, 3, 30), bool)
    pred = np.zeros_like(gt)
    gt[1, 1, 0:10] = True
    pred[1, 1, 9:19] = True
    assert 2 * 1 / 20 == 0.1
    assert lesion_metrics(pred, gt, (1, 1, 1), match_dice=0.1).tp == 0
    assert lesion_metrics(pred, gt, (1, 1, 1), match_dice=0.09).tp == 1
