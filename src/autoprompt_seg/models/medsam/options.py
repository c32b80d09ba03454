"""MedSAM constants, option parsing (:class:`MedSAMOptions`) and the device rules it shares
with MedSAM2 (bf16 autocast on CUDA only, encoder batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...config import Settings
from ...errors import ConfigError

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
        """Validate ``settings.options["medsam"]`` with the shared parser
        (:func:`autoprompt_seg.options.parse_options`); a bad value raises ConfigError
        naming the key (``medsam.window``)."""
        from ...options import parse_options

        raw = settings.options.get("medsam", {}) or {}
        if isinstance(raw, Mapping):
            raw = dict(raw)
            for key in ("checkpoint", "embedding_cache"):
                if isinstance(raw.get(key), Path):
                    raw[key] = str(raw[key])
            if isinstance(raw.get("encoder_batch"), np.integer):
                raw["encoder_batch"] = int(raw["encoder_batch"])
            if "window" in raw:
                raw["window"] = parse_window(raw["window"], "medsam.window")
            if "preprocess" in raw:
                raw["preprocess"] = parse_preprocess(raw["preprocess"], "medsam.preprocess")
        o = parse_options(cls, raw, "medsam")
        if not o.checkpoint:
            raise ConfigError(f"Option 'medsam.checkpoint' must be a weights name or a file "
                              f"path; got {o.checkpoint!r}")
        if o.encoder_batch < 0:
            raise ConfigError(f"Option 'medsam.encoder_batch' must be an integer >= 0; got "
                              f"{o.encoder_batch!r}")
        return o


# --------------------------------------------------------------------------- device


# The SAM family shares MedSAM2's device rules: bf16 autocast on CUDA only, encoder
# batch 1 on the CPU (ViT-B's global attention makes batches no faster there), 8 on CUDA.
from ..medsam2 import autocast_context as encoder_autocast  # noqa: E402,F401
from ..medsam2 import default_encoder_batch, use_bf16  # noqa: E402,F401

# ... and its window parser: (level, width) in HU, ConfigError naming the option
from ..medsam2.options import parse_window  # noqa: E402
