"""The ``nnunet_fullscan`` detector: an installed full-resolution nnU-Net model (e.g.
TotalSegmentator's ``lung_nodules``) run on the lung region, its tumour label boxed.

Steps
-----
1. **Lung crop** (``crop = "lungs"``, the default): the lungs are found by the training-free
   detector's lung segmentation (:meth:`CandidatesDetector.lung_mask` on its working grid;
   imported, not copied); the crop is the lungs' bounding box, mapped to the original grid
   and grown by ``crop_margin_mm`` (default 20 mm) per side, clipped to the volume.
   TotalSegmentator crops ``lung_nodules`` the same way (bounding box of its five lobe masks,
   ``crop_addon`` 10 mm, converted to voxels with the image spacing); our lung mask is
   cruder than its lobe model, hence the larger default margin. No lungs found: the whole
   volume is used (logged). ``crop = "none"`` runs on the whole volume.
2. **Inference**: nnU-Net's own preprocessing, sliding window and resampling
   (:class:`autoprompt_seg.models.nnunet.model.NnunetModel`), on the cropped sub-volume whose
   geometry (origin) is that of the crop, so orientation handling is unchanged.
3. **Boxes**: P(tumour) = the sum of the tumour labels' probabilities (the install's
   ``--tumour-labels``; TotalSegmentator's ``lung_nodules``: label 2), pasted into a
   full-size zero array at the crop's offset; :func:`boxes_from_probabilities` of the
   ``nnunet`` detector (threshold, minimum volume, margin, merging) turns it into boxes. The
   boxes are thus in the original grid by construction.

Options (``Settings.options["nnunet_fullscan"]``): ``model`` (installed name or folder;
default ``totalseg_lung_nodules``), ``crop`` (``lungs`` | ``none``), ``crop_margin_mm``,
``threshold``, ``min_volume_ml``, ``margin_mm``, ``merge_overlapping``, ``tta``,
``tile_step_size``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...backends import ProgressFn
from ...config import Settings
from ...errors import ConfigError
from ...types import BackendInfo, Box3D, Volume

log = logging.getLogger(__name__)

VERSION = "0.1.0"
OPTIONS_KEY = "nnunet_fullscan"
DEFAULT_MODEL = "totalseg_lung_nodules"


@dataclass(frozen=True)
class FullscanOptions:
    model: str = DEFAULT_MODEL
    crop: str = "lungs"
    crop_margin_mm: float = 20.0
    threshold: float = 0.5
    min_volume_ml: float = 0.01
    margin_mm: float = 2.0
    merge_overlapping: bool = True
    tta: bool = False
    tile_step_size: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"Option 'nnunet_fullscan.model' must be an installed model name "
                              f"or folder; got {self.model!r}")
        if self.crop not in ("lungs", "none"):
            raise ConfigError(f"Option 'nnunet_fullscan.crop' must be 'lungs' or 'none'; got "
                              f"{self.crop!r}")
        for name, lo_open, hi in (("crop_margin_mm", False, float("inf")),
                                  ("threshold", True, 1.0), ("min_volume_ml", False, float("inf")),
                                  ("margin_mm", False, float("inf")),
                                  ("tile_step_size", True, 1.0)):
            v = getattr(self, name)
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                  and (v > 0 if lo_open else v >= 0) and v <= hi)
            if not ok:
                raise ConfigError(f"Option 'nnunet_fullscan.{name}' must be a number in "
                                  f"{'(0' if lo_open else '[0'}, {hi}]; got {v!r}")
        for name in ("merge_overlapping", "tta"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"Option 'nnunet_fullscan.{name}' must be true or false; got "
                                  f"{getattr(self, name)!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> FullscanOptions:
        from ...options import parse_options

        return parse_options(cls, settings.options.get(OPTIONS_KEY) or {}, OPTIONS_KEY)


def lung_crop(volume: Volume, margin_mm: float) -> tuple[slice, slice, slice] | None:
    """The lungs' bounding box (training-free lung mask) grown by ``margin_mm``, in the
    volume's voxel grid; None when no lung is found."""
    from ...detect.candidates import CandidatesDetector

    det = CandidatesDetector()
    img, wsp, f = det.working_grid(volume)
    if min(img.shape) < 3:
        return None
    lung = det.lung_mask(img, wsp)
    if not lung.any():
        return None
    out = []
    for axis, (n, fac, sp) in enumerate(zip(volume.shape, f, volume.spacing)):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(lung.any(axis=other))
        m = int(np.ceil(margin_mm / sp - 1e-9))
        lo = max(0, int(idx[0]) * fac - m)
        hi = min(n, (int(idx[-1]) + 1) * fac + m)
        out.append(slice(lo, hi))
    return out[0], out[1], out[2]


def crop_volume(volume: Volume, crop: tuple[slice, slice, slice]) -> Volume:
    """The sub-volume ``volume.array[crop]`` with the geometry of its first voxel."""
    z, y, x = (int(s.start) for s in crop)
    origin = volume.index_to_lps(z, y, x)
    return Volume(array=np.ascontiguousarray(volume.array[crop]), spacing=volume.spacing,
                  origin=origin, direction=volume.direction,
                  study_uid=volume.study_uid, series_uid=volume.series_uid,
                  frame_of_reference_uid=volume.frame_of_reference_uid,
                  description=volume.description, source_format=volume.source_format)


class FullscanDetector:
    """See the module docstring."""

    def __init__(self, settings: Settings) -> None:
        from .install import load_installed

        self.opts = FullscanOptions.from_settings(settings)
        self.installed, self.model, self.provenance = load_installed(
            self.opts.model, settings, tta=self.opts.tta,
            tile_step_size=self.opts.tile_step_size)
        self.last_crop: tuple[slice, slice, slice] | None = None
        self.last_seconds: dict[str, float] = {}

    def info(self) -> BackendInfo:
        from .model import nnunet_version

        m = self.installed
        d: dict[str, Any] = self.model.details()
        d.update(model=m.name, dataset=m.dataset, trainer_base=m.trainer_base,
                 trainer_rule=m.trainer_rule, checkpoint_name=m.checkpoint_name,
                 tumour_labels=list(m.tumour_labels),
                 tumour_label_names=m.label_names(m.tumour_labels),
                 provenance=self.provenance.text, crop=self.opts.crop,
                 crop_margin_mm=self.opts.crop_margin_mm, threshold=self.opts.threshold,
                 min_volume_ml=self.opts.min_volume_ml, margin_mm=self.opts.margin_mm,
                 nnunetv2=nnunet_version())
        if self.last_crop is not None:
            d["last_crop_zyx"] = [[s.start, s.stop] for s in self.last_crop]
        return BackendInfo(name="nnunet_fullscan", kind="detector", version=VERSION,
                           checkpoint=str(m.checkpoints[0]),
                           checkpoint_sha256=self.model.checkpoint_sha256,
                           trained=self.model.trained, details=d)

    def probability(self, volume: Volume) -> np.ndarray:
        """P(tumour) in ``volume``'s full grid (zero outside the crop)."""
        t0 = time.perf_counter()
        crop: tuple[slice, slice, slice] | None = None
        if self.opts.crop == "lungs":
            crop = lung_crop(volume, self.opts.crop_margin_mm)
            if crop is None:
                log.warning("nnunet_fullscan: no lungs found; running on the whole volume")
        if crop is None:
            crop = (slice(0, volume.shape[0]), slice(0, volume.shape[1]),
                    slice(0, volume.shape[2]))
        self.last_crop = crop
        t1 = time.perf_counter()
        sub = crop_volume(volume, crop)
        out = self.model.predict(sub)
        p_sub = out.label_probability(self.installed.tumour_labels)
        t2 = time.perf_counter()
        prob = np.zeros(volume.shape, dtype=np.float32)
        prob[crop] = p_sub
        self.last_seconds = {"crop_s": t1 - t0, "inference_s": t2 - t1,
                             "n_patches": float(out.n_patches)}
        log.info("nnunet_fullscan: crop %s of %s (%.1f s), nnU-Net %d patch(es) %.1f s",
                 [[s.start, s.stop] for s in crop], volume.shape, t1 - t0, out.n_patches,
                 t2 - t1)
        return prob

    def detect(self, volume: Volume, progress: ProgressFn | None = None) -> list[Box3D]:
        from ...detect.nnunet import boxes_from_probabilities

        prob = self.probability(volume)
        boxes = boxes_from_probabilities(prob, volume.spacing, threshold=self.opts.threshold,
                                         min_volume_ml=self.opts.min_volume_ml,
                                         margin_mm=self.opts.margin_mm,
                                         merge_overlapping=self.opts.merge_overlapping,
                                         source="nnunet_fullscan")
        if progress is not None:
            progress(1, 1)
        return boxes


def create(settings: Settings) -> FullscanDetector:
    """Registry factory: reads ``Settings.options["nnunet_fullscan"]``."""
    return FullscanDetector(settings)
