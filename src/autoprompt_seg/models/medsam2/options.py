"""MedSAM2 / SAM 2.1 constants, the two variants (:data:`MEDSAM2`, :data:`SAM2`), the
segmenter's options (:class:`MedSAM2Options`) and the device / autocast choice.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
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
    """The segmenter's knobs: ``settings.options["medsam2"]`` (``["sam2"]`` for vanilla SAM
    2.1), parsed by :func:`autoprompt_seg.options.parse_options`. The flat keys
    ``medsam2_<key>`` / ``sam2_<key>`` of earlier versions are still read (deprecated; the
    nested mapping wins)."""

    checkpoint: str = field(default=DEFAULT_CHECKPOINT, metadata={
        "help": "weights name or checkpoint file (sam2: default sam2.1_hiera_tiny)"})
    window: tuple[float, float] = field(default=DEFAULT_WINDOW, metadata={
        "help": "CT window (level, width) in HU"})
    scaling: str = field(default=DEFAULT_SCALING, metadata={
        "help": "'study-minmax' (MedSAM2's script) or 'window' (the window bounds)"})
    empty_stop: int = field(default=DEFAULT_EMPTY_STOP, metadata={
        "help": "k consecutive empty slices end a direction"})
    z_margin_mm: float = field(default=DEFAULT_Z_MARGIN_MM, metadata={
        "help": "mm tracked beyond the box's z-extent"})
    cache_mb: float = field(default=DEFAULT_CACHE_MB, metadata={
        "help": "MiB bound of the image-feature cache"})
    encoder_batch: int = field(default=0, metadata={
        "help": "slices per encoder batch; 0 = auto (1 on the CPU, 8 on CUDA)"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (never on "
                                                       "the CPU)"})

    @classmethod
    def from_settings(cls, settings: Settings, variant: Variant | None = None
                      ) -> MedSAM2Options:
        """Validate ``settings.options[variant.name]`` (and the deprecated flat
        ``<variant>_<key>`` keys); a bad value raises :class:`ConfigError` naming the key
        (``medsam2.window``), the value and what was expected."""
        from ...options import parse_options

        variant = variant or MEDSAM2
        pre = variant.name
        o = settings.options
        known = {f.name for f in fields(cls)}
        raw: dict[str, Any] = {k[len(pre) + 1:]: v for k, v in o.items()
                               if isinstance(k, str) and k.startswith(f"{pre}_")
                               and k[len(pre) + 1:] in known}
        nested = o.get(pre)
        if isinstance(nested, Mapping):
            raw.update(nested)
        elif nested is not None:
            raw = nested  # parse_options refuses it, naming the option
        if isinstance(raw, dict):
            raw.setdefault("checkpoint", variant.default_checkpoint)
            if isinstance(raw["checkpoint"], Path) and str(raw["checkpoint"]):
                raw["checkpoint"] = str(raw["checkpoint"])
            for key in ("empty_stop", "encoder_batch"):
                if isinstance(raw.get(key), np.integer):
                    raw[key] = int(raw[key])
            if "window" in raw:
                raw["window"] = parse_window(raw["window"], f"{pre}.window")
        opts = parse_options(cls, raw, pre)
        _check_ranges(opts, pre)
        return opts


def parse_window(value: Any, where: str) -> tuple[float, float]:
    """``(level, width)`` from a pair or a "level,width" string; finite, width > 0;
    ConfigError naming the option ``where`` otherwise (also MedSAM's window parser)."""
    v = value
    if isinstance(v, str):
        v = v.replace(",", " ").split()
    try:
        level, width = (float(x) for x in v)
    except (TypeError, ValueError):
        raise ConfigError(f"Option {where!r} must be (level, width) in HU; "
                          f"got {value!r}") from None
    if not (math.isfinite(level) and math.isfinite(width) and width > 0):
        raise ConfigError(f"Option {where!r} must have a finite level and a positive "
                          f"width; got {value!r}")
    return level, width


def _check_ranges(o: MedSAM2Options, pre: str) -> None:
    if not o.checkpoint:
        raise ConfigError(f"Option '{pre}.checkpoint' must be a weights name or a file path; "
                          f"got {o.checkpoint!r}")
    if o.scaling not in SCALINGS:
        raise ConfigError(f"Option '{pre}.scaling' must be one of "
                          f"{', '.join(map(repr, SCALINGS))}; got {o.scaling!r}")
    for key, lo in (("empty_stop", 1), ("encoder_batch", 0)):
        if getattr(o, key) < lo:
            raise ConfigError(f"Option '{pre}.{key}' must be an integer >= {lo}; got "
                              f"{getattr(o, key)!r}")
    if o.z_margin_mm < 0:
        raise ConfigError(f"Option '{pre}.z_margin_mm' must be a non-negative number; got "
                          f"{o.z_margin_mm!r}")
    if o.cache_mb <= 0:
        raise ConfigError(f"Option '{pre}.cache_mb' must be a positive number; got "
                          f"{o.cache_mb!r}")


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
