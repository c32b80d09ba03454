"""The ``nnunet`` segmenter: nnU-Net v2's own mask as a complete segmentation (the baseline).

nnU-Net needs no prompt: it segments the whole volume once (same model loading as the
``nnunet`` detector, :mod:`autoprompt_seg.models.nnunet.model`; one network pass is shared when both
run on the same volume). As a :class:`~autoprompt_seg.backends.Segmenter` it **ignores the
prompt's shape and key slice** and only uses each box to pick which part of nnU-Net's mask
belongs to which lesion (:func:`autoprompt_seg.segment.slicewise.assign_components`,
shared with the other prompt-free segmenters):

* nnU-Net's label map (every foreground label) is split into 26-connected components;
* a component belongs to the box it overlaps most (in voxels; ties: the earlier box), so a
  voxel is never given to two lesions;
* each box's mask is the union of its components, *whole* (a component reaching outside
  the box is not cut at the box);
* a box that overlaps no component gets an empty mask (the pipeline drops it with a
  warning); components that overlap no box are not reported.

Used with the ``nnunet`` detector and ``{"min_volume_ml": 0}`` this reproduces nnU-Net's
mask component by component; with another detector it scores nnU-Net's mask on the
lesions that detector found. Its output equals ``nnUNetv2_predict``'s export voxel for
voxel (``tests/test_nnunet_detector.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..backends import ProgressFn
from ..config import Settings
from ..types import BackendInfo, Box3D, LesionMask, Volume

log = logging.getLogger(__name__)

VERSION = "0.1.0"


class NnunetSegmenter:
    """nnU-Net's mask, split into one lesion per box (module docstring)."""

    #: segments the whole volume; a box only selects components (``--detector none`` ok)
    promptable = False

    def __init__(self, settings: Settings) -> None:
        from ..models.nnunet.model import NnunetOptions, load_model

        self.opts = NnunetOptions.from_settings(settings)
        self.model = load_model(settings, self.opts)

    def info(self) -> BackendInfo:
        from ..models.nnunet.model import nnunet_version

        d = self.model.details()
        d.update(prompt="ignored: nnU-Net's mask components overlapping each box",
                 nnunetv2=nnunet_version())
        return BackendInfo(name="nnunet", kind="segmenter", version=VERSION,
                           checkpoint=str(self.model.folder.checkpoints[0]),
                           checkpoint_sha256=self.model.checkpoint_sha256,
                           trained=self.model.trained, details=d)

    def full_mask(self, volume: Volume) -> np.ndarray:
        """nnU-Net's label map on ``volume``'s grid (uint8, 0 = background)."""
        return self.model.predict(volume).segmentation

    def segment(self, volume: Volume, boxes: Sequence[Box3D],
                progress: ProgressFn | None = None) -> list[LesionMask]:
        from .slicewise import masks_for_boxes

        return masks_for_boxes(self.full_mask(volume) > 0, boxes, "nnunet segmenter",
                               progress)


def create(settings: Settings) -> NnunetSegmenter:
    """Registry factory: reads ``Settings.options["nnunet"]``."""
    return NnunetSegmenter(settings)
