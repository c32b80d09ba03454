"""The ``nnunet`` detector: a (lightweight) nnU-Net v2 model proposes one box per tumour.

The model folder, configuration, folds and TTA come from ``Settings.options["nnunet"]``
(see :mod:`autoprompt_seg.models.nnunet.model`); threads follow ``Settings.threads`` and the device
``Settings.device``. Mirroring TTA is off by default (``{"tta": true}`` switches it on,
8x the cost of a 3-D model).

From probabilities to boxes (:func:`boxes_from_probabilities`), all in the volume's own
voxel grid (nnU-Net resamples its output back to the input grid):

1. voxels whose foreground probability is ``>= threshold`` (default 0.5) are grouped into
   26-connected components;
2. components smaller than ``min_volume_ml`` (default 0.1 ml) are dropped as specks;
3. each component gives a tight box grown by ``margin_mm`` (default 2 mm, converted per
   axis with the voxel spacing, so anisotropic voxels get the same physical margin) and
   clipped to the volume; its score is the component's maximum probability;
4. proposals whose (grown) boxes overlap are merged (``merge_overlapping``, default on)
   until none overlap: the merged box is the union, the score the maximum;
5. the key slice is the slice where the proposal's components have the largest area (ties:
   the one nearest the centroid's slice). Boxes are returned by decreasing score.

Touching lesions form one component and so one box: the detector only has to put a prompt
on each tumour, and the segmenter draws the boundary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..backends import ProgressFn
from ..config import Settings
from ..errors import ConfigError
from ..types import BackendInfo, Box3D, Volume

log = logging.getLogger(__name__)

VERSION = "0.1.0"


@dataclass
class _Proposal:
    lo: list[int]
    hi: list[int]
    score: float
    labels: list[int]


def _key_slice(area_per_slice: npt.NDArray[np.int64], z0: int) -> int:
    best = np.flatnonzero(area_per_slice == area_per_slice.max())
    zs = np.arange(area_per_slice.size)
    centroid = float((area_per_slice * zs).sum() / max(int(area_per_slice.sum()), 1))
    return z0 + int(best[np.argmin(np.abs(best - centroid))])


def _overlap(a: _Proposal, b: _Proposal) -> bool:
    return all(a.lo[i] < b.hi[i] and b.lo[i] < a.hi[i] for i in range(3))


def boxes_from_probabilities(prob: npt.NDArray[np.floating[Any]],
                             spacing: tuple[float, float, float], *, threshold: float = 0.5,
                             min_volume_ml: float = 0.1, margin_mm: float = 2.0,
                             merge_overlapping: bool = True, source: str = "nnunet"
                             ) -> list[Box3D]:
    """Box proposals from a ``(z, y, x)`` foreground probability map (module docstring).

    ``spacing`` is ``(sz, sy, sx)`` in mm. Raises :class:`ConfigError` for a bad argument.
    """
    from scipy import ndimage as ndi

    p = np.asarray(prob)
    if p.ndim != 3:
        raise ConfigError(f"Argument 'prob' must be a 3-D (z, y, x) array; got shape {p.shape}")
    if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
        raise ConfigError(f"Argument 'spacing' must be three positive numbers (mm); "
                          f"got {spacing!r}")
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"Argument 'threshold' must lie in (0, 1]; got {threshold!r}")
    if min_volume_ml < 0 or margin_mm < 0:
        raise ConfigError(f"Arguments 'min_volume_ml' and 'margin_mm' must be >= 0; got "
                          f"{min_volume_ml!r} and {margin_mm!r}")
    shape = p.shape
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labelled, n = ndi.label(p >= threshold, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return []
    counts = np.bincount(labelled.ravel(), minlength=n + 1)
    maxima = ndi.maximum(p, labelled, index=np.arange(1, n + 1))
    objects = ndi.find_objects(labelled)
    margin = [int(np.ceil(margin_mm / float(s) - 1e-9)) for s in spacing]
    props: list[_Proposal] = []
    for lab in range(1, n + 1):
        sl = objects[lab - 1]
        if sl is None or counts[lab] * voxel_ml < min_volume_ml:
            continue
        lo = [max(0, int(s.start) - m) for s, m in zip(sl, margin)]
        hi = [min(dim, int(s.stop) + m) for s, m, dim in zip(sl, margin, shape)]
        props.append(_Proposal(lo, hi, float(maxima[lab - 1]), [lab]))
    dropped = n - len(props)
    if merge_overlapping:
        merged = True
        while merged:
            merged = False
            for i in range(len(props)):
                for j in range(i + 1, len(props)):
                    a, b = props[i], props[j]
                    if _overlap(a, b):
                        a.lo = [min(x, y) for x, y in zip(a.lo, b.lo)]
                        a.hi = [max(x, y) for x, y in zip(a.hi, b.hi)]
                        a.score = max(a.score, b.score)
                        a.labels += b.labels
                        del props[j]
                        merged = True
                        break
                if merged:
                    break
    boxes: list[Box3D] = []
    for pr in props:
        sub = labelled[pr.lo[0]:pr.hi[0], pr.lo[1]:pr.hi[1], pr.lo[2]:pr.hi[2]]
        comp = np.isin(sub, pr.labels)
        areas = comp.reshape(comp.shape[0], -1).sum(axis=1).astype(np.int64)
        boxes.append(Box3D(z0=pr.lo[0], z1=pr.hi[0], y0=pr.lo[1], y1=pr.hi[1], x0=pr.lo[2],
                           x1=pr.hi[2], key_slice=_key_slice(areas, pr.lo[0]), score=pr.score,
                           source=source, from_person=False))
    boxes.sort(key=lambda b: (-b.score, b.z0, b.y0, b.x0))
    log.debug("%d component(s) >= %.2f, %d below %.3g ml dropped, %d box(es)", n, threshold,
              dropped, min_volume_ml, len(boxes))
    return boxes


class NnunetDetector:
    """Finds tumours with an nnU-Net v2 model and boxes them (module docstring)."""

    def __init__(self, settings: Settings) -> None:
        from ..models.nnunet.model import NnunetOptions, load_model

        self.opts = NnunetOptions.from_settings(settings)
        self.model = load_model(settings, self.opts)

    def info(self) -> BackendInfo:
        from ..models.nnunet.model import nnunet_version

        d = self.model.details()
        d.update(threshold=self.opts.threshold, min_volume_ml=self.opts.min_volume_ml,
                 margin_mm=self.opts.margin_mm, nnunetv2=nnunet_version())
        return BackendInfo(name="nnunet", kind="detector", version=VERSION,
                           checkpoint=str(self.model.folder.checkpoints[0]),
                           checkpoint_sha256=self.model.checkpoint_sha256,
                           trained=self.model.trained, details=d)

    def detect(self, volume: Volume, progress: ProgressFn | None = None) -> list[Box3D]:
        out = self.model.predict(volume)
        boxes = boxes_from_probabilities(out.foreground, volume.spacing,
                                         threshold=self.opts.threshold,
                                         min_volume_ml=self.opts.min_volume_ml,
                                         margin_mm=self.opts.margin_mm,
                                         merge_overlapping=self.opts.merge_overlapping)
        if progress is not None:
            progress(1, 1)
        log.info("nnunet detector: %d box(es) (%d patch(es), %.1f s)", len(boxes),
                 out.n_patches, out.seconds)
        return boxes


def create(settings: Settings) -> NnunetDetector:
    """Registry factory: reads ``Settings.options["nnunet"]``."""
    return NnunetDetector(settings)
