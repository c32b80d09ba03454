"""MedSAM2 / SAM 2.1 constants, the two variants (:data:`MEDSAM2`, :data:`SAM2`), the
segmenter's options (:class:`MedSAM2Options`) and the device / autocast choice.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...config import Settings, resolve_device
from ...errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    pass



NAME = "medsam2"
CONFIG_NAME = "sam2.1_hiera_t512.yaml"
ARCHITECTURE = "sam2.1_hiera_tiny_512"
IMAGE_SIZE = 512
DEFAULT_CHECKPOINT = "MedSAM2_latest"
#: Lung window (level, width) in HU: the default CT window of the segmenter.
DEFAULT_WINDOW: tuple[float, float] = (-600.0, 1500.0)
#: How windowed HU become 0..255: "study-minmax" (MedSAM2's CT script: min-max over the
#: clipped study) or "window" (the nominal window bounds).
SCALINGS = ("study-minmax", "window")
DEFAULT_SCALING = "study-minmax"
DEFAULT_EMPTY_STOP = 3
DEFAULT_Z_MARGIN_MM = 10.0
MIN_Z_MARGIN_SLICES = 2
DEFAULT_CACHE_MB = 1024.0
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)
UNTRAINED_NOTE = ("untrained test checkpoint: its sha256 matches no known MedSAM2 release in "
                  "the weights manifest; no accuracy may be claimed for its masks")


@dataclass(frozen=True)
class Variant:
    """Which sam2-family model a segmenter runs: MedSAM2 (512 px) or vanilla SAM 2.1."""

    name: str  # backend name, and the prefix of its option keys
    architecture: str  # manifest architecture
    config_package: str  # package that holds the Hydra config
    config: str  # path of the config inside that package
    image_size: int
    default_checkpoint: str
    label: str

    @property
    def untrained_note(self) -> str:
        return (f"untrained test checkpoint: its sha256 matches no known {self.label} release "
                "in the weights manifest; no accuracy may be claimed for its masks")


MEDSAM2 = Variant(NAME, ARCHITECTURE, "autoprompt_seg", f"configs/{CONFIG_NAME}", IMAGE_SIZE,
                  DEFAULT_CHECKPOINT, "MedSAM2")
#: Vanilla SAM 2.1 Hiera-tiny at 1024 px, sam2's own config (its checkpoint has the same
#: keys and shapes as MedSAM2's: only the image size and the RoPE sizes differ).
SAM2 = Variant("sam2", "sam2.1_hiera_tiny", "sam2", "configs/sam2.1/sam2.1_hiera_t.yaml",
               1024, "sam2.1_hiera_tiny", "SAM 2.1")
VARIANTS = {v.name: v for v in (MEDSAM2, SAM2)}

#: Hydra overrides that ``sam2.build_sam.build_sam2_video_predictor`` applies by default
#: (``apply_postprocessing=True``), except hole filling, which needs sam2's CUDA ``_C``.
POSTPROCESSING_OVERRIDES: Mapping[str, Any] = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
    "model.binarize_mask_from_pts_for_mem_enc": True,
    "model.fill_hole_area": 0,
}



# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class MedSAM2Options:
    """The segmenter's knobs, read from ``settings.options`` (keys ``medsam2_*``)."""

    checkpoint: str = DEFAULT_CHECKPOINT  # manifest name or path of a checkpoint file
    window: tuple[float, float] = DEFAULT_WINDOW  # (level, width) HU
    scaling: str = DEFAULT_SCALING  # "study-minmax" (MedSAM2's script) | "window"
    empty_stop: int = DEFAULT_EMPTY_STOP  # k consecutive empty slices end a direction
    z_margin_mm: float = DEFAULT_Z_MARGIN_MM  # beyond the box's z-extent
    cache_mb: float = DEFAULT_CACHE_MB  # image-feature cache bound
    encoder_batch: int = 0  # 0 = auto (1 on the CPU, 8 on CUDA)
    bf16: bool = True  # bf16 autocast on CUDA (never on the CPU)

    @classmethod
    def from_settings(cls, settings: Settings, variant: Variant | None = None
                      ) -> MedSAM2Options:
        """Validate ``settings.options`` (keys ``<variant>_*``, default ``medsam2_*``; for
        another variant also a nested ``options["<variant>"]`` mapping); a bad value raises
        :class:`ConfigError` naming it."""
        variant = variant or MEDSAM2
        pre = variant.name
        o: dict[str, Any] = dict(settings.options)
        nested = o.get(pre) if pre != NAME else None
        if isinstance(nested, Mapping):
            for k, v in nested.items():
                o.setdefault(f"{pre}_{k}", v)
        kw: dict[str, Any] = {"checkpoint": variant.default_checkpoint}
        if f"{pre}_checkpoint" in o:
            v = o[f"{pre}_checkpoint"]
            if not isinstance(v, (str, Path)) or not str(v):
                raise ConfigError(f"Option '{pre}_checkpoint' must be a weights name or a "
                                  f"file path; got {v!r}")
            kw["checkpoint"] = str(v)
        if f"{pre}_window" in o:
            v = o[f"{pre}_window"]
            if isinstance(v, str):
                v = v.replace(",", " ").split()
            try:
                level, width = (float(x) for x in v)
            except (TypeError, ValueError):
                raise ConfigError(f"Option '{pre}_window' must be (level, width) in HU; "
                                  f"got {o[f'{pre}_window']!r}") from None
            if not (math.isfinite(level) and math.isfinite(width) and width > 0):
                raise ConfigError(f"Option '{pre}_window' must have a finite level and a "
                                  f"positive width; got {o[f'{pre}_window']!r}")
            kw["window"] = (level, width)
        if f"{pre}_scaling" in o:
            v = o[f"{pre}_scaling"]
            if v not in SCALINGS:
                raise ConfigError(f"Option '{pre}_scaling' must be one of "
                                  f"{', '.join(map(repr, SCALINGS))}; got {v!r}")
            kw["scaling"] = str(v)
        for key, attr, lo in ((f"{pre}_empty_stop", "empty_stop", 1),
                              (f"{pre}_encoder_batch", "encoder_batch", 0)):
            if key in o:
                v = o[key]
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                    raise ConfigError(f"Option {key!r} must be an integer >= {lo}; got {v!r}")
                kw[attr] = int(v)
        for key, attr, positive in ((f"{pre}_z_margin_mm", "z_margin_mm", False),
                                    (f"{pre}_cache_mb", "cache_mb", True)):
            if key in o:
                v = o[key]
                ok = isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                if not ok or not math.isfinite(float(v)) or (float(v) <= 0 if positive
                                                              else float(v) < 0):
                    raise ConfigError(f"Option {key!r} must be a {'positive' if positive else 'non-negative'} "
                                      f"number; got {v!r}")
                kw[attr] = float(v)
        if f"{pre}_bf16" in o:
            v = o[f"{pre}_bf16"]
            if not isinstance(v, bool):
                raise ConfigError(f"Option '{pre}_bf16' must be true or false; got {v!r}")
            kw["bf16"] = v
        return cls(**kw)


# --------------------------------------------------------------------------- device


def select_device(settings: Settings) -> str:
    """``settings.device`` (auto|cpu|cuda) -> "cpu" or "cuda" (see :func:`resolve_device`)."""
    return resolve_device(settings.device)


def use_bf16(device: str, bf16: bool = True) -> bool:
    """bf16 autocast is used on CUDA only (and only when asked for)."""
    return device == "cuda" and bf16


def autocast_context(device: str, bf16: bool = True) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast("cuda", bfloat16)`` on CUDA; a no-op on the CPU (float32)."""
    if not use_bf16(device, bf16):
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16)


def default_encoder_batch(device: str) -> int:
    """Measured on the 2-core CPU: batching the Hiera encoder does not pay (1); on CUDA 8."""
    return 8 if device == "cuda" else 1
