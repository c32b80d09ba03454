"""The ``unet`` segmenter: MONAI's 2-D U-Net applied slice by slice (prompt-free).

The network is ``monai.networks.nets.UNet(spatial_dims=2, in_channels=1, out_channels=2,
channels, strides, num_res_units, norm)``: a windowed CT slice in ``[0, 1]`` in, background
and tumour logits out. Default architecture: channels (32, 64, 128, 256, 512), strides 2,
two residual units per block, instance norm, at 512x512 (the paper group's setting; the
image size is chosen at training time and stored in the checkpoint).

The network: :mod:`autoprompt_seg.models.cnn2d.unet`. Checkpoints, options, inference and
provenance: :mod:`autoprompt_seg.segment.slicewise`.
Training: :mod:`autoprompt_seg.train.cnn2d`.
"""

from __future__ import annotations

from ..config import Settings
from .slicewise import SliceCnnSegmenter

NAME = "unet"

class UNetSegmenter(SliceCnnSegmenter):
    """The ``unet`` segmenter (module docstring)."""

    name = NAME


def create(settings: Settings) -> UNetSegmenter:
    """Registry factory: reads ``Settings.options["unet"]``."""
    return UNetSegmenter(settings)
