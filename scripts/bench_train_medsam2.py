#!/usr/bin/env python
"""Cost of MedSAM2 training on this machine: encoder seconds per cached slice, seconds per
training step (one clip of ``--clip-len`` slices, batch 1) and peak RSS.

Runs :func:`autoprompt_seg.train.core.train_model` for ``medsam2`` on one seeded synthetic
512x512 CT-like volume (a bright ellipsoid tumour in a dark lung) from ``--checkpoint``
(default: a seeded random checkpoint in MedSAM2's format, written to a temporary folder;
its weights change nothing about the cost). Prints one JSON object.

    python scripts/bench_train_medsam2.py --clip-len 8 --steps 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_case(nz: int, size: int = 512):  # type: ignore[no-untyped-def]
    from autoprompt_seg.datasets import Case
    from autoprompt_seg.types import Volume

    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.arange(nz), np.arange(size), np.arange(size), indexing="ij",
                          sparse=True)
    c = (size - 1) / 2
    hu = np.full((nz, size, size), -1000.0, np.float32)
    hu[np.broadcast_to(((y - c) / (0.46 * size)) ** 2 + ((x - c) / (0.47 * size)) ** 2 <= 1,
                       hu.shape)] = 40.0
    hu[np.broadcast_to(((y - c) / (0.38 * size)) ** 2 + ((x - c) / (0.39 * size)) ** 2 <= 1,
                       hu.shape)] = -850.0
    cz = (nz - 1) / 2
    mask = ((z - cz) / (nz / 2 - 1)) ** 2 + ((y - c) / (0.1 * size)) ** 2 \
        + ((x - c - 0.1 * size) / (0.08 * size)) ** 2 <= 1
    hu[mask] = 30.0
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    vol = Volume(array=hu, spacing=(2.5, 0.8, 0.8), origin=(0.0, 0.0, 0.0),
                 direction=np.eye(3), source_format="synthetic")
    return Case("bench", "bench", lambda: vol, lambda _v: mask, source="synthetic:bench")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="MedSAM2 checkpoint (default: seeded random)")
    ap.add_argument("--clip-len", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4, help="training steps to time")
    ap.add_argument("--slices", type=int, default=0,
                    help="volume slices (default: clip_len + 2, so one tumour slice gives "
                         "a full clip in each direction)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    args = ap.parse_args()

    import torch

    from autoprompt_seg.config import Settings
    from autoprompt_seg.models import medsam2 as M
    from autoprompt_seg.train.core import TrainConfig, train_model

    with tempfile.TemporaryDirectory(prefix="bench-medsam2-train-") as tmp:
        ck = args.checkpoint
        if ck is None:
            torch.manual_seed(0)
            ck = str(Path(tmp) / "random_medsam2.pt")
            torch.save({"model": M.build_model("cpu").state_dict()}, ck)
        nz = args.slices or args.clip_len + 2
        case = synthetic_case(nz)
        cfg = TrainConfig(model="medsam2", epochs=1, batch_size=1, lr=5e-5,
                          steps_per_epoch=args.steps, device=args.device,
                          options={"clip_len": args.clip_len})
        stamps: list[float] = []
        t0 = time.perf_counter()
        res = train_model(cfg, [case], Path(tmp) / "run",
                          settings=Settings(device=args.device, threads=args.threads),
                          init_checkpoint=ck,
                          progress=lambda d, n: stamps.append(time.perf_counter()))
        wall = time.perf_counter() - t0
        tm = res.record["timing"]
        per_step = [round(float(s), 2) for s in np.diff(stamps)] if len(stamps) > 1 else []
        feat_files = list((Path(tmp) / "run" / "features").rglob("z*.pt"))
        frames = [json.loads(r)["clips"] for r in
                  (Path(tmp) / "run" / "loss.jsonl").read_text().splitlines()]
        out = {
            "device": res.record["device"], "precision": res.record["precision"],
            "torch_threads": torch.get_num_threads(), "clip_len": args.clip_len,
            "volume_slices": nz, "clip_anchors": res.record["clip_anchors"],
            "encoded_slices": tm["encoded_slices"],
            "encoder_s_per_slice": round(tm["encoder_s"] / max(tm["encoded_slices"], 1), 3),
            "feature_mb_per_slice": round(sum(f.stat().st_size for f in feat_files)
                                          / max(len(feat_files), 1) / 2**20, 3),
            "steps": tm["steps"], "clips_per_step": frames[0] if frames else None,
            "s_per_step_mean": tm["s_per_step"],
            "s_per_step_after_first": round(float(np.mean(per_step)), 2) if per_step else None,
            "step_intervals_s": per_step,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "wall_s": round(wall, 1),
            "final_loss": res.final_loss,
        }
        if torch.cuda.is_available() and args.device != "cpu":
            out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
