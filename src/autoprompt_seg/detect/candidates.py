"""Training-free lung tumour detector (v2.11): lung fields, soft-tissue candidates, anatomy
context and a calibrated confidence.

The pipeline works on a coarse grid (block means to about ``work_mm`` in-plane and
``work_z_mm`` along z) and every size is given in mm or ml, so it behaves the same on any
spacing:

1. **Lungs**: 3-D components of air (``HU < air_hu``) of at least ``min_lung_ml``, whose
   share of very dark voxels (``< pure_air_hu``) is small: outside air, the table's
   padding, the trachea and bowel gas are almost pure air, lung parenchyma is not (an
   emphysematous lung, which touches no side of the image, may hold more, v2.7). The
   airway lumen (trachea, main and lobar bronchi), grown from the trachea with a rising
   threshold that stops before it leaks, is taken out: a mass beside a bronchus is not
   surrounded by lung, and the airways must not bridge the two lungs' fields.
2. **Lung fields**: the lungs are split into left and right (an erosion, then every lung
   voxel goes to the nearest eroded component) and each is closed with a ball of radius
   ``field_radius_mm`` (two Euclidean distance transforms). The closing fills vessels,
   nodules and tumours that indent the lung surface (juxta-pleural, hilar) but not the
   broad concavities of the heart, mediastinum or diaphragm.
3. **Candidates**: soft tissue (smoothed ``soft_lo_hu .. soft_hi_hu``) inside the lung
   fields and outside the aerated lung, after an opening with a ball of radius
   ``vessel_radius_mm`` that removes vessels and airway walls (thinner structures). Gas
   that tissue encloses in-plane (inside its rim at least 90 % under ``pure_air_hu``; not
   the airway lumen) joins the soft tissue first (v2.8, ``cavities``): a cavitating
   tumour is one thick mass, not a thin shell. Each component's thick core (an opening
   with a ball of 0.6 of its thickness, the part that holds its deepest point) is one
   candidate; what the core leaves of the component is opened and searched again
   (``remainder_depth`` levels, default 2), so a lesion that vessels join to a thicker
   hilar or mediastinal structure, or to a chain of them (a vessel confluence, v2.6),
   keeps its own candidate; a piece from the second level on must score at least
   ``deep_min_score`` (most of them are vessel fragments).
   **Sub-solid candidates** (v2.3, ``ggo_candidates``): a part-solid or ground-glass
   nodule whose solid part is under the thickness floor has no solid candidate, so the
   blobs of ground glass and tissue (``ggo_lo_hu .. soft_hi_hu``, opened the same way)
   that hold no solid candidate are candidates too, when ``ggo_min_thickness_mm`` thick
   and ``ggo_min_solidity`` solid. v2.11 (``ggo_split``): a blob that fails those gates is
   searched as the solid mask is, its thick core and what that leaves as pieces (up to
   ``remainder_depth`` levels; a piece must score at least ``deep_min_score``): the
   ground glass of a nodule beside a vessel or the hilum runs into their partial volume,
   one branching blob.
4. **Filters and features**: per 3-D component, volume (``min_volume_ml`` ..
   ``max_volume_ml``), median HU (unsmoothed working grid) at most ``max_median_hu``
   (v2.6: brighter is a contrast-filled vessel, blurred into the smoothed soft-tissue band
   at thick slices, or calcium), thickness (largest inscribed ball radius,
   ``min_thickness_mm``), elongation (ratio of the principal axes: vessels and z-tubes
   are long) and the share of its surface that touches aerated lung (a tumour is mostly
   surrounded by lung; a slice of mediastinum that the closing added is not), measured on
   the ring one voxel beyond the surface. Anatomy context: dense tissue (fat excluded,
   -60..300 HU on the unsmoothed working grid, so thin fat planes still separate organs)
   inside the thorax's inner region (per slice, the convex hull of both lungs:
   mediastinum, heart, great vessels, hila, the diaphragm's dome) is labelled into 3-D
   structures; a candidate that is only the lung-side tip of a large structure (heart,
   aorta, SVC, liver) gets a low ``context_frac`` (its share of that structure near it)
   and a low ``structure_in_field`` (the structure's share inside the lung fields).
5. **Calibrated confidence**: a logistic model over lung contact, elongation, log
   thickness, ``context_frac``, ``structure_in_field`` and the elongation of a mass that
   stands on its own (elongation counts less there: part-solid and lobulated tumours are
   not round, while vessels and tubes are joined to structures) gives each candidate a
   probability of being a tumour (weights ``_W``, fitted on the development set; see
   ``scripts/eval_wholechest.py`` and docs/benchmarks.md). **Convex-mass rule** (v2.2):
   a candidate at least ``mass_min_thickness_mm`` thick (inscribed-ball radius), at most
   ``mass_max_elongation`` long, with a solidity (share of its 3-D convex hull that it
   fills) of at least ``mass_min_solidity`` and at least ``mass_min_contact`` of its
   surface on aerated lung scores at least ``mass_score`` (a set level, 0.5; 0 turns the
   rules off). A tumour pressed on the mediastinum or chest wall has a low context, so
   the logistic score alone rejects it; a hilar vessel confluence of the same size
   branches (solidity about 0.5-0.6 on the development set, tumours 0.7-0.95). Tiers
   with the same four gates (prefix ``large_mass_``, v2.4: 10 mm, 2.6, 0.65, 0.55, a big
   tumour flattened on the mediastinum; ``small_mass_``, v2.5: 6 mm, 1.7, 0.75, 0.5, a
   round nodule on it). **Lone mass** (v2.7, ``lone_mass_``: 13 mm, 2.4, 0.6, 0.4): in a
   study where no candidate that thick reaches ``mass_score`` (a small nodule may), the
   thickest candidate that passes scores ``mass_score`` (a large tumour wrapped on the
   mediastinum or chest wall, under the other tiers). Gates: docs/benchmarks.md.
   **Second masses** (v2.9, ``mass_only_if_best``): a candidate that reaches
   ``mass_score`` only through a tier keeps it only when no candidate of the study scores
   higher by the logistic model alone; otherwise it is listed with its fitted score.
   v2.10: a second mass of at least ``second_mass_min_ml`` (8 ml) within the ``mass_``
   gates, farther than ``hilum_airway_mm`` (5 mm) from the airway lumen, keeps its tier
   level (a tumour on the chest wall, not a hilum; with no airway tree, v2.9 applies).
   Candidates scoring below ``min_score`` (a floor, 0.1) are dropped; at most
   ``max_candidates`` are returned, so the pipeline's operating point (``--min-score``,
   default 0.45) decides which are segmented and which are only listed in report.json.
6. **Boxes**: one :class:`Box3D` per component, mapped back to the original grid, with
   the key slice at the component's largest cross-section. A part-solid lesion's core is
   only its solid part, so the box also holds the core's ground-glass halo (voxels of
   ``ggo_lo_hu .. soft_lo_hu`` joined to the core, at most ``halo_mm`` away, opened with a
   ball of ``halo_open_mm``) when that halo is larger than ``min_halo_ratio`` times the
   core; the partial-volume rim of a solid lesion stays under that ratio (v2.1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi
from scipy.special import expit

from ..backends import ProgressFn
from ..config import Settings
from ..errors import ConfigError
from ..types import BackendInfo, Box3D, Volume
from .morphology import (
    airways,
    ball,
    block_mean,
    closing_edt,
    elongation,
    gas_holes,
    halo_extent,
    lung_components,
    padded,
    solidity,
    structure_context,
    thick_core,
    thickness_mm,
    thorax_structures,
    within_mm,
)

log = logging.getLogger(__name__)

VERSION = "2.11.0"

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class CandidatesParams:
    """Physical parameters (HU, mm, ml); override with ``Settings.options["candidates"]``."""

    work_mm: float = 2.0
    work_z_mm: float = 2.5
    air_hu: float = -400.0
    pure_air_hu: float = -950.0
    max_pure_air_frac: float = 0.2
    enclosed_max_pure_air_frac: float = 0.5
    enclosed_min_lung_ml: float = 300.0
    min_lung_ml: float = 50.0
    split_erosion_mm: float = 3.0
    min_split_ml: float = 100.0
    field_radius_mm: float = 40.0
    soft_lo_hu: float = -400.0
    soft_hi_hu: float = 200.0
    vessel_radius_mm: float = 3.5
    min_volume_ml: float = 0.3
    max_volume_ml: float = 1500.0
    min_thickness_mm: float = 5.0
    max_elongation: float = 4.0
    min_lung_contact: float = 0.38
    core_frac: float = 0.6
    min_score: float = 0.1
    airway_hu: float = -950.0
    airway_max_ml: float = 200.0
    max_candidates: float = 10
    remainder_depth: float = 2
    deep_min_score: float = 0.6
    ggo_lo_hu: float = -700.0
    halo_mm: float = 10.0
    halo_open_mm: float = 2.5
    min_halo_ratio: float = 2.0
    box_margin_mm: float = 2.0
    mass_min_thickness_mm: float = 8.0
    mass_max_elongation: float = 2.1
    mass_min_solidity: float = 0.7
    mass_min_contact: float = 0.4
    mass_score: float = 0.5
    large_mass_min_thickness_mm: float = 10.0
    large_mass_max_elongation: float = 2.6
    large_mass_min_solidity: float = 0.65
    large_mass_min_contact: float = 0.55
    small_mass_min_thickness_mm: float = 6.0
    small_mass_max_elongation: float = 1.7
    small_mass_min_solidity: float = 0.75
    small_mass_min_contact: float = 0.5
    lone_mass_min_thickness_mm: float = 13.0
    lone_mass_max_elongation: float = 2.4
    lone_mass_min_solidity: float = 0.6
    lone_mass_min_contact: float = 0.4
    ggo_candidates: float = 1
    cavities: float = 1
    mass_only_if_best: float = 1
    hilum_airway_mm: float = 5.0
    second_mass_min_ml: float = 8.0
    ggo_min_thickness_mm: float = 7.0
    ggo_split: float = 1
    ggo_min_solidity: float = 0.6
    max_median_hu: float = 200.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
                raise ConfigError(f"Argument 'candidates.{f.name}' must be a finite number; "
                                  f"got {v!r}")
            if not f.name.endswith("_hu") and v < 0:
                raise ConfigError(f"Argument 'candidates.{f.name}' must be >= 0; got {v!r}")
        for name in ("work_mm", "work_z_mm", "field_radius_mm"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Argument 'candidates.{name}' must be > 0; "
                                  f"got {getattr(self, name)!r}")
        for name in ("mass_min_solidity", "mass_min_contact", "mass_score", "min_score",
                     "deep_min_score", "large_mass_min_solidity", "large_mass_min_contact",
                     "small_mass_min_solidity", "small_mass_min_contact",
                     "lone_mass_min_solidity", "lone_mass_min_contact",
                     "max_pure_air_frac", "enclosed_max_pure_air_frac"):
            if getattr(self, name) > 1:
                raise ConfigError(f"Argument 'candidates.{name}' must be <= 1; "
                                  f"got {getattr(self, name)!r}")
        if self.soft_lo_hu >= self.soft_hi_hu:
            raise ConfigError("Argument 'candidates.soft_lo_hu' must be below 'soft_hi_hu'; "
                              f"got {self.soft_lo_hu} >= {self.soft_hi_hu}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> CandidatesParams:
        from ..options import parse_options

        return parse_options(cls, options.get("candidates"), "candidates")


@dataclass(frozen=True)
class Candidate:
    """One soft-tissue component with its features (working grid)."""

    label: int
    volume_ml: float
    thickness_mm: float
    elongation: float
    lung_contact: float
    score: float
    bbox: tuple[slice, slice, slice]
    context_frac: float = 1.0
    structure_ml: float = 0.0
    structure_in_field: float = 1.0
    extent: tuple[slice, slice, slice] | None = None
    solidity: float = 1.0
    fitted: float | None = None  # the logistic score alone, before any mass rule


#: Logistic weights of the candidate score (see :meth:`CandidatesDetector._score`).
_W = {"intercept": 1.851, "lung_contact": 1.233, "elongation": -2.878,
      "log_thickness_mm": 0.715, "context_frac": 1.022, "structure_in_field": 0.373,
      "isolated_elongation": 1.767}


class CandidatesDetector:
    """Training-free detector; see the module docstring."""

    def __init__(self, params: CandidatesParams | None = None) -> None:
        self.params = params or CandidatesParams()

    def info(self) -> BackendInfo:
        return BackendInfo(name="candidates", kind="detector", version=VERSION,
                           family="Morphological Operations",
                           details={f.name: getattr(self.params, f.name)
                                    for f in fields(self.params)})

    # ------------------------------------------------------------------ steps
    def lung_mask(self, img: FloatArray, spacing: tuple[float, float, float]) -> BoolArray:
        """Aerated lung (:func:`.morphology.lung_components` with the ``*air*`` and
        ``min_lung_ml`` parameters)."""
        p = self.params
        return lung_components(img, spacing, p.air_hu, p.pure_air_hu, p.max_pure_air_frac,
                               p.min_lung_ml, p.enclosed_max_pure_air_frac,
                               p.enclosed_min_lung_ml)

    def airways(self, img: FloatArray, lung: BoolArray, spacing: tuple[float, float, float]
                ) -> BoolArray:
        """Airway lumen grown from the trachea (:func:`.morphology.airways` with
        ``airway_hu`` and ``airway_max_ml``); empty when no trachea is seen."""
        return airways(img, lung, spacing, self.params.airway_hu, self.params.airway_max_ml)

    def lung_fields(self, lung: BoolArray, spacing: tuple[float, float, float]) -> BoolArray:
        """Each lung (left/right split) closed with a ball of ``field_radius_mm``."""
        p = self.params
        if not lung.any():
            return lung.copy()
        vox_ml = float(np.prod(spacing)) / 1000.0
        eroded = ndi.binary_erosion(lung, structure=ball(p.split_erosion_mm, spacing))
        lab, n = ndi.label(eroded)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        sizes[0] = 0
        big = [int(i) for i in np.nonzero(sizes * vox_ml >= p.min_split_ml)[0]]
        if len(big) <= 1:
            parts = [lung]
        else:
            seeds = np.where(np.isin(lab, big), lab, 0)
            _, (iz, iy, ix) = ndi.distance_transform_edt(seeds == 0, sampling=spacing,
                                                         return_indices=True)
            nearest = seeds[iz, iy, ix]
            parts = [lung & (nearest == b) for b in big]
        field = np.zeros_like(lung)
        r = p.field_radius_mm
        for part in parts:
            if not part.any():
                continue
            nzs = np.nonzero(part.any(axis=(1, 2)))[0]
            nys = np.nonzero(part.any(axis=(0, 2)))[0]
            nxs = np.nonzero(part.any(axis=(0, 1)))[0]
            sl = (slice(nzs[0], nzs[-1] + 1), slice(nys[0], nys[-1] + 1),
                  slice(nxs[0], nxs[-1] + 1))
            field[sl] |= closing_edt(part[sl], r, spacing)
        return field

    def candidates(self, img: FloatArray, spacing: tuple[float, float, float]
                   ) -> tuple[npt.NDArray[np.int32], list[Candidate]]:
        """Label map of soft-tissue components in the lung fields, and their features."""
        p = self.params
        lung = self.lung_mask(img, spacing)
        # the airways are no lung parenchyma: a mass beside the trachea or a main bronchus
        # is mediastinal, and the airways must not bridge the two lungs' fields
        lumen = self.airways(img, lung, spacing)
        lung &= ~(air := ndi.binary_dilation(lumen))
        field = self.lung_fields(lung, spacing)
        smooth = ndi.uniform_filter(img, size=3)
        plab, psize, pfield = thorax_structures(smooth, lung, field, img)
        soft = (smooth >= p.soft_lo_hu) & (smooth <= p.soft_hi_hu) & field & ~lung
        if p.cavities:  # v2.8: gas enclosed by tissue in-plane (not an airway) is a cavity
            cav = gas_holes(smooth >= p.soft_lo_hu, img, p.pure_air_hu) & ~air
            soft, lung = soft | (cav & field), lung & ~cav
        # ground glass around a core: the sub-solid part of a part-solid lesion
        ggo = (smooth >= p.ggo_lo_hu) & (smooth < p.soft_lo_hu) & field
        soft = ndi.binary_opening(soft, structure=ball(p.vessel_radius_mm, spacing))
        lab0, _ = ndi.label(soft)
        lab = np.zeros(lab0.shape, dtype=np.int32)
        vox_ml = float(np.prod(spacing)) / 1000.0
        out: list[Candidate] = []
        # worklist of (mask inside its box, box, depth): a component whose thick core is
        # taken out leaves a remainder, which is searched again (up to remainder_depth
        # levels) so that a lesion joined by vessels or a thin rim to a thicker structure
        # (or to a chain of them: mediastinum, hilar confluence) gets its own candidate
        # instead of being lost with the structure's remainder
        work: list[tuple[BoolArray, tuple[slice, ...], int]] = []
        for i, sl in enumerate(ndi.find_objects(lab0), start=1):
            if sl is None:
                continue
            sl = padded(sl, lab0.shape)
            work.append((lab0[sl] == i, sl, 0))
        while work:
            comp, sl, depth = work.pop()
            vol_ml = float(comp.sum()) * vox_ml
            if vol_ml < p.min_volume_ml or vol_ml > p.max_volume_ml:
                continue
            edt = ndi.distance_transform_edt(comp, sampling=spacing)
            thick = thickness_mm(edt, spacing)
            if thick < p.min_thickness_mm:
                continue
            core = thick_core(comp, edt, max(p.vessel_radius_mm, p.core_frac * thick), spacing)
            if depth < int(p.remainder_depth):
                rest = ndi.binary_opening(comp & ~ndi.binary_dilation(core),
                                          structure=ball(p.vessel_radius_mm, spacing))
                rlab, rn = ndi.label(rest)
                for j in range(1, rn + 1):
                    work.append((rlab == j, sl, depth + 1))
            cand = self._candidate(core, sl, edt, lung, plab, psize, pfield, spacing,
                                   len(out) + 1)
            if cand is not None and self._too_bright(img[sl], core, cand.label):
                cand = None
            if cand is not None and depth >= 2 and cand.score < p.deep_min_score:
                # a piece cut twice from a structure needs more evidence
                log.debug("candidate %d: second-level piece under %.2f; dropped", cand.label,
                          p.deep_min_score)
                cand = None
            if cand is not None:
                lab[sl][core] = cand.label
                out.append(replace(cand, extent=halo_extent(
                    core, sl, ggo, spacing, p.halo_mm, p.halo_open_mm, p.min_halo_ratio)))
        if p.ggo_candidates:
            out += self._subsolid(img, smooth, field, lung, lab, plab, psize, pfield,
                                  spacing, len(out))
        out = self._second_masses(out, lab, lumen, spacing)
        lone = [c for c in out if self._in_tier(c, "lone_mass_")]
        if lone and not any(c.score >= p.mass_score and c.thickness_mm
                            >= p.lone_mass_min_thickness_mm for c in out):
            # no big mass scores: the thickest big, compact mass on the lung is the tumour
            best = max(lone, key=lambda c: c.thickness_mm)
            log.debug("candidate %d: lone mass, score %.2f -> %.2f", best.label, best.score,
                      p.mass_score)
            out = [replace(c, score=max(c.score, p.mass_score)) if c is best else c
                   for c in out]
        return lab, out

    def _second_masses(self, out: list[Candidate], lab: npt.NDArray[np.int32],
                       lumen: BoolArray, spacing: tuple[float, float, float]
                       ) -> list[Candidate]:
        """v2.9 (``mass_only_if_best``): a candidate that reaches ``mass_score`` only
        through a mass tier keeps that level only when no candidate of the study scores
        higher by the fitted model alone (beside a clear lesion a second compact mass is
        more often a hilar confluence); v2.10: not :meth:`_second_tumour`."""
        if not self.params.mass_only_if_best or not out:
            return out
        best = max(c.fitted if c.fitted is not None else c.score for c in out)
        return [replace(c, score=c.fitted) if c.fitted is not None and c.fitted < c.score < best
                and not self._second_tumour(c, lab, lumen, spacing) else c for c in out]

    def _second_tumour(self, c: Candidate, lab: npt.NDArray[np.int32], lumen: BoolArray,
                       spacing: tuple[float, float, float]) -> bool:
        """v2.10: whether second mass ``c`` is a tumour of its own: at least
        ``second_mass_min_ml``, within the ``mass_`` gates (the large tier lets a collapsed
        lobe through), farther than ``hilum_airway_mm`` from the airway ``lumen``."""
        p = self.params
        if c.volume_ml < p.second_mass_min_ml or not self._in_tier(c, "mass_") or not lumen.any():
            return False
        at_hilum = within_mm(lab == c.label, c.bbox, lumen, p.hilum_airway_mm, spacing)
        if not at_hilum:
            log.debug("candidate %d: a second mass away from the hilum keeps %.2f",
                      c.label, c.score)
        return not at_hilum

    def _too_bright(self, img: FloatArray, mask: BoolArray, label: int) -> bool:
        """Whether the median HU of ``img[mask]`` (unsmoothed working grid) is above
        ``max_median_hu``: a contrast-filled vessel or calcium, not a tumour (v2.6)."""
        if float(np.median(img[mask])) <= self.params.max_median_hu:
            return False
        log.debug("candidate %d: median above %.0f HU; dropped", label,
                  self.params.max_median_hu)
        return True

    def _subsolid(self, img: FloatArray, smooth: FloatArray, field: BoolArray,
                  lung: BoolArray, lab: npt.NDArray[np.int32], plab: npt.NDArray[np.int32],
                  psize: npt.NDArray[np.float64], pfield: npt.NDArray[np.float64],
                  spacing: tuple[float, float, float], n_before: int) -> list[Candidate]:
        """Sub-solid candidates (v2.3): blobs of ground glass and tissue
        (``ggo_lo_hu .. soft_hi_hu``) in the lung fields, opened like the solid mask, that
        hold no solid candidate. A part-solid or ground-glass nodule whose solid part is
        under the thickness floor has no solid candidate; its whole blob is thick enough.
        Kept when at least ``ggo_min_thickness_mm`` thick and ``ggo_min_solidity`` solid
        (partial-volume blobs at vessel forks are thinner; the hilum's ground-glass
        envelope branches) and not brighter than ``max_median_hu`` on ``img`` (``smooth``
        is its smoothed copy). ``lab`` gets the new labels."""
        p = self.params
        g = (smooth >= p.ggo_lo_hu) & (smooth <= p.soft_hi_hu) & field
        g = ndi.binary_opening(g, structure=ball(p.vessel_radius_mm, spacing))
        glab, _ = ndi.label(g)
        vox_ml = float(np.prod(spacing)) / 1000.0
        out: list[Candidate] = []
        work: list[tuple[BoolArray, tuple[slice, ...], int]] = []
        for i, sl in enumerate(ndi.find_objects(glab), start=1):
            if sl is not None:
                sl = padded(sl, glab.shape)
                work.append((glab[sl] == i, sl, 0))
        while work:
            comp, sl, depth = work.pop()
            vol_ml = float(comp.sum()) * vox_ml
            if (vol_ml < p.min_volume_ml or vol_ml > p.max_volume_ml
                    or (lab[sl][comp] > 0).any()):
                continue
            edt = ndi.distance_transform_edt(comp, sampling=spacing)
            thick = thickness_mm(edt, spacing)
            if thick < p.ggo_min_thickness_mm:
                continue
            # the ring around a ground-glass blob is aerated lung outside the blob
            cand = self._candidate(comp, sl, edt, lung & ~g, plab, psize, pfield, spacing,
                                   n_before + len(out) + 1)
            if cand is not None and self._too_bright(img[sl], comp, cand.label):
                continue
            if cand is None or cand.solidity < p.ggo_min_solidity:
                if p.ggo_split and depth < int(p.remainder_depth):
                    # v2.11: a nodule's ground glass run into a vessel's partial volume
                    core = thick_core(comp, edt, max(p.vessel_radius_mm, p.core_frac * thick), spacing)
                    rest = ndi.binary_opening(comp & ~ndi.binary_dilation(core),
                                              structure=ball(p.vessel_radius_mm, spacing))
                    rlab, rn = ndi.label(rest)
                    work += [(core, sl, depth + 1)] if core.sum() < comp.sum() else []
                    work += [(rlab == j, sl, depth + 1) for j in range(1, rn + 1)]
                continue
            if depth > 0 and cand.score < p.deep_min_score:
                continue  # most pieces of a branching blob are vessel partial volume
            lab[sl][comp] = cand.label
            out.append(replace(cand, extent=cand.bbox))
        return out

    def _candidate(self, comp: BoolArray, sl: tuple[slice, ...], edt: npt.NDArray[np.float64],
                   lung: BoolArray, plab: npt.NDArray[np.int32], psize: npt.NDArray[np.float64],
                   pfield: npt.NDArray[np.float64], spacing: tuple[float, float, float],
                   label: int) -> Candidate | None:
        """Features and score of one core (``comp`` inside box ``sl``), or None when it
        is too small or too little of its surface touches the lung."""
        p = self.params
        vox_ml = float(np.prod(spacing)) / 1000.0
        vol_ml = float(comp.sum()) * vox_ml
        if vol_ml < p.min_volume_ml:
            return None
        thick = thickness_mm(edt[comp], spacing)
        if thick < p.min_thickness_mm:
            return None
        elong = elongation(comp, spacing)
        # the ring one voxel beyond the surface: the voxels right at the surface may be
        # partial-volume tissue that the smoothed threshold and the opening left out
        shell_se = ndi.generate_binary_structure(3, 1)
        inner = ndi.binary_dilation(comp, structure=shell_se)
        shell = ndi.binary_dilation(inner, structure=shell_se) & ~inner
        contact = float((shell & lung[sl]).sum()) / max(int(shell.sum()), 1)
        if contact < p.min_lung_contact:
            log.debug("candidate: lung contact %.2f below %.2f; dropped", contact,
                      p.min_lung_contact)
            return None
        ctx, s_ml, s_in = structure_context(comp, sl, plab, psize, pfield, spacing)
        sol = solidity(comp)
        score = self._score(thick, elong, contact, ctx, s_in)
        # a thick, round, convex mass on the lung: a tumour even where it touches the
        # mediastinum or chest wall (low context), unlike a hilar vessel confluence
        # (low solidity) or a vessel or organ rim; the tiers: see the module docstring
        nzc = np.nonzero(comp)
        bbox = tuple(slice(s0.start + int(a.min()), s0.start + int(a.max()) + 1)
                     for s0, a in zip(sl, nzc, strict=False))
        cand = Candidate(label, vol_ml, thick, elong, contact, score, bbox,  # type: ignore[arg-type]
                         ctx, s_ml, s_in, solidity=sol, fitted=score)
        if any(self._in_tier(cand, t) for t in ("mass_", "large_mass_", "small_mass_")):
            cand = replace(cand, score=max(score, p.mass_score))
        log.debug("candidate %d: %.2f ml, thickness %.1f mm, elongation %.2f, lung contact "
                  "%.2f, solidity %.2f, score %.2f", label, vol_ml, thick, elong, contact,
                  sol, cand.score)
        return cand

    def _in_tier(self, c: Candidate, tier: str) -> bool:
        """Whether ``c`` passes the gates of a mass tier (a parameter prefix; a tier with
        a minimum thickness of 0 is off)."""
        p = self.params
        t_min = getattr(p, tier + "min_thickness_mm")
        return bool(t_min > 0 and t_min <= c.thickness_mm
                    and c.elongation <= getattr(p, tier + "max_elongation")
                    and c.solidity >= getattr(p, tier + "min_solidity")
                    and c.lung_contact >= getattr(p, tier + "min_contact"))

    def _score(self, thick: float, elong: float, contact: float, context: float = 1.0,
               in_field: float = 1.0) -> float:
        """Calibrated probability that the candidate is a tumour (logistic model).

        The weights were fitted (scikit-learn ``LogisticRegression``, balanced classes) on
        the candidates of the development set only: the LIDC-IDRI-0314 whole chest with
        pycerr lesions pat_1..pat_3 transplanted into it, and the real pycerr crops
        pat_1..pat_3 (``scripts/fit_candidates_score.py`` reproduces the fit and prints the
        held-out check); pat_4 and the CTA background stayed out for the held-out check
        in docs/benchmarks.md."""
        z = (_W["intercept"] + _W["lung_contact"] * contact + _W["elongation"] * elong
             + _W["log_thickness_mm"] * float(np.log(max(thick, 1e-3)))
             + _W["context_frac"] * context + _W["structure_in_field"] * in_field
             # elongation counts less for a mass on its own in the lung (a part-solid or
             # lobulated tumour), more for one joined to a structure (a vessel, a tube)
             + _W["isolated_elongation"] * elong * min(context, in_field))
        return float(expit(z))  # no overflow warning for a very negative z

    # ------------------------------------------------------------------ API
    def working_grid(self, volume: Volume) -> tuple[FloatArray, tuple[float, float, float],
                                                    tuple[int, int, int]]:
        """The volume on the detector's working grid: (block means, their spacing, the
        integer block factors along z, y, x)."""
        p = self.params
        sz, sy, sx = volume.spacing
        f = (max(1, int(round(p.work_z_mm / sz))), max(1, int(round(p.work_mm / sy))),
             max(1, int(round(p.work_mm / sx))))
        return block_mean(volume.array, f), (sz * f[0], sy * f[1], sx * f[2]), f

    def detect(self, volume: Volume, progress: ProgressFn | None = None) -> list[Box3D]:
        """One box per candidate lesion, best score first."""
        p = self.params
        sz, sy, sx = volume.spacing
        img, wsp, f = self.working_grid(volume)
        if min(img.shape) < 3:
            log.warning("volume %s too small for the candidates detector", volume.shape)
            return []
        if progress is not None:
            progress(0, 2)
        lab, cands = self.candidates(img, wsp)
        boxes: list[Box3D] = []
        nz, ny, nx = volume.shape
        mz = int(np.ceil(p.box_margin_mm / sz))
        my = int(np.ceil(p.box_margin_mm / sy))
        mx = int(np.ceil(p.box_margin_mm / sx))
        for c in sorted(cands, key=lambda c: -c.score)[:int(p.max_candidates)]:
            if c.score < p.min_score:
                continue
            comp = lab[c.bbox] == c.label
            area = comp.sum(axis=(1, 2))
            kw = c.bbox[0].start + int(area.argmax())
            e = c.extent or c.bbox
            z0 = max(0, e[0].start * f[0] - mz)
            z1 = min(nz, e[0].stop * f[0] + mz)
            y0 = max(0, e[1].start * f[1] - my)
            y1 = min(ny, e[1].stop * f[1] + my)
            x0 = max(0, e[2].start * f[2] - mx)
            x1 = min(nx, e[2].stop * f[2] + mx)
            key = int(min(max(kw * f[0] + f[0] // 2, z0), z1 - 1))
            boxes.append(Box3D(z0=z0, z1=z1, y0=y0, y1=y1, x0=x0, x1=x1, key_slice=key,
                               score=min(1.0, max(0.0, c.score)), source="candidates"))
        if progress is not None:
            progress(2, 2)
        log.info("candidates: %d component(s), %d box(es)", len(cands), len(boxes))
        return boxes


def create(settings: Settings) -> CandidatesDetector:
    """Registry factory: ``Settings.options["candidates"]`` may override the parameters."""
    return CandidatesDetector(CandidatesParams.from_options(dict(settings.options)))
