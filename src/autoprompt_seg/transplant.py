"""Labelled whole-chest cases made by lesion transplantation (seeded, in memory).

Real tumours (their HU values and ground-truth masks) are cut out of one CT and inserted
into the lungs of another, real whole-chest CT at chosen sites and sizes. This is a
published way of evaluating lung CAD on realistic backgrounds (lesion insertion /
"hybrid" images); here it gives whole-chest cases with an exact label, since the real
whole-chest studies we may use carry no tumour mask.

How one lesion is inserted:

1. **Resample** the lesion patch (HU and mask, with a margin of its own surrounding lung)
   onto the background's voxel grid with SimpleITK, optionally scaled by ``scale`` (a
   linear factor: volume changes by ``scale ** 3``) and mirrored left-right.
2. **Site**: on a 2 mm working grid of the background's aerated lung (air below -400 HU,
   3-D components of at least 100 ml that are not mostly pure air), a centre is
   drawn at random for the requested site:

   * ``parenchyma``: the whole lesion (plus 3 mm) lies inside aerated lung;
   * ``pleura``: the centre lies ``0.35..0.6`` lesion radii inside the lung from a
     boundary point on the chest wall or diaphragm, so the lesion presses against it;
   * ``mediastinum``: the same against the mediastinal surface (a boundary point whose
     nearest non-lung voxel lies between the two lungs' centroids).

3. **Blend**: ``alpha`` is the lesion mask dilated by ``blend_mm`` and smoothed with a
   Gaussian of ``blend_mm / 2``, so the lesion's own margin (spiculae, the lung around
   it) fades into the new lung. Only voxels of the background's lung region are written
   (HU below ``-300`` or inside the lung field): where the lesion overlaps the chest wall
   or mediastinum the background stays, and the lesion is flattened against it, as a
   real juxta-pleural or juxta-mediastinal tumour is.
4. **Label**: the resampled mask (linear interpolation > 0.5) where it was written.

Nothing here is a diagnosis or a clinical case: the cases are for evaluating detectors,
and the tumours and backgrounds keep their own licences (see docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from .detect.morphology import block_mean
from .types import Volume

log = logging.getLogger(__name__)

SITES = ("parenchyma", "pleura", "mediastinum")

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class LesionSource:
    """A real lesion: HU patch and mask (z, y, x) with the spacing of its study."""

    name: str
    hu: FloatArray
    mask: BoolArray
    spacing: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.hu.shape != self.mask.shape or self.hu.ndim != 3:
            raise ValueError(f"Argument 'mask' must have the shape of 'hu' {self.hu.shape}; "
                             f"got {self.mask.shape}")
        if not self.mask.any():
            raise ValueError(f"Argument 'mask' of lesion {self.name!r} must not be empty")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"Argument 'spacing' must be three positive numbers; "
                             f"got {self.spacing!r}")

    @property
    def volume_ml(self) -> float:
        return float(self.mask.sum()) * float(np.prod(self.spacing)) / 1000.0

    @classmethod
    def from_volume(cls, name: str, volume: Volume, mask: BoolArray, margin_mm: float = 6.0
                    ) -> LesionSource:
        """Cut the lesion (largest 3-D component of ``mask``) and a margin out of a study."""
        if mask.shape != volume.shape:
            raise ValueError(f"Argument 'mask' must have the volume's shape {volume.shape}; "
                             f"got {mask.shape}")
        lab, n = ndi.label(mask)
        if n == 0:
            raise ValueError(f"Argument 'mask' of lesion {name!r} is empty")
        biggest = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
        comp = lab == biggest
        sl = ndi.find_objects(comp.astype(np.int8))[0]
        m = [int(np.ceil(margin_mm / s)) for s in volume.spacing]
        box = tuple(slice(max(0, s.start - mm), min(d, s.stop + mm))
                    for s, mm, d in zip(sl, m, volume.shape, strict=True))
        return cls(name, np.ascontiguousarray(volume.array[box], dtype=np.float32),
                   np.ascontiguousarray(comp[box]), volume.spacing)


@dataclass(frozen=True)
class InsertedLesion:
    """Where one transplanted lesion went (label value ``label`` in the case's labels)."""

    label: int
    source: str
    site: str
    scale: float
    volume_ml: float
    center: tuple[int, int, int]
    bbox: tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1 (half-open)


@dataclass(frozen=True, eq=False)
class TransplantCase:
    """A background study with inserted lesions: ``labels`` holds 1..n, one per lesion."""

    name: str
    background: str
    volume: Volume
    labels: npt.NDArray[np.uint8]
    lesions: tuple[InsertedLesion, ...]

    def __post_init__(self) -> None:
        if self.labels.shape != self.volume.shape:
            raise ValueError(f"Argument 'labels' must have the volume's shape "
                             f"{self.volume.shape}; got {self.labels.shape}")


def _resample(src: LesionSource, spacing: tuple[float, float, float], scale: float,
              flip_x: bool) -> tuple[FloatArray, FloatArray]:
    """Lesion HU and soft mask (0..1) on a grid of ``spacing``, scaled by ``scale``."""
    import SimpleITK as sitk

    hu, mk = src.hu, src.mask.astype(np.float32)
    if flip_x:
        hu, mk = hu[:, :, ::-1], mk[:, :, ::-1]
    out_size = [max(1, int(round(n * s * scale / t)))
                for n, s, t in zip(hu.shape[::-1], src.spacing[::-1], spacing[::-1], strict=True)]
    res = []
    for arr, interp, default in ((hu, sitk.sitkLinear, -1000.0),
                                 (mk, sitk.sitkLinear, 0.0)):
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        img.SetSpacing([s * scale for s in src.spacing[::-1]])
        f = sitk.ResampleImageFilter()
        f.SetOutputSpacing(list(spacing[::-1]))
        f.SetSize(out_size)
        f.SetInterpolator(interp)
        f.SetDefaultPixelValue(default)
        res.append(sitk.GetArrayFromImage(f.Execute(img)).astype(np.float32))
    return res[0], res[1]


@dataclass(frozen=True, eq=False)
class _LungMap:
    """The background's lungs on a coarse grid, with the sites lesions may go to."""

    factor: tuple[int, int, int]
    spacing: tuple[float, float, float]
    lung: BoolArray
    depth_mm: npt.NDArray[np.float32]  # distance to the nearest non-lung voxel
    mediastinal: BoolArray  # lung voxels whose nearest non-lung voxel is mediastinal
    cropped: BoolArray  # lung voxels whose nearest non-lung voxel is the image border
    clear_mm: npt.NDArray[np.float32] | None = None  # distance to the background's lesions


def lung_map(volume: Volume, work_mm: float = 2.0, lesions: BoolArray | None = None
             ) -> _LungMap:
    """Aerated lungs of a background study, and which boundary each lung voxel is near.

    ``lesions`` (the volume's shape) marks the background's own lesions (LIDC-0314's
    nodule): a transplanted lesion is kept 15 mm clear of them, as of other inserted
    lesions, so that it neither covers nor merges with one."""
    if lesions is not None and lesions.shape != volume.shape:
        raise ValueError(f"Argument 'lesions' must have the volume's shape {volume.shape}; "
                         f"got {lesions.shape}")
    sz, sy, sx = volume.spacing
    f = (max(1, int(round(work_mm / sz))), max(1, int(round(work_mm / sy))),
         max(1, int(round(work_mm / sx))))
    img = block_mean(volume.array, f)
    wsp = (sz * f[0], sy * f[1], sx * f[2])
    smooth = ndi.uniform_filter(img, 3)
    lab, n = ndi.label(smooth < -400)
    sizes = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
    pure = np.bincount(lab.ravel(), weights=(smooth < -950).ravel(), minlength=n + 1)
    # outside air and the table's padding are almost pure air, lung parenchyma is not
    keep = [i for i in range(1, n + 1)
            if sizes[i] * np.prod(wsp) / 1000 >= 100 and pure[i] / sizes[i] <= 0.3]
    lung = np.isin(lab, keep)
    if not lung.any():
        raise ValueError(f"Argument 'volume' ({volume.description or 'background'}) has no "
                         "aerated lung of at least 100 ml")
    # the image border is no lung boundary to press a lesion against: keep off it
    inner = np.zeros_like(lung)
    inner[1:-1, 1:-1, 1:-1] = True
    lung &= inner
    depth, (iz, iy, ix) = ndi.distance_transform_edt(lung, sampling=wsp, return_indices=True)
    # left/right split by the x centroid of the lungs' two halves
    xs = np.nonzero(lung)[2]
    mid = float(np.median(xs))
    c_lo = float(xs[xs < mid].mean()) if (xs < mid).any() else mid
    c_hi = float(xs[xs >= mid].mean())
    near_x = ix.astype(np.float32)
    mediastinal = lung & (near_x > c_lo) & (near_x < c_hi)
    shp = lung.shape
    cropped = lung & ((iz == 0) | (iz == shp[0] - 1) | (iy == 0) | (iy == shp[1] - 1)
                      | (ix == 0) | (ix == shp[2] - 1))
    clear = None
    if lesions is not None and lesions.any():
        own = block_mean(lesions.astype(np.float32), f) > 0
        clear = ndi.distance_transform_edt(~own, sampling=wsp).astype(np.float32)
    return _LungMap(f, wsp, lung, depth.astype(np.float32), mediastinal & ~cropped, cropped,
                    clear)


def _pick_center(lmap: _LungMap, site: str, radius_mm: float, rng: np.random.Generator,
                 taken: BoolArray) -> tuple[int, int, int] | None:
    """A working-grid centre for ``site``, or None when the lungs have no such place."""
    d = lmap.depth_mm
    if site == "parenchyma":
        ok = lmap.lung & (d >= radius_mm + 3.0)
    else:
        lo, hi = 0.35 * radius_mm, max(0.6 * radius_mm, 0.35 * radius_mm + 2.5)
        band = lmap.lung & (d >= lo) & (d <= hi)
        ok = band & (lmap.mediastinal if site == "mediastinum"
                     else ~lmap.mediastinal & ~lmap.cropped)
    ok &= ~taken
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return None
    z, y, x = np.unravel_index(int(rng.choice(idx)), ok.shape)
    if lmap.clear_mm is not None and lmap.clear_mm[z, y, x] < radius_mm + 15.0:
        # on or near the background's own lesion: draw again among the places clear of
        # it, from a generator seeded by the rejected place, not from ``rng``, so that
        # every other case of a seed stays as it was
        idx = np.flatnonzero(ok & (lmap.clear_mm >= radius_mm + 15.0))
        if idx.size == 0:
            return None
        again = np.random.default_rng([int(z), int(y), int(x)])
        z, y, x = np.unravel_index(int(again.choice(idx)), ok.shape)
    return int(z), int(y), int(x)


def transplant(background: Volume, lesions: Sequence[tuple[LesionSource, str, float, bool]],
               rng: np.random.Generator, *, name: str = "case", background_name: str = "",
               lmap: _LungMap | None = None, blend_mm: float = 2.0) -> TransplantCase:
    """Insert each ``(lesion, site, scale, flip_x)`` into ``background``.

    Raises ``ValueError`` (naming the lesion and site) when no place fits a lesion."""
    for _, site, scale, _ in lesions:
        if site not in SITES:
            raise ValueError(f"Argument 'site' must be one of {', '.join(SITES)}; got {site!r}")
        if not 0.1 <= scale <= 4.0:
            raise ValueError(f"Argument 'scale' must be in 0.1..4; got {scale!r}")
    lmap = lmap or lung_map(background)
    f = lmap.factor
    out = background.array.copy()
    labels = np.zeros(background.shape, dtype=np.uint8)
    # where a lesion may be written: lung-like voxels, or inside the coarse lung (vessels)
    lung_full = np.repeat(np.repeat(np.repeat(
        ndi.binary_closing(lmap.lung, iterations=2), f[0], 0), f[1], 1), f[2], 2)
    pad = [(0, s - n) for s, n in zip(background.shape, lung_full.shape, strict=True)]
    lung_full = np.pad(lung_full, pad)
    writable = lung_full | (background.array < -300)
    taken = np.zeros_like(lmap.lung)
    done: list[InsertedLesion] = []
    for k, (src, site, scale, flip) in enumerate(lesions, start=1):
        hu, soft = _resample(src, background.spacing, scale, flip)
        mask = soft > 0.5
        if not mask.any():
            raise ValueError(f"lesion {src.name!r} vanishes at scale {scale}")
        vol_ml = float(mask.sum()) * background.voxel_volume_ml
        radius = float((3 * vol_ml * 1000 / (4 * np.pi)) ** (1 / 3))
        c = _pick_center(lmap, site, radius, rng, taken)
        if c is None:
            raise ValueError(f"no {site} site fits lesion {src.name!r} "
                             f"(radius {radius:.1f} mm) in {background_name or 'the background'}")
        # centre of the lesion mask -> centre voxel on the full grid
        com = np.array(ndi.center_of_mass(mask))
        cf = np.array([c[i] * f[i] + f[i] // 2 for i in range(3)])
        start = np.round(cf - com).astype(int)
        stop = start + np.array(mask.shape)
        lo = np.maximum(start, 0)
        hi = np.minimum(stop, background.shape)
        if np.any(hi <= lo):
            raise ValueError(f"lesion {src.name!r} falls outside the background")
        dst = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        srcs = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start, strict=True))
        sp = background.spacing
        grown = ndi.distance_transform_edt(~mask, sampling=sp) <= blend_mm
        alpha = ndi.gaussian_filter(grown.astype(np.float32),
                                    sigma=[blend_mm / 2 / s for s in sp])
        alpha = np.where(mask, 1.0, np.clip(alpha, 0.0, 1.0))[srcs]
        w = writable[dst] & (labels[dst] == 0)
        bg = out[dst]
        out[dst] = np.where(w, alpha * hu[srcs] + (1 - alpha) * bg, bg)
        lab_here = mask[srcs] & w
        labels[dst][lab_here] = k
        zz, yy, xx = np.nonzero(labels == k)
        if zz.size == 0:
            raise ValueError(f"lesion {src.name!r} left no labelled voxel at {site}")
        done.append(InsertedLesion(label=k, source=src.name, site=site, scale=float(scale),
                                   volume_ml=float(zz.size) * background.voxel_volume_ml,
                                   center=tuple(int(v) for v in cf),  # type: ignore[arg-type]
                                   bbox=(int(zz.min()), int(zz.max()) + 1, int(yy.min()),
                                         int(yy.max()) + 1, int(xx.min()), int(xx.max()) + 1)))
        # keep later lesions 15 mm away from this one
        r = int(np.ceil((radius + 15) / min(lmap.spacing)))
        z0, y0, x0 = (max(0, c[0] - r), max(0, c[1] - r), max(0, c[2] - r))
        taken[z0:c[0] + r + 1, y0:c[1] + r + 1, x0:c[2] + r + 1] = True
    vol = background.with_array(out.astype(np.float32))
    vol = Volume(array=vol.array, spacing=vol.spacing, origin=vol.origin,
                 direction=vol.direction, description=name, source_format="synthetic")
    return TransplantCase(name=name, background=background_name, volume=vol, labels=labels,
                          lesions=tuple(done))


def generate(backgrounds: Sequence[tuple[str, Volume]], lesions: Sequence[LesionSource],
             *, per_pair: int = 3, seed: int = 0, sites: Sequence[str] = SITES,
             volume_range_ml: tuple[float, float] = (1.0, 150.0),
             own_lesions: Mapping[str, BoolArray] | None = None) -> Iterator[TransplantCase]:
    """One case per (background, lesion, repeat): a seeded site (cycling through ``sites``)
    and a scale drawn so that the lesion's volume is log-uniform in ``volume_range_ml``.
    ``own_lesions`` maps a background's name to a mask of its own lesions, which the
    inserted ones keep clear of (see :func:`lung_map`).

    A combination whose site does not fit is skipped with a log line."""
    rng = np.random.default_rng(seed)
    for bname, bg in backgrounds:
        lmap = lung_map(bg, lesions=(own_lesions or {}).get(bname))
        for les in lesions:
            for rep in range(per_pair):
                site = sites[rep % len(sites)]
                target = float(np.exp(rng.uniform(*np.log(volume_range_ml))))
                scale = float(np.clip((target / les.volume_ml) ** (1 / 3), 0.3, 1.5))
                flip = bool(rng.integers(2))
                name = f"{bname}+{les.name}#{rep}-{site}"
                try:
                    yield transplant(bg, [(les, site, scale, flip)], rng, name=name,
                                     background_name=bname, lmap=lmap)
                except ValueError as e:
                    log.info("skipped %s: %s", name, e)
