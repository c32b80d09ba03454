"""The manual-prompt detector ("oracle"): boxes given by a person, not found by a model.

Two sources, chosen with ``Settings.options["oracle"]`` (:class:`OracleOptions`; the CLI's
``--prompts`` / ``--prompts-from`` / ``--roi-name``). The flat top-level keys ``prompts``,
``prompts_from`` and ``roi_name`` of earlier versions are still read (deprecated alias; the
nested mapping wins):

``prompts``
    A prompts JSON file (format below; also in ``docs/prompts.md``).
``prompts_from``
    Ground truth from which one box per lesion is derived with :func:`boxes_from_mask`:

    * an RTSTRUCT file (ROI ``roi_name``, default ``GTV-1``), rasterised on the CT grid by
      :func:`autoprompt_seg.io.rtstruct.load_roi_mask`; or a folder, in which the first
      RTSTRUCT is used;
    * a DICOM-SEG file, mapped onto the CT slices by ReferencedSOPInstanceUID
      (:func:`autoprompt_seg.io.seg.read_seg_labels`); one box per segment;
    * a NIfTI / NRRD / MetaImage mask. It must lie on the CT's voxel grid. A mask whose
      grid is the CT's grid stored in another axis order or direction (a pure re-indexing:
      every CT voxel centre falls exactly on a mask voxel centre) is re-indexed exactly;
      any other grid (other spacing, shifted or rotated, smaller) is **refused** with an
      :class:`InputError` that shows both geometries -- resample the mask onto the CT
      first. Nothing is interpolated here, so a prompt never moves silently.

    A binary mask gives one box per 26-connected component; a label map (values above 1)
    gives one box per label value.

Prompts JSON format (version 1)
-------------------------------
::

    {"version": 1,
     "coordinates": "voxel",
     "boxes": [{"z": [z0, z1], "y": [y0, y1], "x": [x0, x1], "key_slice": k,
                "label": "left upper lobe nodule"}]}

``"voxel"``: indices in the loaded volume's ``(z, y, x)`` order, half-open
(``z0 <= z < z1``); ``z`` is the slice index along the slice normal after sorting (slice 0
is the first slice along the normal, whatever the file names or instance numbers say).
``key_slice`` (optional, default the middle slice ``(z0 + z1 - 1) // 2``) must lie in
``[z0, z1)``. ``label`` is optional free text.

::

    {"version": 1,
     "coordinates": "lps",
     "boxes": [{"corner1": [x, y, z], "corner2": [x, y, z], "key_point": [x, y, z],
                "label": "..."}]}

``"lps"``: two opposite corners in patient LPS millimetres. The box holds every voxel whose
centre lies inside the box spanned by the corners in voxel space (boundary included), so
corners at voxel centres and corners at voxel edges (as ``report.json`` writes them) both
give the same box. ``key_point`` (optional) picks the key slice: the slice nearest to it;
default the middle slice. LPS prompts survive any file order or re-sorting of the series.

Validation is strict: an unknown key, a wrong type, a negative or reversed range, or a key
slice outside the box is a :class:`ConfigError` naming the file, the box index, the field
and the value. A box (or key point) that falls outside the volume is an
:class:`InputError`, since it depends on the image that was loaded.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..backends import ProgressFn
from ..config import Settings
from ..errors import ConfigError, InputError
from ..io.groundtruth import DEFAULT_ROI, INDEX_TOL, mask_from_ground_truth
from ..types import BackendInfo, Box3D, Volume

log = logging.getLogger(__name__)

VERSION = "0.1.0"
PROMPTS_VERSION = 1
_TOP_KEYS = {"version", "coordinates", "boxes", "comment"}
_VOXEL_KEYS = {"z", "y", "x", "key_slice", "label"}
_LPS_KEYS = {"corner1", "corner2", "key_point", "label"}
#: Tolerance (voxels) when mapping LPS points to voxel indices and checking grids.
_INDEX_TOL = INDEX_TOL


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class VoxelPrompt:
    """One box of a ``"voxel"`` prompts file (half-open (z, y, x) ranges)."""

    z: tuple[int, int]
    y: tuple[int, int]
    x: tuple[int, int]
    key_slice: int | None = None
    label: str = ""


@dataclass(frozen=True)
class LpsPrompt:
    """One box of an ``"lps"`` prompts file (LPS mm)."""

    corner1: tuple[float, float, float]
    corner2: tuple[float, float, float]
    key_point: tuple[float, float, float] | None = None
    label: str = ""


Prompt = VoxelPrompt | LpsPrompt


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v)))


def _bad(where: str, i: int | None, field: str, value: object, what: str) -> ConfigError:
    box = f"box {i}: " if i is not None else ""
    return ConfigError(f"{where}: {box}field {field!r} {what}; got {value!r}")


def _range(where: str, i: int, box: Mapping[str, Any], field: str) -> tuple[int, int]:
    if field not in box:
        raise _bad(where, i, field, None, "is required ([start, stop), half-open voxel "
                   "indices)")
    v = box[field]
    if not (isinstance(v, list) and len(v) == 2 and all(_is_int(a) for a in v)):
        raise _bad(where, i, field, v, "must be a list of two integers [start, stop)")
    lo, hi = int(v[0]), int(v[1])
    if lo < 0:
        raise _bad(where, i, field, v, "must start at 0 or above")
    if hi <= lo:
        raise _bad(where, i, field, v, "must have stop > start (half-open range)")
    return lo, hi


def _point(where: str, i: int, box: Mapping[str, Any], field: str,
           required: bool = True) -> tuple[float, float, float] | None:
    if field not in box:
        if required:
            raise _bad(where, i, field, None, "is required ([x, y, z] in LPS mm)")
        return None
    v = box[field]
    if not (isinstance(v, list) and len(v) == 3 and all(_is_number(a) for a in v)):
        raise _bad(where, i, field, v, "must be a list of three finite numbers [x, y, z] "
                   "in LPS mm")
    return (float(v[0]), float(v[1]), float(v[2]))


def _label(where: str, i: int, box: Mapping[str, Any]) -> str:
    v = box.get("label", "")
    if not isinstance(v, str):
        raise _bad(where, i, "label", v, "must be a string")
    return v


def parse_prompts(data: object, where: str = "prompts") -> list[Prompt]:
    """Validate a decoded prompts JSON document; ``where`` names it in error messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the prompts file must hold a JSON object; got "
                          f"{type(data).__name__}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: "
                          f"{', '.join(sorted(_TOP_KEYS))}")
    version = data.get("version")
    if not _is_int(version) or version != PROMPTS_VERSION:
        raise _bad(where, None, "version", version, f"must be {PROMPTS_VERSION}")
    coords = data.get("coordinates")
    if coords not in ("voxel", "lps"):
        raise _bad(where, None, "coordinates", coords, "must be 'voxel' or 'lps'")
    boxes = data.get("boxes")
    if not isinstance(boxes, list):
        raise _bad(where, None, "boxes", boxes, "must be a list of box objects")
    out: list[Prompt] = []
    allowed = _VOXEL_KEYS if coords == "voxel" else _LPS_KEYS
    for i, box in enumerate(boxes):
        if not isinstance(box, dict):
            raise ConfigError(f"{where}: box {i} must be a JSON object; got {box!r}")
        extra = sorted(set(box) - allowed)
        if extra:
            raise ConfigError(f"{where}: box {i}: unknown field(s) "
                              f"{', '.join(map(repr, extra))} for {coords!r} coordinates; "
                              f"allowed: {', '.join(sorted(allowed))}")
        label = _label(where, i, box)
        if coords == "voxel":
            z, y, x = (_range(where, i, box, f) for f in ("z", "y", "x"))
            key = box.get("key_slice")
            if key is not None:
                if not _is_int(key):
                    raise _bad(where, i, "key_slice", key, "must be an integer slice index")
                if not z[0] <= key < z[1]:
                    raise _bad(where, i, "key_slice", key, f"must lie in z = [{z[0]}, {z[1]})")
            out.append(VoxelPrompt(z=z, y=y, x=x, key_slice=key, label=label))
        else:
            c1 = _point(where, i, box, "corner1")
            c2 = _point(where, i, box, "corner2")
            kp = _point(where, i, box, "key_point", required=False)
            assert c1 is not None and c2 is not None
            out.append(LpsPrompt(corner1=c1, corner2=c2, key_point=kp, label=label))
    return out


def load_prompts(path: str | os.PathLike[str]) -> list[Prompt]:
    """Read and validate a prompts JSON file (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--prompts {p}: no such file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--prompts {p}: cannot be read ({e})") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"--prompts {p}: not valid JSON (line {e.lineno}, column "
                          f"{e.colno}: {e.msg})") from e
    return parse_prompts(data, where=str(p))


def _lps_to_index(volume: Volume, point: Sequence[float]) -> npt.NDArray[np.float64]:
    """LPS mm -> continuous (z, y, x) voxel index."""
    inv = np.linalg.inv(volume.affine_lps())
    i, j, k = (inv @ np.array([*point, 1.0]))[:3]
    return np.array([k, j, i])


def prompt_to_box(prompt: Prompt, volume: Volume, index: int = 0, where: str = "prompts"
                  ) -> Box3D:
    """Map one validated prompt onto ``volume``; :class:`InputError` if it does not fit."""
    shape = volume.shape
    if isinstance(prompt, VoxelPrompt):
        lo = (prompt.z[0], prompt.y[0], prompt.x[0])
        hi = (prompt.z[1], prompt.y[1], prompt.x[1])
        key = prompt.key_slice
    else:
        a = _lps_to_index(volume, prompt.corner1)
        b = _lps_to_index(volume, prompt.corner2)
        mn, mx = np.minimum(a, b), np.maximum(a, b)
        lo_f = np.ceil(mn - _INDEX_TOL)
        hi_f = np.floor(mx + _INDEX_TOL) + 1
        thin = hi_f <= lo_f  # both corners between two voxel centres: take the nearest
        mid = np.round((mn + mx) / 2)
        lo_f = np.where(thin, mid, lo_f)
        hi_f = np.where(thin, mid + 1, hi_f)
        lo = (int(lo_f[0]), int(lo_f[1]), int(lo_f[2]))
        hi = (int(hi_f[0]), int(hi_f[1]), int(hi_f[2]))
        key = None
        if prompt.key_point is not None:
            kz = float(_lps_to_index(volume, prompt.key_point)[0])
            key = int(round(kz))
            if not lo[0] <= key < hi[0]:
                raise InputError(f"{where}: box {index}: key_point {list(prompt.key_point)} "
                                 f"lies on slice {kz:.2f}, outside the box's slices "
                                 f"[{lo[0]}, {hi[0]})")
    for axis, name in enumerate("zyx"):
        if lo[axis] < 0 or hi[axis] > shape[axis]:
            raise InputError(f"{where}: box {index}: {name} = [{lo[axis]}, {hi[axis]}) lies "
                             f"outside the volume, which has {shape[axis]} voxels along "
                             f"{name} (shape (z, y, x) = {shape})")
    if key is None:
        key = (lo[0] + hi[0] - 1) // 2
    return Box3D(z0=lo[0], z1=hi[0], y0=lo[1], y1=hi[1], x0=lo[2], x1=hi[2], key_slice=key,
                 score=1.0, source="oracle", from_person=True)


# ------------------------------------------------------------------------ mask -> boxes


def _key_slice(component: npt.NDArray[np.bool_], z0: int) -> int:
    """Slice of largest area; among equal areas the one nearest the centroid's slice."""
    areas = component.reshape(component.shape[0], -1).sum(axis=1)
    best = np.flatnonzero(areas == areas.max())
    zs = np.arange(component.shape[0])
    centroid = float((areas * zs).sum() / max(int(areas.sum()), 1))
    k = int(best[np.argmin(np.abs(best - centroid))])
    return z0 + k


def boxes_from_mask(mask: npt.NDArray[Any], volume: Volume | None = None, *,
                    source: str = "oracle", from_person: bool = True) -> list[Box3D]:
    """One :class:`Box3D` per lesion of a (z, y, x) mask.

    A boolean mask, or an integer mask whose values are only 0 and 1, is binary: one box
    per 26-connected component, in scan order (first voxel in z, y, x order). A label map
    (integer values above 1) gives one box per label value, in increasing label order;
    each label's box spans all its voxels, even if they are not connected. Values <= 0
    are background.

    Each box is the tight, half-open bounding box; its key slice is the slice with the
    largest area (ties: the one nearest the lesion's centroid). An empty mask gives ``[]``.
    With ``volume`` given, the mask must have the volume's shape (:class:`InputError`).
    """
    from scipy import ndimage as ndi

    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise InputError(f"Argument 'mask' must be a 3-D (z, y, x) array; got shape {arr.shape}")
    if volume is not None and arr.shape != volume.shape:
        raise InputError(f"Argument 'mask' must have the volume's shape {volume.shape}; got "
                         f"{arr.shape}")
    if arr.dtype == np.bool_:
        binary = True
    elif np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr)):
            raise InputError("Argument 'mask' must hold integer labels; got non-integer "
                             "values")
        binary = int(arr.max(initial=0)) <= 1
    else:
        raise InputError(f"Argument 'mask' must be boolean or integer; got dtype {arr.dtype}")
    if binary:
        labelled, n = ndi.label(arr > 0, structure=np.ones((3, 3, 3), dtype=bool))
        values = list(range(1, n + 1))
    else:
        labelled = arr.astype(np.int64, copy=False)
        values = [int(v) for v in np.unique(labelled) if v > 0]
    boxes: list[Box3D] = []
    objects = ndi.find_objects(labelled)
    for v in values:
        sl = objects[v - 1] if v - 1 < len(objects) else None
        if sl is None:
            continue
        comp = labelled[sl] == v
        z0, y0, x0 = (int(s.start) for s in sl)
        z1, y1, x1 = (int(s.stop) for s in sl)
        boxes.append(Box3D(z0=z0, z1=z1, y0=y0, y1=y1, x0=x0, x1=x1,
                           key_slice=_key_slice(comp, z0), score=1.0, source=source,
                           from_person=from_person))
    log.debug("%d box(es) from a %s mask", len(boxes), "binary" if binary else "label")
    return boxes


# ------------------------------------------------------------------------- the detector


class OracleDetector:
    """Returns the boxes a person gave (prompts file) or derived from ground truth."""

    def __init__(self, prompts: str | os.PathLike[str] | None = None,
                 prompts_from: str | os.PathLike[str] | None = None,
                 roi_name: str = DEFAULT_ROI) -> None:
        if prompts is None and prompts_from is None:
            raise ConfigError("the oracle detector needs manual prompts: pass --prompts "
                              "PROMPTS.json or --prompts-from RTSTRUCT/SEG/MASK")
        if prompts is not None and prompts_from is not None:
            raise ConfigError(f"give either --prompts or --prompts-from, not both; got "
                              f"--prompts {prompts} and --prompts-from {prompts_from}")
        for name, value in (("prompts", prompts), ("prompts_from", prompts_from)):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ConfigError(f"Option {name!r} must be a path; got {value!r}")
        if not isinstance(roi_name, str) or not roi_name.strip():
            raise ConfigError(f"Option 'roi_name' must be a non-empty string; got {roi_name!r}")
        self.prompts_path = Path(prompts) if prompts is not None else None
        self.prompts_from = Path(prompts_from) if prompts_from is not None else None
        self.roi_name = roi_name
        # A prompts file is validated now, before any image is loaded.
        self._prompts = load_prompts(self.prompts_path) if self.prompts_path else None
        if self.prompts_from is not None and not self.prompts_from.exists():
            raise ConfigError(f"--prompts-from {self.prompts_from}: no such file or folder")

    def info(self) -> BackendInfo:
        details: dict[str, Any] = {}
        if self.prompts_path is not None:
            details["prompts"] = str(self.prompts_path)
        if self.prompts_from is not None:
            details["prompts_from"] = str(self.prompts_from)
            details["roi_name"] = self.roi_name
        return BackendInfo(name="oracle", kind="detector", version=VERSION,
                           family="Manual prompt", details=details)

    def detect(self, volume: Volume, progress: ProgressFn | None = None) -> list[Box3D]:
        if self._prompts is not None:
            where = str(self.prompts_path)
            boxes = [prompt_to_box(pr, volume, i, where) for i, pr in enumerate(self._prompts)]
        else:
            assert self.prompts_from is not None
            mask = mask_from_ground_truth(self.prompts_from, volume, self.roi_name)
            boxes = boxes_from_mask(mask, volume, source="oracle", from_person=True)
            if not boxes:
                log.warning("%s: the ground truth is empty; no prompts", self.prompts_from)
        if progress is not None:
            progress(1, 1)
        log.info("oracle: %d manual prompt(s)", len(boxes))
        return boxes


@dataclass(frozen=True)
class OracleOptions:
    """``Settings.options["oracle"]``: where the manual prompts come from."""

    prompts: str | None = field(default=None, metadata={"help": "prompts JSON file"})
    prompts_from: str | None = field(default=None, metadata={
        "help": "ground truth: RTSTRUCT (file or folder), DICOM-SEG or NIfTI/NRRD mask"})
    roi_name: str = field(default=DEFAULT_ROI, metadata={"help": "RTSTRUCT ROI of "
                                                                 "prompts_from"})


#: the flat keys of earlier versions, read as ``options["oracle"][key]`` (deprecated)
LEGACY_KEYS = ("prompts", "prompts_from", "roi_name")


def create(settings: Settings) -> OracleDetector:
    """Registry factory: reads ``Settings.options["oracle"]`` (and the deprecated flat
    ``prompts``, ``prompts_from``, ``roi_name`` keys)."""
    from ..options import parse_options

    opts = settings.options
    nested = opts.get("oracle")
    raw: dict[str, Any] = {k: opts[k] for k in LEGACY_KEYS if k in opts}
    if isinstance(nested, Mapping):
        raw.update(nested)
    elif nested is not None:
        raw = nested  # parse_options refuses it, naming the option
    if isinstance(raw, dict):
        raw = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in raw.items()}
    o = parse_options(OracleOptions, raw, "oracle")
    return OracleDetector(prompts=o.prompts, prompts_from=o.prompts_from, roi_name=o.roi_name)
