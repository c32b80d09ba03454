"""The ``none`` detector: no prompt at all, for segmenters that segment the whole volume.

nnU-Net, U-Net and DeepLabV3 need no prompt. With ``--detector none`` they get one box
covering the whole volume (key slice = the middle slice, ``source = "none"``), so their
whole mask is kept. The pipeline then splits that single mask into its 26-connected
components, one lesion each (:func:`autoprompt_seg.pipeline.run`), so reports and the SEG
list lesions as the other detectors do.

A promptable segmenter (classical, MedSAM2, MedSAM) given this box would treat the whole
volume as the tumour's box, which is meaningless: the pipeline refuses that combination
with a :class:`~autoprompt_seg.errors.ConfigError`.
"""

from __future__ import annotations

from ..backends import ProgressFn
from ..config import Settings
from ..types import BackendInfo, Box3D, Volume

NAME = "none"
VERSION = "0.1.0"


class NoPromptDetector:
    def info(self) -> BackendInfo:
        return BackendInfo(name=NAME, kind="detector", version=VERSION,
                           family="None (the segmenter needs no prompt)",
                           details={"box": "whole volume"})

    def detect(self, volume: Volume, progress: ProgressFn | None = None) -> list[Box3D]:
        z, y, x = volume.shape
        if progress is not None:
            progress(1, 1)
        return [Box3D(z0=0, z1=z, y0=0, y1=y, x0=0, x1=x, key_slice=z // 2, source=NAME)]


def create(settings: Settings) -> NoPromptDetector:
    return NoPromptDetector()
