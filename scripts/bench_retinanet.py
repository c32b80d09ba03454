#!/usr/bin/env python
"""Cost of the ``monai_retinanet`` detector (MONAI lung_nodule_ct_detection) with RANDOM
weights on a synthetic study of a chest CT's size. For cost only: the boxes of random
weights mean nothing, and no accuracy is measured here.

The study: seeded noise in HU, 300 x 512 x 512 voxels (z, y, x) at 1.25 x 0.703125 x
0.703125 mm by default (the bundle's own spacing, so resampling keeps 512 x 512 x 300). An
image that large exceeds the bundle's 512 x 512 x 192 window, so the bundle's sliding
window runs (overlap 0.25: two windows along z). The checkpoint is the bundle's network
with seeded random weights, saved as the bundle's models/model.pt format and loaded through
the backend (strict load, provenance: untrained test checkpoint).

Measured (one run, in this process): checkpoint load + network build, then ``detect`` (the
bundle's preprocessing, the network, its box selection and postprocessing, our conversion
onto the study's grid), wall time; peak RSS of the process (and peak CUDA memory on a GPU).

Usage: ``.venv/bin/python scripts/bench_retinanet.py [--device cpu] [--threads 2]
[--shape 300 512 512] [--spacing 1.25 0.703125 0.703125] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512],
                    metavar=("Z", "Y", "X"))
    ap.add_argument("--spacing", type=float, nargs=3, default=[1.25, 0.703125, 0.703125],
                    metavar=("SZ", "SY", "SX"))
    ap.add_argument("--json", type=Path, default=None, help="write the result row here")
    a = ap.parse_args(argv)

    import torch

    from autoprompt_seg.config import Settings
    from autoprompt_seg.models.monai_retinanet.detector import RetinanetDetector
    from autoprompt_seg.models.monai_retinanet.network import build_network
    from autoprompt_seg.types import Volume

    if a.threads:
        torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    arr = rng.normal(-600.0, 300.0, tuple(a.shape)).astype(np.float32)
    vol = Volume(array=arr, spacing=tuple(a.spacing), origin=(0.0, 0.0, 0.0),
                 direction=np.eye(3), source_format="synthetic")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        torch.manual_seed(0)
        torch.save(build_network().state_dict(), ckpt)
        t0 = time.perf_counter()
        det = RetinanetDetector(Settings(device=a.device, threads=a.threads,
                                         weights_dir=Path(tmp) / "w",
                                         options={"monai_retinanet": {
                                             "checkpoint": str(ckpt), "min_score": 0.0}}))
        load_s = time.perf_counter() - t0
        if det.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        boxes = det.detect(vol)
        if det.device.startswith("cuda"):
            torch.cuda.synchronize()
        detect_s = time.perf_counter() - t0
        info = det.info()
    row = {
        "what": "monai_retinanet detector, RANDOM weights (cost only)",
        "device": det.device, "threads": torch.get_num_threads(),
        "shape_zyx": list(a.shape), "spacing_zyx_mm": list(a.spacing),
        "load_s": round(load_s, 2), "detect_s": round(detect_s, 2),
        "sliding_window": det.last_sliding_window,
        "raw_detections": det.last_raw_count, "boxes": len(boxes),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
        "cuda_peak_mb": (round(torch.cuda.max_memory_allocated() / 2**20)
                         if det.device.startswith("cuda") else 0),
        "trained": info.trained, "provenance": info.details.get("provenance"),
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(row, indent=2))
    if a.json is not None:
        a.json.write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
