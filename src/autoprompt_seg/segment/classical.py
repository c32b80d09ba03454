"""Training-free box-prompted tumour segmentation: key-slice region, then slice-by-slice growth.

For each box:

1. A region of interest (ROI) is the box grown by a margin (``margin_mm`` plus a fraction
   of the box size in-plane, ``margin_slices`` plus a fraction along z), so that a loose
   automatic box can still hold the whole tumour.
2. On the key slice, the CT (lightly smoothed in-plane) is thresholded between a lower
   bound learned from the box (Otsu between lung and tissue, clipped to
   ``[lower_min_hu, lower_max_hu]``) and ``upper_hu`` (excludes bone). Fat
   (``fat_lo_hu .. fat_hi_hu`` on the smoothed CT) more than ``fat_lung_mm`` from aerated
   lung is taken out of that band (v0.2): the fat plane between a tumour and the
   mediastinum, heart or chest wall then separates them, while the partial-volume rim of
   a tumour on the lung, which passes through the same HU, stays. An in-plane opening
   whose radius scales with the box (``open_frac`` of its smaller side, clipped to
   ``[open_min_mm, open_max_mm]``) cuts vessels and thin chest-wall layers; the component
   that holds the box centre (or is nearest to it) is kept, restored by a geodesic
   dilation of the same radius inside the threshold mask, and its holes are filled.
   Before the opening, the band's in-plane holes that overlap the box centre (later
   slices: the previous slice's mask) and hold gas (median under ``cavity_max_hu``) join
   it (v0.3): the cavity of a cavitating tumour, whose thin wall the opening would
   otherwise cut away, leaving the mask to the tissue beside it. Aerated lung is denser
   than gas and stays out. ``cavity_max_hu`` of -1024 or lower turns this off.
3. The mask grows slice by slice in both directions. Each slice is limited to the previous
   slice's mask dilated by ``grow_mm`` (a tumour boundary moves little between slices) and
   goes through the same opening / component / restoration steps. Growth stops when the
   area vanishes, drops below ``min_area_frac`` of the key slice, jumps by more than
   ``max_area_ratio`` (a leak) or leaves the ROI.
4. Each lesion keeps its largest 3-D connected component; a voxel claimed by two lesions
   stays with the one whose box has the higher score (the earlier on ties).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ..backends import ProgressFn
from ..config import Settings
from ..errors import ConfigError
from ..types import BackendInfo, Box3D, LesionMask, Volume

log = logging.getLogger(__name__)

VERSION = "0.3.0"

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ClassicalParams:
    """Physical parameters (HU, mm, fractions); override with ``Settings.options``
    under the key ``"classical"`` (a mapping of field name to value)."""

    lower_min_hu: float = -600.0
    lower_max_hu: float = -250.0
    upper_hu: float = 250.0
    smooth_mm: float = 1.0
    margin_mm: float = 1.0
    margin_frac: float = 0.0
    margin_slices: int = 0
    margin_z_frac: float = 0.0
    open_frac: float = 0.25
    open_min_mm: float = 1.5
    open_max_mm: float = 8.0
    grow_mm: float = 4.0
    min_area_frac: float = 0.02
    max_area_ratio: float = 1.6
    min_area_mm2: float = 4.0
    ellipsoid_scale: float = 1.1
    fat_lo_hu: float = -150.0
    fat_hi_hu: float = -30.0
    fat_lung_mm: float = 3.0
    cavity_max_hu: float = -950.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
                raise ConfigError(f"Argument 'classical.{f.name}' must be a finite number; "
                                  f"got {v!r}")
            if not f.name.endswith("_hu") and v < 0:
                raise ConfigError(f"Argument 'classical.{f.name}' must be >= 0; got {v!r}")
        if not self.lower_min_hu <= self.lower_max_hu < self.upper_hu:
            raise ConfigError("Arguments 'classical.lower_min_hu' <= 'lower_max_hu' < "
                              f"'upper_hu' must hold; got {self.lower_min_hu}, "
                              f"{self.lower_max_hu}, {self.upper_hu}")
        if self.fat_lo_hu > self.fat_hi_hu:
            raise ConfigError("Argument 'classical.fat_lo_hu' must be <= 'fat_hi_hu' (equal "
                              f"turns the fat rule off); got {self.fat_lo_hu} > "
                              f"{self.fat_hi_hu}")
        if self.max_area_ratio <= 1:
            raise ConfigError("Argument 'classical.max_area_ratio' must be > 1; got "
                              f"{self.max_area_ratio!r}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ClassicalParams:
        from ..options import parse_options

        return parse_options(cls, options.get("classical"), "classical")


def _disk(radius_mm: float, spacing_yx: tuple[float, float]) -> BoolArray:
    ry = max(0, int(np.floor(radius_mm / spacing_yx[0])))
    rx = max(0, int(np.floor(radius_mm / spacing_yx[1])))
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    d: BoolArray = (y * spacing_yx[0]) ** 2 + (x * spacing_yx[1]) ** 2 <= radius_mm ** 2 + 1e-6
    return d


def _otsu(values: npt.NDArray[np.floating[Any]]) -> float:
    from skimage.filters import threshold_otsu

    if values.size < 2 or float(values.max()) == float(values.min()):
        return float(values.mean()) if values.size else 0.0
    return float(threshold_otsu(values))


class ClassicalSegmenter:
    """Box-prompted region growing; see the module docstring."""

    def __init__(self, params: ClassicalParams | None = None) -> None:
        self.params = params or ClassicalParams()

    def info(self) -> BackendInfo:
        return BackendInfo(name="classical", kind="segmenter", version=VERSION,
                           family="Histogram Analysis",
                           details={k.name: getattr(self.params, k.name)
                                    for k in fields(self.params)})

    # ------------------------------------------------------------------ one slice
    def _fill_cavity(self, band: BoolArray, anchor: BoolArray, img: FloatArray) -> BoolArray:
        """The cavities of a slice's band (v0.3): its in-plane holes (over the whole ROI,
        so the shape prior does not break a wall) that overlap the anchor and hold gas
        (median of the smoothed CT under ``cavity_max_hu``; aerated lung is denser).
        Left out, the opening cuts a cavitating tumour's wall away and keeps whatever
        tissue lies nearest the centre."""
        holes = ndi.binary_fill_holes(band) & ~band
        if self.params.cavity_max_hu <= -1024 or not (holes & anchor).any():
            return np.zeros_like(band)
        hlab, _ = ndi.label(holes)
        ids = [i for i in np.unique(hlab[holes & anchor]) if i
               and float(np.median(img[hlab == i])) < self.params.cavity_max_hu]
        out: BoolArray = np.isin(hlab, ids)
        return out

    def _slice_mask(self, band: BoolArray, allowed: BoolArray, open_se: BoolArray,
                    anchor: BoolArray | None, centre: tuple[float, float],
                    img: FloatArray | None = None) -> BoolArray:
        """Threshold band (with its cavities) -> opening -> the component at the anchor ->
        restoration."""
        cand = band & allowed
        if not cand.any():
            return cand
        if anchor is not None and img is not None:
            cand |= self._fill_cavity(band, anchor, img) & allowed
        opened = ndi.binary_opening(cand, structure=open_se) if open_se.size > 1 else cand
        if not opened.any():
            opened = cand
        lab, n = ndi.label(opened)
        if n == 0:
            return np.zeros_like(cand)
        if anchor is not None and (anchor & opened).any():
            counts = np.bincount(lab[anchor & opened], minlength=n + 1)
            counts[0] = 0
            keep = lab == int(counts.argmax())
        else:
            # the component nearest the box centre
            cy, cx = centre
            yy, xx = np.nonzero(opened)
            d = (yy - cy) ** 2 + (xx - cx) ** 2
            i = int(d.argmin())
            keep = lab == lab[yy[i], xx[i]]
        # geodesic restoration of what the opening shaved, then fill holes
        restored = ndi.binary_dilation(keep, structure=open_se) & cand if open_se.size > 1 \
            else keep
        out: BoolArray = ndi.binary_fill_holes(restored | keep)
        return out

    def _ellipsoid(self, box: Box3D, offset: tuple[int, int, int],
                   shape: tuple[int, ...]) -> BoolArray:
        """The box's inscribed ellipsoid scaled by ``ellipsoid_scale`` (ROI coordinates);
        on the key slice, the box's inscribed 2-D ellipse (the tumour is widest there).
        A scale of 0 turns the prior off."""
        f = self.params.ellipsoid_scale
        if f <= 0:
            return np.ones(shape, dtype=bool)
        oz, oy, ox = offset
        cy, cx = (box.y0 + box.y1 - 1) / 2 - oy, (box.x0 + box.x1 - 1) / 2 - ox
        ay, ax = f * box.size[1] / 2 + 0.5, f * box.size[2] / 2 + 0.5
        z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
        inplane = ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2
        # along z, measured from the key slice towards the box end on that side
        k = box.key_slice - oz
        half_lo = max(k - (box.z0 - oz) + 0.5, 0.5) * f
        half_hi = max((box.z1 - 1 - oz) - k + 0.5, 0.5) * f
        dz = np.where(z >= k, (z - k) / half_hi, (k - z) / half_lo)
        out: BoolArray = inplane + dz ** 2 <= 1.0
        return out

    def _fat_plane(self, img: FloatArray, lower: float,
                   spacing_yx: tuple[float, float]) -> BoolArray:
        """Fat (``fat_lo_hu .. fat_hi_hu``) more than ``fat_lung_mm`` (in-plane) from
        aerated lung (``< lower``): what separates a tumour from the organs it touches.
        Nearer the lung the same HU are the tumour's partial-volume rim."""
        p = self.params
        fat = (img >= p.fat_lo_hu) & (img < p.fat_hi_hu)
        aerated = img < lower
        for z in np.nonzero(fat.any(axis=(1, 2)))[0]:
            if aerated[z].any():
                near = ndi.distance_transform_edt(~aerated[z], sampling=spacing_yx)
                fat[z] &= near > p.fat_lung_mm
        return fat

    # ------------------------------------------------------------------ one lesion
    def _segment_one(self, volume: Volume, box: Box3D) -> tuple[BoolArray, tuple[int, int, int]]:
        p = self.params
        sz, sy, sx = volume.spacing
        nz, ny, nx = volume.shape
        bz, by, bx = box.size
        my = int(np.ceil((p.margin_mm + p.margin_frac * by * sy) / sy))
        mx = int(np.ceil((p.margin_mm + p.margin_frac * bx * sx) / sx))
        mz = int(p.margin_slices + np.ceil(p.margin_z_frac * bz))
        z0, z1 = max(0, box.z0 - mz), min(nz, box.z1 + mz)
        y0, y1 = max(0, box.y0 - my), min(ny, box.y1 + my)
        x0, x1 = max(0, box.x0 - mx), min(nx, box.x1 + mx)
        roi = volume.array[z0:z1, y0:y1, x0:x1]
        sig = (0.0, p.smooth_mm / sy, p.smooth_mm / sx)
        img = ndi.gaussian_filter(roi, sigma=sig) if p.smooth_mm > 0 else roi
        k = box.key_slice - z0
        # the box on the key slice, in ROI coordinates
        inbox = np.zeros(roi.shape[1:], dtype=bool)
        inbox[box.y0 - y0:box.y1 - y0, box.x0 - x0:box.x1 - x0] = True
        vals = img[k][inbox]
        lower = float(np.clip(_otsu(vals), p.lower_min_hu, p.lower_max_hu))
        band = (img >= lower) & (img <= p.upper_hu)
        if p.fat_hi_hu > p.fat_lo_hu:
            band &= ~self._fat_plane(img, lower, (sy, sx))
        side_mm = min(by * sy, bx * sx)
        r_open = float(np.clip(p.open_frac * side_mm, p.open_min_mm, p.open_max_mm))
        open_se = _disk(r_open, (sy, sx))
        grow_se = _disk(max(p.grow_mm, 1.5 * min(sy, sx)), (sy, sx))
        centre = ((box.y0 + box.y1 - 1) / 2 - y0, (box.x0 + box.x1 - 1) / 2 - x0)
        # shape prior: the box's inscribed ellipsoid, scaled by ``ellipsoid_scale``
        ellipsoid = self._ellipsoid(box, (z0, y0, x0), roi.shape)
        # anchor: the central part of the box on the key slice
        anchor = np.zeros_like(inbox)
        qy, qx = max(1, by // 4), max(1, bx // 4)
        anchor[box.y0 - y0 + qy:box.y1 - y0 - qy or None,
               box.x0 - x0 + qx:box.x1 - x0 - qx or None] = True
        anchor &= inbox
        if not anchor.any():
            anchor = inbox.copy()
        mask = np.zeros(roi.shape, dtype=bool)
        key = self._slice_mask(band[k], inbox & ellipsoid[k], open_se, anchor, centre, img[k])
        pix_mm2 = sy * sx
        if key.sum() * pix_mm2 < p.min_area_mm2:
            log.debug("box %s: nothing to segment on the key slice (lower %.0f HU)",
                      box.to_dict(), lower)
            return mask, (z0, y0, x0)
        mask[k] = key
        key_area = float(key.sum())
        for step in (1, -1):
            prev = key
            prev_area = key_area
            z = k + step
            while 0 <= z < roi.shape[0]:
                allowed = ellipsoid[z] & ndi.binary_dilation(prev, structure=grow_se)
                cur = self._slice_mask(band[z], allowed, open_se, prev, centre, img[z])
                area = float(cur.sum())
                if area * pix_mm2 < p.min_area_mm2 or area < p.min_area_frac * key_area:
                    break
                if area > p.max_area_ratio * prev_area and area > key_area:
                    # an abrupt jump beyond the key slice's size: a leak; stop here
                    break
                mask[z] = cur
                prev, prev_area = cur, area
                z += step
        lab, n = ndi.label(mask)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            mask = lab == int(sizes.argmax())
        log.debug("box %s: lower %.0f HU, opening %.1f mm, %d voxels", box.to_dict(), lower,
                  r_open, int(mask.sum()))
        return mask, (z0, y0, x0)

    # ------------------------------------------------------------------ API
    def segment(self, volume: Volume, boxes: Sequence[Box3D],
                progress: ProgressFn | None = None) -> list[LesionMask]:
        """One :class:`LesionMask` per box, in the same order (possibly empty)."""
        for i, b in enumerate(boxes):
            if not b.fits(volume.shape):
                raise ValueError(f"Argument 'boxes[{i}]' must fit inside the volume "
                                 f"{volume.shape}; got {b.to_dict()}")
        crops: list[tuple[BoolArray, tuple[int, int, int]]] = []
        for i, b in enumerate(boxes):
            crops.append(self._segment_one(volume, b))
            if progress is not None:
                progress(i + 1, len(boxes))
        # resolve voxels claimed by two lesions: higher score first, then the earlier box
        order = sorted(range(len(boxes)), key=lambda j: (-boxes[j].score, j))
        claimed = np.zeros(volume.shape, dtype=bool)
        out: list[LesionMask | None] = [None] * len(boxes)
        for j in order:
            m, (oz, oy, ox) = crops[j]
            region = (slice(oz, oz + m.shape[0]), slice(oy, oy + m.shape[1]),
                      slice(ox, ox + m.shape[2]))
            m = m & ~claimed[region]
            claimed[region] |= m
            full = np.zeros(volume.shape, dtype=bool)
            full[region] = m
            out[j] = LesionMask.from_full(full, boxes[j], score=boxes[j].score)
        return [o for o in out if o is not None]


def create(settings: Settings) -> ClassicalSegmenter:
    """Registry factory: ``Settings.options["classical"]`` may override the parameters."""
    return ClassicalSegmenter(ClassicalParams.from_options(dict(settings.options)))
