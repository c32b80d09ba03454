"""MedSAM2's CT preprocessing: window, study min-max scaling to ``uint8``, 512-px resize,
ImageNet normalisation (:class:`FrameSource`), and box prompts mapped to model pixels.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ...types import Box3D
from .options import DEFAULT_SCALING, IMAGE_SIZE, IMG_MEAN, IMG_STD, SCALINGS, autocast_context

if TYPE_CHECKING:  # pragma: no cover
    import torch




def window_bounds(window: tuple[float, float]) -> tuple[float, float]:
    """(level, width) -> (lower, upper) HU."""
    level, width = window
    return level - width / 2.0, level + width / 2.0


def intensity_range(hu: npt.NDArray[np.floating[Any]], window: tuple[float, float],
                    scaling: str = DEFAULT_SCALING) -> tuple[float, float]:
    """The HU values that become 0 and 255.

    ``"study-minmax"`` (MedSAM2's CT script): the minimum and maximum of the study clipped
    to the window, e.g. (-1024, 150) for a lung window on a CT whose air is -1024 HU.
    ``"window"``: the window's own bounds, e.g. (-1350, 150).
    """
    lo, hi = window_bounds(window)
    if scaling == "window":
        return lo, hi
    if scaling != "study-minmax":
        raise ValueError(f"Argument 'scaling' must be one of {SCALINGS}; got {scaling!r}")
    a = np.asarray(hu)
    if a.size == 0:
        raise ValueError("Argument 'hu' must not be empty")
    return (float(np.clip(np.float64(a.min()), lo, hi)),
            float(np.clip(np.float64(a.max()), lo, hi)))


def scale_uint8(hu: npt.NDArray[np.floating[Any]], window: tuple[float, float],
                value_range: tuple[float, float]) -> npt.NDArray[np.uint8]:
    """Clip HU to the window, map ``value_range`` to 0..255 and truncate to uint8, in
    float64 and in the order of MedSAM2's script: ``(x - min) / (max - min) * 255``.
    A constant study (max == min) gives zeros."""
    lo, hi = window_bounds(window)
    mn, mx = value_range
    x = np.clip(np.asarray(hu, dtype=np.float64), lo, hi) - mn
    if mx <= mn:
        return np.zeros(x.shape, dtype=np.uint8)
    return (x / (mx - mn) * 255.0).astype(np.uint8)


def window_uint8(hu: npt.NDArray[np.floating[Any]], window: tuple[float, float]
                 ) -> npt.NDArray[np.uint8]:
    """Window HU to 0..255 by the window's nominal bounds and truncate to uint8 (the
    ``"window"`` scaling), in float64."""
    return scale_uint8(hu, window, window_bounds(window))


def resize_uint8(u8: npt.NDArray[np.uint8], size: int = IMAGE_SIZE) -> npt.NDArray[np.uint8]:
    """Resize one slice to ``size`` x ``size`` with PIL bicubic (identity when it fits)."""
    if u8.shape == (size, size):
        return np.ascontiguousarray(u8)
    from PIL import Image

    return np.asarray(Image.fromarray(u8).resize((size, size), Image.Resampling.BICUBIC))


def normalize_frames(u8: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """(n, S, S) uint8 -> (n, 3, S, S) float32: /255 then ImageNet mean/std (in float64)."""
    x = u8.astype(np.float64)[:, None, :, :] / 255.0
    mean = np.asarray(IMG_MEAN, dtype=np.float64)[None, :, None, None]
    std = np.asarray(IMG_STD, dtype=np.float64)[None, :, None, None]
    return ((x - mean) / std).astype(np.float32)


class FrameSource:
    """The study's slices, windowed and resized lazily: each visited slice once.

    The intensity range (:func:`intensity_range`) is taken over the whole study once, so a
    slice's pixels do not depend on which slices are visited."""

    def __init__(self, hu: npt.NDArray[np.float32], window: tuple[float, float],
                 scaling: str = DEFAULT_SCALING, size: int = IMAGE_SIZE) -> None:
        if hu.ndim != 3:
            raise ValueError(f"Argument 'hu' must be 3-D (z, y, x); got shape {hu.shape}")
        self.hu = hu
        self.window = window
        self.scaling = scaling
        self.size = size
        self.value_range = intensity_range(hu, window, scaling)
        self._u8: dict[int, npt.NDArray[np.uint8]] = {}
        self.preprocessed = 0

    @property
    def num_frames(self) -> int:
        return int(self.hu.shape[0])

    def uint8(self, z: int) -> npt.NDArray[np.uint8]:
        """The scaled ``size`` x ``size`` ``uint8`` slice ``z`` (computed on first use)."""
        f = self._u8.get(z)
        if f is None:
            f = resize_uint8(scale_uint8(self.hu[z], self.window, self.value_range), self.size)
            self._u8[z] = f
            self.preprocessed += 1
        return f

    def frames(self, zs: Sequence[int]) -> npt.NDArray[np.float32]:
        """(len(zs), 3, 512, 512) float32 normalised frames."""
        return normalize_frames(np.stack([self.uint8(z) for z in zs]))


def box_pixels(box: Box3D) -> torch.Tensor:
    """The 2-D box on the key slice as sam2's ``(x0, y0, x1, y1)`` in pixel indices.

    ``Box3D`` is half-open, so the last pixel inside is ``x1 - 1`` (MedSAM2 builds its
    boxes from masks the same way: min and max pixel indices).
    """
    import torch

    return torch.tensor([box.x0, box.y0, box.x1 - 1, box.y1 - 1], dtype=torch.float32)


def box_to_model(box: Box3D, height: int, width: int, size: int = IMAGE_SIZE
                 ) -> torch.Tensor:
    """The box as the model sees it, at ``size`` px: ``(x / width, y / height) * size`` in
    float32, exactly as sam2's ``add_new_points_or_box(normalize_coords=True)`` maps it."""
    import torch

    b = box_pixels(box).reshape(2, 2) / torch.tensor([width, height])
    return (b * size).reshape(4)


# --------------------------------------------------------------------------- feature cache


@dataclass
class CacheStats:
    encoder_calls: int = 0  # slices encoded (a batch of n counts n)
    encoder_batches: int = 0
    hits: int = 0
    evictions: int = 0
    encoder_s: float = 0.0
    peak_bytes: int = 0


class FeatureCache:
    """Image-encoder outputs per slice, shared by every lesion and direction of a study.

    Bounded by ``capacity_bytes`` (least recently used slices go first; an evicted slice
    is re-encoded when visited again and counted again in ``stats.encoder_calls``). The
    position encodings are the same for every slice and are stored once.
    """

    def __init__(self, model: Any, frames: FrameSource, device: str, capacity_bytes: int,
                 batch: int = 1, bf16: bool = True) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"Argument 'capacity_bytes' must be positive; got {capacity_bytes}")
        if batch < 1:
            raise ValueError(f"Argument 'batch' must be >= 1; got {batch}")
        self.model = model
        self.frames = frames
        self.device = device
        self.capacity_bytes = capacity_bytes
        self.batch = batch
        self.bf16 = bf16
        self._feats: OrderedDict[int, list[torch.Tensor]] = OrderedDict()
        self._nbytes: dict[int, int] = {}
        self.bytes = 0
        self.pos_enc: list[torch.Tensor] | None = None
        self.stats = CacheStats()

    def __contains__(self, z: int) -> bool:
        return z in self._feats

    def __len__(self) -> int:
        return len(self._feats)

    def prefetch(self, zs: Sequence[int]) -> None:
        """Encode the slices of ``zs`` (in order) that are not cached, ``batch`` at a time."""
        todo = [z for z in dict.fromkeys(zs) if z not in self._feats]
        for i in range(0, len(todo), self.batch):
            self._encode(todo[i:i + self.batch])

    def get(self, z: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(backbone_fpn, vision_pos_enc) for slice ``z``, each a list of (1, C, H, W)."""
        if z in self._feats:
            self.stats.hits += 1
            self._feats.move_to_end(z)
        else:
            self._encode([z])
        assert self.pos_enc is not None
        return self._feats[z], self.pos_enc

    def _encode(self, zs: list[int]) -> None:
        import torch

        t0 = time.perf_counter()
        x = torch.from_numpy(self.frames.frames(zs)).to(self.device)
        with torch.inference_mode(), autocast_context(self.device, self.bf16):
            out = self.model.forward_image(x)
        if self.pos_enc is None:
            self.pos_enc = [p[:1].clone() for p in out["vision_pos_enc"]]
        for i, z in enumerate(zs):
            feats = [f[i:i + 1].clone() for f in out["backbone_fpn"]]
            n = sum(f.numel() * f.element_size() for f in feats)
            self._feats[z] = feats
            self._nbytes[z] = n
            self.bytes += n
        self.stats.encoder_calls += len(zs)
        self.stats.encoder_batches += 1
        self.stats.encoder_s += time.perf_counter() - t0
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.bytes)
        while self.bytes > self.capacity_bytes and len(self._feats) > len(zs):
            old, _ = self._feats.popitem(last=False)
            self.bytes -= self._nbytes.pop(old)
            self.stats.evictions += 1
