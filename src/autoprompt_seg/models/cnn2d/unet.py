"""MONAI's 2-D U-Net as the ``unet`` segmenter builds it (:mod:`autoprompt_seg.segment.
unet2d`): architecture options and the network."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_ARCH: dict[str, Any] = {"channels": [32, 64, 128, 256, 512],
                                "strides": [2, 2, 2, 2], "num_res_units": 2,
                                "norm": "instance"}
NORMS = ("instance", "batch")


def normalise_arch(arch: Any) -> dict[str, Any]:
    """Checked U-Net architecture options with defaults filled in. ``strides`` defaults to
    2 between every pair of levels."""
    if arch is None:
        arch = {}
    if not isinstance(arch, Mapping):
        raise ConfigError(f"Option 'arch' of unet must be a mapping (channels, strides, "
                          f"num_res_units, norm); got {arch!r}")
    unknown = sorted(set(arch) - set(DEFAULT_ARCH))
    if unknown:
        raise ConfigError(f"Option 'arch' of unet: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(DEFAULT_ARCH)}")
    ch = arch.get("channels", DEFAULT_ARCH["channels"])
    if (not isinstance(ch, (list, tuple)) or len(ch) < 2
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in ch)):
        raise ConfigError(f"Option 'arch.channels' must be at least two positive integers; "
                          f"got {ch!r}")
    st = arch.get("strides", [2] * (len(ch) - 1))
    if (not isinstance(st, (list, tuple)) or len(st) != len(ch) - 1
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in st)):
        raise ConfigError(f"Option 'arch.strides' must be {len(ch) - 1} positive integers "
                          f"(one fewer than channels); got {st!r}")
    nr = arch.get("num_res_units", DEFAULT_ARCH["num_res_units"])
    if not isinstance(nr, int) or isinstance(nr, bool) or nr < 0:
        raise ConfigError(f"Option 'arch.num_res_units' must be an integer >= 0; got {nr!r}")
    norm = arch.get("norm", DEFAULT_ARCH["norm"])
    if norm not in NORMS:
        raise ConfigError(f"Option 'arch.norm' must be one of {', '.join(NORMS)}; got {norm!r}")
    return {"channels": [int(c) for c in ch], "strides": [int(s) for s in st],
            "num_res_units": int(nr), "norm": norm}


def build_net(arch: Mapping[str, Any]) -> torch.nn.Module:
    """MONAI 2-D UNet, 1 input channel, 2 output channels (background, tumour)."""
    from monai.networks.nets import UNet

    a = normalise_arch(arch)
    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=a["channels"],
                strides=a["strides"], num_res_units=a["num_res_units"],
                norm=a["norm"].upper())
