"""Morphology on a voxel grid with physical spacing (mm), shared by the ``candidates``
detector and the lesion transplanter: balls, block-mean downsampling, closing by distance
transforms, 3-D solidity and elongation, a component's padded box and thickness, the
lungs, the dense structures of the thorax's inner region, the airway lumen and gas holes
(cavities)."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]


def ball(radius_mm: float, spacing: tuple[float, float, float]) -> BoolArray:
    """A ball of ``radius_mm`` on a grid of ``spacing`` (z, y, x mm)."""
    r = [max(0, int(np.floor(radius_mm / s))) for s in spacing]
    z, y, x = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    b: BoolArray = ((z * spacing[0]) ** 2 + (y * spacing[1]) ** 2 + (x * spacing[2]) ** 2
                    <= radius_mm ** 2 + 1e-6)
    return b


def block_mean(a: FloatArray, f: tuple[int, int, int]) -> FloatArray:
    """Downsample by integer factors with block means (the remainder is dropped)."""
    if f == (1, 1, 1):
        return a
    nz, ny, nx = (a.shape[0] // f[0], a.shape[1] // f[1], a.shape[2] // f[2])
    b = a[:nz * f[0], :ny * f[1], :nx * f[2]]
    out: FloatArray = b.reshape(nz, f[0], ny, f[1], nx, f[2]).mean(axis=(1, 3, 5),
                                                                   dtype=np.float32)
    return out


def solidity(mask: BoolArray) -> float:
    """Share of the 3-D convex hull that ``mask`` fills (voxel counts on its grid).

    A tumour, even one flattened against the chest wall or mediastinum, is a convex mass
    (about 0.75-0.95 on the 2 mm working grid); a hilar vessel confluence or the rim of
    an organ branches or curves around (about 0.5-0.6)."""
    from skimage.morphology import convex_hull_image

    nz = np.nonzero(mask)
    if len(nz[0]) < 4:
        return 1.0
    sub = mask[tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)]
    if min(sub.shape) < 2:
        return 1.0  # flat: a 3-D hull is degenerate
    hull = convex_hull_image(np.pad(sub, 1))
    return float(sub.sum()) / max(float(hull.sum()), 1.0)


def closing_edt(mask: BoolArray, radius_mm: float, spacing: tuple[float, float, float]
                 ) -> BoolArray:
    """Morphological closing with a ball, by two Euclidean distance transforms."""
    pad = [int(np.ceil(radius_mm / s)) + 1 for s in spacing]
    mp = np.pad(mask, [(p, p) for p in pad])
    dil = ndi.distance_transform_edt(~mp, sampling=spacing) <= radius_mm
    closed = ndi.distance_transform_edt(dil, sampling=spacing) > radius_mm
    out: BoolArray = closed[pad[0]:-pad[0], pad[1]:-pad[1], pad[2]:-pad[2]]
    return out


def elongation(mask: BoolArray, spacing: tuple[float, float, float]) -> float:
    """The square root of the ratio of the largest to the smallest principal variance
    of ``mask``'s voxel positions (mm): 1 for a ball; vessels and z-tubes are long."""
    coords = np.argwhere(mask).astype(np.float64) * np.asarray(spacing)
    if len(coords) < 4:
        return 1.0
    ev = np.sort(np.linalg.eigvalsh(np.cov(coords.T)))[::-1]
    return float(np.sqrt(ev[0] / max(ev[2], 1e-6)))


def padded(sl: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """A component's box with a 2-voxel border (for its surface ring), inside ``shape``."""
    return tuple(slice(max(0, s.start - 2), min(dim, s.stop + 2))
                 for s, dim in zip(sl, shape, strict=True))


def thickness_mm(edt: npt.NDArray[np.float64], spacing: tuple[float, float, float]) -> float:
    """Largest inscribed-ball radius from a distance map: the EDT counts to the nearest
    background voxel centre, so half a voxel is added."""
    return float(edt.max()) + 0.5 * float(np.mean(spacing))


def lung_components(img: FloatArray, spacing: tuple[float, float, float], air_hu: float,
                    pure_air_hu: float, max_pure_frac: float, min_ml: float,
                    enclosed_max_pure_frac: float, enclosed_min_ml: float) -> BoolArray:
    """Aerated lung: 3-D components of air (``< air_hu``) of at least ``min_ml`` whose
    share of near-pure air (``< pure_air_hu``) is at most ``max_pure_frac``: outside air,
    the table's padding, the trachea and bowel gas are almost pure air, lung parenchyma
    is not. An emphysematous lung holds much more (its holes and bullae: a quarter to a
    half of it in severe emphysema), so a component of at least ``enclosed_min_ml`` (a
    lung, not a gas pocket) that touches no side of the image in-plane (outside air does)
    may hold up to ``enclosed_max_pure_frac``."""
    lab, n = ndi.label(img < air_hu)
    if n == 0:
        return np.zeros(img.shape, dtype=bool)
    sizes = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
    pure = np.bincount(lab.ravel(), weights=(img < pure_air_hu).ravel(), minlength=n + 1)
    vox_ml = float(np.prod(spacing)) / 1000.0
    keep = []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None or sizes[i] * vox_ml < min_ml:
            continue
        enclosed = (sizes[i] * vox_ml >= enclosed_min_ml and sl[1].start > 0
                    and sl[2].start > 0 and sl[1].stop < img.shape[1]
                    and sl[2].stop < img.shape[2])
        limit = max(max_pure_frac, enclosed_max_pure_frac) if enclosed else max_pure_frac
        if pure[i] / sizes[i] <= limit:
            keep.append(i)
    out: BoolArray = np.isin(lab, keep)
    return out


def thorax_structures(smooth: FloatArray, lung: BoolArray, field: BoolArray,
                      img: FloatArray | None = None
                      ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64],
                                 npt.NDArray[np.float64]]:
    """Dense tissue (fat excluded: -60..300 HU on ``img``, else ``smooth``) inside the
    thorax's inner region (per slice, the convex hull of the lungs and their fields), as
    3-D structures: (labels, voxels per label, voxels per label inside ``field``)."""
    from skimage.morphology import convex_hull_image

    body = smooth > -500
    inner = np.zeros_like(field)
    both = field | lung
    for z in np.nonzero(both.any(axis=(1, 2)))[0]:
        inner[z] = convex_hull_image(both[z])
    raw = smooth if img is None else img
    dense = (raw > -60) & (raw < 300) & inner & body
    plab, n = ndi.label(dense)
    psize = np.bincount(plab.ravel(), minlength=n + 1).astype(np.float64)
    pfield = np.bincount(plab.ravel(), weights=field.ravel(), minlength=n + 1).astype(np.float64)
    return plab.astype(np.int32), psize, pfield


def airways(img: FloatArray, lung: BoolArray, spacing: tuple[float, float, float],
            airway_hu: float, airway_max_ml: float) -> BoolArray:
    """Airway lumen (trachea, main and lobar bronchi), grown from the trachea.

    Seed: the largest near-pure-air (``< airway_hu``) component near the lungs' middle
    (left-right) that runs at least 20 mm along z. Growing: the threshold rises in
    10 HU steps from ``airway_hu``; a step whose volume more than doubles (a leak into
    parenchyma) or passes ``airway_max_ml`` is undone. Empty when no trachea is seen
    (a crop around a tumour, say)."""
    out = np.zeros_like(lung)
    if not lung.any():
        return out
    vox_ml = float(np.prod(spacing)) / 1000.0
    xs = np.nonzero(lung.any(axis=(0, 1)))[0]
    xc, w = (xs[0] + xs[-1]) / 2.0, float(xs[-1] - xs[0])
    lab, n = ndi.label((img < airway_hu) & lung)
    best, best_n = 0, 0
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None or abs((sl[2].start + sl[2].stop) / 2.0 - xc) > 0.2 * w:
            continue
        if (sl[0].stop - sl[0].start) * spacing[0] < 20.0:
            continue
        k = int((lab[sl] == i).sum())
        if k * vox_ml >= 2.0 and k > best_n:
            best, best_n = i, k
    if best == 0:
        return out
    seed = lab == best
    grown, vol = seed, best_n * vox_ml
    for t in np.arange(airway_hu, airway_hu + 150.0, 10.0):
        lab2, _ = ndi.label((img < t) & lung)
        ids = np.unique(lab2[seed])
        nxt = np.isin(lab2, ids[ids > 0])
        v = float(nxt.sum()) * vox_ml
        if v > 2.0 * vol + 5.0 or v > airway_max_ml:
            break
        grown, vol = nxt, v
    log.debug("airways: %.1f ml", vol)
    return grown


def gas_holes(tissue: BoolArray, img: FloatArray, gas_hu: float,
              min_gas_frac: float = 0.9) -> BoolArray:
    """The in-plane holes of ``tissue`` (each slice on its own) that are gas: at least
    ``min_gas_frac`` of their inside (the hole less a one-voxel rim of partial volume)
    under ``gas_hu`` on ``img``. That is the cavity of a cavitating tumour (which may reach
    the lung through a bronchus, so it can be part of the lung mask), the airway lumen, a
    gas-filled bowel loop; aerated lung, emphysematous too, is a hole of the chest's
    tissue on every slice but holds parenchyma and stays out."""
    inplane = np.zeros((3, 3, 3), dtype=bool)
    inplane[1] = ndi.generate_binary_structure(2, 1)
    holes = ndi.binary_fill_holes(tissue, structure=inplane) & ~tissue
    lab, n = ndi.label(holes, structure=inplane)
    if n == 0:
        return holes
    inside = np.where(ndi.binary_erosion(holes, structure=inplane), lab, 0).ravel()
    size = np.bincount(inside, minlength=n + 1)
    gas = np.bincount(inside, weights=(img < gas_hu).ravel(), minlength=n + 1)
    ok = (size > 0) & (gas >= min_gas_frac * np.maximum(size, 1))
    ok[0] = False
    out: BoolArray = ok[lab]
    return out


def halo_extent(core: BoolArray, sl: tuple[slice, ...], ggo: BoolArray,
                spacing: tuple[float, float, float], halo_mm: float, halo_open_mm: float,
                min_halo_ratio: float) -> tuple[slice, slice, slice]:
    """The box of ``core`` (a mask inside box ``sl`` of the grid) with its ground-glass
    halo: voxels of ``ggo`` (a mask of the whole grid) joined to the core, at most
    ``halo_mm`` from it, after an opening with a ball of ``halo_open_mm`` that removes the
    thin partial-volume rims of vessels. A part-solid lesion's core is only its solid
    part; the segmenter needs a box that holds the whole lesion. A halo under
    ``min_halo_ratio`` times the core is a solid lesion's partial-volume rim: the box is
    then the core's."""
    pad = [int(np.ceil(halo_mm / sp)) + 1 for sp in spacing]
    big = tuple(slice(max(0, s.start - q), min(d, s.stop + q))
                for s, q, d in zip(sl, pad, ggo.shape, strict=True))
    c = np.zeros([b.stop - b.start for b in big], dtype=bool)
    off = [s.start - b.start for s, b in zip(sl, big, strict=True)]
    c[off[0]:off[0] + core.shape[0], off[1]:off[1] + core.shape[1],
      off[2]:off[2] + core.shape[2]] = core
    near = ndi.distance_transform_edt(~c, sampling=spacing) <= halo_mm
    region = ndi.binary_opening((ggo[big] & near) | c, structure=ball(halo_open_mm, spacing))
    region |= c
    lab, _ = ndi.label(region)
    ids = np.unique(lab[c])
    keep = np.isin(lab, ids[ids > 0])
    log.debug("halo: core %d voxels, with halo %d (ratio %.2f)", int(c.sum()), int(keep.sum()),
              keep.sum() / max(c.sum(), 1) - 1)
    if keep.sum() < (1.0 + min_halo_ratio) * c.sum():
        keep = c  # a solid lesion: the halo is only its partial-volume rim
    nz = np.nonzero(keep)
    return tuple(slice(b.start + int(a.min()), b.start + int(a.max()) + 1)  # type: ignore[return-value]
                 for b, a in zip(big, nz, strict=True))


def structure_context(comp: BoolArray, sl: tuple[slice, ...], plab: npt.NDArray[np.int32],
                      psize: npt.NDArray[np.float64], pfield: npt.NDArray[np.float64],
                      spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """A candidate's anatomy context (``comp`` inside box ``sl``; ``plab``, ``psize``,
    ``pfield`` from :func:`thorax_structures`): its share of the structure it overlaps most
    near it (within ``max(15 mm, half its extent)``), that structure's volume in ml and its
    share inside the lung fields; (1, 0, 1) when it overlaps none."""
    vox_ml = float(np.prod(spacing)) / 1000.0
    sub = plab[sl]
    ls = sub[comp & (sub > 0)]
    if ls.size == 0:
        return 1.0, 0.0, 1.0
    par = int(np.bincount(ls).argmax())
    ext = max((s.stop - s.start) * sp for s, sp in zip(sl, spacing, strict=True))
    m = max(15.0, 0.5 * ext)
    big = tuple(slice(max(0, s.start - int(np.ceil(m / sp))), min(d, s.stop + int(np.ceil(m / sp))))
                for s, sp, d in zip(sl, spacing, plab.shape, strict=True))
    n_par_local = float((plab[big] == par).sum())
    n_cand = float((comp & (sub == par)).sum())
    return (n_cand / max(n_par_local, 1.0), psize[par] * vox_ml,
            float(pfield[par] / max(psize[par], 1)))


def thick_core(comp: BoolArray, edt: npt.NDArray[np.float64], radius_mm: float,
               spacing: tuple[float, float, float]) -> BoolArray:
    """The thick core of a component: an opening with a ball of ``radius_mm`` cuts thinner
    attachments (vessels, hilar and mediastinal rims); the part holding the deepest point
    (of ``edt``) is restored by a dilation inside the component."""
    se = ball(radius_mm, spacing)
    core = ndi.binary_opening(comp, structure=se)
    lab, n = ndi.label(core)
    if n == 0:
        return comp
    deepest = np.unravel_index(int(np.argmax(np.where(core, edt, -1))), comp.shape)
    out: BoolArray = ndi.binary_dilation(lab == lab[deepest], structure=se) & comp
    return out


def within_mm(mask: BoolArray, bbox: tuple[slice, ...], other: BoolArray, r_mm: float,
              spacing: tuple[float, float, float]) -> bool:
    """Whether ``mask`` (inside ``bbox``) comes within ``r_mm`` of ``other``; both span
    the whole grid, and only a box around ``bbox`` is searched."""
    sl = tuple(slice(max(0, s.start - int(np.ceil(r_mm / sp)) - 1),
                     min(n, s.stop + int(np.ceil(r_mm / sp)) + 1))
               for s, sp, n in zip(bbox, spacing, mask.shape, strict=True))
    near = other[sl]
    return bool(near.any()) and bool(
        ndi.distance_transform_edt(~mask[sl], sampling=spacing)[near].min() <= r_mm)
