"""2-D MedSAM (SAM ViT-B; the ``medsam`` segmenter), one home:

- :mod:`.options`: constants, :class:`MedSAMOptions`, the device rules shared with MedSAM2;
- :mod:`.preprocess`: MedSAM's or SamPredictor's preprocessing, box prompts, decoder
  logits and scores;
- :mod:`.checkpoint`: model building, strict loading, the format check registered with
  :mod:`autoprompt_seg.weights`, encoder fingerprint and embedding keys, checkpoint choice;
- :mod:`.backend`: the segmenter (one box per slice, slice-embedding cache) and the
  registry factory ``create``.

The trainer (:mod:`autoprompt_seg.train.medsam`) stays in ``train``: it needs the
benchmark's datasets and ``train.core``. torch and segment_anything are imported lazily.
"""

from __future__ import annotations

from .backend import (
    MedSAMSegmenter,
    RunStats,
    create,
    save_embedding,
    slice_boxes_of,
    union_box,
)
from .checkpoint import (
    build_model,
    check_checkpoint,
    embedding_key,
    encoder_fingerprint,
    load_model,
    read_checkpoint,
    resolve_checkpoint,
    segment_anything_version,
)
from .options import (
    ARCHITECTURE,
    DEFAULT_CHECKPOINT,
    DEFAULT_PREPROCESS,
    DEFAULT_WINDOW,
    IMAGE_SIZE,
    MEDSAM_PROB_THRESHOLD,
    MEDSAM_SOFT_TISSUE_WINDOW,
    NAME,
    OPTION_KEYS,
    PREPROCESS_MODES,
    UNTRAINED_NOTE,
    MedSAMOptions,
    default_encoder_batch,
    encoder_autocast,
    parse_preprocess,
    parse_window,
    use_bf16,
)
from .preprocess import (
    Prepared,
    box_pixels,
    boxes_to_model,
    decode_low_res,
    encoder_input,
    input_size_of,
    medsam_resize,
    prepare_slice,
    score_threshold,
    scores_at_slice,
    upsample_logits,
    window_uint8,
)

__all__ = [
    "NAME",
    "ARCHITECTURE",
    "IMAGE_SIZE",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_WINDOW",
    "MEDSAM_SOFT_TISSUE_WINDOW",
    "PREPROCESS_MODES",
    "DEFAULT_PREPROCESS",
    "MEDSAM_PROB_THRESHOLD",
    "UNTRAINED_NOTE",
    "OPTION_KEYS",
    "parse_window",
    "parse_preprocess",
    "MedSAMOptions",
    "encoder_autocast",
    "default_encoder_batch",
    "use_bf16",
    "window_uint8",
    "Prepared",
    "medsam_resize",
    "input_size_of",
    "prepare_slice",
    "encoder_input",
    "box_pixels",
    "boxes_to_model",
    "decode_low_res",
    "upsample_logits",
    "scores_at_slice",
    "score_threshold",
    "encoder_fingerprint",
    "embedding_key",
    "build_model",
    "read_checkpoint",
    "load_model",
    "check_checkpoint",
    "segment_anything_version",
    "resolve_checkpoint",
    "RunStats",
    "MedSAMSegmenter",
    "save_embedding",
    "slice_boxes_of",
    "union_box",
    "create",
]
