"""Time the 2-D CNN baselines: seconds per training step and per inference slice, and
parameter counts, for ``unet`` (default architecture) and ``deeplabv3`` (ResNet-50/101).

    python scripts/bench_cnn2d.py [--size 512] [--batch 2] [--device cpu|cuda] [--threads N]
                                  [--models unet,deeplabv3-resnet50,deeplabv3-resnet101]
                                  [--repeats 3] [--json out.json]

A training step is what :mod:`autoprompt_seg.train.cnn2d` does per batch (forward, MONAI
DiceCELoss, backward, Adam step; bf16 autocast on CUDA) on random ``size`` x ``size`` slices;
inference is the backend's batched forward under ``torch.inference_mode``. The first step
(warm-up) is not counted; the median of ``--repeats`` steps is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def bench(model: str, backbone: str | None, size: int, batch: int, device: str,
          repeats: int) -> dict[str, Any]:
    import torch
    from monai.losses import DiceCELoss

    from autoprompt_seg.models.cnn2d import checkpoint as cnn2d_ck
    from autoprompt_seg.models.cnn2d.segmenter import autocast

    arch: Any = {"backbone": backbone} if backbone else None
    torch.manual_seed(0)
    net = cnn2d_ck.build_net(model, arch).to(device)
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    x = torch.rand(batch, 1, size, size, device=device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.9).long()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_s = []
    net.train()
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        with autocast(device, True):
            logits = net(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i:
            train_s.append(time.perf_counter() - t0)
    peak_train = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    infer_s = []
    net.eval()
    with torch.inference_mode():
        for i in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            with autocast(device, True):
                net(x)
            _sync(device)
            if i:
                infer_s.append(time.perf_counter() - t0)
    step = statistics.median(train_s)
    inf = statistics.median(infer_s)
    return {"model": model + (f"-{backbone}" if backbone else ""), "params_M":
            round(params / 1e6, 2), "size": size, "batch": batch, "device": device,
            "train_step_s": round(step, 3), "train_s_per_slice": round(step / batch, 3),
            "infer_s_per_slice": round(inf / batch, 4),
            "peak_train_gib": round(peak_train, 2) if peak_train is not None else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="unet,deeplabv3-resnet50,deeplabv3-resnet101")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for m in a.models.split(","):
        model, _, backbone = m.partition("-")
        row = bench(model, backbone or None, a.size, a.batch, a.device, a.repeats)
        row["threads"] = torch.get_num_threads()
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name() if a.device == "cuda" else None}
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
