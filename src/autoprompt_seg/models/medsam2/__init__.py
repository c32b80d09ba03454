"""MedSAM2 and vanilla SAM 2.1 (the ``medsam2`` and ``sam2`` segmenters), one home: both are
the same sam2 1.1.0 video predictor and procedure, differing only in a :class:`Variant`
(config, image size, checkpoint), so vanilla SAM 2.1 lives here too.

- :mod:`.options`: constants, the two variants, :class:`MedSAM2Options`, device/autocast;
- :mod:`.preprocess`: CT window/scaling to ``uint8``, 512-px frames, box prompts, and the
  image-feature cache;
- :mod:`.checkpoint`: model building (Hydra config, in-memory predictor), strict loading,
  the format checks registered with :mod:`autoprompt_seg.weights`, checkpoint choice;
- :mod:`.backend`: the segmenter (tracking both ways, joining lesions) and the registry
  factories ``create`` / ``create_sam2``;
- :mod:`.training`: the trainer's model-level parts (options, trainable modules, losses,
  the clip forward pass); the resumable training run is :mod:`autoprompt_seg.train.medsam2`.

Everything that imports ``sam2``, Hydra or OmegaConf does so lazily, inside functions, so
importing this package has no side effect beyond registering the format checks.
"""

from __future__ import annotations

from .backend import (
    LesionLogits,
    MedSAM2Segmenter,
    RunStats,
    create,
    create_sam2,
    largest_component,
)
from .checkpoint import (
    build_model,
    check_checkpoint,
    check_medsam2_file,
    check_sam2_file,
    config_path,
    load_model,
    predictor_class,
    read_checkpoint,
    resolve_checkpoint,
    sam2_version,
)
from .options import (
    ARCHITECTURE,
    CONFIG_NAME,
    DEFAULT_CACHE_MB,
    DEFAULT_CHECKPOINT,
    DEFAULT_EMPTY_STOP,
    DEFAULT_SCALING,
    DEFAULT_WINDOW,
    DEFAULT_Z_MARGIN_MM,
    IMAGE_SIZE,
    IMG_MEAN,
    IMG_STD,
    MEDSAM2,
    MIN_Z_MARGIN_SLICES,
    NAME,
    POSTPROCESSING_OVERRIDES,
    SAM2,
    SCALINGS,
    UNTRAINED_NOTE,
    VARIANTS,
    MedSAM2Options,
    Variant,
    autocast_context,
    default_encoder_batch,
    select_device,
    use_bf16,
)
from .preprocess import (
    CacheStats,
    FeatureCache,
    FrameSource,
    box_pixels,
    box_to_model,
    intensity_range,
    normalize_frames,
    resize_uint8,
    scale_uint8,
    window_bounds,
    window_uint8,
)

__all__ = [
    "NAME",
    "CONFIG_NAME",
    "ARCHITECTURE",
    "IMAGE_SIZE",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_WINDOW",
    "SCALINGS",
    "DEFAULT_SCALING",
    "DEFAULT_EMPTY_STOP",
    "DEFAULT_Z_MARGIN_MM",
    "MIN_Z_MARGIN_SLICES",
    "DEFAULT_CACHE_MB",
    "IMG_MEAN",
    "IMG_STD",
    "UNTRAINED_NOTE",
    "Variant",
    "MEDSAM2",
    "SAM2",
    "VARIANTS",
    "POSTPROCESSING_OVERRIDES",
    "MedSAM2Options",
    "select_device",
    "use_bf16",
    "autocast_context",
    "default_encoder_batch",
    "window_bounds",
    "intensity_range",
    "scale_uint8",
    "window_uint8",
    "resize_uint8",
    "normalize_frames",
    "FrameSource",
    "box_pixels",
    "box_to_model",
    "CacheStats",
    "FeatureCache",
    "config_path",
    "predictor_class",
    "build_model",
    "read_checkpoint",
    "load_model",
    "check_checkpoint",
    "check_medsam2_file",
    "check_sam2_file",
    "sam2_version",
    "resolve_checkpoint",
    "LesionLogits",
    "RunStats",
    "MedSAM2Segmenter",
    "largest_component",
    "create",
    "create_sam2",
]
