"""One evaluation or training case (:class:`Case`: lazily loaded image and ground-truth
mask) and :func:`load_case`, which loads and checks it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from ..types import Volume

Mask = npt.NDArray[np.bool_]


GEOMETRY_TOL = 1e-3


@dataclass(frozen=True)
class Case:
    """One evaluation case: lazily loaded image and GT mask."""

    case_id: str
    patient_id: str
    load_volume: Callable[[], Volume] = field(repr=False, compare=False)
    load_label: Callable[[Volume], Mask] = field(repr=False, compare=False)
    source: str = ""

    def __post_init__(self) -> None:
        if not self.case_id or "/" in self.case_id:
            raise ValueError(f"Argument 'case_id' must be a non-empty name without '/'; "
                             f"got {self.case_id!r}")
        if not self.patient_id:
            raise ValueError(f"Argument 'patient_id' must be non-empty; got {self.patient_id!r}")


def load_case(case: Case) -> tuple[Volume, Mask]:
    """Load a case and check it; :class:`InputError` names the case and the problem."""
    try:
        volume = case.load_volume()
        mask = np.asarray(case.load_label(volume))
    except InputError as e:
        raise InputError(f"case {case.case_id}: {e}") from e
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"case {case.case_id}: {type(e).__name__}: {e}") from e
    if mask.shape != volume.shape:
        raise InputError(f"case {case.case_id}: label shape {mask.shape} differs from the "
                         f"image shape {volume.shape}")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        raise InputError(f"case {case.case_id}: the ground-truth ROI is empty")
    return volume, mask
