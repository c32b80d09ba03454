#!/usr/bin/env python
"""Cost of the medsam segmenter (2-D MedSAM, SAM ViT-B at 1024 px) per slice.

Measures, on one seeded synthetic 512x512 CT with bright nodules (``--slices`` slices, one
``segment_slices`` call per slice so that each slice is timed on its own):

* preprocessing (window, resize to the 1024-px frame) per slice;
* the image encoder per slice (the first, cold call separately from the warm mean);
* the prompt encoder + mask decoder + upsampling per box;
* one decoder training step (forward + backward + AdamW) per item, as the trainer runs it
  on a cached embedding (``--train-steps``);
* the process CPU time of one slice's call (all threads; with a busy machine the wall
  times above grow, the CPU time much less: compare them with ``load_avg_1min``);
* peak RSS of the process (``ru_maxrss``), after loading the model and at the end.

Random weights (seeded, MedSAM's exact format) are generated unless ``--checkpoint`` is
given: the costs do not depend on the weights' values.

    .venv/bin/python scripts/bench_medsam.py                      # CPU, 3 slices
    .venv/bin/python scripts/bench_medsam.py --device cuda --slices 20 --encoder-batch 8
    .venv/bin/python scripts/bench_medsam.py --preprocess sam --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench_medsam")


def _rss_mb() -> float:
    from autoprompt_seg.bench.runner import peak_rss_mb

    return round(peak_rss_mb(), 1)


def _volume(n: int, size: int, seed: int) -> tuple[Any, list[list[Any]]]:
    from autoprompt_seg.types import Box3D, Volume

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    hu = np.full((n, size, size), -850.0, np.float32)
    hu += rng.normal(0, 25, hu.shape).astype(np.float32)
    centres = [(0.3, 0.3, 0.05), (0.65, 0.7, 0.07)]
    lesions: list[list[Any]] = [[] for _ in centres]
    for z in range(n):
        for i, (cy, cx, r) in enumerate(centres):
            m = (y - cy * size) ** 2 + (x - cx * size) ** 2 <= (r * size) ** 2
            hu[z][m] = 40.0
            ys, xs = np.nonzero(m)
            lesions[i].append(Box3D(z, z + 1, int(ys.min()), int(ys.max()) + 1,
                                    int(xs.min()), int(xs.max()) + 1, z))
    vol = Volume(array=hu, spacing=(1.0, 0.7, 0.7), origin=(0.0, 0.0, 0.0),
                 direction=np.eye(3), source_format="synthetic")
    return vol, lesions


def _train_step_s(seg: Any, steps: int) -> float:
    """Seconds per decoder training step on one item (cached embedding), as the trainer."""
    import torch
    from monai.losses import DiceLoss

    from autoprompt_seg.models import medsam as M

    sam = seg.model
    dec = sam.mask_decoder
    opt = torch.optim.AdamW(dec.parameters(), lr=1e-4, weight_decay=0.01)
    dice, bce = DiceLoss(sigmoid=True, squared_pred=True), torch.nn.BCEWithLogitsLoss()
    emb = torch.randn(1, 256, 64, 64, device=seg.device)
    pe = sam.prompt_encoder.get_dense_pe().detach()
    gt = torch.zeros(1, 1, 512, 512, device=seg.device)
    gt[..., 200:260, 220:300] = 1
    box = torch.tensor([[[440.0, 400.0, 600.0, 520.0]]], device=seg.device)
    times = []
    dec.train()
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            sp, de = sam.prompt_encoder(points=None, boxes=box, masks=None)
        low, _ = dec(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sp,
                     dense_prompt_embeddings=de, multimask_output=False)
        lg = M.upsample_logits(sam, low, seg.preprocess, (1024, 1024), (512, 512))
        loss = dice(lg, gt) + bce(lg, gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if seg.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    dec.eval()
    return float(np.mean(times[1:])) if len(times) > 1 else float(times[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="a MedSAM checkpoint; default: seeded random weights")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--size", type=int, default=512, help="slice size (pixels)")
    ap.add_argument("--preprocess", default="medsam", choices=("medsam", "sam"))
    ap.add_argument("--encoder-batch", type=int, default=0)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import torch

    from autoprompt_seg.config import Settings
    from autoprompt_seg.models import medsam as M

    tmp = tempfile.TemporaryDirectory()
    ck = args.checkpoint
    if ck is None:  # made in a child process, so that it does not count in our peak RSS
        ck = Path(tmp.name) / "random_medsam_vit_b.pth"
        subprocess.run([sys.executable, "-c",
                        "import sys, torch; from autoprompt_seg.models import medsam as M; "
                        "torch.manual_seed(0); "
                        "torch.save(M.build_model('cpu').state_dict(), sys.argv[1])", str(ck)],
                       check=True)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    seg = M.create(Settings(device=args.device, threads=args.threads, weights_dir=Path(tmp.name),
                            options={"medsam": {"checkpoint": str(ck),
                                                "preprocess": args.preprocess,
                                                "encoder_batch": args.encoder_batch}}))
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    vol, lesions = _volume(args.slices, args.size, 0)
    per_slice = []
    for z in range(args.slices):
        c0 = time.process_time()
        seg.segment_slices(vol, [[les[z]] for les in lesions])
        cpu = time.process_time() - c0
        st = seg.last_stats
        per_slice.append({"preprocess_s": st.preprocess_s, "encoder_s": st.encoder_s,
                          "decoder_s_per_box": st.decoder_s / st.boxes, "cpu_s": cpu,
                          "wall_s": st.wall_s})
    warm = per_slice[1:] or per_slice
    train_s = _train_step_s(seg, args.train_steps) if args.train_steps else None
    out = {
        "device": seg.device, "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "preprocess": args.preprocess,
        "slice_size": args.size, "slices": args.slices, "boxes_per_slice": len(lesions),
        "encoder_batch": seg.encoder_batch, "load_s": round(load_s, 2),
        "preprocess_s_per_slice": round(float(np.mean([p["preprocess_s"] for p in warm])), 3),
        "encoder_s_first_slice": round(per_slice[0]["encoder_s"], 2),
        "encoder_s_per_slice_warm": round(float(np.mean([p["encoder_s"] for p in warm])), 2),
        "decoder_s_per_box": round(float(np.mean([p["decoder_s_per_box"] for p in warm])), 4),
        "slice_call_wall_s_warm": round(float(np.mean([p["wall_s"] for p in warm])), 2),
        "slice_call_cpu_s_warm": round(float(np.mean([p["cpu_s"] for p in warm])), 2),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "train_step_s_per_item": None if train_s is None else round(train_s, 4),
        "peak_rss_mb_before_model": rss0, "peak_rss_mb_model_loaded": rss_loaded,
        "peak_rss_mb_end": _rss_mb(),
    }
    if seg.device == "cuda":
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
