"""Dataset layouts: each one a list of :class:`~.cases.Case` (an image volume plus a binary
ground-truth tumour mask on the same voxel grid).

Layouts (``dataset`` name -> adapter):

``pycerr``
    The four real lung CT studies of the ``pycerr`` wheel (:func:`autoprompt_seg.data.
    fetch_pycerr`), fetched into the cache; GT = RTSTRUCT ROI ``GTV-1``.
``nsclc``
    NSCLC-Radiomics as downloaded from TCIA: one folder per patient (``LUNG1-001/...``),
    holding, at any depth, the CT series and an RTSTRUCT; GT = ROI ``roi`` (default
    ``GTV-1``), rasterised on the CT grid.
``msd``
    Medical Segmentation Decathlon Task06 Lung: ``dataset.json`` + ``imagesTr/`` +
    ``labelsTr/``. Pairs come from ``dataset.json``'s ``training`` list, or, without it,
    by file name. GT = label > 0.
``pairs``
    A generic folder with ``images/`` and ``labels/`` holding files of the same name
    (NIfTI / NRRD / MetaImage); an nnU-Net channel suffix ``_0000`` on the image name is
    ignored. GT = label > 0.

Loading is lazy: a :class:`Case` holds loaders, and :func:`load_case` loads and checks
it, raising :class:`~autoprompt_seg.errors.InputError` for a bad case (missing label,
geometry mismatch between image and label, empty ROI) so that the runner can report and
skip it. Not yet supported: DICOM-SEG ground truth.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..types import Volume
from .cases import Case, Mask

DATASETS = ("pycerr", "nsclc", "msd", "pairs")
DEFAULT_ROI = "GTV-1"
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Geometry tolerance between an image and its label (mm, and direction cosines).
GEOMETRY_TOL = 1e-3


# --------------------------------------------------------------------------- image files


def _strip_suffix(name: str) -> str | None:
    low = name.lower()
    for s in _IMAGE_SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return None


def _check_same_grid(image: Volume, label: Volume, where: str) -> None:
    if image.shape != label.shape:
        raise InputError(f"{where}: label shape {label.shape} differs from the image shape "
                         f"{image.shape}")
    for name, a, b in (("spacing", image.spacing, label.spacing),
                       ("origin", image.origin, label.origin)):
        if not np.allclose(a, b, atol=GEOMETRY_TOL):
            raise InputError(f"{where}: label {name} {tuple(round(v, 4) for v in b)} differs "
                             f"from the image {name} {tuple(round(v, 4) for v in a)}")
    if not np.allclose(image.direction, label.direction, atol=GEOMETRY_TOL):
        raise InputError(f"{where}: label direction {label.direction.tolist()} differs from "
                         f"the image direction {image.direction.tolist()}")


def _label_file_loader(path: Path) -> Callable[[Volume], Mask]:
    def load(volume: Volume) -> Mask:
        from ..io.image import load_image

        if not path.exists():
            raise InputError(f"label file {path} is missing")
        lab = load_image(path)
        _check_same_grid(volume, lab, str(path))
        return lab.array > 0

    return load


def _image_file_loader(path: Path) -> Callable[[], Volume]:
    def load() -> Volume:
        from ..io.image import load_image

        return load_image(path)

    return load


def msd_cases(root: str | os.PathLike[str]) -> list[Case]:
    """MSD Task06 Lung layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``)."""
    r = Path(root)
    if not (r / "imagesTr").is_dir():
        raise ConfigError(f"--dataset-path {r}: not an MSD task folder (no imagesTr/)")
    pairs: list[tuple[Path, Path]] = []
    ds_json = r / "dataset.json"
    if ds_json.is_file():
        try:
            meta = json.loads(ds_json.read_text(encoding="utf-8"))
            for item in meta.get("training", []):
                pairs.append((r / item["image"], r / item["label"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{ds_json}: cannot be read as an MSD dataset.json ({e})") from e
    else:
        for img in sorted((r / "imagesTr").iterdir()):
            stem = _strip_suffix(img.name)
            if stem is None or img.name.startswith("."):
                continue
            pairs.append((img, r / "labelsTr" / img.name))
    cases = []
    for img, lab in pairs:
        stem = _strip_suffix(img.name) or img.name
        cases.append(Case(stem, stem, _image_file_loader(img), _label_file_loader(lab),
                          source=str(img)))
    return cases


def pairs_cases(root: str | os.PathLike[str]) -> list[Case]:
    """Generic ``images/`` + ``labels/`` folder of same-named image files.

    The patient id is the case id up to a ``__`` separator if present (``P01__scan2`` ->
    ``P01``), so that several scans of one patient stay in the same split.
    """
    r = Path(root)
    if not (r / "images").is_dir():
        raise ConfigError(f"--dataset-path {r}: no images/ folder (expected images/ and "
                          "labels/ with files of the same name)")
    cases = []
    for img in sorted((r / "images").iterdir()):
        stem = _strip_suffix(img.name)
        if stem is None or img.name.startswith("."):
            continue
        suffix = img.name[len(stem):]
        case_id = stem[:-5] if stem.endswith("_0000") else stem
        lab = r / "labels" / f"{case_id}{suffix}"
        cases.append(Case(case_id, case_id.split("__")[0], _image_file_loader(img),
                          _label_file_loader(lab), source=str(img)))
    return cases


# --------------------------------------------------------------------------- DICOM


def _dicom_loader(folder: Path) -> Callable[[], Volume]:
    def load() -> Volume:
        from ..io.dicom import load_study

        volume, _ = load_study(folder)
        return volume

    return load


def _rtstruct_loader(folder: Path, roi: str) -> Callable[[Volume], Mask]:
    """Ground truth of a DICOM study folder: its RTSTRUCT ROI ``roi``, else its DICOM-SEG."""

    def load(volume: Volume) -> Mask:
        from ..io.rtstruct import find_rtstruct, load_roi_mask
        from ..io.seg import find_seg, seg_roi_mask

        rs = find_rtstruct(folder)
        if rs is not None:
            return load_roi_mask(rs, volume, roi)
        seg = find_seg(folder)
        if seg is not None:
            return seg_roi_mask(seg, volume, roi)
        raise InputError(f"{folder}: no RTSTRUCT or DICOM-SEG ground truth (missing label)")

    return load


def nsclc_cases(root: str | os.PathLike[str], roi: str = DEFAULT_ROI) -> list[Case]:
    """One sub-folder per patient, each with a CT series and an RTSTRUCT (any depth)."""
    r = Path(root)
    if not r.is_dir():
        raise ConfigError(f"--dataset-path {r}: no such folder")
    cases = []
    for d in sorted(p for p in r.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cases.append(Case(d.name, d.name, _dicom_loader(d), _rtstruct_loader(d, roi),
                          source=str(d)))
    return cases


def pycerr_cases(cache_dir: str | os.PathLike[str], roi: str = DEFAULT_ROI) -> list[Case]:
    """The four pycerr lung CT studies (fetched into ``cache_dir`` on first use)."""
    from ..data import PYCERR_PATIENTS, fetch_pycerr

    root = fetch_pycerr(Path(cache_dir))
    return [Case(p, p, _dicom_loader(root / p), _rtstruct_loader(root / p, roi),
                 source=str(root / p)) for p in PYCERR_PATIENTS]


def get_cases(dataset: str, path: str | os.PathLike[str] | None = None, *,
              roi: str = DEFAULT_ROI, cache_dir: str | os.PathLike[str] | None = None
              ) -> list[Case]:
    """Cases of a named dataset layout (see the module docstring)."""
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    if dataset == "pycerr":
        from ..config import default_cache_dir

        return pycerr_cases(cache_dir or default_cache_dir(), roi)
    if path is None:
        raise ConfigError(f"--dataset {dataset} needs --dataset-path")
    if not Path(path).exists():
        raise ConfigError(f"--dataset-path {path}: no such folder")
    if dataset == "nsclc":
        return nsclc_cases(path, roi)
    if dataset == "msd":
        return msd_cases(path)
    return pairs_cases(path)
