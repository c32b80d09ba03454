#!/usr/bin/env python
"""How the candidates detector behaves on whole chests with common findings besides a tumour.

Real NSCLC studies often hold a pleural effusion, a collapsed (atelectatic) lower lobe or
the noise of a low-dose scan. This script adds each to the two whole-chest backgrounds
(LIDC-IDRI-0314, whose one nodule is the ground truth, and the tumour-free chest CTA)
and prints, per condition, the boxes at or above the operating point (``--min-score``),
how many of them are false positives, whether the LIDC nodule is still found, and the
detector's time:

* ``effusion``: free fluid layered in the dependent (posterior) part of one or both
  hemithoraces, deepest at the base and thinning towards ``--effusion-height`` of the
  lung's height (a meniscus), +12 HU +- 10 HU, with a 5 mm band of passive atelectasis
  (-50 +- 30 HU) on the lung side. Depths in mm: ``--effusion-mm``.
* ``collapse``: a lower-lobe collapse proxy: on each slice of the lowest
  ``--collapse-frac`` of one lung, its posterior-medial quarter becomes +35 +- 15 HU
  tissue. A block, not a lobe (no fissure, no volume loss): a rough stand-in.
* ``noise``: white noise, lightly correlated in-plane (0.7 voxel), of ``--noise-hu`` SD.

These are synthetic changes to real backgrounds, so the figures are robustness checks of
the detector, not accuracy figures. The inferior end of each volume is read off its
direction matrix.

Example::

    python scripts/eval_robustness.py --shared ../shared/data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from autoprompt_seg.detect.candidates import CandidatesDetector
from autoprompt_seg.detect.morphology import lung_components
from autoprompt_seg.io.dicom import load_study
from autoprompt_seg.io.image import load_image
from autoprompt_seg.types import OperatingPoint, Volume

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_emphysema import detector_from_sets  # noqa: E402
from eval_wholechest import LIDC_NODULE_BOX  # noqa: E402

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]


def lung_sides(volume: Volume, det: CandidatesDetector) -> tuple[BoolArray, BoolArray]:
    """The patient's right and left lung (the detector's own lung rule, split by the
    nearer of the two largest eroded components; right = smaller x in LPS)."""
    p = det.params
    lung = lung_components(volume.array, volume.spacing, p.air_hu, p.pure_air_hu,
                           p.max_pure_air_frac, p.min_lung_ml, p.enclosed_max_pure_air_frac,
                           p.enclosed_min_lung_ml)
    lab, _ = ndi.label(ndi.binary_erosion(lung, iterations=2))
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    big = [int(i) for i in np.argsort(sizes)[::-1][:2]]
    big.sort(key=lambda i: float(np.nonzero(lab == i)[2].mean()))
    d0, d1 = (ndi.distance_transform_edt(lab != i) for i in big)
    sides = (lung & (d0 <= d1), lung & (d1 < d0))
    if volume.direction[0, 0] < 0:  # x runs towards the patient's right
        sides = sides[::-1]
    return sides[0], sides[1]


def from_base(volume: Volume, z: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """Slice indices ``z`` counted from the inferior end of the volume."""
    return z if volume.direction[2, 2] > 0 else volume.shape[0] - 1 - z


def effusion(volume: Volume, side: BoolArray, depth_mm: float, height_frac: float,
             rng: np.random.Generator) -> FloatArray:
    arr = volume.array.copy()
    zs = np.nonzero(side.any(axis=(1, 2)))[0]
    h = from_base(volume, zs)
    h = h - h.min()
    top = height_frac * float(h.max())
    sy = volume.spacing[1]
    fluid = np.zeros_like(side)
    yy = np.arange(volume.shape[1])[:, None]
    for z, hz in zip(zs, h, strict=True):
        if hz > top:
            continue
        d = depth_mm * np.sqrt(1.0 - hz / top)
        ys = np.nonzero(side[z].any(axis=1))[0]
        fluid[z] = side[z] & (yy > ys.max() - d / sy)  # LPS: +y is posterior
    arr[fluid] = 12.0 + 10.0 * rng.standard_normal(int(fluid.sum()))
    band = (ndi.distance_transform_edt(~fluid, sampling=volume.spacing) <= 5.0) & side & ~fluid
    arr[band] = -50.0 + 30.0 * rng.standard_normal(int(band.sum()))
    return arr


def collapse(volume: Volume, side: BoolArray, frac: float,
             rng: np.random.Generator) -> FloatArray:
    arr = volume.array.copy()
    zs = np.nonzero(side.any(axis=(1, 2)))[0]
    h = from_base(volume, zs)
    h = h - h.min()
    mid = volume.shape[2] / 2.0
    cx = float(np.nonzero(side)[2].mean())
    block = np.zeros_like(side)
    for z in zs[h <= frac * float(h.max())]:
        ys, xs = np.nonzero(side[z])
        sel = (np.abs(xs - mid) < abs(cx - mid)) & (ys > np.median(ys))
        block[z, ys[sel], xs[sel]] = True
    block = ndi.binary_opening(block, iterations=2)
    arr[block] = 35.0 + 15.0 * rng.standard_normal(int(block.sum()))
    return arr


def noise(volume: Volume, sd: float, rng: np.random.Generator) -> FloatArray:
    n = ndi.gaussian_filter(rng.standard_normal(volume.shape).astype(np.float32),
                            sigma=(0, 0.7, 0.7))
    return volume.array + n * np.float32(sd / float(n.std()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"),
                    help="folder with lidc_idri_0314_dicom/ and chest_cta_no_tumour.nii.gz")
    ap.add_argument("--checks", default="effusion,collapse,noise",
                    help="comma-separated: effusion, collapse, noise")
    ap.add_argument("--effusion-mm", type=float, nargs="+", default=[25.0, 50.0, 80.0])
    ap.add_argument("--effusion-height", type=float, default=0.6,
                    help="share of the lung's height the fluid reaches (0..1)")
    ap.add_argument("--collapse-frac", type=float, nargs="+", default=[0.25, 0.4])
    ap.add_argument("--noise-hu", type=float, nargs="+", default=[25.0, 50.0, 100.0])
    ap.add_argument("--min-score", type=float, default=OperatingPoint().min_score)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="candidates.KEY=VALUE", help="a detector parameter; repeatable")
    args = ap.parse_args()
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    bad = [c for c in checks if c not in ("effusion", "collapse", "noise")]
    if bad:
        ap.error(f"--checks: unknown {bad}; choose from effusion, collapse, noise")
    if not 0 < args.effusion_height <= 1 or any(not 0 < f <= 1 for f in args.collapse_frac):
        ap.error("--effusion-height and --collapse-frac must be in (0, 1]")
    if any(v < 0 for v in args.effusion_mm + args.noise_hu):
        ap.error("--effusion-mm and --noise-hu must be >= 0")
    det = detector_from_sets(ap, args.overrides)
    rng = np.random.default_rng(args.seed)
    lidc, _ = load_study(args.shared / "lidc_idri_0314_dicom")
    cta = load_image(args.shared / "chest_cta_no_tumour.nii.gz")
    z0, z1, y0, y1, x0, x1 = LIDC_NODULE_BOX
    print(f"detector candidates {det.info().version}, min score {args.min_score}")
    print(f"{'case':40} {'boxes':>5} {'FPs':>4} {'nodule':>7} {'det s':>6}  top scores")
    for name, vol in (("LIDC-0314", lidc), ("CTA", cta)):
        right, left = lung_sides(vol, det)
        conds: list[tuple[str, FloatArray]] = [("as is", vol.array)]
        for c in checks:
            if c == "effusion":
                for d in args.effusion_mm:
                    for sname, s in (("right", right), ("left", left)):
                        conds.append((f"effusion {sname} {d:.0f} mm",
                                      effusion(vol, s, d, args.effusion_height, rng)))
                    both = effusion(vol.with_array(effusion(vol, right, d,
                                                            args.effusion_height, rng)),
                                    left, d, args.effusion_height, rng)
                    conds.append((f"effusion both {d:.0f} mm", both))
            elif c == "collapse":
                for f in args.collapse_frac:
                    for sname, s in (("right", right), ("left", left)):
                        conds.append((f"collapse {sname} lowest {f:.0%}",
                                      collapse(vol, s, f, rng)))
            else:
                for sd in args.noise_hu:
                    conds.append((f"noise {sd:.0f} HU", noise(vol, sd, rng)))
        for cname, arr in conds:
            t0 = time.perf_counter()
            boxes = det.detect(vol.with_array(arr.astype(np.float32)))
            dt = time.perf_counter() - t0
            kept = [b for b in boxes if b.score >= args.min_score]
            hit = [name == "LIDC-0314" and b.z0 < z1 and b.z1 > z0 and b.y0 < y1
                   and b.y1 > y0 and b.x0 < x1 and b.x1 > x0 for b in kept]
            nod = ("-" if name != "LIDC-0314" else "found" if any(hit) else "MISSED")
            tops = " ".join(f"{b.score:.2f}" for b in boxes[:4])
            print(f"{name + ': ' + cname:40} {len(kept):5d} {len(kept) - sum(hit):4d} "
                  f"{nod:>7} {dt:6.1f}  {tops}", flush=True)


if __name__ == "__main__":
    main()
