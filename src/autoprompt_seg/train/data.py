"""Training data shared by every trainer: K-shot subsets, loaded training volumes, slice
sampling with tumour-positive oversampling, CT windowing, resizing and 2-D augmentation.

Nothing here knows a model. The pieces:

* :func:`kshot_subsets` -- seeded, nested K-shot subsets of a training split, drawn **by
  patient** (every case of a chosen patient comes along);
* :func:`load_training_set` -- the cases as :class:`TrainingVolume` arrays in host memory
  (bad cases are logged and skipped);
* :class:`SliceSampler` -- ``(volume index, z)`` draws with a chosen fraction of
  tumour-positive slices; each epoch's draws depend only on ``(seed, epoch)``, so a resumed
  run draws exactly what an uninterrupted one would;
* :func:`window_ct`, :func:`resize_images`, :func:`resize_masks` -- CT window to ``[0, 1]``
  and resizing of ``(N, C, H, W)`` tensors (used by training *and* inference, so that both
  see the same pixels);
* :func:`augment_batch` -- random flips, a small rotation and scale, and intensity jitter,
  applied identically to image and mask; its randomness comes from a ``torch.Generator``
  (seeded by the caller) and runs on the CPU, so it is the same on every device.

Memory: a :class:`TrainingVolume` holds its HU array in host memory (``hu_dtype=np.int16``
halves it: about 34 MB for a 512x512x130 CT); batches are built slice by slice, so only the
batch ever reaches the accelerator.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..datasets import Case, load_case
from ..errors import ConfigError, InputError
from ..models.cnn2d.pixels import (  # noqa: F401 - part of this module's API
    DEFAULT_WINDOW,
    parse_window,
    resize_images,
    resize_masks,
    window_ct,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------- K-shot


def kshot_subsets(cases: Sequence[Case], ks: Iterable[int], seed: int = 0
                  ) -> dict[int, list[Case]]:
    """Nested K-shot training subsets, sampled by patient and seeded.

    The distinct patients are sorted, shuffled with ``random.Random(seed)`` and the first K
    taken for each K, so K=1 is inside K=5 is inside K=10 and the same seed always gives
    the same subsets. Each subset holds *every* case of its K patients, in the order of
    ``cases``. A K larger than the number of patients (or not a positive integer) raises
    :class:`ConfigError`.
    """
    ks = list(ks)
    patients = sorted({c.patient_id for c in cases})
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"Argument 'ks' must hold positive integers; got {k!r}")
        if k > len(patients):
            raise ConfigError(f"Argument 'ks': K={k} exceeds the {len(patients)} patient(s) "
                              f"of the training cases")
    order = list(patients)
    random.Random(seed).shuffle(order)
    out: dict[int, list[Case]] = {}
    for k in ks:
        chosen = set(order[:int(k)])
        out[int(k)] = [c for c in cases if c.patient_id in chosen]
    return out


# --------------------------------------------------------------------------- volumes


@dataclass(frozen=True, eq=False)
class TrainingVolume:
    """One loaded training case: HU array and tumour mask on the same ``(z, y, x)`` grid."""

    case_id: str
    patient_id: str
    hu: npt.NDArray[Any]  # float32 (default) or int16 HU, (z, y, x)
    mask: npt.NDArray[np.bool_]
    spacing: tuple[float, float, float]  # (z, y, x) mm

    def __post_init__(self) -> None:
        if self.hu.ndim != 3 or self.hu.shape != self.mask.shape:
            raise ValueError(f"Argument 'mask' must have the shape of 'hu' {self.hu.shape} "
                             f"(3-D); got {self.mask.shape}")
        if self.mask.dtype != np.bool_:
            raise ValueError(f"Argument 'mask' must be boolean; got {self.mask.dtype}")

    @property
    def positive_slices(self) -> npt.NDArray[np.intp]:
        """z indices of the slices holding tumour."""
        return np.flatnonzero(self.mask.any(axis=(1, 2)))

    @property
    def num_slices(self) -> int:
        return int(self.hu.shape[0])


def load_training_set(cases: Sequence[Case], hu_dtype: Any = np.float32
                      ) -> list[TrainingVolume]:
    """Load every case (:func:`~autoprompt_seg.datasets.load_case`) into host memory.

    A case that fails to load (:class:`InputError`: missing label, empty ROI, geometry
    mismatch...) is logged and skipped; when none is left, :class:`InputError` names them.
    ``hu_dtype`` is ``np.float32`` or ``np.int16`` (HU rounded and clipped to the int16
    range; half the memory).
    """
    if np.dtype(hu_dtype) not in (np.dtype(np.float32), np.dtype(np.int16)):
        raise ConfigError(f"Argument 'hu_dtype' must be float32 or int16; got {hu_dtype!r}")
    out: list[TrainingVolume] = []
    problems: list[str] = []
    for case in cases:
        try:
            volume, mask = load_case(case)
        except InputError as e:
            log.warning("training case %s skipped: %s", case.case_id, e)
            problems.append(f"{case.case_id}: {e}")
            continue
        hu = volume.array
        if np.dtype(hu_dtype) == np.int16:
            hu = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
        out.append(TrainingVolume(case_id=case.case_id, patient_id=case.patient_id,
                                  hu=np.ascontiguousarray(hu),
                                  mask=np.ascontiguousarray(mask, dtype=bool),
                                  spacing=volume.spacing))
    if not out:
        raise InputError(f"no usable training case among {len(cases)}: "
                         + ("; ".join(problems) if problems else "none given"))
    log.info("training set: %d case(s) loaded, %d skipped", len(out), len(problems))
    return out


# --------------------------------------------------------------------------- sampling


class SliceSampler:
    """Draws training slices ``(volume index, z)`` with tumour-positive oversampling.

    Each draw is a tumour-positive slice with probability ``pos_fraction`` (uniform over
    all positive slices of all volumes), else a tumour-free one (uniform over those).
    Where one kind does not exist, every draw is of the other kind (logged). Draws are
    with replacement. ``sample(n, epoch, stream)`` depends only on ``(seed, stream,
    epoch)``; use another ``stream`` for draws that must not repeat the training draws.
    """

    def __init__(self, volumes: Sequence[TrainingVolume], pos_fraction: float = 0.5,
                 seed: int = 0) -> None:
        if not volumes:
            raise ValueError("Argument 'volumes' must hold at least one volume; got none")
        ok = isinstance(pos_fraction, (int, float)) and not isinstance(pos_fraction, bool)
        if not ok or not 0.0 <= float(pos_fraction) <= 1.0:
            raise ConfigError(f"Option 'pos_fraction' must be a number in [0, 1]; "
                              f"got {pos_fraction!r}")
        self.pos_fraction = float(pos_fraction)
        self.seed = int(seed)
        pos: list[tuple[int, int]] = []
        neg: list[tuple[int, int]] = []
        for i, v in enumerate(volumes):
            has = v.mask.any(axis=(1, 2))
            pos += [(i, int(z)) for z in np.flatnonzero(has)]
            neg += [(i, int(z)) for z in np.flatnonzero(~has)]
        self.positives = np.asarray(pos, dtype=np.int64).reshape(-1, 2)
        self.negatives = np.asarray(neg, dtype=np.int64).reshape(-1, 2)
        if not len(self.positives) and self.pos_fraction > 0:
            log.warning("no tumour-positive slice in the training set: sampling tumour-free "
                        "slices only")
        if not len(self.negatives) and self.pos_fraction < 1:
            log.warning("no tumour-free slice in the training set: sampling positive slices "
                        "only")

    @property
    def effective_pos_fraction(self) -> float:
        if not len(self.positives):
            return 0.0
        if not len(self.negatives):
            return 1.0
        return self.pos_fraction

    def epoch_length(self) -> int:
        """Draws in one nominal epoch: enough for each tumour-positive slice to come up
        once on average (``n_pos / pos_fraction``), or every slice once when positives are
        not sampled."""
        f = self.effective_pos_fraction
        if f <= 0:
            return len(self.negatives)
        return max(1, math.ceil(len(self.positives) / f))

    def sample(self, n: int, epoch: int = 0, stream: int = 0) -> list[tuple[int, int]]:
        """``n`` draws for ``epoch`` (deterministic in ``(seed, stream, epoch)``)."""
        if n < 0:
            raise ValueError(f"Argument 'n' must be >= 0; got {n}")
        if epoch < 0 or stream < 0:
            raise ValueError(f"Arguments 'epoch' and 'stream' must be >= 0; got {epoch}, "
                             f"{stream}")
        rng = np.random.default_rng([self.seed, int(stream), int(epoch)])
        f = self.effective_pos_fraction
        is_pos = rng.random(n) < f
        out = np.empty((n, 2), dtype=np.int64)
        n_pos = int(is_pos.sum())
        if n_pos:
            out[is_pos] = self.positives[rng.integers(len(self.positives), size=n_pos)]
        if n - n_pos:
            out[~is_pos] = self.negatives[rng.integers(len(self.negatives), size=n - n_pos)]
        return [(int(a), int(b)) for a, b in out]


# --------------------------------------------------------------------------- pixels


def make_batch(volumes: Sequence[TrainingVolume], items: Sequence[tuple[int, int]],
               window: Sequence[float], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windowed, resized slices and masks for ``items``: ``(N, 1, S, S)`` float32 images in
    ``[0, 1]`` and ``(N, 1, S, S)`` int64 labels (0/1), on the CPU."""
    import torch

    xs, ys = [], []
    for vi, z in items:
        v = volumes[vi]
        img = torch.from_numpy(window_ct(v.hu[z], window))[None, None]
        lab = torch.from_numpy(v.mask[z].astype(np.uint8))[None, None]
        xs.append(resize_images(img, image_size))
        ys.append(resize_masks(lab, image_size))
    return torch.cat(xs), torch.cat(ys).long()


# --------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation ranges (each draw is uniform in ``[-x, x]`` or ``[1 - x, 1 + x]``)."""

    flip_prob: float = 0.5  # per axis (left-right, up-down)
    rotate_deg: float = 15.0
    scale: float = 0.15
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    noise_std: float = 0.02  # gaussian noise on the [0, 1] image


def augment_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                  cfg: AugmentConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: per sample, random flips, rotation and scale (one affine warp,
    bilinear for the image, nearest for the mask, zero padding), then intensity scale,
    shift and noise on the image only, clipped to ``[0, 1]``.

    ``x``: ``(N, 1, H, W)`` float in ``[0, 1]``; ``y``: ``(N, 1, H, W)`` integer labels.
    Every random number is drawn from ``generator`` (a CPU generator) in a fixed order, so
    a seeded generator gives the same batch on every device.
    """
    import torch
    import torch.nn.functional as F

    cfg = cfg or AugmentConfig()
    n = x.shape[0]
    g = generator

    def uni(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    flip_x = torch.rand(n, generator=g) < cfg.flip_prob
    flip_y = torch.rand(n, generator=g) < cfg.flip_prob
    angle = uni(-cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180.0)
    scale = uni(1 - cfg.scale, 1 + cfg.scale)
    i_scale = uni(1 - cfg.intensity_scale, 1 + cfg.intensity_scale)
    i_shift = uni(-cfg.intensity_shift, cfg.intensity_shift)
    noise = torch.randn(x.shape, generator=g) * cfg.noise_std

    # theta maps output coords to input coords (normalised): flip * rotation / scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    fx = torch.where(flip_x, -1.0, 1.0)
    fy = torch.where(flip_y, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * fx, -sin * fx
    theta[:, 1, 0], theta[:, 1, 1] = sin * fy, cos * fy
    dev = x.device
    theta = theta.to(dev)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    xa = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros",
                       align_corners=False)
    ya = F.grid_sample(y.float(), grid, mode="nearest", padding_mode="zeros",
                       align_corners=False).to(y.dtype)
    xa = xa * i_scale.to(dev)[:, None, None, None] + i_shift.to(dev)[:, None, None, None]
    xa = (xa + noise.to(dev)).clamp_(0.0, 1.0)
    return xa, ya
