"""What the prompt-free segmenters share: splitting a full mask among the boxes (used by
the ``nnunet`` segmenter and the 2-D CNNs, :mod:`autoprompt_seg.models.cnn2d.segmenter`).

Component assignment (:func:`assign_components`, also used by the ``nnunet`` segmenter)
-----------------------------------------------------------------------------------------
A prompt-free model segments the whole volume; the boxes only say which part of that mask
belongs to which lesion:

* the mask is split into 26-connected components;
* a component belongs to the box it overlaps most (in voxels; ties: the earlier box), so
  a voxel is never given to two lesions;
* each box's mask is the union of its components, *whole* (not cut at the box);
* a box that overlaps no component gets an empty mask; components that overlap no box are
  not reported. A single whole-volume box (the ``none`` detector) gets the whole mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..backends import ProgressFn
from ..types import Box3D, LesionMask

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- components


def assign_components(mask: npt.NDArray[np.bool_], boxes: Sequence[Box3D]
                      ) -> tuple[list[npt.NDArray[np.bool_]], int, int]:
    """Split ``mask`` into 26-connected components and give each to the box it overlaps
    most (module docstring). Returns (one full-size boolean mask per box, number of
    components, number of components that no box claimed)."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, dtype=bool)
    labelled, n = ndi.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    owner = np.full(n + 1, -1, dtype=np.int64)
    best = np.zeros(n + 1, dtype=np.int64)
    for i, b in enumerate(boxes):
        counts = np.bincount(labelled[b.slices()].ravel(), minlength=n + 1)
        counts[0] = 0
        better = counts > best
        owner[better] = i
        best[better] = counts[better]
    lesion_of = owner[labelled]  # -1 for background and unclaimed components
    out = [lesion_of == i if (owner == i).any() else np.zeros(mask.shape, dtype=bool)
           for i in range(len(boxes))]
    return out, int(n), int((owner[1:] < 0).sum())


def masks_for_boxes(mask: npt.NDArray[np.bool_], boxes: Sequence[Box3D], who: str = "",
                    progress: ProgressFn | None = None) -> list[LesionMask]:
    """:func:`assign_components` as one :class:`LesionMask` per box (score: the box's)."""
    fulls, n, unclaimed = assign_components(mask, boxes)
    out = []
    for i, (full, b) in enumerate(zip(fulls, boxes)):
        out.append(LesionMask.from_full(full, b, score=b.score))
        if progress is not None:
            progress(i + 1, len(boxes))
    log.info("%s: %d component(s), %d box(es), %d unclaimed", who or "segmenter", n,
             len(boxes), unclaimed)
    return out

