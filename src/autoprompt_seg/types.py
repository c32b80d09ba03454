"""Typed values that flow between the pipeline stages.

All are frozen dataclasses validated in ``__post_init__``; a bad value raises
``ValueError`` naming the argument and the value received.

Conventions
-----------
* Arrays are indexed ``(z, y, x)`` = (slice, row, column).
* ``spacing`` is in mm in the same ``(z, y, x)`` order.
* ``origin`` is the LPS position (mm) of the centre of voxel ``[0, 0, 0]``.
* ``direction`` is a 3x3 matrix whose *columns* are the LPS unit vectors of the
  column (x / i), row (y / j) and slice (z / k) axes -- the ITK convention.
  So ``lps = origin + direction @ ((i, j, k) * (sx, sy, sz))``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


def _check(cond: bool, arg: str, value: object, msg: str) -> None:
    if not cond:
        raise ValueError(f"Argument {arg!r} {msg}; got {value!r}")


@dataclass(frozen=True)
class SliceRef:
    """A reference to one source DICOM instance (header only, no pixels)."""

    sop_class_uid: str
    sop_instance_uid: str
    path: str
    dataset: Any = field(default=None, repr=False, compare=False)  # pydicom Dataset header

    def __post_init__(self) -> None:
        _check(bool(self.sop_class_uid), "sop_class_uid", self.sop_class_uid, "must be non-empty")
        _check(bool(self.sop_instance_uid), "sop_instance_uid", self.sop_instance_uid,
               "must be non-empty")


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume in Hounsfield units with its patient geometry and provenance."""

    array: npt.NDArray[np.float32]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: npt.NDArray[np.float64]
    study_uid: str = ""
    series_uid: str = ""
    frame_of_reference_uid: str = ""
    sources: tuple[SliceRef, ...] = ()
    description: str = ""
    source_format: str = "dicom"  # "dicom" | "nifti" | "nrrd" | "synthetic"

    def __post_init__(self) -> None:
        a = self.array
        _check(isinstance(a, np.ndarray), "array", type(a), "must be a numpy array")
        _check(a.ndim == 3, "array", a.shape, "must be 3-D (z, y, x)")
        _check(a.dtype == np.float32, "array", a.dtype, "must be float32 (HU)")
        _check(min(a.shape) >= 1, "array", a.shape, "must have no empty axis")
        _check(len(self.spacing) == 3 and all(float(s) > 0 for s in self.spacing),
               "spacing", self.spacing, "must be three positive numbers (z, y, x) in mm")
        _check(len(self.origin) == 3, "origin", self.origin, "must be three numbers")
        d = np.asarray(self.direction, dtype=np.float64)
        _check(d.shape == (3, 3), "direction", d.shape, "must be a 3x3 matrix")
        _check(bool(np.allclose(d.T @ d, np.eye(3), atol=1e-3)), "direction", d.tolist(),
               "must be an orthonormal matrix")
        object.__setattr__(self, "direction", d)
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        if self.sources:
            _check(len(self.sources) == a.shape[0], "sources", len(self.sources),
                   f"must hold one reference per slice ({a.shape[0]})")
        _check(self.source_format in ("dicom", "nifti", "nrrd", "synthetic"), "source_format",
               self.source_format, "must be one of dicom, nifti, nrrd, synthetic")

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.array.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def voxel_volume_ml(self) -> float:
        sz, sy, sx = self.spacing
        return sz * sy * sx / 1000.0

    @property
    def has_dicom_sources(self) -> bool:
        return bool(self.sources)

    def affine_lps(self) -> npt.NDArray[np.float64]:
        """4x4 matrix mapping (i=x, j=y, k=z, 1) voxel indices to LPS mm."""
        sz, sy, sx = self.spacing
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag([sx, sy, sz])
        m[:3, 3] = self.origin
        return m

    def index_to_lps(self, z: float, y: float, x: float) -> tuple[float, float, float]:
        p = self.affine_lps() @ np.array([x, y, z, 1.0])
        return (float(p[0]), float(p[1]), float(p[2]))

    def with_array(self, array: npt.NDArray[np.float32]) -> Volume:
        """Same geometry and provenance, another array of the same shape."""
        _check(array.shape == self.array.shape, "array", array.shape,
               f"must keep the shape {self.array.shape}")
        return Volume(array=array, spacing=self.spacing, origin=self.origin,
                      direction=self.direction, study_uid=self.study_uid,
                      series_uid=self.series_uid,
                      frame_of_reference_uid=self.frame_of_reference_uid,
                      sources=self.sources, description=self.description,
                      source_format=self.source_format)


@dataclass(frozen=True)
class Box3D:
    """A 3-D box prompt in voxel indices, half-open: ``[z0, z1) x [y0, y1) x [x0, x1)``.

    ``key_slice`` is the slice (z index) on which the 2-D box prompt is given; it lies
    inside ``[z0, z1)``. ``from_person`` marks manual prompts (oracle / prompts file).
    """

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int
    key_slice: int
    score: float = 1.0
    source: str = ""
    from_person: bool = False

    def __post_init__(self) -> None:
        for name in ("z0", "z1", "y0", "y1", "x0", "x1", "key_slice"):
            v = getattr(self, name)
            _check(isinstance(v, (int, np.integer)) and not isinstance(v, bool), name, v,
                   "must be an integer")
            object.__setattr__(self, name, int(v))
        for lo, hi in (("z0", "z1"), ("y0", "y1"), ("x0", "x1")):
            _check(getattr(self, lo) >= 0, lo, getattr(self, lo), "must be >= 0")
            _check(getattr(self, hi) > getattr(self, lo), hi, getattr(self, hi),
                   f"must be greater than {lo}={getattr(self, lo)}")
        _check(self.z0 <= self.key_slice < self.z1, "key_slice", self.key_slice,
               f"must lie in [z0, z1) = [{self.z0}, {self.z1})")
        _check(np.isfinite(self.score), "score", self.score, "must be finite")
        object.__setattr__(self, "score", float(self.score))

    @property
    def size(self) -> tuple[int, int, int]:
        return (self.z1 - self.z0, self.y1 - self.y0, self.x1 - self.x0)

    def fits(self, shape: tuple[int, int, int]) -> bool:
        return self.z1 <= shape[0] and self.y1 <= shape[1] and self.x1 <= shape[2]

    def slices(self) -> tuple[slice, slice, slice]:
        return (slice(self.z0, self.z1), slice(self.y0, self.y1), slice(self.x0, self.x1))

    def to_dict(self) -> dict[str, Any]:
        return {"z0": self.z0, "z1": self.z1, "y0": self.y0, "y1": self.y1, "x0": self.x0,
                "x1": self.x1, "key_slice": self.key_slice, "score": self.score,
                "source": self.source, "from_person": self.from_person}


@dataclass(frozen=True, eq=False)
class LesionMask:
    """One lesion's binary mask, stored cropped: ``mask`` sits at ``offset`` in a
    volume of shape ``volume_shape``."""

    mask: npt.NDArray[np.bool_]
    offset: tuple[int, int, int]
    volume_shape: tuple[int, int, int]
    box: Box3D
    score: float = 1.0

    def __post_init__(self) -> None:
        m = self.mask
        _check(isinstance(m, np.ndarray) and m.ndim == 3, "mask",
               getattr(m, "shape", type(m)), "must be a 3-D array")
        _check(m.dtype == np.bool_, "mask", m.dtype, "must be boolean")
        _check(len(self.offset) == 3 and all(int(o) >= 0 for o in self.offset), "offset",
               self.offset, "must be three non-negative integers")
        _check(all(int(o) + s <= v for o, s, v in zip(self.offset, m.shape, self.volume_shape)),
               "mask", (self.offset, m.shape), f"must fit inside the volume {self.volume_shape}")
        object.__setattr__(self, "offset", tuple(int(o) for o in self.offset))
        object.__setattr__(self, "volume_shape", tuple(int(v) for v in self.volume_shape))

    @classmethod
    def from_full(cls, full: npt.NDArray[np.bool_], box: Box3D, score: float = 1.0) -> LesionMask:
        """Crop a full-volume mask to its bounding box (an empty mask keeps a 1-voxel crop)."""
        full = np.asarray(full, dtype=bool)
        nz = np.nonzero(full)
        if nz[0].size == 0:
            return cls(np.zeros((1, 1, 1), bool), (0, 0, 0), full.shape, box, score)  # type: ignore[arg-type]
        lo = [int(a.min()) for a in nz]
        hi = [int(a.max()) + 1 for a in nz]
        crop = full[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].copy()
        return cls(crop, (lo[0], lo[1], lo[2]), full.shape, box, score)  # type: ignore[arg-type]

    @property
    def voxel_count(self) -> int:
        return int(self.mask.sum())

    @property
    def is_empty(self) -> bool:
        return self.voxel_count == 0

    def slices(self) -> tuple[slice, slice, slice]:
        oz, oy, ox = self.offset
        dz, dy, dx = self.mask.shape
        return (slice(oz, oz + dz), slice(oy, oy + dy), slice(ox, ox + dx))

    def full(self) -> npt.NDArray[np.bool_]:
        out = np.zeros(self.volume_shape, dtype=bool)
        out[self.slices()] = self.mask
        return out


@dataclass(frozen=True)
class BackendInfo:
    """Provenance of a detector or segmenter, for the report and the SEG."""

    name: str
    kind: str  # "detector" | "segmenter"
    version: str
    family: str = "Artificial Intelligence"
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    #: False when a learned backend's checkpoint is not a known trained release (e.g. the
    #: random-weight checkpoints the tests generate). Training-free backends keep True and
    #: an empty ``checkpoint``.
    trained: bool = True
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(bool(self.name), "name", self.name, "must be non-empty")
        _check(self.kind in ("detector", "segmenter"), "kind", self.kind,
               "must be 'detector' or 'segmenter'")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "version": self.version,
                "family": self.family, "checkpoint": self.checkpoint,
                "checkpoint_sha256": self.checkpoint_sha256, "trained": self.trained,
                "details": dict(self.details)}


#: The default operating point (see docs/benchmarks.md, "Automatic prompts on whole-chest CT").
DEFAULT_MIN_SCORE = 0.45
DEFAULT_MAX_LESIONS = 5


@dataclass(frozen=True)
class OperatingPoint:
    """Which automatic boxes are segmented: those scoring at least ``min_score`` (a
    calibrated confidence in 0..1), best first, at most ``max_lesions`` of them. Boxes a
    person drew (``from_person``) are always segmented."""

    min_score: float = DEFAULT_MIN_SCORE
    max_lesions: int = DEFAULT_MAX_LESIONS

    def __post_init__(self) -> None:
        _check(isinstance(self.min_score, (int, float)) and not isinstance(self.min_score, bool)
               and 0.0 <= float(self.min_score) <= 1.0, "min_score", self.min_score,
               "must be a number in 0..1")
        _check(isinstance(self.max_lesions, int) and not isinstance(self.max_lesions, bool)
               and self.max_lesions >= 1, "max_lesions", self.max_lesions,
               "must be an integer >= 1")

    def split(self, boxes: Sequence[Box3D]) -> tuple[list[Box3D], list[Box3D]]:
        """(boxes to segment, boxes below the operating point), each best score first."""
        manual = [b for b in boxes if b.from_person]
        auto = sorted((b for b in boxes if not b.from_person), key=lambda b: -b.score)
        keep = [b for b in auto if b.score >= self.min_score][:self.max_lesions]
        kept = {id(b) for b in keep}
        return manual + keep, [b for b in auto if id(b) not in kept]


@dataclass(frozen=True, eq=False)
class Prediction:
    """The pipeline's result: lesions (label i+1 for ``lesions[i]``) and provenance."""

    volume: Volume
    lesions: tuple[LesionMask, ...]
    detector: BackendInfo
    segmenter: BackendInfo
    timings: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    #: automatic candidates below the operating point: listed in the report, not segmented
    not_segmented: tuple[Box3D, ...] = ()
    #: the operating point that chose the lesions (None: every box was segmented)
    operating_point: OperatingPoint | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "not_segmented", tuple(self.not_segmented))
        for i, les in enumerate(self.lesions):
            _check(les.volume_shape == self.volume.shape, f"lesions[{i}]", les.volume_shape,
                   f"must match the volume shape {self.volume.shape}")
        object.__setattr__(self, "lesions", tuple(self.lesions))
        object.__setattr__(self, "warnings", tuple(self.warnings))

    @property
    def from_person(self) -> bool:
        return any(les.box.from_person for les in self.lesions)

    def label_map(self) -> npt.NDArray[np.unsignedinteger[Any]]:
        """(z, y, x) label map, lesion i = i (1-based). Later lesions never overwrite.
        uint8, or uint16 beyond 255 lesions (an untrained prompt-free model can give
        hundreds of specks)."""
        dtype = np.uint8 if len(self.lesions) <= 255 else np.uint16
        out = np.zeros(self.volume.shape, dtype=dtype)
        for i, les in enumerate(self.lesions, start=1):
            region = out[les.slices()]
            region[(region == 0) & les.mask] = i
        return out

    def union_mask(self) -> npt.NDArray[np.bool_]:
        """(z, y, x) boolean mask of every lesion."""
        out = np.zeros(self.volume.shape, dtype=bool)
        for les in self.lesions:
            out[les.slices()] |= les.mask
        return out
