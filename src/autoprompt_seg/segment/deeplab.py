"""The ``deeplabv3`` segmenter: torchvision's DeepLabV3 (ResNet-50 or ResNet-101 backbone)
applied slice by slice (prompt-free).

The network is ``torchvision.models.segmentation.deeplabv3_resnet50`` / ``_resnet101``
built with ``weights=None, weights_backbone=None, num_classes=2, aux_loss=False``, wrapped
so that it takes the 1-channel windowed CT slice in ``[0, 1]``: the slice is replicated to
3 channels and normalised with the ImageNet mean and std (what an ImageNet backbone
expects), and the ``"out"`` logits (background, tumour) are returned. The wrapper keeps
torchvision's module names, so a checkpoint's ``state_dict`` loads into a plain
torchvision model too.

ImageNet backbones cannot be downloaded here. :func:`~autoprompt_seg.models.cnn2d.deeplab.load_backbone_weights` loads a file
holding torchvision's ResNet-50/101 ImageNet state dict (the format torchvision downloads,
e.g. ``resnet50-11ad3fa6.pth``) strictly into the backbone, without its ``fc`` layer; the
trainer does so when given ``options["backbone_weights"] = FILE``, and otherwise trains
from scratch.

The network and :func:`load_backbone_weights`: :mod:`autoprompt_seg.models.cnn2d.deeplab`.
Checkpoints, options, inference and provenance: :mod:`autoprompt_seg.segment.slicewise`.
Training: :mod:`autoprompt_seg.train.cnn2d`.
"""

from __future__ import annotations

from ..config import Settings
from .slicewise import SliceCnnSegmenter

NAME = "deeplabv3"

class DeepLabV3Segmenter(SliceCnnSegmenter):
    """The ``deeplabv3`` segmenter (module docstring)."""

    name = NAME


def create(settings: Settings) -> DeepLabV3Segmenter:
    """Registry factory: reads ``Settings.options["deeplabv3"]``."""
    return DeepLabV3Segmenter(settings)
