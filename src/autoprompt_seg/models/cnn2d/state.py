"""Strict loading of a state dict into a network, naming the file and the first
differences (the 2-D CNN checkpoints, the DeepLabV3 ImageNet backbone)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def load_state_strict(net: torch.nn.Module, state_dict: Mapping[str, Any], path: Path | str,
                      what: str) -> None:
    """``load_state_dict(strict=True)``; a mismatch raises :class:`ConfigError` naming the
    file and the first differences."""
    own = net.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. "
                         f"{', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {'; '.join(shapes[:2])})")
        raise ConfigError(f"{str(path)!r} does not fit {what}: {'; '.join(parts)}")
    try:
        net.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as e:
        raise ConfigError(f"{str(path)!r} does not load strictly into {what}: "
                          f"{str(e)[:300]}") from e
