#!/usr/bin/env python
"""Add the per-case overlay PNGs to an existing bench results folder, then rewrite the report.

For results written before the runner drew overlays itself: for every ``ok`` case row with
a saved mask (``masks/<config_hash>/<case>.npz``), load the case again from the dataset
named in ``configs/<config_hash>.json`` and write ``overlays/<config_hash>/<case>.png``
with :func:`autoprompt_seg.bench.overlay.save_case_overlay`. Existing overlays are kept
unless ``--force``. Finally ``write_outputs`` rewrites the CSVs, summary and report.html.

    python scripts/bench_overlays.py /tmp/bench-real [--cache-dir DIR] [--force]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from autoprompt_seg import datasets as ds
from autoprompt_seg.bench.overlay import overlay_path, save_case_overlay
from autoprompt_seg.bench.report import write_outputs
from autoprompt_seg.bench.runner import CASES_FILE, read_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="autoseg cache (where the pycerr studies are); default: the user cache")
    ap.add_argument("--force", action="store_true", help="redraw existing overlays")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out: Path = args.results
    rows = [r for r in read_rows(out / CASES_FILE) if r.get("status") == "ok"]
    by_hash: dict[str, list[dict]] = {}
    for r in rows:
        by_hash.setdefault(r["config_hash"], []).append(r)
    n = 0
    t0 = time.perf_counter()
    for chash, rs in sorted(by_hash.items()):
        cfg = json.loads((out / "configs" / f"{chash}.json").read_text())
        cases = {c.case_id: c for c in ds.get_cases(cfg["dataset"], cfg.get("dataset_path"),
                                                    roi=cfg.get("roi", ds.DEFAULT_ROI),
                                                    cache_dir=args.cache_dir)}
        for r in rs:
            dest = overlay_path(out, chash, r["case_id"])
            npz = out / "masks" / chash / f"{r['case_id']}.npz"
            if (dest.is_file() and not args.force) or not npz.is_file():
                continue
            volume, gt = ds.load_case(cases[r["case_id"]])
            pred = np.load(npz)["pred"]
            save_case_overlay(volume.array, gt, pred, volume.spacing, dest,
                              title=f"{r['case_id']} · {r['method']} · {r['mode']} · "
                                    f"Dice {r['dice']:.3f}")
            n += 1
            print(f"{dest} ({dest.stat().st_size // 1024} KB)")
    write_outputs(out)
    print(f"{n} overlay(s) in {time.perf_counter() - t0:.1f} s; report: {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
