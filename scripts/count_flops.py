"""Exact parameter counts and GFLOPs per forward of the paradigm models at the paper's input
sizes, counted with ``torch.utils.flop_counter`` on meta tensors (nothing is computed).

Usage: python scripts/count_flops.py
"""

from __future__ import annotations

from typing import Any

import torch
from segment_anything import sam_model_registry
from torch.utils.flop_counter import FlopCounterMode

from autoprompt_seg.models.cnn2d import checkpoint as cnn2d_ck
from autoprompt_seg.models.medsam2 import build_model


def gflops(model: Any, x: torch.Tensor) -> float:
    model = model.to("meta").eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x.to("meta"))
    return fc.get_total_flops() / 1e9


def params_m(model: Any) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def main() -> None:
    for name, arch in (("unet", None), ("deeplabv3", "resnet50"), ("deeplabv3", "resnet101")):
        net = cnn2d_ck.build_net(name, cnn2d_ck.normalise_arch(name, arch))
        x = torch.zeros(1, 1 if name == "unet" else 3, 512, 512)
        print(f"{name} {arch or ''}: params {params_m(net):.1f}M, "
              f"GFLOPs per 512^2 slice {gflops(net, x):.1f}")
    sam = sam_model_registry["vit_b"]()
    print(f"medsam image encoder: params {params_m(sam.image_encoder):.1f}M, GFLOPs per "
          f"1024^2 slice {gflops(sam.image_encoder, torch.zeros(1, 3, 1024, 1024)):.1f}")
    m2 = build_model("cpu")
    print(f"medsam2: params {params_m(m2):.1f}M, image encoder GFLOPs per 512^2 frame "
          f"{gflops(m2.image_encoder, torch.zeros(1, 3, 512, 512)):.1f}")


if __name__ == "__main__":
    main()
