"""The 2-D CNNs' pixel handling, shared by inference (:mod:`autoprompt_seg.segment.
slicewise`) and training (:mod:`autoprompt_seg.train.data`): CT windowing to ``[0, 1]``,
window parsing, image and mask resizing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ...errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The default CT window (HU) of the 2-D CNNs: lung parenchyma to soft tissue.
DEFAULT_WINDOW: tuple[float, float] = (-1000.0, 400.0)


def window_ct(hu: npt.ArrayLike, window: Sequence[float] = DEFAULT_WINDOW
              ) -> npt.NDArray[np.float32]:
    """HU -> float32 in ``[0, 1]``: clip to ``window = (lo, hi)`` HU and scale linearly."""
    lo, hi = float(window[0]), float(window[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ConfigError(f"Option 'window' must be (lo, hi) HU with lo < hi; got {window!r}")
    x = np.asarray(hu, dtype=np.float32)
    return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32, copy=False)


def parse_window(value: Any) -> tuple[float, float]:
    """``[lo, hi]`` HU (a list, tuple or "lo,hi" string) -> a checked ``(lo, hi)``."""
    v = value
    if isinstance(v, str):
        v = v.replace(",", " ").split()
    try:
        lo, hi = (float(x) for x in v)
    except (TypeError, ValueError):
        raise ConfigError(f"Option 'window' must be [lo, hi] in HU; got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ConfigError(f"Option 'window' must be [lo, hi] HU with lo < hi; got {value!r}")
    return (lo, hi)


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size))
    h, w = size
    return (int(h), int(w))


def resize_images(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize float ``(N, C, H, W)`` images (or logits) to ``size`` (bilinear, antialiased
    when shrinking; a no-op when the size already matches)."""
    import torch.nn.functional as F

    hw = _size2(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)


def resize_masks(m: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` label maps to ``size`` with nearest-exact sampling (dtype
    kept)."""
    import torch.nn.functional as F

    hw = _size2(size)
    if tuple(m.shape[-2:]) == hw:
        return m
    return F.interpolate(m.float(), size=hw, mode="nearest-exact").to(m.dtype)
