"""The ``autoseg-cnn2d/1`` checkpoint format of the 2-D CNNs (``unet``, ``deeplabv3``):
building the networks, writing and reading checkpoints, strict loading.

The format is described in :mod:`autoprompt_seg.models.cnn2d.segmenter` (inference) and
written by :mod:`autoprompt_seg.train.cnn2d` (training); both use this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT = "autoseg-cnn2d/1"
MODELS = ("unet", "deeplabv3")


# --------------------------------------------------------------------------- networks


def check_model(model: str) -> None:
    if model not in MODELS:
        raise ConfigError(f"Argument 'model' must be one of {', '.join(MODELS)}; got {model!r}")


def normalise_arch(model: str, arch: Any) -> dict[str, Any]:
    """The full, checked architecture options of ``model`` (defaults filled in)."""
    check_model(model)
    if model == "unet":
        from .unet import normalise_arch as f
    else:
        from .deeplab import normalise_arch as f
    return f(arch)


def build_net(model: str, arch: Mapping[str, Any]) -> torch.nn.Module:
    """The network of ``model``: ``(N, 1, S, S)`` images in ``[0, 1]`` -> ``(N, 2, S, S)``
    logits (background, tumour). Random initial weights (from torch's global RNG)."""
    check_model(model)
    if model == "unet":
        from .unet import build_net as f
    else:
        from .deeplab import build_net as f
    return f(normalise_arch(model, arch))


def check_image_size(model: str, arch: Mapping[str, Any], image_size: int) -> None:
    """A U-Net needs ``image_size`` divisible by the product of its strides."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ConfigError(f"Argument 'image_size' must be an integer >= 8; got {image_size!r}")
    if model == "unet":
        div = int(np.prod(arch["strides"]))
        if image_size % div:
            raise ConfigError(f"Argument 'image_size' must be divisible by {div} (the U-Net's "
                              f"strides {list(arch['strides'])}); got {image_size}")


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True, eq=False)
class Cnn2dCheckpoint:
    """A read ``autoseg-cnn2d/1`` checkpoint (not yet loaded into a network)."""

    path: Path
    model: str
    arch: dict[str, Any]
    window: tuple[float, float]
    image_size: int
    state_dict: dict[str, Any]


def checkpoint_dict(model: str, arch: Mapping[str, Any], window: Sequence[float],
                    image_size: int, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The object that is ``torch.save``-d as a checkpoint (tensors moved to the CPU)."""
    check_model(model)
    return {"format": FORMAT, "model": model, "arch": dict(normalise_arch(model, arch)),
            "preprocess": {"window": [float(window[0]), float(window[1])],
                           "image_size": int(image_size)},
            "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()}}


def save_checkpoint(path: str | Path, model: str, arch: Mapping[str, Any],
                    window: Sequence[float], image_size: int,
                    state_dict: Mapping[str, Any]) -> Path:
    """Write an ``autoseg-cnn2d/1`` checkpoint (no training record: such a file reports as
    an untrained test checkpoint unless it is a known release)."""
    import torch

    p = Path(path)
    torch.save(checkpoint_dict(model, arch, window, image_size, state_dict), p)
    return p


def read_checkpoint(path: str | Path, model: str | None = None) -> Cnn2dCheckpoint:
    """Read and check a checkpoint file (``weights_only``: no pickled code). ``model``,
    when given, must match the file's."""
    import torch

    from ...weights import read_torch_file
    from .pixels import parse_window

    p = Path(path)
    obj = read_torch_file(p)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = (f"format {obj.get('format')!r}, keys {sorted(map(str, obj))[:8]}"
                 if isinstance(obj, dict) else type(obj).__name__)
        raise ConfigError(f"checkpoint {str(p)!r} is not an {FORMAT} checkpoint (a dict with "
                          f"format, model, arch, preprocess, state_dict); found {found}")
    m = obj.get("model")
    if m not in MODELS:
        raise ConfigError(f"checkpoint {str(p)!r}: unknown model {m!r} (expected one of "
                          f"{', '.join(MODELS)})")
    if model is not None and m != model:
        raise ConfigError(f"checkpoint {str(p)!r} holds a {m} model, not {model}")
    try:
        arch = normalise_arch(m, obj.get("arch"))
        pre = obj.get("preprocess")
        if not isinstance(pre, Mapping):
            raise ConfigError(f"'preprocess' must be a mapping; got {pre!r}")
        window = parse_window(pre.get("window"))
        size: Any = pre.get("image_size")
        check_image_size(m, arch, size)
    except ConfigError as e:
        raise ConfigError(f"checkpoint {str(p)!r}: {e}") from e
    sd = obj.get("state_dict")
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"checkpoint {str(p)!r}: 'state_dict' must be a mapping of tensors; "
                          f"got {type(sd).__name__}")
    return Cnn2dCheckpoint(path=p, model=m, arch=arch, window=window, image_size=int(size),
                           state_dict=dict(sd))


def load_net(ck: Cnn2dCheckpoint) -> torch.nn.Module:
    """Build the checkpoint's network and load its weights strictly (on the CPU)."""
    net = build_net(ck.model, ck.arch)
    from ...weights import load_state_strict

    load_state_strict(net, ck.state_dict, repr(str(ck.path)),
                      f"the {ck.model} architecture {ck.arch}")
    return net
