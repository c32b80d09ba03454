"""MedSAM constants, option parsing (:class:`MedSAMOptions`) and the device rules it shares
with MedSAM2 (bf16 autocast on CUDA only, encoder batch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...config import Settings
from ...errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    pass



NAME = "medsam"
ARCHITECTURE = "sam_vit_b"
IMAGE_SIZE = 1024
DEFAULT_CHECKPOINT = "medsam_vit_b"
#: Lung window (level, width) in HU, as the medsam2 segmenter (see the module docstring).
DEFAULT_WINDOW: tuple[float, float] = (-600.0, 1500.0)
#: MedSAM's own CT default (pre_CT_MR.py): soft-tissue window.
MEDSAM_SOFT_TISSUE_WINDOW: tuple[float, float] = (40.0, 400.0)
PREPROCESS_MODES = ("medsam", "sam")
DEFAULT_PREPROCESS = "medsam"
#: MedSAM thresholds the upsampled probability at 0.5.
MEDSAM_PROB_THRESHOLD = 0.5
UNTRAINED_NOTE = ("untrained test checkpoint: its sha256 matches no known MedSAM release in "
                  "the weights manifest and it has no training record; no accuracy may be "
                  "claimed for its masks")
OPTION_KEYS = ("checkpoint", "window", "preprocess", "encoder_batch", "bf16",
               "embedding_cache")


# --------------------------------------------------------------------------- options


def parse_window(value: Any, where: str) -> tuple[float, float]:
    """``(level, width)`` from a pair or a "level,width" string; ConfigError otherwise."""
    v = value
    if isinstance(v, str):
        v = v.replace(",", " ").split()
    try:
        level, width = (float(x) for x in v)
    except (TypeError, ValueError):
        raise ConfigError(f"Option {where!r} must be (level, width) in HU; got {value!r}") from None
    if not (math.isfinite(level) and math.isfinite(width) and width > 0):
        raise ConfigError(f"Option {where!r} must have a finite level and a positive width; "
                          f"got {value!r}")
    return (level, width)


def parse_preprocess(value: Any, where: str) -> str:
    if value not in PREPROCESS_MODES:
        raise ConfigError(f"Option {where!r} must be one of {', '.join(PREPROCESS_MODES)}; "
                          f"got {value!r}")
    return str(value)


@dataclass(frozen=True)
class MedSAMOptions:
    """The segmenter's knobs, read from ``settings.options["medsam"]``.

    ``window`` and ``preprocess`` are ``None`` when not given: the checkpoint's training
    record, else the module defaults, decide (:meth:`resolved`)."""

    checkpoint: str = DEFAULT_CHECKPOINT
    window: tuple[float, float] | None = None
    preprocess: str | None = None
    encoder_batch: int = 0  # 0 = auto (1 on the CPU, 8 on CUDA)
    bf16: bool = True
    #: folder of cached slice embeddings (``<key>.npy``, shared with the trainer); "" = off
    embedding_cache: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> MedSAMOptions:
        """Validate ``settings.options["medsam"]``; a bad value raises ConfigError naming it."""
        raw = settings.options.get("medsam", {}) or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"Argument 'options[\"medsam\"]' must be a mapping; got {raw!r}")
        unknown = sorted(set(raw) - set(OPTION_KEYS))
        if unknown:
            raise ConfigError(f"Argument 'options[\"medsam\"]' has unknown key(s) "
                              f"{', '.join(map(str, unknown))}; known: {', '.join(OPTION_KEYS)}")
        kw: dict[str, Any] = {}
        if "checkpoint" in raw:
            v = raw["checkpoint"]
            if not isinstance(v, (str, Path)) or not str(v):
                raise ConfigError(f"Option 'medsam.checkpoint' must be a weights name or a file "
                                  f"path; got {v!r}")
            kw["checkpoint"] = str(v)
        if "window" in raw:
            kw["window"] = parse_window(raw["window"], "medsam.window")
        if "preprocess" in raw:
            kw["preprocess"] = parse_preprocess(raw["preprocess"], "medsam.preprocess")
        if "encoder_batch" in raw:
            v = raw["encoder_batch"]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ConfigError(f"Option 'medsam.encoder_batch' must be an integer >= 0; "
                                  f"got {v!r}")
            kw["encoder_batch"] = int(v)
        if "bf16" in raw:
            v = raw["bf16"]
            if not isinstance(v, bool):
                raise ConfigError(f"Option 'medsam.bf16' must be true or false; got {v!r}")
            kw["bf16"] = v
        if "embedding_cache" in raw:
            v = raw["embedding_cache"]
            if not isinstance(v, (str, Path)):
                raise ConfigError(f"Option 'medsam.embedding_cache' must be a folder path; "
                                  f"got {v!r}")
            kw["embedding_cache"] = str(v)
        return cls(**kw)


# --------------------------------------------------------------------------- device


# The SAM family shares MedSAM2's device rules: bf16 autocast on CUDA only, encoder
# batch 1 on the CPU (ViT-B's global attention makes batches no faster there), 8 on CUDA.
from ..medsam2 import autocast_context as encoder_autocast  # noqa: E402,F401
from ..medsam2 import default_encoder_batch, use_bf16  # noqa: E402,F401
