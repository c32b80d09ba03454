"""Run issue 7's tiny paradigm study (docs/examples/bench-paradigms-tiny.toml) on the CPU.

Generates the random *test* base checkpoints the zero-shot MedSAM and MedSAM2 rows use
(seeded; they are random weights, reported as untrained everywhere), copies the study file
next to them and runs ``autoseg bench run``. Usage::

    python scripts/bench_paradigms_tiny.py OUT_DIR [--executor dask]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_bases(base: Path) -> None:
    import torch

    base.mkdir(parents=True, exist_ok=True)
    m2 = base / "medsam2_random_test.pt"
    if not m2.is_file():
        from autoprompt_seg.models.medsam2 import build_model

        torch.manual_seed(0)
        torch.save({"model": build_model("cpu").state_dict()}, m2)
    m1 = base / "medsam_random_test.pth"
    if not m1.is_file():
        from segment_anything import sam_model_registry

        torch.manual_seed(0)
        torch.save(sam_model_registry["vit_b"]().state_dict(), m1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--executor", default="local")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    make_bases(a.out / "base")
    study = a.out / "study.toml"
    shutil.copyfile(ROOT / "docs" / "examples" / "bench-paradigms-tiny.toml", study)
    t0 = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "autoprompt_seg.cli", "bench", "run",
                          str(study), "--out", str(a.out / "results"), "--executor",
                          a.executor])
    print(f"bench run: exit {rc} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
