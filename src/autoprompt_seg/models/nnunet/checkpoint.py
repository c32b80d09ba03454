"""The format check of an installed nnU-Net v2 model folder (architecture
``nnunetv2_model_folder``), registered with :func:`autoprompt_seg.weights.register_checker`.

Reads every checkpoint with ``weights_only=True`` (numpy scalars and dtypes allowed); does
not import nnunetv2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError, UnavailableError
from ...weights import register_checker

ARCHITECTURE = "nnunetv2_model_folder"


def check_model_folder(path: Path) -> None:
    """An nnU-Net v2 model folder: dataset.json, plans.json, fold_X/checkpoint_final.pth with
    ``network_weights`` and ``inference_allowed_mirroring_axes``."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"weights {str(path)!r} must be an nnU-Net v2 model folder "
                          f"(dataset.json, plans.json, fold_X/checkpoint_final.pth); for a "
                          f"zip (nnU-Net export, TotalSegmentator) use `autoseg weights "
                          f"add-nnunet ZIP --name NAME`")
    for f in ("dataset.json", "plans.json"):
        if not (path / f).is_file():
            raise ConfigError(f"nnU-Net model folder {str(path)!r} has no {f}")
    ckpts = (sorted(path.glob("fold_*/checkpoint_final.pth"))
             or sorted(path.glob("fold_*/checkpoint_best.pth")))  # add-nnunet may pick best
    if not ckpts:
        raise ConfigError(f"nnU-Net model folder {str(path)!r} has no "
                          f"fold_X/checkpoint_final.pth")
    import numpy as np
    import torch

    core = getattr(np, "_core", None) or np.core
    safe: list[Any] = [core.multiarray.scalar, np.dtype]
    safe += [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType")
             if hasattr(np, "dtypes") and hasattr(np.dtypes, n)]
    for c in ckpts:
        try:
            with torch.serialization.safe_globals(safe):
                obj = torch.load(c, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise UnavailableError(f"nnU-Net checkpoint {str(c)!r} cannot be read safely "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
        for key in ("network_weights", "inference_allowed_mirroring_axes"):
            if not isinstance(obj, dict) or key not in obj:
                raise ConfigError(f"nnU-Net checkpoint {str(c)!r} has no {key!r} (without "
                                  f"it nnU-Net's predictor cannot run as trained)")


register_checker(ARCHITECTURE, check_model_folder)
