"""DICOM-SEG ground truth read back as a label map on a volume's slices (highdicom).

Writing a SEG is :mod:`autoprompt_seg.export.dicom_seg`'s job; reading one (the oracle's
``--prompts-from SEG``, the datasets' SEG ground truth, the round-trip tests) is here, as is
finding one in a study folder (:func:`find_seg`) and picking a named segment
(:func:`seg_roi_mask`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from ..types import Volume

log = logging.getLogger(__name__)


def read_seg_labels(seg_path: str | os.PathLike[str], volume: Volume) -> npt.NDArray[np.uint8]:
    """Read a DICOM-SEG back as a (z, y, x) uint8 label map on ``volume``'s slices.

    Frames are matched to the volume's slices by referenced SOP Instance UID (never by
    position in the file). The value of a voxel is its segment number; where segments
    overlap the lowest segment number wins (as in ``Prediction.label_map``). Slices the
    SEG does not reference stay 0.

    Raises :class:`InputError` when the file is not a readable SEG, references none of
    the volume's slices, has another frame size, or has more than 255 segments.
    """
    import highdicom as hd

    p = Path(seg_path)
    if not volume.has_dicom_sources:
        raise InputError(f"{p}: a DICOM-SEG can only be mapped onto a volume loaded from "
                         f"DICOM (this one is {volume.source_format!r})")
    try:
        seg = hd.seg.segread(p)
    except Exception as e:  # noqa: BLE001 - any parse failure is an input error
        raise InputError(f"{p}: cannot be read as a DICOM-SEG ({type(e).__name__}: {e})") from e
    nz, ny, nx = volume.shape
    if (int(seg.Rows), int(seg.Columns)) != (ny, nx):
        raise InputError(f"{p}: frames are {int(seg.Rows)}x{int(seg.Columns)}, the volume's "
                         f"slices are {ny}x{nx}")
    numbers = sorted(int(n) for n in seg.segment_numbers)
    if not numbers:
        raise InputError(f"{p}: the SEG has no segments")
    if max(numbers) > 255:
        raise InputError(f"{p}: segment number {max(numbers)} does not fit a uint8 label map")
    referenced = {str(uid) for _study, _series, uid in seg.get_source_image_uids()}
    slice_uids = [ref.sop_instance_uid for ref in volume.sources]
    ks = [k for k, uid in enumerate(slice_uids) if uid in referenced]
    if not ks:
        raise InputError(f"{p}: the SEG references none of the {nz} slices of series "
                         f"{volume.series_uid or '?'}")
    labels = np.zeros(volume.shape, dtype=np.uint8)
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[slice_uids[k] for k in ks], segment_numbers=numbers,
            combine_segments=False, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - highdicom raises several types
        raise InputError(f"{p}: frames cannot be mapped to the volume's slices "
                         f"({type(e).__name__}: {e})") from e
    target = labels[ks]
    # Highest segment number first, so that the lowest number ends up on top.
    for j in range(len(numbers) - 1, -1, -1):
        target[pixels[..., j] > 0] = numbers[j]
    labels[ks] = target
    log.info("read %s: %d segment(s) on %d of %d slice(s)", p, len(numbers), len(ks), nz)
    return labels


def find_seg(folder: Path) -> Path | None:
    """The first DICOM-SEG (Modality SEG) file under ``folder``, in sorted order."""
    import pydicom

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        except Exception:  # noqa: BLE001 - not DICOM: skip
            continue
        if str(ds.get("Modality", "")) == "SEG":
            return path
    return None


def seg_roi_mask(seg_path: str | os.PathLike[str], volume: Volume, roi: str
                 ) -> npt.NDArray[np.bool_]:
    """Ground truth from a DICOM-SEG: the segment labelled ``roi`` if there is one, else the
    union of all segments."""
    import pydicom

    labels = read_seg_labels(seg_path, volume)
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    numbers = [int(item.SegmentNumber) for item in ds.get("SegmentSequence", [])
               if str(item.get("SegmentLabel", "")) == roi]
    return np.isin(labels, numbers) if numbers else labels > 0
