"""From the bundle's boxes to our voxel :class:`~autoprompt_seg.types.Box3D` (numpy only).

The bundle's boxes live either in the resampled RAS image (``xyzxyz`` voxel coordinates,
the detector's raw output) or in the world (``cccwhd`` in LPS mm after its
``AffineBoxToWorldCoordinated(affine_lps_to_ras=True)`` and ``ConvertBoxModed``). MONAI
maps box coordinates through the image affine as they are, so a box coordinate ``c``
is the point ``affine @ c`` (an integer coordinate is a voxel centre).

Conversion (:func:`points_to_box`): the box's 8 corners (world points) are mapped into the
study's own grid with the inverse of its LPS affine (any orientation, flips and oblique
direction cosines included); the result is the tight voxel box of the voxels whose centres
lie within the corners' index range, half-open, clipped to the volume. A box thinner than
a voxel keeps the voxel nearest its centre. Boxes from the resampled image use its own
corners (exact also for oblique studies, where the world-axis-aligned ``cccwhd`` box of
MONAI, built from two corners only, can be smaller than the rotated box).

Key slice: the slice through the box's centre (its centre's slice index, rounded, kept
inside the box). A nodule detector's box is small and roughly centred on the nodule, so
its centre slice is where the nodule is widest for a round nodule.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ...types import Box3D, Volume

_EPS = 1e-4  # voxel: tolerance for centres on the box's faces (float32 affines)


def world_box_corners(cccwhd: Sequence[float]) -> npt.NDArray[np.float64]:
    """The 8 corners (LPS mm) of a world box ``(cx, cy, cz, w, h, d)``."""
    b = np.asarray(cccwhd, dtype=np.float64)
    if b.shape != (6,) or not np.all(np.isfinite(b)) or np.any(b[3:] < 0):
        raise ValueError(f"Argument 'cccwhd' must be 6 finite numbers (centre x, y, z, then "
                         f"non-negative sizes) in mm; got {list(np.atleast_1d(b))!r}")
    lo, hi = b[:3] - b[3:] / 2, b[:3] + b[3:] / 2
    return np.array([[(lo, hi)[a][0], (lo, hi)[b_][1], (lo, hi)[c][2]]
                     for a, b_, c in itertools.product((0, 1), repeat=3)])


def image_box_corners(xyzxyz: Sequence[float], affine_ras: Any) -> npt.NDArray[np.float64]:
    """The 8 corners (LPS mm) of a box in the voxel coordinates of an image whose RAS
    affine is ``affine_ras`` (MONAI's convention: coordinates go through the affine)."""
    b = np.asarray(xyzxyz, dtype=np.float64)
    if b.shape != (6,) or not np.all(np.isfinite(b)):
        raise ValueError(f"Argument 'xyzxyz' must be 6 finite numbers; got "
                         f"{list(np.atleast_1d(b))!r}")
    a = np.asarray(affine_ras, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"Argument 'affine_ras' must be a 4x4 matrix; got shape {a.shape}")
    corners = np.array([[b[0 + 3 * i], b[1 + 3 * j], b[2 + 3 * k], 1.0]
                        for i, j, k in itertools.product((0, 1), repeat=3)])
    ras = corners @ a.T
    return ras[:, :3] * np.array([-1.0, -1.0, 1.0])


def points_to_box(points_lps: Any, volume: Volume, *, score: float,
                  source: str = "monai_retinanet") -> Box3D | None:
    """The voxel box (module docstring) of a box given by its corner points in LPS mm;
    None when it lies entirely outside the volume."""
    p = np.asarray(points_lps, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] < 1 or not np.all(np.isfinite(p)):
        raise ValueError(f"Argument 'points_lps' must be an (N, 3) array of finite LPS "
                         f"points; got shape {p.shape}")
    inv = np.linalg.inv(volume.affine_lps())
    idx = (np.c_[p, np.ones(len(p))] @ inv.T)[:, :3]  # (i=x, j=y, k=z), continuous
    lo, hi, centre = idx.min(axis=0), idx.max(axis=0), idx.mean(axis=0)
    dims = (volume.shape[2], volume.shape[1], volume.shape[0])  # x, y, z
    v0 = np.ceil(lo - _EPS).astype(int)
    v1 = np.floor(hi + _EPS).astype(int) + 1
    thin = v1 <= v0
    near = np.rint(centre).astype(int)
    v0 = np.where(thin, near, v0)
    v1 = np.where(thin, near + 1, v1)
    v0 = np.clip(v0, 0, dims)
    v1 = np.clip(v1, 0, dims)
    if np.any(v1 <= v0):
        return None
    key = int(np.clip(np.rint(centre[2]), v0[2], v1[2] - 1))
    return Box3D(z0=int(v0[2]), z1=int(v1[2]), y0=int(v0[1]), y1=int(v1[1]), x0=int(v0[0]),
                 x1=int(v1[0]), key_slice=key, score=float(score), source=source,
                 from_person=False)
