#!/usr/bin/env python
"""Does the detector still find LIDC-IDRI-0314's nodule in an emphysematous lung?

Severe emphysema turns a quarter to a half of the lung into holes of near-pure air, and a
detector that tells lung from outside air by its share of pure air can lose the whole lung.
This script makes that lung: in LIDC-0314's parenchyma (-950..-600 HU, the two lungs that
touch no side of the image, by the detector's own lung rule), seeded blobs (smoothed noise over a threshold) that cover the
asked share become holes of -985 HU (+- 10 HU noise). Vessels, airways and the nodule stay.
For each share it prints the resulting LAA-950 (share of lung voxels under -950 HU at full
resolution), the candidates detector's boxes and whether one holds the nodule.

Synthetic holes are not real emphysema (no bullae walls, no hyperinflation), so this is a
robustness check of the lung mask, not an accuracy figure.

Example::

    python scripts/eval_emphysema.py --shared ../shared/data --holes 0 0.25 0.4 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from autoprompt_seg.detect.candidates import CandidatesDetector, CandidatesParams
from autoprompt_seg.detect.morphology import lung_components
from autoprompt_seg.errors import ConfigError
from autoprompt_seg.io.dicom import load_study
from autoprompt_seg.options import split_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_wholechest import LIDC_NODULE_BOX  # noqa: E402


def detector_from_sets(ap: argparse.ArgumentParser, items: list[str]) -> CandidatesDetector:
    """The candidates detector with the ``--set candidates.KEY=VALUE`` overrides ``items``;
    a bad one is a usage error (``ap.error``)."""
    opts = {}
    for item in items:
        try:
            backend, key, value = split_assignment(item)
            opts[key] = float(value)
        except (ConfigError, ValueError) as e:
            ap.error(f"--set {item!r}: {e}")
        if backend != "candidates":
            ap.error(f"--set {item!r}: only candidates.KEY=VALUE")
    try:
        return CandidatesDetector(CandidatesParams(**opts))
    except (ConfigError, TypeError) as e:
        ap.error(f"--set: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"),
                    help="folder with lidc_idri_0314_dicom/")
    ap.add_argument("--holes", type=float, nargs="+", default=[0.0, 0.25, 0.4, 0.5],
                    help="shares of the parenchyma turned into holes (0..0.9)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="candidates.KEY=VALUE", help="a detector parameter; repeatable")
    args = ap.parse_args()
    if any(not 0.0 <= h <= 0.9 for h in args.holes):
        ap.error(f"--holes must be in 0..0.9; got {args.holes}")
    det = detector_from_sets(ap, args.overrides)
    vol, _ = load_study(args.shared / "lidc_idri_0314_dicom")
    a = vol.array
    p = det.params
    lung = lung_components(a, vol.spacing, p.air_hu, p.pure_air_hu, p.max_pure_air_frac,
                           p.min_lung_ml, p.enclosed_max_pure_air_frac, p.enclosed_min_lung_ml)
    parench = lung & (a > -950) & (a < -600)
    rng = np.random.default_rng(args.seed)
    noise = ndi.gaussian_filter(rng.standard_normal(a.shape).astype(np.float32),
                                sigma=(3, 4, 4))
    z0, z1, y0, y1, x0, x1 = LIDC_NODULE_BOX
    lung_ml = float(lung.sum()) * vol.voxel_volume_ml
    print(f"detector candidates {det.info().version}; LIDC-0314 lungs {lung_ml:.0f} ml")
    print(f"{'holes':>6} {'LAA-950':>8} {'boxes':>6}  nodule (score)  detector s")
    for share in args.holes:
        arr = a.copy()
        if share > 0:
            holes = parench & (noise > np.quantile(noise[parench], 1.0 - share))
            arr[holes] = -985.0 + 10.0 * rng.standard_normal(int(holes.sum()))
        laa = float(((arr < -950) & lung).sum()) / float(lung.sum())
        t0 = time.perf_counter()
        boxes = det.detect(vol.with_array(arr.astype(np.float32)))
        dt = time.perf_counter() - t0
        hit = [b for b in boxes if b.z0 < z1 and b.z1 > z0 and b.y0 < y1 and b.y1 > y0
               and b.x0 < x1 and b.x1 > x0]
        found = f"yes ({max(b.score for b in hit):.2f})" if hit else "no"
        print(f"{share:6.2f} {laa:8.3f} {len(boxes):6d}  {found:14}  {dt:9.1f}")


if __name__ == "__main__":
    main()
