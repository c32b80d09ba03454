#!/usr/bin/env python
"""Wall time and peak RSS of `autoseg predict` (process start included), as a user runs it.

Cases: the real pycerr pat_4 study, and a synthetic 512x512x300 chest CT (seeded, 3
tumours). Each run is a fresh `autoseg` process; peak RSS is that process's ru_maxrss.

    .venv/bin/python scripts/bench_predict.py [--repeat 3] [--detector ...] [--segmenter ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRAPPER = """
import resource, subprocess, sys, time, json
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_mb": rss}))
"""


def measure(args: list[str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True,
                         check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise SystemExit(f"autoseg failed ({res['rc']}): {' '.join(args)}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--detector", default="candidates")
    ap.add_argument("--segmenter", default="classical")
    ap.add_argument("--work", default=None, help="folder for the synthetic study (kept)")
    a = ap.parse_args()

    from autoprompt_seg.config import default_cache_dir
    from autoprompt_seg.data import pycerr_study
    from autoprompt_seg.synthetic import synthetic_study

    work = Path(a.work or tempfile.mkdtemp(prefix="autoseg-bench-"))
    big = work / "synthetic_512x512x300"
    if not (big / "CT_0299.dcm").exists():
        t = time.perf_counter()
        synthetic_study(big, shape=(300, 512, 512), spacing=(1.0, 0.7, 0.7), n_tumours=3, seed=1)
        print(f"# wrote the synthetic study in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    cases = {"pycerr pat_4 (56x172x178)": pycerr_study("pat_4", default_cache_dir()),
             "synthetic 300x512x512": big}
    exe = str(Path(sys.executable).parent / "autoseg")
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.processor() or platform.machine()}"
          f" cpus={__import__('os').cpu_count()} detector={a.detector} segmenter={a.segmenter}")
    print(f"| case | wall s (median of {a.repeat}) | min s | peak RSS MB |")
    print("|---|---|---|---|")
    for name, study in cases.items():
        runs = []
        for _ in range(a.repeat):
            with tempfile.TemporaryDirectory() as out:
                runs.append(measure([exe, "--quiet", "predict", str(study), "-o", out + "/o",
                                     "--detector", a.detector, "--segmenter", a.segmenter]))
        walls = sorted(r["wall_s"] for r in runs)
        print(f"| {name} | {walls[len(walls) // 2]:.2f} | {walls[0]:.2f} | "
              f"{max(r['peak_rss_mb'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
