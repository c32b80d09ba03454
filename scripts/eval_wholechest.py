#!/usr/bin/env python
"""Automatic prompts on whole-chest CT: lesion sensitivity, false positives, Dice, time.

Cases (each scored as ``autoseg predict`` would write it, at the default operating point):

* ``real``: the four pycerr lung tumour crops (RTSTRUCT GTV-1), LIDC-IDRI-0314 (whole
  chest; its one known nodule, box z 152-169 y 232-255 x 173-196, is the ground truth,
  thresholded at -500 HU inside that box), the chest CTA without tumour, PyRadiomics'
  two whole-chest test cases ``lung1`` and ``lung2`` (5 mm slices, one labelled lesion
  each; :func:`autoprompt_seg.data.fetch_wholechest_cases`, skipped with a warning when
  they cannot be fetched), and three tumour-free CTs from TotalSegmentator's test files
  (:func:`autoprompt_seg.data.fetch_no_tumour_cases`: the chest CTA's full field of view,
  a cropped heart CT, an abdomen-pelvis CT) for false positives;
* ``transplant``: pycerr tumours inserted into LIDC-0314 and the CTA (and, with
  ``--backgrounds``, into lung1 and lung2) (:mod:`autoprompt_seg.transplant`, seeded). The
  detector's score was fitted on LIDC x pat_1..pat_3 (``dev``); CTA x pat_4 saw neither
  its background nor its lesion (``held-out``); the rest share one of the two
  (``mixed``); lung1 and lung2 backgrounds are their own group (``lung1/2 bg``). Adding
  backgrounds after the first two leaves the draws of the first two unchanged.

Per case: GT lesions found (a predicted lesion overlaps them), false-positive lesions
(overlapping no GT), the Dice of the union as written to the SEG, the mean Dice of the
found lesions (GT lesion against the predicted lesions that overlap it), detector time.
The LIDC-0314, lung1 and lung2 backgrounds hold a real lesion of their own, which is part
of their transplanted cases' ground truth (label ``OWN_LABEL``): the group's ``lesion
sensitivity`` counts it once per case, so each group also prints ``inserted``, the
sensitivity to the transplanted tumours alone. After the groups come the inserted tumours
found per background, per source tumour (pat_1..pat_4) and per site, and the names of
those missed.

``--cavitate WALL_MM`` turns each transplanted lesion into a cavitating one: the part
deeper than ``max(WALL_MM, half its greatest depth)`` becomes gas (-990 +- 20 HU), and
the ground truth keeps the whole lesion, cavity included (as a GTV does).

``--sweep 0.45,0.5`` also prints the group totals at those operating points, from the same
run: the lesions that score at least each. A lesion's mask does not depend on the boxes
that score lower (``classical`` segments each box on its own and gives a voxel that two
lesions claim to the higher score), so that is what a run at that operating point writes.

Example (the whole-chest data are the project's ``../shared/data``)::

    python scripts/eval_wholechest.py --shared ../shared/data --per-pair 3
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from autoprompt_seg import pipeline, registry
from autoprompt_seg.config import Settings, default_cache_dir
from autoprompt_seg.data import (
    GTV_ROI,
    PYCERR_PATIENTS,
    WHOLECHEST_CASES,
    fetch_no_tumour_cases,
    fetch_pycerr,
    fetch_wholechest_cases,
)
from autoprompt_seg.errors import UnavailableError
from autoprompt_seg.io.dicom import load_study
from autoprompt_seg.io.image import load_image
from autoprompt_seg.io.rtstruct import find_rtstruct, load_roi_mask
from autoprompt_seg.types import Volume

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_real import dice, union  # noqa: E402  (dice: MONAI's, 1.0 when both are empty)

try:
    from autoprompt_seg.types import OperatingPoint
except ImportError:  # the previous detector's tree (no operating point: it cut at 0.6 itself)
    OperatingPoint = None  # type: ignore[assignment,misc]

LIDC_NODULE_BOX = (152, 170, 232, 256, 173, 197)
#: the label of a background's own (real) lesions in a transplanted case's ground truth
OWN_LABEL = 200


def resample_slices(volume: Volume, slice_mm: float) -> Volume:
    """The volume with slices ``slice_mm`` apart (SimpleITK, linear; in-plane unchanged):
    the whole-chest backgrounds as a thick-slice study would have them."""
    import SimpleITK as sitk

    from autoprompt_seg.io.image import volume_to_sitk

    img = volume_to_sitk(volume)
    sz, sy, sx = volume.spacing
    nz = max(1, int(round(volume.shape[0] * sz / slice_mm)))
    out = sitk.Resample(img, [volume.shape[2], volume.shape[1], nz], sitk.Transform(),
                        sitk.sitkLinear, img.GetOrigin(), (sx, sy, slice_mm),
                        img.GetDirection(), -1024.0, sitk.sitkFloat32)
    return Volume(array=sitk.GetArrayFromImage(out), spacing=(slice_mm, sy, sx),
                  origin=volume.origin, direction=volume.direction,
                  source_format=volume.source_format)


def lidc_nodule(volume: Volume, z_scale: float = 1.0) -> npt.NDArray[np.bool_]:
    """The LIDC-0314 nodule: the > -500 HU component at the centre of its box
    (``z_scale``: the loaded slice spacing over the resampled one)."""
    z0, z1, y0, y1, x0, x1 = LIDC_NODULE_BOX
    z0, z1 = int(np.floor(z0 * z_scale)), int(np.ceil(z1 * z_scale))
    sub = volume.array[z0:z1, y0:y1, x0:x1] > -500
    lab, _ = ndi.label(sub)
    c = lab[(z1 - z0) // 2, (y1 - y0) // 2, (x1 - x0) // 2]
    out = np.zeros(volume.shape, dtype=bool)
    out[z0:z1, y0:y1, x0:x1] = lab == c if c else sub
    return out


def cavitate(volume: Volume, lesion: npt.NDArray[np.bool_], wall_mm: float,
             rng: np.random.Generator) -> Volume:
    """``volume`` with the part of ``lesion`` deeper than ``max(wall_mm, half its greatest
    depth)`` turned to gas (-990 +- 20 HU): a cavitating tumour with a wall of at least
    ``wall_mm``."""
    depth = ndi.distance_transform_edt(lesion, sampling=volume.spacing)
    cavity = depth > max(wall_mm, 0.5 * float(depth.max()))
    arr = volume.array.copy()
    arr[cavity] = -990.0 + 20.0 * rng.standard_normal(int(cavity.sum()))
    return volume.with_array(arr.astype(np.float32))


@dataclass
class Row:
    case: str
    group: str
    n_gt: int
    found: int
    fps: int
    union_dice: float
    matched_dice: float
    det_s: float
    n_not_segmented: int
    #: the ground-truth lesions other than the background's own (``OWN_LABEL``): in a
    #: transplanted case, the inserted ones; in a real case, all of them
    n_inserted: int = 0
    found_inserted: int = 0
    #: a transplanted case's background, and its inserted lesion's source tumour and site
    #: ("" when real)
    background: str = ""
    source: str = ""
    site: str = ""


def tally(name: str, group: str, volume: Volume, gt_labels: npt.NDArray[np.integer],
          lesions: tuple, det_s: float, n_not_segmented: int) -> Row:
    """One case's row from the lesions that were written (``lesions``)."""
    gt_ids = [int(i) for i in np.unique(gt_labels) if i]
    found, found_ins, dices = 0, 0, []
    for g in gt_ids:
        gm = gt_labels == g
        hits = [les for les in lesions if (gm[les.slices()] & les.mask).any()]
        if hits:
            found += 1
            found_ins += g != OWN_LABEL
            pm = np.zeros(volume.shape, dtype=bool)
            for les in hits:
                pm[les.slices()] |= les.mask
            dices.append(dice(pm, gm))
    gt_any = gt_labels > 0
    fps = sum(1 for les in lesions if not (gt_any[les.slices()] & les.mask).any())
    return Row(name, group, len(gt_ids), found, fps, dice(union(list(lesions), volume.shape),
                                                          gt_any),
               float(np.mean(dices)) if dices else float("nan"), det_s, n_not_segmented,
               sum(g != OWN_LABEL for g in gt_ids), found_ins)


def score_case(name: str, group: str, volume: Volume, gt_labels: npt.NDArray[np.integer],
               det: object, seg: object, op: object,
               sweep: tuple[float, ...] = ()) -> tuple[Row, dict[float, Row]]:
    """The case's row at the operating point ``op``, and one row per threshold of
    ``sweep`` (each at least ``op.min_score``): the lesions scoring at least it (a
    lesion's mask does not depend on lower-scoring boxes; see the module docstring)."""
    t0 = time.perf_counter()
    if op is None:
        pred = pipeline.run(volume, det, seg)  # type: ignore[arg-type]
    else:
        pred = pipeline.run(volume, det, seg, operating_point=op)  # type: ignore[arg-type]
    det_s = pred.timings.get("detect_s", time.perf_counter() - t0)
    n_not = len(getattr(pred, "not_segmented", ()))
    row = tally(name, group, volume, gt_labels, pred.lesions, det_s, n_not)
    swept = {t: tally(name, group, volume, gt_labels,
                      tuple(les for les in pred.lesions if les.score >= t), det_s, n_not)
             for t in sweep}
    return row, swept


def print_groups(rows: list[Row]) -> None:
    """Lesion sensitivity, false positives per study, Dice and detector time per group.

    In a group of transplanted cases whose backgrounds hold real lesions of their own
    (LIDC-0314's nodule, lung1's and lung2's tumours), the sensitivity counts those too,
    once per case; ``inserted`` counts only the transplanted tumours."""
    for group in dict.fromkeys(r.group for r in rows):
        rr = [r for r in rows if r.group == group]
        n_gt = sum(r.n_gt for r in rr)
        sens = sum(r.found for r in rr) / n_gt if n_gt else float("nan")
        md = [r.matched_dice for r in rr if r.found]
        n_ins = sum(r.n_inserted for r in rr)
        ins = ""
        if n_ins != n_gt:
            f_ins = sum(r.found_inserted for r in rr)
            ins = f" inserted {f_ins / n_ins if n_ins else float('nan'):6.1%} ({f_ins}/{n_ins})"
        print(f"{group:20} cases {len(rr):3d}  lesion sensitivity {sens:6.1%} "
              f"({sum(r.found for r in rr)}/{n_gt}){ins}  "
              f"FPs/study {np.mean([r.fps for r in rr]):.2f}"
              f"  union Dice {np.mean([r.union_dice for r in rr]):.3f}  matched Dice "
              f"{(np.mean(md) if md else float('nan')):.3f}  detector "
              f"{np.mean([r.det_s for r in rr]):.2f} s")


def print_inserted_by(rows: list[Row]) -> None:
    """The transplanted cases' sensitivity to their inserted tumours, per background, source
    tumour and site, and the names of the tumours missed."""
    tp = [r for r in rows if r.source]
    if not tp:
        return
    for what in ("background", "source", "site"):
        parts = []
        for key in sorted({getattr(r, what) for r in tp}):
            rr = [r for r in tp if getattr(r, what) == key]
            n, f = sum(r.n_inserted for r in rr), sum(r.found_inserted for r in rr)
            parts.append(f"{key} {f}/{n} ({f / n if n else float('nan'):.0%})")
        print(f"inserted tumours found, by {what}: " + ", ".join(parts))
    missed = [r.case for r in tp if r.found_inserted < r.n_inserted]
    print(f"inserted tumours missed ({len(missed)}): " + (", ".join(missed) or "none"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"),
                    help="folder with lidc_idri_0314_dicom/ and chest_cta_no_tumour.nii.gz")
    ap.add_argument("--detector", default="candidates")
    ap.add_argument("--segmenter", default="classical")
    ap.add_argument("--per-pair", type=int, default=3,
                    help="transplanted cases per (background, lesion); sites cycle")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--volume-range", type=float, nargs=2, default=(1.0, 150.0),
                    metavar=("MIN_ML", "MAX_ML"),
                    help="transplanted lesion volumes, log-uniform (default 1 150); "
                         "e.g. 60 400 for the large tumours of NSCLC studies")
    ap.add_argument("--sites", default="parenchyma,pleura,mediastinum",
                    help="comma-separated transplant sites, cycled per lesion")
    ap.add_argument("--min-score", type=float, default=None,
                    help="operating point (default: the product's)")
    ap.add_argument("--max-lesions", type=int, default=None)
    ap.add_argument("--sweep", default="", metavar="T1,T2,...",
                    help="also print the group totals at these operating points (each at "
                         "least --min-score), from the same run: the lesions scoring at "
                         "least each")
    ap.add_argument("--slice-mm", type=float, default=None,
                    help="resample LIDC-0314 and the CTA (and so the transplanted cases) to "
                         "this slice spacing, e.g. 3 or 5 as in thick-slice NSCLC studies")
    ap.add_argument("--no-transplants", action="store_true")
    ap.add_argument("--backgrounds", default="lidc,cta",
                    help="comma-separated transplant backgrounds, in this order: lidc, cta, "
                         "lung1, lung2 (default lidc,cta)")
    ap.add_argument("--cavitate", type=float, default=None, metavar="WALL_MM",
                    help="hollow each transplanted lesion deeper than max(WALL_MM, half its "
                         "greatest depth) into a gas cavity (cavitating tumours)")
    ap.add_argument("--candidates-option", action="append", default=[], metavar="KEY=VALUE",
                    help="override a candidates detector parameter, e.g. remainder_depth=0 "
                         "(the v2.0 candidates); the same as --set candidates.KEY=VALUE")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="BACKEND.KEY=VALUE",
                    help="override any backend parameter, e.g. classical.fat_hi_hu=-150 (the "
                         "segmenter without its fat rule); repeatable")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    backgrounds = [b.strip() for b in args.backgrounds.split(",") if b.strip()]
    if not backgrounds or any(b not in ("lidc", "cta", *WHOLECHEST_CASES) for b in backgrounds):
        ap.error(f"--backgrounds must name some of lidc, cta, lung1, lung2; got {args.backgrounds!r}")
    if args.cavitate is not None and not args.cavitate >= 0:
        ap.error(f"--cavitate must be >= 0 mm; got {args.cavitate}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from autoprompt_seg.errors import ConfigError
    from autoprompt_seg.options import split_assignment
    from autoprompt_seg.transplant import LesionSource, generate

    options: dict[str, dict[str, float]] = {}
    for item in [f"candidates.{kv}" for kv in args.candidates_option] + args.overrides:
        try:
            backend, key, value = split_assignment(item)
            options.setdefault(backend, {})[key] = float(value)
        except (ConfigError, ValueError) as e:
            ap.error(f"{item!r}: {e}")
    settings = Settings(cache_dir=default_cache_dir(), options=options)
    det = registry.get("detector", args.detector).create(settings)
    seg = registry.get("segmenter", args.segmenter).create(settings)
    op = None
    if OperatingPoint is not None:
        op = OperatingPoint()
        args.min_score = op.min_score if args.min_score is None else args.min_score
        args.max_lesions = op.max_lesions if args.max_lesions is None else args.max_lesions
        op = OperatingPoint(min_score=args.min_score, max_lesions=args.max_lesions)
    rows: list[Row] = []
    sweep = tuple(sorted({float(t) for t in args.sweep.split(",") if t.strip()}))
    if op is not None and any(t < args.min_score for t in sweep):
        ap.error(f"--sweep thresholds must be at least --min-score {args.min_score}; "
                 f"got {args.sweep!r}")
    swept: dict[float, list[Row]] = {t: [] for t in sweep}

    def add(result: tuple[Row, dict[float, Row]]) -> None:
        rows.append(result[0])
        for t, r in result[1].items():
            swept[t].append(r)

    root = fetch_pycerr(settings.cache_dir)
    lesions = []
    for pat in PYCERR_PATIENTS:
        vol, _ = load_study(root / pat)
        rs = find_rtstruct(root / pat)
        assert rs is not None, pat
        gt = load_roi_mask(rs, vol, GTV_ROI)
        lesions.append(LesionSource.from_volume(pat, vol, gt))
        add(score_case(pat, "real pycerr", vol, gt.astype(np.uint8), det, seg, op, sweep))
    lidc, _ = load_study(args.shared / "lidc_idri_0314_dicom")
    cta = load_image(args.shared / "chest_cta_no_tumour.nii.gz")
    z_scale = 1.0
    if args.slice_mm:
        z_scale = lidc.spacing[0] / args.slice_mm
        lidc, cta = resample_slices(lidc, args.slice_mm), resample_slices(cta, args.slice_mm)
    nod = lidc_nodule(lidc, z_scale)
    add(score_case("LIDC-0314", "real whole chest", lidc, nod.astype(np.uint8),
                           det, seg, op, sweep))
    add(score_case("CTA (no tumour)", "real whole chest", cta,
                           np.zeros(cta.shape, np.uint8), det, seg, op, sweep))
    bgs: dict[str, tuple[Volume, npt.NDArray[np.bool_]]] = {
        "lidc": (lidc, nod), "cta": (cta, np.zeros(cta.shape, dtype=bool))}
    try:
        pyrad = fetch_wholechest_cases(settings.cache_dir)
    except UnavailableError as e:
        print(f"warning: PyRadiomics' whole-chest cases skipped: {e}", file=sys.stderr)
    else:
        for name in WHOLECHEST_CASES:
            vol = load_image(pyrad / f"{name}_image.nrrd")
            gt_pr = load_image(pyrad / f"{name}_label.nrrd").array > 0
            bgs[name] = (vol, gt_pr)
            add(score_case(f"PyRadiomics {name}", "real whole chest", vol,
                                   gt_pr.astype(np.uint8), det, seg, op, sweep))
    try:
        extra = fetch_no_tumour_cases(settings.cache_dir)
    except UnavailableError as e:
        print(f"warning: TotalSegmentator's tumour-free CTs skipped: {e}", file=sys.stderr)
    else:
        for name, path in extra.items():
            vol = load_image(path)
            add(score_case(name, "real no tumour", vol, np.zeros(vol.shape, np.uint8),
                                   det, seg, op, sweep))
    missing = [b for b in backgrounds if b not in bgs]
    if missing:
        ap.error(f"--backgrounds {','.join(missing)}: not available (see the warning above)")
    if not args.no_transplants:
        sites = tuple(x.strip() for x in args.sites.split(",") if x.strip())
        n_tp = 0
        for case in generate([(b, bgs[b][0]) for b in backgrounds], lesions,
                             per_pair=args.per_pair, seed=args.seed, sites=sites,
                             volume_range_ml=tuple(args.volume_range),
                             own_lesions={b: bgs[b][1] for b in backgrounds if b != "cta"}):
            ins = case.lesions[0]
            if case.background == "lidc":
                group = "tp dev" if ins.source != "pat_4" else "tp mixed"
            elif case.background == "cta":
                group = "tp held-out" if ins.source == "pat_4" else "tp mixed"
            else:
                group = "tp lung1/2 bg"
            labels = case.labels.astype(np.uint8)
            volume = case.volume
            if args.cavitate is not None:
                # seeded by the case's position after the six cases that were the only
                # real ones when --cavitate came, so that earlier draws are unchanged
                volume = cavitate(volume, case.labels > 0, args.cavitate,
                                  np.random.default_rng([args.seed, 6 + n_tp]))
            n_tp += 1
            own = bgs[case.background][1]
            labels[own & (labels == 0)] = OWN_LABEL
            row, sw = score_case(case.name, group, volume, labels, det, seg, op, sweep)
            bg_name, src, site = case.background, ins.source, ins.site
            add((replace(row, background=bg_name, source=src, site=site),
                 {t: replace(r, background=bg_name, source=src, site=site)
                  for t, r in sw.items()}))
            r = rows[-1]
            print(f"  {r.case:36} found {r.found}/{r.n_gt} FP {r.fps} dice {r.union_dice:.3f}",
                  flush=True)
    print(f"\ndetector={args.detector} segmenter={args.segmenter} min_score={args.min_score} "
          f"max_lesions={args.max_lesions}")
    hdr = (f"{'case':36} {'group':16} {'found':>7} {'FPs':>4} {'union Dice':>10} "
           f"{'matched Dice':>12} {'det s':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if r.group.startswith("real"):
            print(f"{r.case:36} {r.group:16} {r.found:>3}/{r.n_gt:<3} {r.fps:4d} "
                  f"{r.union_dice:10.3f} {r.matched_dice:12.3f} {r.det_s:6.2f}")
    print("-" * len(hdr))
    print_groups(rows)
    print_inserted_by(rows)
    for t, rr in swept.items():
        print(f"\nmin_score={t} (the same run's lesions scoring at least {t})")
        for r0, r in zip(rows, rr):  # the cases that differ from --min-score's
            if (r.found, r.fps) != (r0.found, r0.fps):
                print(f"  {r.case:36} found {r0.found}->{r.found}/{r.n_gt} "
                      f"FP {r0.fps}->{r.fps} dice {r0.union_dice:.3f}->{r.union_dice:.3f}")
        print_groups(rr)
        print_inserted_by(rr)


if __name__ == "__main__":
    main()
