"""3-D, spacing-aware segmentation metrics per case and per lesion.

Overlap and surface metrics are MONAI's implementations (``monai.metrics``), called on a
single-channel, batch-of-one tensor after cropping both masks to the bounding box of their
union plus a one-voxel margin (cropping changes none of these metrics: the margin keeps
the surface voxels at the crop border detected exactly as in the full volume).

Per-case metrics (:func:`case_metrics`)
---------------------------------------
``dice``, ``iou``
    MONAI ``compute_dice`` / ``compute_iou``.
``hd95_mm``
    MONAI ``compute_hausdorff_distance(percentile=95, spacing=...)``: the larger of the two
    directed 95th-percentile surface distances, in mm.
``assd_mm``
    MONAI ``compute_average_surface_distance(symmetric=True, spacing=...)``: the mean of
    the surface distances of both surfaces pooled, in mm.
``nsd_2mm``
    MONAI ``compute_surface_dice(class_thresholds=[tol], spacing=...)``: normalised
    surface Dice at a tolerance of ``tol`` mm (default 2 mm).
``vol_pred_ml``, ``vol_gt_ml``, ``vol_err_ml`` (= pred - gt, signed), ``abs_vol_err_ml``.
``dice2d``
    Mean 2-D Dice over the GT-positive (tumour) slices, the paper's slice-wise protocol
    (a slice where the prediction is empty counts 0).

Empty-mask conventions
----------------------
* GT and prediction both empty: Dice = IoU = NSD = 1, HD95 = ASSD = 0, ``dice2d`` = NaN
  (no tumour slice).
* Exactly one empty: Dice = IoU = NSD = 0; HD95 and ASSD are NaN (undefined: no surface
  to measure to). Summaries use NaN-aware statistics and report the count of finite
  values, so a missed tumour shows up in Dice and in sensitivity, not as an arbitrary
  large distance.

Lesion-wise detection (:func:`lesion_metrics`)
----------------------------------------------
Lesions are the 26-connected components of the GT and of the prediction. **Matching
rule:** a predicted lesion *p* and a GT lesion *g* match when they overlap and their
pairwise Dice ``2|p∩g| / (|p|+|g|)`` is greater than ``match_dice`` (default **0.1**;
``match_dice = 0`` gives the looser "any overlap", IoU > 0, rule). The default is the
stricter one because a grossly wrong mask that grazes the tumour (pairwise Dice 0.002 on
a real pycerr case with automatic prompts) would otherwise count as a detection. Several-to-one matches are allowed
(a lesion split in two predicted pieces is detected once and gives no false positive).

* TP = GT lesions matched by at least one prediction; FN = unmatched GT lesions;
  FP = predicted lesions matching no GT lesion.
* sensitivity = TP / n_gt (NaN when there is no GT lesion);
  precision = (n_pred - FP) / n_pred (NaN when there is no predicted lesion);
  F1 = 2 TP / (2 TP + FP + FN) (NaN only when there is neither GT nor prediction).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Mask = npt.NDArray[np.bool_]
Spacing = tuple[float, float, float]

#: Per-case metric names, in report order. ``fp`` is the case's false-positive lesions, so
#: its mean over a group is the false positives per study (detectors compared in a bench).
CASE_METRICS = ("dice", "iou", "hd95_mm", "assd_mm", "nsd_2mm", "vol_err_ml", "abs_vol_err_ml",
                "dice2d", "sensitivity", "precision", "f1", "fp")


def _as_mask(arr: npt.ArrayLike, name: str) -> Mask:
    a = np.asarray(arr)
    if a.ndim != 3:
        raise ValueError(f"Argument {name!r} must be a 3-D (z, y, x) mask; got shape {a.shape}")
    return a.astype(bool, copy=False)


def _check_spacing(spacing: Sequence[float]) -> Spacing:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"Argument 'spacing' must be three positive numbers (z, y, x) in mm; "
                         f"got {spacing!r}")
    return sp  # type: ignore[return-value]


def _crop_union(pred: Mask, gt: Mask, margin: int = 1) -> tuple[Mask, Mask]:
    """Crop both masks to their union's bounding box plus ``margin`` voxels, zero-padded."""
    union = pred | gt
    nz = np.nonzero(union)
    lo = [int(a.min()) for a in nz]
    hi = [int(a.max()) + 1 for a in nz]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    pad = [(margin, margin)] * 3
    return np.pad(pred[sl], pad), np.pad(gt[sl], pad)


def _tensor(mask: Mask) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def _item(t: Any) -> float:
    return float(t.reshape(-1)[0].item())


@dataclass(frozen=True)
class OverlapSurface:
    """Overlap and surface metrics of one prediction against one GT."""

    dice: float
    iou: float
    hd95_mm: float
    assd_mm: float
    nsd_2mm: float


def overlap_surface(pred: npt.ArrayLike, gt: npt.ArrayLike, spacing: Sequence[float],
                    nsd_tolerance_mm: float = 2.0) -> OverlapSurface:
    """Dice, IoU, HD95, ASSD and NSD with MONAI (see the module docstring for empties)."""
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"Argument 'pred' must have the GT's shape {g.shape}; got {p.shape}")
    sp = _check_spacing(spacing)
    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise ValueError(f"Argument 'nsd_tolerance_mm' must be >= 0; got {nsd_tolerance_mm!r}")
    pe, ge = not p.any(), not g.any()
    if pe and ge:
        return OverlapSurface(1.0, 1.0, 0.0, 0.0, 1.0)
    if pe or ge:
        return OverlapSurface(0.0, 0.0, math.nan, math.nan, 0.0)
    pc, gc = _crop_union(p, g)
    tp, tg = _tensor(pc), _tensor(gc)
    with warnings.catch_warnings():  # MONAI 1.5+ deprecation noise from get_mask_edges
        warnings.simplefilter("ignore", FutureWarning)
        return _monai_metrics(tp, tg, sp, nsd_tolerance_mm)


def _monai_metrics(tp: Any, tg: Any, sp: Spacing, nsd_tolerance_mm: float) -> OverlapSurface:
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
    )

    dice = _item(compute_dice(tp, tg, include_background=True, ignore_empty=False))
    iou = _item(compute_iou(tp, tg, include_background=True, ignore_empty=False))
    hd95 = _item(compute_hausdorff_distance(tp, tg, include_background=True, percentile=95,
                                            spacing=list(sp)))
    assd = _item(compute_average_surface_distance(tp, tg, include_background=True,
                                                  symmetric=True, spacing=list(sp)))
    nsd = _item(compute_surface_dice(tp, tg, class_thresholds=[float(nsd_tolerance_mm)],
                                     include_background=True, spacing=list(sp)))
    return OverlapSurface(dice, iou, hd95, assd, nsd)


def dice_2d_tumour_slices(pred: npt.ArrayLike, gt: npt.ArrayLike) -> float:
    """Mean 2-D Dice over the slices (axis 0) where the GT is positive; NaN if none."""
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    gs = g.reshape(g.shape[0], -1)
    ps = p.reshape(p.shape[0], -1)
    pos = gs.any(axis=1)
    if not pos.any():
        return math.nan
    inter = (gs[pos] & ps[pos]).sum(axis=1)
    denom = gs[pos].sum(axis=1) + ps[pos].sum(axis=1)
    return float(np.mean(2.0 * inter / denom))


@dataclass(frozen=True)
class LesionRow:
    """One GT lesion (``kind='gt'``) or one unmatched predicted lesion (``kind='fp'``)."""

    kind: str
    index: int  # 1-based component index within its own mask
    volume_ml: float
    matched: bool
    best_dice: float  # best pairwise Dice with a lesion of the other mask (0 if none)
    centroid_zyx: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LesionSummary:
    n_gt: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    sensitivity: float
    precision: float
    f1: float
    rows: tuple[LesionRow, ...]


def _components(mask: Mask) -> tuple[npt.NDArray[np.int32], int]:
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    return lab.astype(np.int32, copy=False), int(n)


def lesion_metrics(pred: npt.ArrayLike, gt: npt.ArrayLike, spacing: Sequence[float],
                   match_dice: float = 0.1) -> LesionSummary:
    """Lesion-wise detection with the matching rule of the module docstring."""
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"Argument 'pred' must have the GT's shape {g.shape}; got {p.shape}")
    sp = _check_spacing(spacing)
    if not (math.isfinite(match_dice) and 0.0 <= match_dice < 1.0):
        raise ValueError(f"Argument 'match_dice' must lie in [0, 1); got {match_dice!r}")
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    glab, ng = _components(g)
    plab, npr = _components(p)
    gsize = np.bincount(glab.ravel(), minlength=ng + 1)
    psize = np.bincount(plab.ravel(), minlength=npr + 1)
    both = (glab > 0) & (plab > 0)
    pair = np.bincount(glab[both].astype(np.int64) * (npr + 1) + plab[both],
                       minlength=(ng + 1) * (npr + 1)).reshape(ng + 1, npr + 1)
    pair_dice = np.zeros((ng + 1, npr + 1))
    if ng and npr:
        denom = gsize[:, None] + psize[None, :]
        pair_dice = np.where(pair > 0, 2.0 * pair / np.maximum(denom, 1), 0.0)
    match = (pair > 0) & (pair_dice > match_dice)
    match[0, :] = False
    match[:, 0] = False
    g_matched: npt.NDArray[np.bool_] = np.asarray(match.any(axis=1), dtype=bool)
    p_matched: npt.NDArray[np.bool_] = np.asarray(match.any(axis=0), dtype=bool)
    from scipy import ndimage as ndi

    rows: list[LesionRow] = []
    gcent = ndi.center_of_mass(g, glab, range(1, ng + 1)) if ng else []
    pcent = ndi.center_of_mass(p, plab, range(1, npr + 1)) if npr else []
    for i in range(1, ng + 1):
        rows.append(LesionRow("gt", i, float(gsize[i] * voxel_ml), bool(g_matched[i]),
                              float(pair_dice[i].max(initial=0.0)),
                              tuple(round(float(c), 2) for c in gcent[i - 1])))  # type: ignore[arg-type]
    for j in range(1, npr + 1):
        if not p_matched[j]:
            rows.append(LesionRow("fp", j, float(psize[j] * voxel_ml), False,
                                  float(pair_dice[:, j].max(initial=0.0)),
                                  tuple(round(float(c), 2) for c in pcent[j - 1])))  # type: ignore[arg-type]
    tp = int(g_matched[1:].sum())
    fn = ng - tp
    fp = npr - int(p_matched[1:].sum())
    sens = tp / ng if ng else math.nan
    prec = (npr - fp) / npr if npr else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan
    return LesionSummary(ng, npr, tp, fp, fn, sens, prec, f1, tuple(rows))


def case_metrics(pred: npt.ArrayLike, gt: npt.ArrayLike, spacing: Sequence[float], *,
                 nsd_tolerance_mm: float = 2.0, match_dice: float = 0.1
                 ) -> tuple[dict[str, float], LesionSummary]:
    """All per-case metrics as a flat dict (names in :data:`CASE_METRICS` and a few
    counts), plus the lesion-wise summary with its per-lesion rows."""
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    sp = _check_spacing(spacing)
    os_ = overlap_surface(p, g, sp, nsd_tolerance_mm)
    les = lesion_metrics(p, g, sp, match_dice)
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    vp, vg = float(p.sum()) * voxel_ml, float(g.sum()) * voxel_ml
    out: dict[str, float] = {
        "dice": os_.dice, "iou": os_.iou, "hd95_mm": os_.hd95_mm, "assd_mm": os_.assd_mm,
        "nsd_2mm": os_.nsd_2mm, "vol_pred_ml": vp, "vol_gt_ml": vg, "vol_err_ml": vp - vg,
        "abs_vol_err_ml": abs(vp - vg), "dice2d": dice_2d_tumour_slices(p, g),
        "n_gt_lesions": float(les.n_gt), "n_pred_lesions": float(les.n_pred),
        "tp": float(les.tp), "fp": float(les.fp), "fn": float(les.fn),
        "sensitivity": les.sensitivity, "precision": les.precision, "f1": les.f1,
    }
    return out, les
