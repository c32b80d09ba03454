"""MedSAM2's straightforward reference CT procedure, as a test helper and a baseline.

Written after MedSAM2's CT lesion inference script (bowang-lab, 2025), with sam2's stock
legacy video predictor and none of our savings:

* the whole volume is windowed, scaled to 0..255 (uint8), resized to 512x512 RGB with PIL,
  divided by 255 and normalised with the ImageNet mean/std **in float64**;
* per lesion: a fresh state, the box on the key slice, propagation **forward over the whole
  volume**, reset, the box again, propagation **in reverse over the whole volume**, the
  union of both, then the largest connected component;
* the stock predictor keeps only the most recent frame's features, so every frame is
  re-encoded for every lesion and every direction.

Only the per-lesion results are returned (not MedSAM2's single label map, where only one
lesion survives the largest-component step): the equivalence tests compare lesion by lesion.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


def preprocess_volume(hu: npt.NDArray[np.floating[Any]], window: tuple[float, float],
                      image_size: int = 512) -> torch.Tensor:
    """(D, H, W) HU -> (D, 3, 512, 512) float64 frames (MedSAM2's recipe)."""
    level, width = window
    lo, hi = level - width / 2.0, level + width / 2.0
    u8 = ((np.clip(hu.astype(np.float64), lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)
    d = u8.shape[0]
    out = np.zeros((d, 3, image_size, image_size), dtype=np.float64)
    for i in range(d):
        rgb = Image.fromarray(u8[i]).convert("RGB").resize((image_size, image_size),
                                                          Image.Resampling.BICUBIC)
        out[i] = np.asarray(rgb).transpose(2, 0, 1)
    out /= 255.0
    out -= np.asarray(IMG_MEAN)[None, :, None, None]
    out /= np.asarray(IMG_STD)[None, :, None, None]
    return torch.from_numpy(out)


def largest_cc(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """skimage-style largest component with full (26-) connectivity."""
    from skimage.measure import label

    lab = label(mask)
    if lab.max() == 0:
        return mask.astype(bool)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == int(np.argmax(counts))


@dataclass
class ReferenceResult:
    masks: list[npt.NDArray[np.bool_]]  # per lesion, full volume, after the largest component
    unions: list[npt.NDArray[np.bool_]]  # per lesion, before the largest component
    logits: list[npt.NDArray[np.float32]]  # per lesion, max logit over both directions
    encoder_calls: int = 0
    tracked: int = 0  # (lesion, direction, slice) steps
    per_lesion: list[dict[str, int]] = field(default_factory=list)


def stock_predictor(checkpoint: Path, device: str = "cpu") -> Any:
    """sam2's stock legacy predictor, 512-px config, checkpoint loaded strictly."""
    from sam2.sam2_video_predictor_legacy import SAM2VideoPredictor

    from autoprompt_seg.segment.medsam2 import load_model

    return load_model(checkpoint, device, predictor=SAM2VideoPredictor)


@contextlib.contextmanager
def _frames_from_memory(images: torch.Tensor, height: int, width: int) -> Iterator[None]:
    """What MedSAM2's fork of init_state does: take the frames tensor instead of a folder."""
    with mock.patch("sam2.sam2_video_predictor_legacy.load_video_frames",
                    return_value=(images, height, width)):
        yield


def reference_segment(predictor: Any, hu: npt.NDArray[np.floating[Any]],
                      boxes: Sequence[Any], window: tuple[float, float]) -> ReferenceResult:
    """Run the reference procedure for each box (``Box3D``) of a (D, H, W) HU volume."""
    d, h, w = hu.shape
    calls = {"n": 0}
    orig = predictor.forward_image

    def counting(img: torch.Tensor) -> Any:
        calls["n"] += int(img.shape[0])
        return orig(img)

    res = ReferenceResult(masks=[], unions=[], logits=[])
    images = preprocess_volume(hu, window)
    device = str(predictor.device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                else contextlib.nullcontext())
    with mock.patch.object(predictor, "forward_image", side_effect=counting), \
            torch.inference_mode(), autocast:
        for b in boxes:
            with _frames_from_memory(images, h, w):
                state = predictor.init_state(video_path="<in memory>")
            union = np.zeros((d, h, w), dtype=bool)
            best = np.full((d, h, w), -np.inf, dtype=np.float32)
            box = np.array([b.x0, b.y0, b.x1 - 1, b.y1 - 1], dtype=np.float32)
            steps = {"forward": 0, "reverse": 0}
            for reverse in (False, True):
                predictor.add_new_points_or_box(state, frame_idx=b.key_slice, obj_id=1, box=box)
                for z, _ids, logits in predictor.propagate_in_video(
                        state, start_frame_idx=b.key_slice, reverse=reverse):
                    lg = logits[0, 0].float().cpu().numpy()
                    union[z] |= lg > 0
                    best[z] = np.maximum(best[z], lg)
                    steps["reverse" if reverse else "forward"] += 1
                predictor.reset_state(state)
            res.unions.append(union)
            res.masks.append(largest_cc(union))
            res.logits.append(best)
            res.tracked += steps["forward"] + steps["reverse"]
            res.per_lesion.append(steps)
    res.encoder_calls = calls["n"]
    return res
