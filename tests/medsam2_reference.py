"""MedSAM2's published CT procedure, step by step, as a test helper and a baseline.

Written from the steps of MedSAM2's ``medsam2_infer_3D_CT.py`` (bowang-lab, 2025), not from
this project's code; the comments quote the script. Only two things differ, both outside
the model's arithmetic:

* the frames reach sam2's stock *legacy* video predictor from memory (MedSAM2's fork of
  ``init_state`` takes the tensor; here sam2's frame loader is patched to return it);
* the per-lesion masks are returned separately (the script ORs every lesion of a case into
  one ``segs_3D`` before its largest-component step, so only one lesion survives): the
  equivalence tests compare lesion by lesion.

Per lesion (the script's loop over the case's rows):

1. ``np.clip(img, lower, upper)`` with the window's bounds, then
   ``(x - np.min(x)) / (np.max(x) - np.min(x)) * 255.0`` over the *clipped study* and
   ``np.uint8`` (truncation): the study's own minimum, e.g. -1024 HU, maps to 0, not the
   window's floor;
2. ``resize_grayscale_to_rgb_and_resize(img, 512)``: each slice through PIL,
   ``Image.fromarray(uint8).convert("RGB").resize((512, 512))`` (PIL's default filter,
   bicubic), into a float64 array;
3. ``/ 255.0``, then minus the ImageNet mean and divided by its std (float32 tensors applied
   in place to the float64 tensor: float64);
4. ``init_state(images, H, W)``; ``add_new_points_or_box(frame_idx=key, obj_id=1,
   box=[x_min, y_min, x_max, y_max])`` in pixels; ``propagate_in_video`` forward over the
   whole volume; ``reset_state``; the box again; ``propagate_in_video(reverse=True)``;
   ``reset_state``; union of ``logits > 0``;
5. ``getLargestCC``: ``skimage.measure.label`` (full connectivity) and the largest label.

The whole volume is re-preprocessed and every frame re-encoded for every lesion and every
direction (the stock predictor keeps only the latest frame's features).
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


def resize_grayscale_to_rgb_and_resize(array: npt.NDArray[Any], image_size: int
                                       ) -> npt.NDArray[np.float64]:
    """The script's function: (d, h, w) uint8 -> (d, 3, S, S) float64 via PIL RGB."""
    d, h, w = array.shape
    resized_array = np.zeros((d, 3, image_size, image_size))
    for i in range(d):
        img_pil = Image.fromarray(array[i].astype(np.uint8))
        img_rgb = img_pil.convert("RGB")
        img_resized = img_rgb.resize((image_size, image_size))
        resized_array[i] = np.array(img_resized).transpose(2, 0, 1)
    return resized_array


def clip_and_scale(img: npt.NDArray[Any], lower: float, upper: float) -> npt.NDArray[np.uint8]:
    """The script's intensity steps: clip, min-max over the clipped study, uint8."""
    pre = np.clip(img, lower, upper)
    pre = (pre - np.min(pre)) / (np.max(pre) - np.min(pre)) * 255.0
    return np.uint8(pre)  # type: ignore[no-any-return]


def preprocess_volume(img: npt.NDArray[Any], lower: float, upper: float,
                      image_size: int = 512) -> torch.Tensor:
    """Steps 1-3: a HU volume (as the script reads it) -> (D, 3, S, S) float64 frames."""
    u8 = clip_and_scale(img, lower, upper)
    assert np.max(u8) < 256
    resized = resize_grayscale_to_rgb_and_resize(u8, image_size)
    resized = resized / 255.0
    t = torch.from_numpy(resized)
    img_mean = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
    img_std = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
    t -= img_mean
    t /= img_std
    return t


def as_read_by_the_script(hu: npt.NDArray[np.floating[Any]]) -> npt.NDArray[Any]:
    """The script reads CT with SimpleITK from NIfTI, where HU are stored as int16: the same
    values as our float32 HU when they are whole numbers (asserted)."""
    i16 = np.asarray(hu).astype(np.int16)
    assert np.array_equal(i16, hu), "HU values are not whole numbers"
    return i16


def get_largest_cc(segmentation: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """The script's ``getLargestCC``."""
    from skimage import measure

    labels = measure.label(segmentation)
    return labels == np.argmax(np.bincount(labels.flat)[1:]) + 1  # type: ignore[no-any-return]


@dataclass
class ReferenceResult:
    masks: list[npt.NDArray[np.bool_]]  # per lesion, full volume, after the largest component
    unions: list[npt.NDArray[np.bool_]]  # per lesion, before the largest component
    logits: list[npt.NDArray[np.float32]]  # per lesion, max logit over both directions
    frames_u8: npt.NDArray[np.uint8] | None = None  # step 1's uint8 study
    encoder_calls: int = 0
    tracked: int = 0  # (lesion, direction, slice) steps
    per_lesion: list[dict[str, int]] = field(default_factory=list)


def stock_predictor(checkpoint: Path, device: str = "cpu", variant: Any = None) -> Any:
    """sam2's stock legacy predictor, the variant's config (MedSAM2's 512 px by default),
    checkpoint loaded strictly."""
    from sam2.sam2_video_predictor_legacy import SAM2VideoPredictor

    from autoprompt_seg.models.medsam2 import load_model

    return load_model(checkpoint, device, predictor=SAM2VideoPredictor, variant=variant)


@contextlib.contextmanager
def _frames_from_memory(images: torch.Tensor, height: int, width: int) -> Iterator[None]:
    """What MedSAM2's fork of init_state does: take the frames tensor instead of a folder."""
    with mock.patch("sam2.sam2_video_predictor_legacy.load_video_frames",
                    return_value=(images, height, width)):
        yield


def reference_segment(predictor: Any, hu: npt.NDArray[Any], boxes: Sequence[Any],
                      window: tuple[float, float]) -> ReferenceResult:
    """The script's procedure for each box (``Box3D``) of a (D, H, W) volume; ``window`` is
    (level, width), i.e. the DeepLesion ``DICOM_windows`` bounds level -/+ width / 2."""
    d, h, w = hu.shape
    level, width = window
    lower, upper = level - width / 2.0, level + width / 2.0
    calls = {"n": 0}
    orig = predictor.forward_image

    def counting(img: torch.Tensor) -> Any:
        calls["n"] += int(img.shape[0])
        return orig(img)

    res = ReferenceResult(masks=[], unions=[], logits=[])
    res.frames_u8 = clip_and_scale(hu, lower, upper)
    size = int(predictor.image_size)
    device = str(predictor.device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                else contextlib.nullcontext())
    with mock.patch.object(predictor, "forward_image", side_effect=counting), \
            torch.inference_mode(), autocast:
        for b in boxes:
            images = preprocess_volume(hu, lower, upper, size)  # per lesion, as the script
            with _frames_from_memory(images, h, w):
                state = predictor.init_state(video_path="<in memory>")
            segs = np.zeros((d, h, w), dtype=np.uint8)
            best = np.full((d, h, w), -np.inf, dtype=np.float32)
            bbox = np.array([b.x0, b.y0, b.x1 - 1, b.y1 - 1])
            steps = {"forward": 0, "reverse": 0}
            for reverse in (False, True):
                predictor.add_new_points_or_box(inference_state=state, frame_idx=b.key_slice,
                                                obj_id=1, box=bbox)
                for z, _ids, logits in predictor.propagate_in_video(state, reverse=reverse):
                    lg = logits[0, 0].float().cpu().numpy()
                    segs[z, lg > 0.0] = 1
                    best[z] = np.maximum(best[z], lg)
                    steps["reverse" if reverse else "forward"] += 1
                predictor.reset_state(state)
            union = segs.astype(bool)
            res.unions.append(union)
            res.masks.append(get_largest_cc(segs) if segs.max() > 0 else union)
            res.logits.append(best)
            res.tracked += steps["forward"] + steps["reverse"]
            res.per_lesion.append(steps)
    res.encoder_calls = calls["n"]
    return res
