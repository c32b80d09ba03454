"""Strict loading of the bundle's ``models/model.pt``.

The bundle's ``CheckpointLoader`` handler (``load_dict={"model": @network}``) accepts a
file that is the network's state dict itself (what the bundle's training saves with a
single-entry ``CheckpointSaver``) or a mapping with a ``"model"`` entry; both are accepted
here. The file is read with ``torch.load(weights_only=True)`` (no code runs while it is
unpickled) and loaded with ``strict=True``: any missing or unexpected key, or a shape that
differs, is refused with :class:`~autoprompt_seg.errors.ConfigError` naming the file and the
first offending keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import ConfigError, UnavailableError
from ...weights import register_checker
from . import ARCHITECTURE


def read_state_dict(path: Path) -> dict[str, Any]:
    """The RetinaNet state dict held by ``path`` (plain, or under ``"model"``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UnavailableError(f"RetinaNet checkpoint {str(path)!r}: no such file (a folder or "
                               "a missing path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - many failure types for damaged files
        raise UnavailableError(f"RetinaNet checkpoint {str(path)!r} is truncated, corrupt or "
                               f"not a weights-only torch file ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise ConfigError(f"RetinaNet checkpoint {str(path)!r} is not a state dict (nor "
                          f"{{'model': state_dict}}); got {type(obj).__name__}")
    return dict(obj)


def check_fits(network: Any, state_dict: Mapping[str, Any], path: Path) -> None:
    """Keys and shapes of ``state_dict`` against ``network``; a mismatch raises
    :class:`ConfigError` naming the missing / unexpected keys and shape differences."""
    own = network.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: file {tuple(getattr(state_dict[k], 'shape', ()))} vs model "
              f"{tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and tuple(getattr(state_dict[k], "shape", ())) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:5])}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:3])}")
        raise ConfigError(f"checkpoint {str(path)!r} does not fit the {ARCHITECTURE} "
                          f"architecture (MONAI lung_nodule_ct_detection RetinaNet, ResNet50-"
                          f"FPN): {'; '.join(parts)}")


def load_network(path: Path) -> Any:
    """Build the bundle's network and load ``path`` into it strictly (eval mode, CPU)."""
    from .network import build_network

    sd = read_state_dict(Path(path))
    net = build_network()
    check_fits(net, sd, Path(path))
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # dtype or other problems that keys/shapes do not show
        raise ConfigError(f"checkpoint {str(path)!r} does not load strictly into the "
                          f"{ARCHITECTURE} architecture: {str(e)[:300]}") from e
    return net.eval()


def check_checkpoint(path: Path) -> None:
    """Prove that ``path`` loads strictly (used by ``autoseg weights add`` / ``fetch``)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"weights {str(p)!r} is a folder; give the bundle's models/model.pt "
                          "file (unzip the bundle first)")
    if p.suffix.lower() == ".zip":
        raise ConfigError(f"weights {str(p)!r} looks like the bundle zip; install its "
                          "models/model.pt (unzip it first)")
    load_network(p)


register_checker(ARCHITECTURE, check_checkpoint)
