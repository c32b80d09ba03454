"""Convert a training dataset into nnU-Net's raw layout for the detector's training.

Two layouts are accepted: the Medical Segmentation Decathlon (``dataset.json``,
``imagesTr/``, ``labelsTr/``; Task06_Lung) and DICOM study folders with an RTSTRUCT or SEG
ground truth. Every case is written as ``lung_NNNN`` in nnU-Net's canonical orientation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ...errors import InputError

log = logging.getLogger(__name__)


def _write_case(raw: Path, case: str, hu: np.ndarray, labels: np.ndarray,
                spacing: tuple[float, float, float], direction: np.ndarray) -> None:
    import SimpleITK as sitk

    from .model import canonical_spacing, to_canonical

    img_a = np.ascontiguousarray(to_canonical(hu.astype(np.float32), direction))
    lab_a = np.ascontiguousarray(to_canonical((labels > 0).astype(np.uint8), direction))
    sz, sy, sx = canonical_spacing(spacing, direction)
    for arr, path in ((img_a, raw / "imagesTr" / f"{case}_0000.nii.gz"),
                      (lab_a, raw / "labelsTr" / f"{case}.nii.gz")):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing((sx, sy, sz))
        sitk.WriteImage(im, str(path), useCompression=True)


def _is_msd(data: Path) -> bool:
    return (data / "dataset.json").is_file() and (data / "imagesTr").is_dir() \
        and (data / "labelsTr").is_dir()


def _has_dicom(folder: Path) -> bool:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                head = f.read(132)
            if head[128:132] == b"DICM" or p.suffix.lower() == ".dcm":
                return True
    return False


def convert_dataset(data: Path, raw: Path, roi_name: str = "GTV-1") -> int:
    """Write ``data`` into the nnU-Net raw folder ``raw``; returns the number of cases.

    :class:`InputError` (65) when ``data`` is neither layout or a case has no ground truth.
    """
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"Argument 'data': {str(data)!r} is not a folder")
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    n = 0
    if _is_msd(data):
        import SimpleITK as sitk

        from ...io.image import load_image

        for img_path in sorted((data / "imagesTr").glob("*.nii*")):
            if img_path.name.startswith("."):
                continue  # macOS resource forks shipped in the MSD tarball
            case = img_path.name.split(".nii")[0].removesuffix("_0000")
            lab_path = data / "labelsTr" / f"{case}{''.join(img_path.suffixes)}"
            if not lab_path.exists():
                raise InputError(f"MSD dataset {str(data)!r}: no label {str(lab_path)!r} for "
                                 f"{img_path.name}")
            vol = load_image(img_path)
            lab = sitk.GetArrayFromImage(sitk.ReadImage(str(lab_path)))
            if lab.shape != vol.shape:
                raise InputError(f"{str(lab_path)!r}: shape {lab.shape} differs from the "
                                 f"image's {vol.shape}")
            _write_case(raw, f"lung_{n:04d}", vol.array, lab, vol.spacing, vol.direction)
            n += 1
    else:
        from ...io.dicom import load_study
        from ...io.groundtruth import mask_from_ground_truth
        from ...io.rtstruct import find_rtstruct
        from ...io.seg import find_seg

        studies = [data] if _has_dicom(data) else sorted(p for p in data.iterdir() if p.is_dir())
        for study in studies:
            gt = find_rtstruct(study) or find_seg(study)
            if gt is None:
                raise InputError(f"study {str(study)!r} holds no RTSTRUCT or SEG ground truth")
            vol, _ = load_study(study)
            mask = np.asarray(mask_from_ground_truth(gt, vol, roi_name))
            _write_case(raw, f"lung_{n:04d}", vol.array, mask, vol.spacing, vol.direction)
            n += 1
    if n == 0:
        raise InputError(f"Argument 'data': {str(data)!r} holds no cases (expected the MSD "
                         "Task06 layout or DICOM study folders with RTSTRUCT/SEG)")
    ds = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": 1},
          "numTraining": n, "file_ending": ".nii.gz",
          "name": "autoprompt_seg lung tumour detector", "source": str(data)}
    (raw / "dataset.json").write_text(json.dumps(ds, indent=2))
    log.info("converted %d case(s) from %s into %s", n, data, raw)
    return n
