"""torchvision's DeepLabV3 as the ``deeplabv3`` segmenter builds it (:mod:`autoprompt_seg.
models.cnn2d.segmenter`, which describes it): architecture options, the 1-channel CT network,
ImageNet backbone weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError, UnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import torch

BACKBONES = ("resnet50", "resnet101")
DEFAULT_ARCH: dict[str, Any] = {"backbone": "resnet50"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise_arch(arch: Any) -> dict[str, Any]:
    """``"resnet50"`` / ``"resnet101"`` or ``{"backbone": ...}`` -> ``{"backbone": ...}``."""
    if arch is None:
        arch = {}
    if isinstance(arch, str):
        arch = {"backbone": arch}
    if not isinstance(arch, Mapping):
        raise ConfigError(f"Option 'arch' of deeplabv3 must be a backbone name "
                          f"({', '.join(BACKBONES)}) or {{'backbone': name}}; got {arch!r}")
    unknown = sorted(set(arch) - set(DEFAULT_ARCH))
    if unknown:
        raise ConfigError(f"Option 'arch' of deeplabv3: unknown key(s) {', '.join(unknown)}; "
                          f"known: backbone")
    bb = arch.get("backbone", DEFAULT_ARCH["backbone"])
    if bb not in BACKBONES:
        raise ConfigError(f"Option 'arch.backbone' must be one of {', '.join(BACKBONES)}; "
                          f"got {bb!r}")
    return {"backbone": bb}


def build_net(arch: Mapping[str, Any]) -> torch.nn.Module:
    """DeepLabV3 taking ``(N, 1, H, W)`` in ``[0, 1]`` and returning ``(N, 2, H, W)``
    logits; random weights."""
    import torch
    from torchvision.models.segmentation import (
        deeplabv3_resnet50,
        deeplabv3_resnet101,
    )
    from torchvision.models.segmentation.deeplabv3 import DeepLabV3

    a = normalise_arch(arch)
    builder = deeplabv3_resnet50 if a["backbone"] == "resnet50" else deeplabv3_resnet101
    tv = builder(weights=None, weights_backbone=None, num_classes=2, aux_loss=False)

    class DeepLabV3CT(DeepLabV3):  # type: ignore[misc]
        """torchvision's DeepLabV3 fed with 1-channel CT (same parameter names)."""

        def __init__(self, base: DeepLabV3) -> None:
            super().__init__(base.backbone, base.classifier, None)
            self.register_buffer("img_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                                 persistent=False)
            self.register_buffer("img_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                                 persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            x = (x.expand(-1, 3, -1, -1) - self.img_mean) / self.img_std
            out: torch.Tensor = super().forward(x)["out"]
            return out

    return DeepLabV3CT(tv)


def load_backbone_weights(net: torch.nn.Module, path: str | Path) -> str:
    """Load a torchvision ResNet ImageNet state dict (``fc.*`` dropped) strictly into
    ``net.backbone``; returns the file's sha256.

    :class:`UnavailableError` for a missing or unreadable file; :class:`ConfigError` for a
    file that is not a state dict or does not fit the backbone (e.g. a ResNet-18 file for
    a ResNet-50 model); both name the file.
    """
    import torch

    from ...weights import sha256_file

    p = Path(path).expanduser()
    if not p.is_file():
        raise UnavailableError(f"Option 'backbone_weights': {str(p)!r}: no such file")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise UnavailableError(f"backbone weights {str(p)!r} are truncated or corrupt and "
                               f"cannot be read ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]})") from e
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"backbone weights {str(p)!r} are not a torchvision ResNet state "
                          f"dict (a mapping of tensors); got {type(sd).__name__}")
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    backbone = getattr(net, "backbone", None)
    if backbone is None:
        raise ConfigError("backbone weights can only be loaded into a deeplabv3 network")
    from ...weights import load_state_strict

    load_state_strict(backbone, sd, repr(str(p)), "the DeepLabV3 ResNet backbone "
                      "(torchvision ResNet ImageNet state dict expected, fc dropped)")
    return sha256_file(p)
