"""Prediction -> a JSON-ready run report (report.json): input, backends, lesions, cost.

Measurements
------------
* ``volume_ml`` = voxel count x voxel volume (spacing product / 1000).
* ``longest_axial_diameter_mm``: the maximum Feret (caliper) diameter of the lesion in
  each of its slices, spacing-aware, maximised over the slices. The lesion in a slice is
  taken as the union of its pixel *squares* (each pixel covers
  ``[r, r+1) x [c, c+1)`` scaled by the row / column spacing), so the value is the
  edge-to-edge distance a radiologist measures with calipers: an ``a x b`` pixel
  rectangle with spacing ``(sy, sx)`` measures exactly ``hypot(a*sy, b*sx)``; a disc of
  radius *R* mm measures between ``2R`` and ``2R`` plus one pixel diagonal. Anisotropic
  pixels are handled exactly (corners are scaled before the hull is taken). "Axial"
  means the acquisition plane of the series, which is what a reader scrolls through.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import resource
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import __version__
from ..types import BackendInfo, Box3D, LesionMask, Prediction, Volume
from . import lesion_label

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
UNTRAINED = "untrained test checkpoint"


def _hull(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Convex hull vertices of 2-D points (Andrew's monotone chain); degenerate-safe."""
    pts = np.unique(points, axis=0)
    if len(pts) <= 2:
        return pts

    def half(seq: npt.NDArray[np.float64]) -> list[npt.NDArray[np.float64]]:
        out: list[npt.NDArray[np.float64]] = []
        for p in seq:
            while len(out) >= 2:
                o, a = out[-2], out[-1]
                if (a[0] - o[0]) * (p[1] - o[1]) - (a[1] - o[1]) * (p[0] - o[0]) <= 0:
                    out.pop()
                else:
                    break
            out.append(p)
        return out

    lower = half(pts)
    upper = half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def feret_diameter_mm(mask2d: npt.NDArray[np.bool_], spacing_yx: tuple[float, float]) -> float:
    """Maximum Feret diameter (mm) of a 2-D mask taken as the union of its pixel squares.

    ``spacing_yx`` = (row spacing, column spacing) in mm. 0.0 for an empty mask.
    """
    m = np.asarray(mask2d, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"Argument 'mask2d' must be 2-D; got shape {m.shape}")
    sy, sx = (float(s) for s in spacing_yx)
    if not (sy > 0 and sx > 0):
        raise ValueError(f"Argument 'spacing_yx' must be two positive numbers; got {spacing_yx!r}")
    if not m.any():
        return 0.0
    # Only pixels on the region's outline can carry hull corners.
    padded = np.pad(m, 1)
    interior = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
                & padded[1:-1, :-2] & padded[1:-1, 2:])
    rr, cc = np.nonzero(m & ~interior)
    corners = np.concatenate([np.stack([rr + dr, cc + dc], axis=1)
                              for dr in (0, 1) for dc in (0, 1)]).astype(np.float64)
    corners *= np.array([sy, sx])
    hull = _hull(corners)
    diff = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt((diff**2).sum(axis=-1).max()))


def longest_axial_diameter(lesion: LesionMask, spacing: tuple[float, float, float]
                           ) -> tuple[float, int]:
    """(diameter in mm, slice index) of the longest in-slice Feret diameter of a lesion."""
    best, best_k = 0.0, lesion.offset[0]
    for dz in range(lesion.mask.shape[0]):
        sl = lesion.mask[dz]
        if not sl.any():
            continue
        d = feret_diameter_mm(sl, (spacing[1], spacing[2]))
        if d > best:
            best, best_k = d, lesion.offset[0] + dz
    return best, best_k


def _corners_lps(volume: Volume, lo: Sequence[int], hi: Sequence[int]) -> list[list[float]]:
    """The 8 corners (voxel *edges*, LPS mm) of the half-open voxel box [lo, hi) in (z,y,x)."""
    out = []
    for z in (lo[0], hi[0]):
        for y in (lo[1], hi[1]):
            for x in (lo[2], hi[2]):
                p = volume.index_to_lps(z - 0.5, y - 0.5, x - 0.5)
                out.append([round(c, 3) for c in p])
    return out


def _slice_info(volume: Volume, k: int) -> dict[str, Any]:
    info: dict[str, Any] = {"index": int(k)}
    if volume.sources:
        ref = volume.sources[k]
        info["sop_instance_uid"] = ref.sop_instance_uid
        ds = ref.dataset
        if ds is not None and ds.get("InstanceNumber") is not None:
            info["instance_number"] = int(ds.InstanceNumber)
    centre = volume.index_to_lps(k, (volume.shape[1] - 1) / 2, (volume.shape[2] - 1) / 2)
    info["position_along_normal_mm"] = round(
        float(np.dot(np.asarray(centre), volume.direction[:, 2])), 3)
    return info


def lesion_entry(prediction: Prediction, index: int, tracking_uid: str | None = None
                 ) -> dict[str, Any]:
    """The report entry of lesion ``index`` (1-based)."""
    vol = prediction.volume
    les = prediction.lesions[index - 1]
    nz = np.nonzero(les.mask)
    if nz[0].size:
        lo = [int(a.min()) + o for a, o in zip(nz, les.offset, strict=True)]
        hi = [int(a.max()) + 1 + o for a, o in zip(nz, les.offset, strict=True)]
    else:
        lo, hi = list(les.offset), list(les.offset)
    count = les.voxel_count
    diameter, diameter_k = longest_axial_diameter(les, vol.spacing)
    centre = vol.index_to_lps(*((a + b - 1) / 2 for a, b in zip(lo, hi, strict=True)))
    entry: dict[str, Any] = {
        "label": index,
        "segment_label": lesion_label(index),
        "tracking_id": lesion_label(index),
        "voxels": count,
        "volume_ml": round(count * vol.voxel_volume_ml, 4),
        "longest_axial_diameter_mm": round(diameter, 2),
        "longest_axial_diameter_slice": diameter_k,
        "key_slice": _slice_info(vol, les.box.key_slice),
        "box_voxels": {"z0": lo[0], "z1": hi[0], "y0": lo[1], "y1": hi[1], "x0": lo[2],
                       "x1": hi[2]},
        "box_lps_mm": {"corners": _corners_lps(vol, lo, hi),
                       "center": [round(c, 3) for c in centre]},
        "prompt_box": les.box.to_dict(),
        "prompt": "manual" if les.box.from_person else "automatic",
        "detection_score": round(float(les.box.score), 4),
        # the detector's calibrated confidence that this is a tumour (1 for manual prompts)
        "confidence": 1.0 if les.box.from_person else round(float(les.box.score), 4),
        "segmentation_score": round(float(les.score), 4),
    }
    if tracking_uid:
        entry["tracking_uid"] = str(tracking_uid)
    return entry


def not_segmented_entry(prediction: Prediction, rank: int, box: Box3D) -> dict[str, Any]:
    """A candidate below the operating point: its rank, confidence and box."""
    vol = prediction.volume
    lo, hi = (box.z0, box.y0, box.x0), (box.z1, box.y1, box.x1)
    centre = vol.index_to_lps(*((a + b - 1) / 2 for a, b in zip(lo, hi, strict=True)))
    return {"rank": rank, "confidence": round(float(box.score), 4),
            "status": "not segmented (below the operating point)",
            "key_slice": _slice_info(vol, box.key_slice),
            "box_voxels": {"z0": box.z0, "z1": box.z1, "y0": box.y0, "y1": box.y1,
                           "x0": box.x0, "x1": box.x1},
            "box_lps_mm": {"corners": _corners_lps(vol, list(lo), list(hi)),
                           "center": [round(c, 3) for c in centre]},
            # one entry of a `--prompts` file (voxel coordinates), ready to promote
            "prompt": {"z": [box.z0, box.z1], "y": [box.y0, box.y1], "x": [box.x0, box.x1],
                       "key_slice": box.key_slice}}


def backend_entry(info: BackendInfo) -> dict[str, Any]:
    """``BackendInfo.to_dict()`` plus a ``checkpoint_status`` a reader cannot miss."""
    d = info.to_dict()
    if not info.trained:
        d["checkpoint_status"] = UNTRAINED
    elif info.checkpoint:
        # "pinned release", "official download, hash not pinned", "pinned by the user",
        # "trained here" where the backend says which (weights.checkpoint_provenance)
        d["checkpoint_status"] = str(info.details.get("provenance_state") or "trained")
    else:
        d["checkpoint_status"] = "no checkpoint (training-free)"
    return d


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MB (``getrusage`` maxrss)."""
    rss = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, Any]:
    """Versions of this package and of the libraries that shape the outputs."""
    out: dict[str, Any] = {"autoprompt_seg": __version__,
                           "python": platform.python_version()}
    for dist in ("numpy", "pydicom", "highdicom", "SimpleITK", "torch"):
        v = _version(dist)
        if v is not None:
            out[dist] = v
    return out


def input_entry(volume: Volume, input_info: Mapping[str, Any]) -> dict[str, Any]:
    """What was read: UIDs, geometry and format (``input_info`` overrides the defaults)."""
    d: dict[str, Any] = {
        "format": volume.source_format,
        "study_uid": volume.study_uid,
        "series_uid": volume.series_uid,
        "frame_of_reference_uid": volume.frame_of_reference_uid,
        "description": volume.description,
        "slices": volume.shape[0],
        "shape_zyx": list(volume.shape),
        "spacing_zyx_mm": [float(s) for s in volume.spacing],
        "origin_lps_mm": [float(o) for o in volume.origin],
        "direction": [[float(v) for v in row] for row in volume.direction],
        "dicom_sources": len(volume.sources),
    }
    d.update(_jsonable(dict(input_info)))
    return d


def _jsonable(value: Any) -> Any:
    """Turn numpy scalars/arrays, tuples and paths into plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def build_report(prediction: Prediction, *, input_info: Mapping[str, Any],
                 tracking_uids: Sequence[str] | None = None,
                 outputs: Mapping[str, str] | None = None,
                 timings: Mapping[str, float] | None = None,
                 warnings: Sequence[str] = (),
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready report of one prediction.

    ``input_info`` (e.g. from ``predict.load_input``) is merged into the input section;
    ``tracking_uids`` (one per lesion) are the SEG's; ``outputs`` maps output kinds to file
    names; ``timings`` are added to ``prediction.timings``; ``warnings`` are appended to
    the prediction's; ``extra`` is added under ``"extra"``.
    """
    n = len(prediction.lesions)
    if tracking_uids is not None and len(tracking_uids) != n:
        raise ValueError(f"Argument 'tracking_uids' must hold one UID per lesion ({n}); "
                         f"got {len(tracking_uids)}")
    all_warnings = list(prediction.warnings) + list(warnings)
    for info in (prediction.detector, prediction.segmenter):
        if not info.trained:
            all_warnings.append(f"{info.kind} {info.name!r} uses an {UNTRAINED}: its results "
                                "are not meaningful")
    stage_timings = {**{k: float(v) for k, v in prediction.timings.items()},
                     **{k: float(v) for k, v in (timings or {}).items()}}
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "software": software_versions(),
        "input": input_entry(prediction.volume, input_info),
        "backends": {"detector": backend_entry(prediction.detector),
                     "segmenter": backend_entry(prediction.segmenter)},
        "prompt_mode": "manual" if prediction.from_person else "automatic",
        "n_lesions": n,
        "tumour_found": n > 0,
        "lesions": [lesion_entry(prediction, i, tracking_uids[i - 1] if tracking_uids else None)
                    for i in range(1, n + 1)],
        "operating_point": (None if prediction.operating_point is None else
                            {"min_score": prediction.operating_point.min_score,
                             "max_lesions": prediction.operating_point.max_lesions}),
        # automatic candidates below the operating point: a reviewer may promote one with
        # `autoseg predict --prompts` (the box is in the prompts file format)
        "not_segmented": [not_segmented_entry(prediction, rank, b) for rank, b in
                          enumerate(prediction.not_segmented, start=n + 1)],
        "total_volume_ml": round(sum(les.voxel_count for les in prediction.lesions)
                                 * prediction.volume.voxel_volume_ml, 4),
        "timings_s": {k: round(v, 4) for k, v in stage_timings.items()},
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "warnings": all_warnings,
    }
    if outputs is not None:
        report["outputs"] = dict(outputs)
    if extra:
        report["extra"] = dict(extra)
    out = _jsonable(report)
    assert isinstance(out, dict)
    return out
