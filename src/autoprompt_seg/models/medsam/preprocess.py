"""MedSAM's and SamPredictor's preprocessing (window to ``uint8``, resize, normalisation),
box prompts mapped to model pixels, and the mask decoder's logits and scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ...types import Box3D
from .options import IMAGE_SIZE, MEDSAM_PROB_THRESHOLD

if TYPE_CHECKING:  # pragma: no cover
    import torch



# --------------------------------------------------------------------------- preprocessing


def window_uint8(hu: npt.NDArray[np.floating[Any]], window: tuple[float, float]
                 ) -> npt.NDArray[np.uint8]:
    """Window HU to 0..255 and truncate to uint8 (MedSAM's CT recipe, ``pre_CT_MR.py``)."""
    from ..medsam2 import window_uint8 as _w

    return _w(hu, window)


@dataclass(frozen=True)
class Prepared:
    """One slice ready for the encoder: the model input (3, S, S) before batching, the
    size the image has inside it (``input_size``) and the slice size."""

    tensor: Any  # torch.Tensor (3, h, w): uint8 for "sam" (normalised in the batch), float32
    input_size: tuple[int, int]
    original_size: tuple[int, int]


def medsam_resize(u8: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """MedSAM's resize to 1024x1024: skimage bicubic (order 3) with ``preserve_range`` and
    ``anti_aliasing``, truncated to uint8 (on the 2-D slice; see the module docstring)."""
    from skimage import transform

    out = transform.resize(u8, (IMAGE_SIZE, IMAGE_SIZE), order=3, preserve_range=True,
                           anti_aliasing=True)
    return np.asarray(out).astype(np.uint8)


def input_size_of(original_size: tuple[int, int], mode: str) -> tuple[int, int]:
    """The size a slice has inside the 1024-px model frame (before padding)."""
    if mode == "medsam":
        return (IMAGE_SIZE, IMAGE_SIZE)
    from segment_anything.utils.transforms import ResizeLongestSide

    h, w = ResizeLongestSide.get_preprocess_shape(original_size[0], original_size[1],
                                                  IMAGE_SIZE)
    return (int(h), int(w))


def prepare_slice(u8: npt.NDArray[np.uint8], mode: str) -> Prepared:
    """The windowed ``uint8`` slice -> the encoder input of ``mode`` (module docstring)."""
    import torch

    h, w = int(u8.shape[0]), int(u8.shape[1])
    if mode == "medsam":
        r = medsam_resize(u8)
        lo, hi = float(r.min()), float(r.max())
        x = (r.astype(np.float64) - lo) / max(hi - lo, 1e-8)  # [0, 1], as MedSAM (float64)
        t = torch.tensor(np.repeat(x[None], 3, axis=0)).float()
        return Prepared(t, (IMAGE_SIZE, IMAGE_SIZE), (h, w))
    from segment_anything.utils.transforms import ResizeLongestSide

    rgb = np.repeat(u8[:, :, None], 3, axis=-1)
    resized = ResizeLongestSide(IMAGE_SIZE).apply_image(rgb)
    t = torch.as_tensor(resized).permute(2, 0, 1).contiguous()
    return Prepared(t, (int(resized.shape[0]), int(resized.shape[1])), (h, w))


def encoder_input(sam: Any, items: Sequence[Prepared], mode: str, device: str) -> torch.Tensor:
    """Stack prepared slices into the (B, 3, 1024, 1024) encoder input on ``device``
    (``sam.preprocess`` normalises and pads in ``"sam"`` mode, as ``SamPredictor``)."""
    import torch

    x = torch.stack([p.tensor for p in items]).to(device)
    if mode == "sam":
        x = sam.preprocess(x)
    return x


def box_pixels(box: Box3D) -> npt.NDArray[np.float64]:
    """The 2-D box as ``(x_min, y_min, x_max, y_max)`` pixel indices (``x1 - 1``: half-open)."""
    return np.array([box.x0, box.y0, box.x1 - 1, box.y1 - 1], dtype=np.float64)


def boxes_to_model(boxes_xyxy: npt.NDArray[np.float64], original_size: tuple[int, int],
                   mode: str) -> npt.NDArray[np.float64]:
    """(n, 4) pixel boxes -> the model's 1024-px input frame: ``SamPredictor``'s
    ``apply_boxes`` for ``"sam"``, ``box / (W, H, W, H) * 1024`` for ``"medsam"``."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    h, w = original_size
    if mode == "medsam":
        return b / np.array([w, h, w, h], dtype=np.float64) * IMAGE_SIZE
    from segment_anything.utils.transforms import ResizeLongestSide

    return np.asarray(ResizeLongestSide(IMAGE_SIZE).apply_boxes(b, original_size)).reshape(-1, 4)


def decode_low_res(sam: Any, embedding: torch.Tensor, boxes_model: torch.Tensor
                   ) -> torch.Tensor:
    """Prompt encoder + mask decoder for ``n`` boxes on ONE image embedding (1, 256, 64, 64):
    (n, 1, 256, 256) low-resolution logits (``multimask_output=False``)."""
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes_model.reshape(-1, 1, 4),
                                       masks=None)
    low, _ = sam.mask_decoder(image_embeddings=embedding,
                              image_pe=sam.prompt_encoder.get_dense_pe(),
                              sparse_prompt_embeddings=sparse,
                              dense_prompt_embeddings=dense, multimask_output=False)
    return low  # type: ignore[no-any-return]


def upsample_logits(sam: Any, low: torch.Tensor, mode: str, input_size: tuple[int, int],
                    original_size: tuple[int, int]) -> torch.Tensor:
    """Low-res logits -> logits at the slice size: ``postprocess_masks`` (``"sam"``) or one
    bilinear resize (``"medsam"``, as MedSAM's training upsamples its logits)."""
    import torch.nn.functional as F

    if mode == "sam":
        return sam.postprocess_masks(low, input_size, original_size)  # type: ignore[no-any-return]
    return F.interpolate(low, size=original_size, mode="bilinear", align_corners=False)


def scores_at_slice(sam: Any, low: torch.Tensor, mode: str, input_size: tuple[int, int],
                    original_size: tuple[int, int]) -> torch.Tensor:
    """The score map the mask is thresholded from: logits (``"sam"``) or MedSAM's
    probability (sigmoid, then bilinear resize)."""
    import torch
    import torch.nn.functional as F

    if mode == "sam":
        return upsample_logits(sam, low, mode, input_size, original_size)
    return F.interpolate(torch.sigmoid(low), size=original_size, mode="bilinear",
                         align_corners=False)


def score_threshold(sam: Any, mode: str) -> float:
    return float(sam.mask_threshold) if mode == "sam" else MEDSAM_PROB_THRESHOLD
