"""The format check of an installed nnU-Net v2 model folder (architecture
``nnunetv2_model_folder``), registered with :func:`autoprompt_seg.weights.register_checker`.

Reads every checkpoint with ``weights_only=True`` (numpy scalars and dtypes allowed); does
not import nnunetv2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import AutosegError, ConfigError, UnavailableError
from ...weights import register_checker

ARCHITECTURE = "nnunetv2_model_folder"


def read_safely(data: bytes | Path, what: str) -> Any:
    """An nnU-Net checkpoint (a file, or its bytes) read with ``weights_only=True``, only
    nnU-Net's numpy scalars and dtypes allowed besides tensors; :class:`UnavailableError`
    naming ``what`` when it cannot be read so. The one safe read of the nnU-Net code."""
    import io

    import numpy as np
    import torch

    core = getattr(np, "_core", None) or np.core
    safe: list[Any] = [core.multiarray.scalar, np.dtype]
    safe += [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType")
             if hasattr(np, "dtypes") and hasattr(np.dtypes, n)]
    src: Any = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - many failure types for damaged or unsafe files
        raise UnavailableError(f"nnU-Net checkpoint {what} cannot be read safely "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e


def load_checkpoint_dict(data: bytes | Path, what: str,
                         missing_key_error: type[AutosegError] = ConfigError) -> dict[str, Any]:
    """:func:`read_safely`, then the keys nnU-Net needs; ``missing_key_error`` is raised
    when one is absent (the installer's ConfigError: the user gave the wrong model; the
    model folder's UnavailableError)."""
    obj = read_safely(data, what)
    if not isinstance(obj, dict):
        raise UnavailableError(f"nnU-Net checkpoint {what} is not a checkpoint dict")
    for key in ("network_weights", "trainer_name", "init_args",
                "inference_allowed_mirroring_axes"):
        if key not in obj:
            raise missing_key_error(f"nnU-Net checkpoint {what} has no {key!r}")
    return obj


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
    for c in ckpts:
        obj = read_safely(c, repr(str(c)))
        for key in ("network_weights", "inference_allowed_mirroring_axes"):
            if not isinstance(obj, dict) or key not in obj:
                raise ConfigError(f"nnU-Net checkpoint {str(c)!r} has no {key!r} (without "
                                  f"it nnU-Net's predictor cannot run as trained)")


register_checker(ARCHITECTURE, check_model_folder)
