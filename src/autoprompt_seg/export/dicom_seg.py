"""Prediction -> DICOM-SEG (highdicom, BINARY) and DICOM-SEG -> label map.

Geometry is never rebuilt from an array shape: the SEG's frames are derived from the
source CT instances themselves (``Volume.sources[k].dataset``, in the loader's slice
order, sorted along the slice normal), so frame *k* of lesion *i* references exactly the
instance that slice *k* of the volume came from. highdicom copies each source's
ImagePositionPatient / ImageOrientationPatient / PixelSpacing into the frame's plane
position, so a viewer places the SEG where the CT is.

One segment per lesion: label and tracking ID ``"Lung tumour i"``, a fresh tracking UID,
category SCT 49755003 "Morphologically abnormal structure", type SCT 108369006
"Neoplasm", anatomic region SCT 39607008 "Lung", algorithm type AUTOMATIC (SEMIAUTOMATIC
when a person gave a prompt), and an AlgorithmIdentificationSequence naming the segmenter
(with the detector in its parameters). Empty frames are omitted.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .. import __version__
from ..errors import OutputError
from ..types import BackendInfo, Prediction, Volume
from . import lesion_colour, lesion_label

if TYPE_CHECKING:  # pragma: no cover
    import highdicom as hd

log = logging.getLogger(__name__)

#: Segmented property category / type and anatomic region (SNOMED CT).
CATEGORY = ("49755003", "SCT", "Morphologically abnormal structure")
PROPERTY_TYPE = ("108369006", "SCT", "Neoplasm")
ANATOMIC_REGION = ("39607008", "SCT", "Lung")

DEFAULT_SERIES_NUMBER = 901
DEFAULT_MANUFACTURER = "autoprompt_seg"
DEFAULT_MODEL_NAME = "autoprompt_seg"
SERIES_DESCRIPTION = "AI lung tumour segmentation"
CONTENT_LABEL = "LUNG_TUMOUR"
_LO_MAX = 64  # DICOM LO value representation: at most 64 characters


class NoDicomSourcesError(OutputError):
    """A DICOM-SEG was requested for a volume that did not come from DICOM instances."""


def _lo(value: str, what: str) -> str:
    """Clip ``value`` to the 64 characters a DICOM LO element holds (with a warning)."""
    value = value.replace("\\", "/").strip()
    if len(value) > _LO_MAX:
        log.warning("%s %r is longer than %d characters; clipped in the SEG", what, value,
                    _LO_MAX)
        value = value[:_LO_MAX]
    return value


def _algorithm_family(family: str) -> Any:
    """Map ``BackendInfo.family`` to a CID 7162 code (default: Artificial Intelligence)."""
    from pydicom.sr.codedict import codes

    cid = codes.cid7162
    wanted = re.sub(r"[^a-z]", "", family.lower())
    for name in cid.dir():
        if re.sub(r"[^a-z]", "", name.lower()) == wanted:
            return getattr(cid, name)
    log.warning("algorithm family %r is not in DICOM CID 7162; the SEG says "
                "'Artificial Intelligence'", family)
    return cid.ArtificialIntelligence


def _checkpoint_state(info: BackendInfo) -> str:
    """The checkpoint's provenance state (weights.checkpoint_provenance) where the backend
    gives one, else trained / untrained test checkpoint."""
    if not info.trained:
        return "untrained test checkpoint"
    return str(info.details.get("provenance_state") or "trained")


def _short_state(info: BackendInfo) -> str:
    """A few words on the segmenter's checkpoint for the ContentDescription ("" when it
    has none: a training-free backend)."""
    if not info.trained:
        return "UNTRAINED test weights"
    if not info.checkpoint:
        return ""
    return {"pinned release": "pinned release",
            "official download, hash not pinned": "official download, unpinned",
            "pinned by the user": "user-pinned weights",
            "trained here": "trained here"}.get(
                str(info.details.get("provenance_state", "")), "trained")


def _detector_text(prediction: Prediction) -> str:
    return f"detector {prediction.detector.name} {prediction.detector.version}"


def algorithm_identification(segmenter: BackendInfo, detector: BackendInfo
                             ) -> hd.AlgorithmIdentificationSequence:
    """The AlgorithmIdentificationSequence: the segmenter, with the detector as parameter.

    The segmenter made the masks, so it is "the algorithm"; the detector that chose the
    prompts is named in AlgorithmParameters (``detector=name version``), together with the
    checkpoint hashes (first 16 hex digits) and whether each checkpoint is trained.
    """
    import highdicom as hd

    params: dict[str, str] = {
        "detector": f"{detector.name} {detector.version}".strip(),
        "detector_checkpoint": _checkpoint_state(detector),
        "segmenter_checkpoint": _checkpoint_state(segmenter),
    }
    if detector.checkpoint_sha256:
        params["detector_sha256"] = detector.checkpoint_sha256[:16]
    if segmenter.checkpoint_sha256:
        params["segmenter_sha256"] = segmenter.checkpoint_sha256[:16]
    # ',' and '=' separate the parameters in the LT element: keep them out of values.
    params = {k: v.replace(",", ";").replace("=", ":") for k, v in params.items()}
    return hd.AlgorithmIdentificationSequence(
        name=_lo(segmenter.name, "segmenter name"),
        family=_algorithm_family(segmenter.family),
        version=_lo(segmenter.version or "unknown", "segmenter version"),
        source=_lo(f"autoprompt_seg {__version__}", "algorithm source"),
        parameters=params,
    )


def source_datasets(volume: Volume) -> list[Any]:
    """The source CT headers in slice order (re-read from disk where a header is missing).

    Raises :class:`NoDicomSourcesError` for a volume without DICOM sources and
    :class:`OutputError` when a header cannot be re-read or does not match its reference.
    """
    if not volume.has_dicom_sources:
        raise NoDicomSourcesError(
            f"no DICOM-SEG can be made without DICOM sources: the volume "
            f"{volume.description or '(unnamed)'!r} came from {volume.source_format!r} input")
    import pydicom

    out = []
    for k, ref in enumerate(volume.sources):
        ds = ref.dataset
        if ds is None:
            try:
                ds = pydicom.dcmread(ref.path, stop_before_pixels=True)
            except Exception as e:  # noqa: BLE001 - any read failure is reported the same way
                raise OutputError(f"cannot re-read the source header of slice {k} "
                                  f"({ref.path}): {type(e).__name__}: {e}") from e
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid != ref.sop_instance_uid:
            raise OutputError(f"source of slice {k} ({ref.path}) has SOPInstanceUID {uid!r}, "
                              f"expected {ref.sop_instance_uid!r}")
        out.append(ds)
    return out


def _pixel_array(prediction: Prediction) -> npt.NDArray[Any]:
    """A (z, y, x) label map when lesions do not overlap, else (z, y, x, n) booleans."""
    n = len(prediction.lesions)
    total = sum(les.voxel_count for les in prediction.lesions)
    labels = prediction.label_map()  # uint8, or uint16 beyond 255 lesions
    if int(np.count_nonzero(labels)) == total:
        return labels
    log.info("lesions overlap: the SEG stores one full mask per segment")
    stack = np.zeros((*prediction.volume.shape, n), dtype=bool)
    for i, les in enumerate(prediction.lesions):
        sz, sy, sx = les.slices()
        stack[sz, sy, sx, i] = les.mask
    return stack


def build_seg(prediction: Prediction, *, series_number: int = DEFAULT_SERIES_NUMBER,
              instance_number: int = 1, manufacturer: str = DEFAULT_MANUFACTURER,
              manufacturer_model_name: str = DEFAULT_MODEL_NAME,
              software_versions: str | None = None, device_serial_number: str = "0",
              series_description: str = SERIES_DESCRIPTION,
              tracking_uids: Sequence[str] | None = None) -> hd.seg.Segmentation:
    """Build a BINARY DICOM-SEG with one segment per lesion of ``prediction``.

    The SEG belongs to the source study (same Study Instance UID and Frame of Reference),
    in a new series (``series_number``). ``tracking_uids`` (one per lesion) lets the caller
    reuse the UIDs in the report; fresh UIDs are generated otherwise.

    Raises :class:`NoDicomSourcesError` (an :class:`OutputError`) for a volume without
    DICOM sources, :class:`OutputError` for a prediction with no lesions or an empty
    lesion mask, and ``ValueError`` for bad arguments.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    if isinstance(series_number, bool) or not isinstance(series_number, int) \
            or not 0 < series_number < 2**31:
        raise ValueError(f"Argument 'series_number' must be a positive integer; "
                         f"got {series_number!r}")
    if isinstance(instance_number, bool) or not isinstance(instance_number, int) \
            or instance_number < 1:
        raise ValueError(f"Argument 'instance_number' must be a positive integer; "
                         f"got {instance_number!r}")
    sources = source_datasets(prediction.volume)
    lesions = prediction.lesions
    if not lesions:
        raise OutputError("no DICOM-SEG for a prediction with no lesions (a SEG needs at "
                          "least one segment)")
    for i, les in enumerate(lesions):
        if les.is_empty:
            raise OutputError(f"lesion {i + 1} has an empty mask; drop it before export")
    if tracking_uids is None:
        tracking_uids = [generate_uid() for _ in lesions]
    elif len(tracking_uids) != len(lesions):
        raise ValueError(f"Argument 'tracking_uids' must hold one UID per lesion "
                         f"({len(lesions)}); got {len(tracking_uids)}")

    algo = algorithm_identification(prediction.segmenter, prediction.detector)
    algo_type = (hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if prediction.from_person
                 else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC)
    descriptions = []
    for i, uid in enumerate(tracking_uids, start=1):
        r, g, b = lesion_colour(i)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=lesion_label(i),
            segmented_property_category=hd.sr.CodedConcept(*CATEGORY),
            segmented_property_type=hd.sr.CodedConcept(*PROPERTY_TYPE),
            algorithm_type=algo_type,
            algorithm_identification=algo,
            tracking_uid=str(uid),
            tracking_id=lesion_label(i),
            anatomic_regions=[hd.sr.CodedConcept(*ANATOMIC_REGION)],
            display_color=hd.color.CIELabColor.from_rgb(r, g, b),
        ))
        # Segment Description (0062,0006, LO): the detector's calibrated confidence
        les_box = lesions[i - 1].box
        descriptions[-1].SegmentDescription = _lo(
            "manual prompt" if les_box.from_person
            else f"confidence {les_box.score:.2f} ({_detector_text(prediction)})",
            "segment description")
    det, segm = prediction.detector, prediction.segmenter
    how = "manual box prompts" if prediction.from_person else f"detector {det.name}"
    content = f"{len(lesions)} lung tumour(s): {segm.name} from {how}"
    state = _short_state(segm)
    if state:  # the checkpoint's provenance must survive the 64-character limit
        content = f"{content}; {state}"
        if len(content) > _LO_MAX:
            content = f"{len(lesions)} lung tumour(s): {segm.name}; {state}"
    content = _lo(content, "content description")
    kwargs: dict[str, Any] = {
        "source_images": sources,
        "pixel_array": _pixel_array(prediction),
        "segmentation_type": hd.seg.SegmentationTypeValues.BINARY,
        "segment_descriptions": descriptions,
        "series_instance_uid": generate_uid(),
        "series_number": series_number,
        "sop_instance_uid": generate_uid(),
        "instance_number": instance_number,
        "manufacturer": _lo(manufacturer, "manufacturer"),
        "manufacturer_model_name": _lo(manufacturer_model_name, "manufacturer model name"),
        "software_versions": _lo(software_versions or f"autoprompt_seg {__version__}",
                                 "software versions"),
        "device_serial_number": _lo(device_serial_number, "device serial number"),
        "omit_empty_frames": True,
        "content_label": CONTENT_LABEL,
        "content_description": content,
        "series_description": _lo(series_description, "series description"),
        # Not a cleared medical device: say so in the object itself.
        "content_qualification": hd.ContentQualificationValues.RESEARCH,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = hd.seg.Segmentation(**kwargs)
    for w in caught:
        # A single-component patient name copied from the source is the source's matter.
        level = logging.DEBUG if "person name" in str(w.message) else logging.WARNING
        log.log(level, "highdicom: %s", w.message)
    log.info("DICOM-SEG built: %d segment(s), %d frame(s), series %s", len(lesions),
             int(seg.NumberOfFrames), seg.SeriesInstanceUID)
    return seg
