"""Strict loading of the bundle's ``models/model.pt``.

The bundle's ``CheckpointLoader`` handler (``load_dict={"model": @network}``) accepts a
file that is the network's state dict itself (what the bundle's training saves with a
single-entry ``CheckpointSaver``) or a mapping with a ``"model"`` entry; both are accepted
here. The file is read with ``torch.load(weights_only=True)`` (no code runs while it is
unpickled; :func:`autoprompt_seg.weights.read_torch_file`) and loaded with ``strict=True``: any missing or unexpected key, or a shape that
differs, is refused with :class:`~autoprompt_seg.errors.ConfigError` naming the file and the
first offending keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import ConfigError, UnavailableError
from ...weights import load_state_strict, read_torch_file, register_checker
from . import ARCHITECTURE, WEIGHTS_NAME


def read_state_dict(path: Path) -> dict[str, Any]:
    """The RetinaNet state dict held by ``path`` (plain, or under ``"model"``)."""
    path = Path(path)
    try:
        obj = read_torch_file(path)
    except UnavailableError as e:
        raise UnavailableError(f"RetinaNet {e}; install the bundle's models/model.pt again "
                               f"(autoseg weights fetch {WEIGHTS_NAME})") from e
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise ConfigError(f"RetinaNet checkpoint {str(path)!r} is not a state dict (nor "
                          f"{{'model': state_dict}}); got {type(obj).__name__}")
    return dict(obj)


def load_network(path: Path) -> Any:
    """Build the bundle's network and load ``path`` into it strictly (eval mode, CPU)."""
    from .network import build_network

    sd = read_state_dict(Path(path))
    net = build_network()
    load_state_strict(net, sd, f"checkpoint {str(path)!r}",
                      f"the {ARCHITECTURE} architecture (MONAI lung_nodule_ct_detection "
                      f"RetinaNet, ResNet50-FPN)")
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
