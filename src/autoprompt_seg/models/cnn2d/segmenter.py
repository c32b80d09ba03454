"""The prompt-free 2-D CNN segmenters ``unet`` and ``deeplabv3``: checkpoint format,
options, slice-by-slice inference; the boxes then pick their components
(:func:`autoprompt_seg.segment.slicewise.masks_for_boxes`).

``unet``
--------
The ``unet`` segmenter: MONAI's 2-D U-Net applied slice by slice (prompt-free).

The network is ``monai.networks.nets.UNet(spatial_dims=2, in_channels=1, out_channels=2,
channels, strides, num_res_units, norm)``: a windowed CT slice in ``[0, 1]`` in, background
and tumour logits out. Default architecture: channels (32, 64, 128, 256, 512), strides 2,
two residual units per block, instance norm, at 512x512 (the paper group's setting; the
image size is chosen at training time and stored in the checkpoint).

Training: :mod:`autoprompt_seg.train.cnn2d`.

``deeplabv3``
------------
The ``deeplabv3`` segmenter: torchvision's DeepLabV3 (ResNet-50 or ResNet-101 backbone)
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
Training: :mod:`autoprompt_seg.train.cnn2d`.

2-D CNN checkpoints (format ``autoseg-cnn2d/1``)
------------------------------------------------
One file written with ``torch.save`` and read with ``torch.load(weights_only=True)``::

    {"format": "autoseg-cnn2d/1",
     "model": "unet" | "deeplabv3",
     "arch": {...},                       # the model's architecture options (see below)
     "preprocess": {"window": [lo, hi],   # CT window in HU, mapped to [0, 1]
                    "image_size": 512},   # every slice is resized to this square size
     "state_dict": {...}}                 # loads strictly into the built network

``arch`` for ``unet`` (MONAI ``UNet``, 2-D, 1 -> 2 channels): ``{"channels": [...],
"strides": [...], "num_res_units": int, "norm": "instance" | "batch"}``; for
``deeplabv3`` (torchvision): ``{"backbone": "resnet50" | "resnet101"}``, and its
``state_dict`` is exactly torchvision's ``deeplabv3_resnetXX(num_classes=2,
aux_loss=False)`` state dict.
:func:`autoprompt_seg.models.cnn2d.checkpoint.save_checkpoint` writes one (that module
reads, builds and loads them too); the trainers
(:mod:`autoprompt_seg.train.cnn2d`) write theirs through the same function.

A missing, truncated or corrupt file raises :class:`UnavailableError` (69); a file of the
wrong content (another format, another model, a state dict that does not load strictly)
raises :class:`ConfigError` (78); both name the file.

Provenance (:func:`autoprompt_seg.weights.resolve`): a checkpoint whose sha256 is pinned
by a weights-manifest entry of architecture ``cnn2d_<model>`` is a release (or an official
download / user pin, as ``installed.json`` records it); else one with a matching training
record beside it (``<file>.train.json``, :func:`autoprompt_seg.weights.training_record`)
is *trained here*; anything else is an *untrained test checkpoint*
(``BackendInfo.trained=False``).

Inference
---------
Every slice of the volume is windowed, resized to ``image_size``, run through the network
in batches of ``batch_size`` (``torch.inference_mode``; bf16 autocast on CUDA), the
2-class logits are resized back to the slice's own grid, and a voxel is tumour where the
tumour logit exceeds the background logit. Only one batch is ever on the device.

Options: ``Settings.options["unet"]`` / ``Settings.options["deeplabv3"]`` (a mapping):
``checkpoint`` (file; required), ``batch_size`` (default 4 on the CPU, 16 on CUDA),
``bf16`` (default true; CUDA only). Training-only keys (``arch``, ``pos_fraction``,
``augment``, ``window``, ``backbone_weights``, ``log_every``, ``bn_batches``) are ignored
here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ...backends import ProgressFn
from ...config import Settings, resolve_device
from ...errors import ConfigError, UnavailableError
from ...segment.slicewise import masks_for_boxes
from ...types import BackendInfo, Box3D, LesionMask, Volume
from .checkpoint import check_model, load_net, read_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

VERSION = "0.1.0"
UNTRAINED = "untrained test checkpoint"
UNTRAINED_NOTE = ("untrained test checkpoint: no training record beside it and its sha256 "
                  "matches no known release; no accuracy may be claimed for its masks")
TRAIN_ONLY_OPTIONS = ("arch", "pos_fraction", "augment", "window", "backbone_weights",
                      "log_every", "bn_batches")



# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Cnn2dOptions:
    """``Settings.options[<model>]`` of a 2-D CNN segmenter (module docstring), parsed by
    :func:`autoprompt_seg.options.parse_options`; the trainer's keys
    (:data:`TRAIN_ONLY_OPTIONS`) may sit in the same mapping and are ignored here."""

    checkpoint: Path | None = field(default=None, metadata={
        "help": "autoseg-cnn2d/1 checkpoint file (required to run)"})
    batch_size: int = field(default=0, metadata={
        "help": "slices per forward pass; 0 = auto (4 on the CPU, 16 on CUDA)"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA"})

    @classmethod
    def from_settings(cls, settings: Settings, key: str) -> Cnn2dOptions:
        """Validate ``settings.options[key]`` (``key`` = the model name) with the shared
        parser; a bad value raises ConfigError naming the key (``unet.batch_size``)."""
        from ...options import parse_options

        raw = settings.options.get(key, {})
        if isinstance(raw, Mapping):
            raw = {k: (int(v) if isinstance(v, np.integer) else v)
                   for k, v in raw.items() if k not in TRAIN_ONLY_OPTIONS}
        o = parse_options(cls, raw, key)
        if o.batch_size < 0:
            raise ConfigError(f"Option '{key}.batch_size' must be an integer >= 0 "
                              f"(0 = auto); got {o.batch_size!r}")
        return o


def autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (when asked for); a no-op on the CPU."""
    if device != "cuda" or not bf16:
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16)


# --------------------------------------------------------------------------- inference


def predict_volume(net: torch.nn.Module, hu: npt.NDArray[Any], window: Sequence[float],
                   image_size: int, device: str, batch_size: int, bf16: bool = True,
                   progress: ProgressFn | None = None) -> npt.NDArray[np.bool_]:
    """The network's tumour mask for every slice of ``hu`` (z, y, x), on ``hu``'s grid."""
    import torch

    from .pixels import resize_images, window_ct

    nz, h, w = hu.shape
    out = np.zeros(hu.shape, dtype=bool)
    net.eval()
    with torch.inference_mode():
        for z0 in range(0, nz, batch_size):
            z1 = min(nz, z0 + batch_size)
            x = torch.from_numpy(window_ct(hu[z0:z1], window))[:, None].to(device)
            x = resize_images(x, image_size)
            with autocast(device, bf16):
                logits = net(x)
            logits = resize_images(logits.float(), (h, w))
            out[z0:z1] = (logits[:, 1] > logits[:, 0]).cpu().numpy()
            if progress is not None:
                progress(z1, nz)
    return out


class SliceCnnSegmenter:
    """A 2-D CNN applied slice by slice; prompt-free (module docstring)."""

    promptable = False
    name = ""  # set by subclasses: "unet" | "deeplabv3"

    def __init__(self, settings: Settings) -> None:
        from ...weights import resolve

        check_model(self.name)
        self.settings = settings
        self.options = Cnn2dOptions.from_settings(settings, self.name)
        self.device = resolve_device(settings.device)
        if settings.threads > 0:
            import torch

            torch.set_num_threads(settings.threads)
        path = self.options.checkpoint
        if path is None:
            raise UnavailableError(
                f"segmenter {self.name!r} needs a trained checkpoint and none was given: "
                f"train one (the benchmark trains {self.name} in its few-shot and fine-tune "
                f"paradigms; see docs/bench.md) and pass it with --checkpoint FILE "
                f"(Settings.options[{self.name!r}]['checkpoint'])")
        self.checkpoint = read_checkpoint(path, self.name)
        self.net = load_net(self.checkpoint).to(self.device).eval()
        self.choice = resolve(f"cnn2d_{self.name}", self.checkpoint.path,
                              settings.weights_dir, model=self.name,
                              option=f"{self.name}.checkpoint")
        self.sha256 = self.choice.sha256
        self.record = self.choice.record
        self.trained = self.choice.trained
        self.batch_size = self.options.batch_size or (16 if self.device == "cuda" else 4)
        self.last_seconds = 0.0
        if not self.trained:
            log.warning("%s: %s (%s, sha256 %s)", self.name, UNTRAINED_NOTE,
                        self.checkpoint.path, self.sha256[:12])

    def torch_modules(self) -> dict[str, Any]:
        return {"net": self.net}

    def provenance(self) -> str:
        return self.choice.provenance

    def info(self) -> BackendInfo:
        ck = self.checkpoint
        details: dict[str, Any] = {
            "architecture": ck.arch, "window_hu": list(ck.window),
            "image_size": ck.image_size, "device": self.device,
            "precision": "bf16 autocast" if self.device == "cuda" and self.options.bf16
            else "float32",
            "batch_size": self.batch_size, "checkpoint_file": ck.path.name,
            "prompt": "ignored: components of the model's full mask overlapping each box",
            "provenance": self.provenance(),
        }
        if self.record is not None:
            details["training"] = {k: self.record.get(k) for k in
                                   ("n_cases", "epochs", "data_hash", "config_hash",
                                    "final_loss", "created")}
        if not self.trained:
            details["note"] = UNTRAINED_NOTE
        return BackendInfo(name=self.name, kind="segmenter", version=VERSION,
                           checkpoint=self.choice.name,
                           checkpoint_sha256=self.sha256, trained=self.trained,
                           details=details)

    def full_mask(self, volume: Volume, progress: ProgressFn | None = None
                  ) -> npt.NDArray[np.bool_]:
        """The model's tumour mask on every slice of ``volume`` (z, y, x)."""
        ck = self.checkpoint
        t0 = time.perf_counter()
        mask = predict_volume(self.net, volume.array, ck.window, ck.image_size, self.device,
                              self.batch_size, self.options.bf16, progress)
        self.last_seconds = time.perf_counter() - t0
        log.info("%s: %d slice(s) in %.1f s (%.3f s/slice)", self.name, volume.shape[0],
                 self.last_seconds, self.last_seconds / max(1, volume.shape[0]))
        return mask

    def segment(self, volume: Volume, boxes: Sequence[Box3D],
                progress: ProgressFn | None = None) -> list[LesionMask]:
        """One mask per box: the components of the full mask that overlap it most."""
        if not boxes:
            return []
        mask = self.full_mask(volume, progress)
        return masks_for_boxes(mask, boxes, self.name)


class UNetSegmenter(SliceCnnSegmenter):
    """The ``unet`` segmenter (module docstring)."""

    name = "unet"


class DeepLabV3Segmenter(SliceCnnSegmenter):
    """The ``deeplabv3`` segmenter (module docstring)."""

    name = "deeplabv3"


def create_unet(settings: Settings) -> UNetSegmenter:
    """Registry factory: reads ``Settings.options["unet"]``."""
    return UNetSegmenter(settings)


def create_deeplab(settings: Settings) -> DeepLabV3Segmenter:
    """Registry factory: reads ``Settings.options["deeplabv3"]``."""
    return DeepLabV3Segmenter(settings)
