"""Seeded synthetic chest CT studies with known tumours, written as real DICOM series.

Used by ``autoseg demo --synthetic``, by the tests (every answer is known exactly) and by
the benchmarks. Nothing here is clinical data.

Geometry: ``labels``/``hu`` are indexed (k, j, i) = (slice, row, column) in the order of
increasing position along the slice normal; ``direction`` columns are the row (i), column
(j) and normal (k) unit vectors in LPS; slice k sits at ``origin + k * sz * direction[:, 2]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = np.eye(3)


@dataclass(frozen=True)
class SyntheticTumour:
    center: tuple[float, float, float]  # voxel (k, j, i)
    radii_mm: tuple[float, float, float]  # (z, y, x) semi-axes in mm
    volume_ml: float  # exact voxel volume of the label


@dataclass(frozen=True, eq=False)
class SyntheticChest:
    hu: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]
    spacing: tuple[float, float, float]  # (z, y, x) mm
    tumours: tuple[SyntheticTumour, ...]


@dataclass(frozen=True, eq=False)
class SyntheticStudy:
    study_dir: Path
    paths: tuple[Path, ...]  # in slice order (k = 0..n-1)
    chest: SyntheticChest
    direction: npt.NDArray[np.float64]
    origin: tuple[float, float, float]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str


def synthetic_chest(shape: tuple[int, int, int] = (48, 192, 192),
                    spacing: tuple[float, float, float] = (2.5, 1.5, 1.5),
                    n_tumours: int = 2, seed: int = 0,
                    tumour_radius_mm: Sequence[float] | None = None) -> SyntheticChest:
    """A chest-like volume: air, a soft-tissue body with a spine, two lungs, vessels and
    ``n_tumours`` lobulated soft-tissue nodules inside the lungs (labels 1..n)."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    sz, sy, sx = spacing
    zz, yy, xx = np.meshgrid(np.arange(nz) * sz, np.arange(ny) * sy, np.arange(nx) * sx,
                             indexing="ij", sparse=True)
    cy, cx = ny * sy / 2, nx * sx / 2
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = ((yy - cy) / (0.42 * ny * sy)) ** 2 + ((xx - cx) / (0.46 * nx * sx)) ** 2 <= 1
    body = np.broadcast_to(body, shape)
    hu[body] = 40.0
    lung_ry, lung_rx = 0.30 * ny * sy, 0.17 * nx * sx
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        lcx = cx + side * 0.22 * nx * sx
        # lungs taper towards the apex (z = 0) and are cut at the base (z = nz)
        taper = 0.55 + 0.45 * np.clip(zz / max(nz * sz, 1e-6), 0, 1)
        lungs |= ((yy - cy) / (lung_ry * taper)) ** 2 + ((xx - lcx) / (lung_rx * taper)) ** 2 <= 1
    hu[lungs] = -850.0
    spine = ((yy - (cy + 0.30 * ny * sy)) ** 2 + (xx - cx) ** 2) <= (0.06 * nx * sx) ** 2
    hu[np.broadcast_to(spine, shape)] = 450.0
    # vessels: thin tubes running through the lungs along z with a slight drift
    for _ in range(6):
        side = rng.choice([-1, 1])
        vx0 = cx + side * 0.22 * nx * sx + rng.uniform(-0.5, 0.5) * lung_rx
        vy0 = cy + rng.uniform(-0.5, 0.5) * lung_ry
        drift = rng.uniform(-0.15, 0.15, size=2)
        r = rng.uniform(1.2, 2.5)
        vessel = ((yy - (vy0 + drift[0] * zz)) ** 2 + (xx - (vx0 + drift[1] * zz)) ** 2) <= r * r
        hu[vessel & lungs] = 40.0
    labels = np.zeros(shape, dtype=np.uint8)
    tumours = []
    radii = list(tumour_radius_mm) if tumour_radius_mm is not None else []
    lung_idx = np.argwhere(lungs[:, ::4, ::4]) * np.array([1, 4, 4])
    for t in range(n_tumours):
        r = radii[t] if t < len(radii) else float(rng.uniform(6.0, 14.0))
        rad = (r * rng.uniform(0.85, 1.15), r * rng.uniform(0.85, 1.15), r * rng.uniform(0.85, 1.15))
        for _attempt in range(200):
            c = lung_idx[rng.integers(len(lung_idx))].astype(float)
            cz_mm, cy_mm, cx_mm = c[0] * sz, c[1] * sy, c[2] * sx
            if not (rad[0] + 2 * sz <= cz_mm <= nz * sz - rad[0] - 2 * sz):
                continue
            # work in a local crop around the centre (2x the radius: room for the margin)
            lo = [max(0, int((cm - 2.2 * r_) / sp)) for cm, r_, sp in
                  zip((cz_mm, cy_mm, cx_mm), rad, spacing)]
            hi = [min(n, int((cm + 2.2 * r_) / sp) + 2) for cm, r_, sp, n in
                  zip((cz_mm, cy_mm, cx_mm), rad, spacing, shape)]
            crop = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
            lz = zz[crop[0], :, :]
            ly = yy[:, crop[1], :]
            lx = xx[:, :, crop[2]]
            ell = (((lz - cz_mm) / rad[0]) ** 2 + ((ly - cy_mm) / rad[1]) ** 2
                   + ((lx - cx_mm) / rad[2]) ** 2)
            lobes = 1.0 + 0.12 * np.sin(3 * np.arctan2(ly - cy_mm, lx - cx_mm)) \
                * np.cos(2 * (lz - cz_mm) / max(rad[0], 1e-3))
            blob = ell <= lobes
            inside = blob & lungs[crop]
            lab_crop = labels[crop]
            if inside.sum() < 0.95 * blob.sum() or (lab_crop[blob] > 0).any():
                continue
            # keep a margin of lung around each tumour so tumours never touch
            if (lab_crop[ell <= lobes * 1.8] > 0).any():
                continue
            lab_crop[blob] = t + 1
            hu[crop][blob] = 35.0 + 10.0 * float(rng.standard_normal())
            tumours.append(SyntheticTumour(center=(c[0], c[1], c[2]),
                                           radii_mm=(rad[0], rad[1], rad[2]),
                                           volume_ml=float(blob.sum()) * sz * sy * sx / 1000))
            break
        else:
            raise ValueError(f"Argument 'n_tumours' is too large for the shape {shape}; "
                             f"got {n_tumours}")
    hu += rng.normal(0.0, 12.0, size=shape).astype(np.float32)
    return SyntheticChest(hu=hu, labels=labels, spacing=spacing, tumours=tuple(tumours))


def oblique_direction(angle_deg: float = 20.0) -> npt.NDArray[np.float64]:
    """An orthonormal direction matrix rotated about the x axis (still mostly axial)."""
    a = np.radians(angle_deg)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    return rot @ AXIAL


def write_series(out_dir: str | os.PathLike[str], hu: npt.NDArray[np.float32],
                 spacing: tuple[float, float, float], *,
                 direction: npt.NDArray[np.float64] = AXIAL,
                 origin: tuple[float, float, float] = (-150.0, -150.0, -200.0),
                 study_uid: str | None = None, series_uid: str | None = None,
                 frame_of_reference_uid: str | None = None, patient_id: str = "SYNTH0001",
                 patient_name: str = "Synthetic^Chest", series_description: str = "Synthetic chest CT",
                 file_names: Sequence[str] | None = None, reverse_instance_numbers: bool = False,
                 seed: int = 0) -> list[Path]:
    """Write ``hu`` (k, j, i) as a CT Image Storage series; returns paths in slice order.

    Pixels are stored as unsigned 16-bit with RescaleIntercept -1024.
    ``file_names`` overrides the default ``CT_%04d.dcm`` (use it to shuffle names or drop
    the suffix); ``reverse_instance_numbers`` numbers the slices from the far end.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    direction = np.asarray(direction, dtype=np.float64)
    nz, ny, nx = hu.shape
    sz, sy, sx = spacing
    stored = np.clip(np.round(hu + 1024.0), 0, 65535).astype(np.uint16)
    names = list(file_names) if file_names is not None else [f"CT_{k:04d}.dcm" for k in range(nz)]
    if len(names) != nz:
        raise ValueError(f"Argument 'file_names' must hold {nz} names; got {len(names)}")
    paths = []
    for k in range(nz):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(str(out / names[k]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = "SYNTH"
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = (nz - k) if reverse_instance_numbers else (k + 1)
        ds.Modality = "CT"
        ds.Manufacturer = "autoprompt_seg synthetic"
        ds.SeriesDescription = series_description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.KVP = "120"
        pos = np.asarray(origin) + direction[:, 2] * (k * sz)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in
                                      np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.SliceThickness = f"{sz:g}"
        ds.PixelSpacing = [f"{sy:g}", f"{sx:g}"]
        ds.SliceLocation = f"{pos[2]:.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        ds.PixelData = stored[k].tobytes()
        path = out / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def synthetic_study(out_dir: str | os.PathLike[str], *, shape: tuple[int, int, int] = (48, 192, 192),
                    spacing: tuple[float, float, float] = (2.5, 1.5, 1.5), n_tumours: int = 2,
                    seed: int = 0, direction: npt.NDArray[np.float64] = AXIAL,
                    origin: tuple[float, float, float] = (-150.0, -150.0, -200.0),
                    shuffle_names: bool = False, suffix: str = ".dcm",
                    reverse_instance_numbers: bool = False,
                    tumour_radius_mm: Sequence[float] | None = None) -> SyntheticStudy:
    """Write a seeded synthetic chest CT study with known tumours into ``out_dir``."""
    chest = synthetic_chest(shape, spacing, n_tumours, seed, tumour_radius_mm)
    names = [f"CT_{k:04d}{suffix}" for k in range(shape[0])]
    if shuffle_names:
        rng = np.random.default_rng(seed + 1)
        names = [f"IMG{int(v):06d}{suffix}" for v in rng.permutation(shape[0]) * 7 + 11]
    study_uid, series_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    paths = write_series(out_dir, chest.hu, spacing, direction=direction, origin=origin,
                         study_uid=study_uid, series_uid=series_uid,
                         frame_of_reference_uid=for_uid, file_names=names,
                         reverse_instance_numbers=reverse_instance_numbers, seed=seed)
    return SyntheticStudy(study_dir=Path(out_dir), paths=tuple(paths), chest=chest,
                          direction=np.asarray(direction, dtype=np.float64), origin=origin,
                          study_uid=study_uid, series_uid=series_uid,
                          frame_of_reference_uid=for_uid)
