#!/usr/bin/env python
"""Refit the logistic weights of the ``candidates`` detector's confidence (``_W``).

Features come from :meth:`CandidatesDetector.candidates` on the detector's working grid;
a candidate is positive when more than 20 % of it is ground truth. The fit uses the
development set only: the real pycerr crops pat_1..pat_3 and LIDC-IDRI-0314 with pycerr
pat_1..pat_3 transplanted into it (``autoprompt_seg.transplant``, seed 1, ``--per-pair``
cases per lesion); a background candidate that repeats in every LIDC case counts once.
Everything else (pat_4 lesions, the CTA background, the JPEG 2000 abdomen series) is
printed as a held-out check. scikit-learn ``LogisticRegression(C=3, balanced)``.

The weights in the code were fitted on the candidates of detector v2.0.0, which had no
remainder search: ``--remainder-depth 0`` reproduces them exactly. On v2.1's candidates
(depth 1) the refit differs; it was not adopted, because at the default operating point it
adds a false positive on pycerr pat_4 and finds nothing more (see docs/benchmarks.md).
The default depth is the detector's (2 since v2.6).

Example::

    python scripts/fit_candidates_score.py --shared ../shared/data --per-pair 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from autoprompt_seg.config import default_cache_dir
from autoprompt_seg.data import GTV_ROI, PYCERR_PATIENTS, fetch_pycerr
from autoprompt_seg.detect.candidates import _W, CandidatesDetector, CandidatesParams
from autoprompt_seg.detect.morphology import block_mean
from autoprompt_seg.io.dicom import load_study
from autoprompt_seg.io.image import load_image
from autoprompt_seg.io.rtstruct import find_rtstruct, load_roi_mask
from autoprompt_seg.transplant import LesionSource, generate
from autoprompt_seg.types import Volume

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_wholechest import lidc_nodule  # noqa: E402

FEATURES = ("lung_contact", "elongation", "log_thickness_mm", "context_frac",
            "structure_in_field", "isolated_elongation")


def features(det: CandidatesDetector, vol: Volume, gt: npt.NDArray[np.bool_], group: str,
             name: str) -> list[dict[str, object]]:
    img, wsp, f = det.working_grid(vol)
    g = block_mean(gt.astype(np.float32), f) > 0.3
    lab, cands = det.candidates(img, wsp)
    out = []
    for c in cands:
        m = lab == c.label
        out.append({"group": group, "case": name, "pos": bool((m & g).sum() > 0.2 * m.sum()),
                    "x": [c.lung_contact, c.elongation, float(np.log(c.thickness_mm)),
                          c.context_frac, c.structure_in_field,
                          c.elongation * min(c.context_frac, c.structure_in_field)],
                    "key": (group, round(c.volume_ml, 1), round(c.lung_contact, 2))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--per-pair", type=int, default=4)
    ap.add_argument("--remainder-depth", type=int,
                    default=int(CandidatesParams().remainder_depth),
                    help="0 = the candidates of v2.0.0, on which the weights in the code "
                         "were fitted")
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression

    det = CandidatesDetector(CandidatesParams(remainder_depth=args.remainder_depth))
    rows: list[dict[str, object]] = []
    root = fetch_pycerr(default_cache_dir())
    lesions = []
    for pat in PYCERR_PATIENTS:
        vol, _ = load_study(root / pat)
        rs = find_rtstruct(root / pat)
        assert rs is not None
        gt = load_roi_mask(rs, vol, GTV_ROI)
        lesions.append(LesionSource.from_volume(pat, vol, gt))
        rows += features(det, vol, gt, "dev" if pat != "pat_4" else "held", pat)
    lidc, _ = load_study(args.shared / "lidc_idri_0314_dicom")
    nod = lidc_nodule(lidc)
    rows += features(det, lidc, nod, "dev", "lidc")
    cta = load_image(args.shared / "chest_cta_no_tumour.nii.gz")
    rows += features(det, cta, np.zeros(cta.shape, bool), "held", "cta")
    jp, _ = load_study(args.shared / "ct_series_jpeg2000")
    rows += features(det, jp, np.zeros(jp.shape, bool), "held", "jp2k")
    for case in generate([("lidc", lidc), ("cta", cta)], lesions, per_pair=args.per_pair,
                         seed=1, own_lesions={"lidc": nod}):
        gt = case.labels > 0
        if case.background == "lidc":
            gt |= nod
        dev = case.background == "lidc" and case.lesions[0].source != "pat_4"
        rows += features(det, case.volume, gt, "dev" if dev else "held", case.name)
    seen: set[object] = set()
    train = []
    for r in rows:
        if r["group"] != "dev":
            continue
        if not r["pos"]:
            if r["key"] in seen:
                continue
            seen.add(r["key"])
        train.append(r)
    m = LogisticRegression(C=3.0, class_weight="balanced").fit(
        [r["x"] for r in train], [r["pos"] for r in train])
    print(f"fitted on {len(train)} candidates ({sum(bool(r['pos']) for r in train)} positive)")
    print("_W =", {"intercept": round(float(m.intercept_[0]), 3),
                   **{k: round(float(w), 3) for k, w in zip(FEATURES, m.coef_[0], strict=True)}})
    print("in the code:", _W)
    for group in ("dev", "held"):
        rr = [r for r in rows if r["group"] == group]
        p = m.predict_proba([r["x"] for r in rr])[:, 1]
        y = np.array([bool(r["pos"]) for r in rr])
        for th in (0.3, 0.4, 0.5):
            print(f"{group:5} threshold {th}: positives kept {int(((p >= th) & y).sum())}/"
                  f"{int(y.sum())}, negatives kept {int(((p >= th) & ~y).sum())}/{int((~y).sum())}")


if __name__ == "__main__":
    main()
