"""The ``monai_retinanet`` detector backend.

Options (``Settings.options["monai_retinanet"]``):

========================  ==================================  ===============================
key                       default                             meaning
========================  ==================================  ===============================
``checkpoint``            ``monai_lung_nodule_ct_detection``  a weights name or a file
                          (installed weights)                 (the bundle's models/model.pt)
``min_score``             0.5                                 score cut-off of the boxes kept
``max_boxes``             20                                  at most this many, best first
``amp``                   true                                CUDA autocast (as the bundle);
                                                              no effect on the CPU
========================  ==================================  ===============================

The network keeps the bundle's own selection (score >= 0.02, NMS 0.22, up to 300 boxes);
``min_score`` and ``max_boxes`` then cut that list. The scores are RetinaNet's sigmoid
class scores, not calibrated on our data; 0.5 is a neutral default, not a measured
operating point. The pipeline's operating point (``--min-score``, ``--max-lesions``)
applies after this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...backends import ProgressFn
from ...config import Settings, resolve_device
from ...errors import ConfigError
from ...types import BackendInfo, Box3D, Volume
from ...weights import CheckpointChoice, resolve
from . import ARCHITECTURE, BUNDLE_NAME, BUNDLE_VERSION, WEIGHTS_NAME
from .boxes import image_box_corners, points_to_box

log = logging.getLogger(__name__)

NAME = "monai_retinanet"
VERSION = "0.1.0"
OPTIONS_KEY = NAME
DEFAULT_MIN_SCORE = 0.5
DEFAULT_MAX_BOXES = 20
UNTRAINED_NOTE = ("untrained test checkpoint: the boxes of random weights mean nothing; no "
                  "accuracy may be claimed")


@dataclass(frozen=True)
class RetinanetOptions:
    checkpoint: str = WEIGHTS_NAME
    min_score: float = DEFAULT_MIN_SCORE
    max_boxes: int = DEFAULT_MAX_BOXES
    amp: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ConfigError(f"Option '{NAME}.checkpoint' must be a weights name or a file "
                              f"path; got {self.checkpoint!r}")
        v = self.min_score
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ConfigError(f"Option '{NAME}.min_score' must be a number in [0, 1]; got {v!r}")
        m = self.max_boxes
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= 300:
            raise ConfigError(f"Option '{NAME}.max_boxes' must be an integer in 1..300 (the "
                              f"bundle keeps at most 300); got {m!r}")
        if not isinstance(self.amp, bool):
            raise ConfigError(f"Option '{NAME}.amp' must be true or false; got {self.amp!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetinanetOptions:
        from ...options import parse_options

        raw = settings.options.get(OPTIONS_KEY) or {}
        if isinstance(raw, Mapping) and isinstance(raw.get("checkpoint"), Path):
            raw = {**raw, "checkpoint": str(raw["checkpoint"])}
        return parse_options(cls, raw, OPTIONS_KEY)


def resolve_checkpoint(settings: Settings, ref: str) -> CheckpointChoice:
    """A weights name installed in the weights folder, or a file; its provenance from its
    sha256 (:func:`autoprompt_seg.weights.resolve`; no training records: not trained here)."""
    return resolve(ARCHITECTURE, ref, settings.weights_dir, model=NAME,
                   option=f"{NAME}.checkpoint",
                   add_file="model.pt", add_hint=" (the bundle's models/model.pt)",
                   training_records=False)


def detections_to_boxes(raw: Any, volume: Volume, *, min_score: float, max_boxes: int
                        ) -> list[Box3D]:
    """Our boxes from the bundle's detections (:class:`.inference.RawDetections`): score
    ``>= min_score``, best first, at most ``max_boxes``, each on the study's own grid
    (:func:`.boxes.points_to_box` of the resampled-image box's 8 corners)."""
    order = np.argsort(-raw.scores, kind="stable")
    out: list[Box3D] = []
    for i in order:
        s = float(raw.scores[i])
        if s < min_score or len(out) >= max_boxes:
            break
        b = points_to_box(image_box_corners(raw.image_boxes[i], raw.image_affine), volume,
                          score=s, source=NAME)
        if b is not None:
            out.append(b)
    return out


class RetinanetDetector:
    """MONAI's lung_nodule_ct_detection RetinaNet as a detector (module docstring)."""

    def __init__(self, settings: Settings) -> None:
        import torch

        from .checkpoint import load_network
        from .network import build_detector

        self.options = RetinanetOptions.from_settings(settings)
        self.device = resolve_device(settings.device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.checkpoint = resolve_checkpoint(settings, self.options.checkpoint)
        net = load_network(self.checkpoint.path).to(self.device)
        self.detector = build_detector(net)
        self.last_seconds = 0.0
        self.last_raw_count = 0
        self.last_sliding_window = False

    def torch_modules(self) -> dict[str, object]:
        return {"retinanet": self.detector.network}

    def info(self) -> BackendInfo:
        from importlib.metadata import version

        c = self.checkpoint
        details: dict[str, Any] = {
            "bundle": f"MONAI model zoo {BUNDLE_NAME} {BUNDLE_VERSION} (RetinaNet ResNet50-FPN, "
                      "trained on LUNA16 by the MONAI team)",
            "architecture": ARCHITECTURE, "device": self.device,
            "min_score": self.options.min_score, "max_boxes": self.options.max_boxes,
            "bundle_box_selector": "score >= 0.02, NMS 0.22, up to 300 boxes",
            "key_slice": "the box centre's slice",
            "checkpoint_file": c.path.name, "provenance_state": c.state,
            "monai": version("monai"),
        }
        if c.trained:
            details["provenance"] = c.provenance
        else:
            details["provenance"] = "untrained test checkpoint"
            details["note"] = UNTRAINED_NOTE
        return BackendInfo(name=NAME, kind="detector", version=VERSION, checkpoint=c.name,
                           checkpoint_sha256=c.sha256, trained=c.trained, details=details)

    def detect_raw(self, volume: Volume) -> Any:
        """The bundle's detections (all of them, before our cut-off)."""
        from .inference import run
        from .preprocess import preprocess

        t0 = time.perf_counter()
        image = preprocess(volume)
        raw = run(self.detector, image, device=self.device, amp=self.options.amp)
        self.last_seconds = time.perf_counter() - t0
        self.last_raw_count = len(raw.scores)
        self.last_sliding_window = raw.used_sliding_window
        return raw

    def detect(self, volume: Volume, progress: ProgressFn | None = None) -> list[Box3D]:
        raw = self.detect_raw(volume)
        boxes = detections_to_boxes(raw, volume, min_score=self.options.min_score,
                                    max_boxes=self.options.max_boxes)
        if progress is not None:
            progress(1, 1)
        log.info("monai_retinanet: %d box(es) of %d detection(s) >= %.2f (%.1f s%s)",
                 len(boxes), len(raw.scores), self.options.min_score, self.last_seconds,
                 ", sliding window" if raw.used_sliding_window else "")
        return boxes


def create(settings: Settings) -> RetinanetDetector:
    """Registry factory: reads ``Settings.options["monai_retinanet"]``."""
    return RetinanetDetector(settings)
