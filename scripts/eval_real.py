#!/usr/bin/env python
"""Evaluate a detector + segmenter on the four real pycerr lung tumour CTs (RTSTRUCT GTV-1).

Two modes:

* ``auto``: boxes from the detector (default ``candidates``), through the product's
  operating point (``--min-score``, ``--max-lesions``; the defaults of ``autoseg
  predict``), so the Dice is that of the SEG a user would get;
* ``oracle``: one box from the ground truth (its bounding box, key slice = the largest
  GT slice), as a person would draw it.

Per study it prints the Dice of the union of predicted lesions against the GT (MONAI's
``compute_dice``), whether the tumour was detected (a predicted lesion overlaps the GT),
the number of false-positive lesions (predicted lesions that do not overlap the GT) and
the time. ``--no-tumour PATH`` adds a false-positive count on a CT without tumour.
``--wholechest`` adds PyRadiomics' two whole-chest test cases (``lung1``, ``lung2``: 5 mm
slices, one labelled lesion each; :func:`autoprompt_seg.data.fetch_wholechest_cases`), so
automatic and manual prompts can be compared on whole chests too.

Example::

    python scripts/eval_real.py --no-tumour ../shared/data/chest_cta_no_tumour.nii.gz
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from autoprompt_seg import registry
from autoprompt_seg.config import Settings, default_cache_dir
from autoprompt_seg.data import GTV_ROI, PYCERR_PATIENTS, fetch_pycerr
from autoprompt_seg.errors import ConfigError
from autoprompt_seg.io.dicom import load_study
from autoprompt_seg.io.rtstruct import find_rtstruct, load_roi_mask
from autoprompt_seg.options import split_assignment
from autoprompt_seg.types import Box3D, LesionMask, OperatingPoint, Volume


def oracle_boxes(mask: npt.NDArray[np.bool_], volume: Volume) -> list[Box3D]:
    """One box per GT: its bounding box, key slice = the slice of largest GT area."""
    try:
        from autoprompt_seg.detect.oracle import boxes_from_mask  # type: ignore[import-not-found]

        return list(boxes_from_mask(mask, volume, source="oracle", from_person=True))
    except ImportError:
        pass
    if not mask.any():
        return []
    nz = np.nonzero(mask)
    area = mask.sum(axis=(1, 2))
    return [Box3D(z0=int(nz[0].min()), z1=int(nz[0].max()) + 1, y0=int(nz[1].min()),
                  y1=int(nz[1].max()) + 1, x0=int(nz[2].min()), x1=int(nz[2].max()) + 1,
                  key_slice=int(area.argmax()), score=1.0, source="oracle", from_person=True)]


def dice(pred: npt.NDArray[np.bool_], gt: npt.NDArray[np.bool_]) -> float:
    """Dice with MONAI's ``compute_dice`` (1.0 when both are empty)."""
    import torch
    from monai.metrics import compute_dice

    p = torch.from_numpy(np.ascontiguousarray(pred))[None, None].float()
    g = torch.from_numpy(np.ascontiguousarray(gt))[None, None].float()
    d = compute_dice(p, g, include_background=True, ignore_empty=False)
    return float(d.item())


@dataclass
class Row:
    study: str
    mode: str
    dice: float
    detected: bool
    fps: int
    n_boxes: int
    det_s: float
    seg_s: float
    gt_ml: float
    pred_ml: float


def union(lesions: list[LesionMask], shape: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    out = np.zeros(shape, dtype=bool)
    for les in lesions:
        out[les.slices()] |= les.mask
    return out


def count_hits(lesions: list[LesionMask], gt: npt.NDArray[np.bool_]) -> tuple[bool, int]:
    hit, fps = False, 0
    for les in lesions:
        if les.is_empty:
            continue
        if (gt[les.slices()] & les.mask).any():
            hit = True
        else:
            fps += 1
    return hit, fps


def pycerr_case(folder: Path) -> tuple[Volume, npt.NDArray[np.bool_]]:
    volume, _ = load_study(folder)
    rs = find_rtstruct(folder)
    if rs is None:
        raise SystemExit(f"{folder}: no RTSTRUCT")
    return volume, load_roi_mask(rs, volume, GTV_ROI)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", default="candidates")
    ap.add_argument("--segmenter", default="classical")
    ap.add_argument("--modes", default="auto,oracle", help="comma list of auto, oracle")
    ap.add_argument("--patients", default=",".join(PYCERR_PATIENTS))
    ap.add_argument("--cache", type=Path, default=None, help="demo data cache folder")
    ap.add_argument("--no-tumour", type=Path, default=None,
                    help="a CT without tumour (NIfTI/NRRD or DICOM folder) for an FP count")
    ap.add_argument("--wholechest", action="store_true",
                    help="also PyRadiomics' whole-chest cases lung1 and lung2 (downloaded "
                         "into the cache on first use)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="BACKEND.KEY=VALUE",
                    help="override a backend parameter, e.g. candidates.min_score=0.7 "
                         "(repeatable; for sensitivity checks)")
    ap.add_argument("--min-score", type=float, default=OperatingPoint().min_score,
                    help="operating point of the auto mode: boxes scoring at least this are "
                         "segmented (default: autoseg predict's, %(default)s); 0 segments "
                         "every box the detector returns")
    ap.add_argument("--max-lesions", type=int, default=OperatingPoint().max_lesions,
                    help="at most this many boxes are segmented (default %(default)s)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    options: dict[str, dict[str, float]] = {}
    for item in args.overrides:
        try:
            backend, name, value = split_assignment(item)
            options.setdefault(backend, {})[name] = float(value)
        except (ConfigError, ValueError) as e:
            ap.error(f"--set {item!r}: {e}")
    try:
        op = OperatingPoint(min_score=args.min_score, max_lesions=args.max_lesions)
    except ValueError as e:
        ap.error(str(e))
    settings = Settings(cache_dir=args.cache or default_cache_dir(), options=options)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("auto", "oracle"):
            ap.error(f"--modes: unknown mode {m!r} (auto, oracle)")
    detector = registry.get("detector", args.detector).create(settings) if "auto" in modes \
        else None
    segmenter = registry.get("segmenter", args.segmenter).create(settings)
    root = fetch_pycerr(settings.cache_dir)
    rows: list[Row] = []
    cases: list[tuple[str, Callable[[], tuple[Volume, npt.NDArray[np.bool_]]]]] = []
    for pat in [p.strip() for p in args.patients.split(",") if p.strip()]:
        cases.append((pat, lambda pat=pat: pycerr_case(root / pat)))  # type: ignore[misc]
    if args.wholechest:
        from autoprompt_seg.data import WHOLECHEST_CASES, fetch_wholechest_cases
        from autoprompt_seg.io.image import load_image

        wc = fetch_wholechest_cases(settings.cache_dir)
        for name in WHOLECHEST_CASES:
            cases.append((name, lambda name=name: (  # type: ignore[misc]
                load_image(wc / f"{name}_image.nrrd"),
                load_image(wc / f"{name}_label.nrrd").array > 0)))
    for pat, load in cases:
        volume, gt = load()
        for mode in modes:
            t0 = time.perf_counter()
            if mode == "auto":
                assert detector is not None
                boxes, _ = op.split(detector.detect(volume))
            else:
                boxes = oracle_boxes(gt, volume)
            t1 = time.perf_counter()
            lesions = [les for les in segmenter.segment(volume, boxes) if not les.is_empty]
            t2 = time.perf_counter()
            pred = union(lesions, volume.shape)
            hit, fps = count_hits(lesions, gt)
            rows.append(Row(pat, mode, dice(pred, gt), hit, fps, len(boxes), t1 - t0, t2 - t1,
                            float(gt.sum()) * volume.voxel_volume_ml,
                            float(pred.sum()) * volume.voxel_volume_ml))
    print(f"detector={args.detector} segmenter={args.segmenter} min_score={op.min_score} "
          f"max_lesions={op.max_lesions} (auto mode)")
    hdr = (f"{'study':6} {'mode':6} {'dice':>6} {'detected':>8} {'FPs':>4} {'boxes':>5} "
           f"{'GT ml':>7} {'pred ml':>7} {'det s':>6} {'seg s':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r.study:6} {r.mode:6} {r.dice:6.3f} {('yes' if r.detected else 'NO'):>8} "
              f"{r.fps:4d} {r.n_boxes:5d} {r.gt_ml:7.1f} {r.pred_ml:7.1f} {r.det_s:6.2f} "
              f"{r.seg_s:6.2f}")
    print("-" * len(hdr))
    for mode in modes:
        rr = [r for r in rows if r.mode == mode]
        if not rr:
            continue
        print(f"{'mean':6} {mode:6} {np.mean([r.dice for r in rr]):6.3f} "
              f"{sum(r.detected for r in rr):>5d}/{len(rr)} {np.mean([r.fps for r in rr]):4.2f} "
              f"{np.mean([r.n_boxes for r in rr]):5.2f} {'':7} {'':7} "
              f"{np.mean([r.det_s for r in rr]):6.2f} {np.mean([r.seg_s for r in rr]):6.2f}")
    if args.no_tumour is not None:
        if detector is None:
            detector = registry.get("detector", args.detector).create(settings)
        p = args.no_tumour
        if p.is_dir():
            vol, _ = load_study(p)
        else:
            from autoprompt_seg.io.image import load_image

            vol = load_image(p)
        t0 = time.perf_counter()
        boxes, _ = op.split(detector.detect(vol))
        t1 = time.perf_counter()
        lesions = [les for les in segmenter.segment(vol, boxes) if not les.is_empty]
        t2 = time.perf_counter()
        print(f"no-tumour CT {p.name} {vol.shape}: {len(lesions)} false-positive lesion(s) "
              f"({len(boxes)} boxes), detect {t1 - t0:.2f} s, segment {t2 - t1:.2f} s")
        for b in boxes:
            print(f"   FP box z[{b.z0},{b.z1}) y[{b.y0},{b.y1}) x[{b.x0},{b.x1}) "
                  f"key {b.key_slice} score {b.score:.2f}")


if __name__ == "__main__":
    main()
