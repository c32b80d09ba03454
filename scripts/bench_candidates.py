#!/usr/bin/env python
"""Time the ``candidates`` detector on one study, against an earlier version of it.

The earlier version is read from git (``--reference-rev``, default ``HEAD``: the committed
detector, so an uncommitted change is timed against what it changes) and loaded as a
module of its own. Both run alternately ``--repeat`` times on the same volume in this
process; the script prints each time, the medians and their ratio (this tree / reference).

Example (the whole-chest study is the project's ``../shared/data``)::

    python scripts/bench_candidates.py ../shared/data/lidc_idri_0314_dicom --reference-rev HEAD~1
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autoprompt_seg.detect.candidates import VERSION, CandidatesDetector
from autoprompt_seg.io.dicom import load_study
from autoprompt_seg.io.image import load_image

REPO = Path(__file__).resolve().parents[1]
MODULE = "src/autoprompt_seg/detect/candidates.py"


def reference_detector(rev: str) -> tuple[Any, str]:
    """``CandidatesDetector`` and ``VERSION`` of ``candidates.py`` at git revision ``rev``."""
    src = subprocess.run(["git", "show", f"{rev}:{MODULE}"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    # its relative imports point into the installed package
    src = re.sub(r"from \.\.(\w)", r"from autoprompt_seg.\1", src)
    src = re.sub(r"from \.(\w)", r"from autoprompt_seg.detect.\1", src)
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("candidates_reference", f.name)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["candidates_reference"] = mod
    spec.loader.exec_module(mod)
    return mod.CandidatesDetector(), mod.VERSION


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path, help="DICOM series folder or NIfTI file")
    ap.add_argument("--reference-rev", default="HEAD")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    vol = load_image(args.study) if args.study.is_file() else load_study(args.study)[0]
    ref, ref_version = reference_detector(args.reference_rev)
    new = CandidatesDetector()
    print(f"study {args.study} {vol.shape} spacing {tuple(round(s, 3) for s in vol.spacing)}")
    times: dict[str, list[float]] = {"reference": [], "this tree": []}
    for i in range(args.repeat):
        for name, det in (("reference", ref), ("this tree", new)):
            t0 = time.perf_counter()
            boxes = det.detect(vol)
            dt = time.perf_counter() - t0
            times[name].append(dt)
            print(f"run {i + 1} {name:9}: {dt:6.2f} s, {len(boxes)} box(es)", flush=True)
    m_ref, m_new = statistics.median(times["reference"]), statistics.median(times["this tree"])
    print(f"median: reference v{ref_version} ({args.reference_rev}) {m_ref:.2f} s, "
          f"this tree v{VERSION} {m_new:.2f} s, ratio {m_new / m_ref:.2f}")


if __name__ == "__main__":
    main()
