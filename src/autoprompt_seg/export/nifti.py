"""Prediction -> NIfTI label map in the source geometry (lesion *i* has value *i*)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import OutputError
from ..io.image import write_label_nifti
from ..types import Prediction

log = logging.getLogger(__name__)


def write_nifti(prediction: Prediction, path: str | os.PathLike[str]) -> Path:
    """Write ``prediction.label_map()`` (uint8, 0 = background) as NIfTI at ``path``.

    The image carries the volume's spacing, origin and direction (LPS, converted to the
    NIfTI RAS convention by SimpleITK), so it overlays the source CT in any viewer.
    Where lesions overlap, the lower lesion number wins. Raises :class:`OutputError` for
    more than 255 lesions (a uint8 label map) or when the file cannot be written.
    """
    p = Path(path)
    n = len(prediction.lesions)
    if n > 255:
        raise OutputError(f"{p}: {n} lesions do not fit a uint8 label map (at most 255)")
    try:
        write_label_nifti(prediction.volume, prediction.label_map(), p)
    except RuntimeError as e:  # SimpleITK reports I/O failures as RuntimeError
        raise OutputError(f"{p}: cannot write the NIfTI mask "
                          f"({str(e).strip().splitlines()[-1] if str(e).strip() else e})") from e
    log.debug("NIfTI label map written: %s (%d lesion(s))", p, n)
    return p
