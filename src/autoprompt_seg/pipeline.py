"""detect -> segment -> Prediction. No I/O, no printing."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from .backends import Detector, ProgressFn, Segmenter, is_promptable
from .errors import AutosegError, BackendError, ConfigError
from .types import Box3D, LesionMask, OperatingPoint, Prediction, Volume

log = logging.getLogger(__name__)

#: ``stage_progress(stage_name, total) -> ProgressFn`` creates a progress callback per stage.
StageProgress = Callable[[str, int], ProgressFn | None]
#: ``segment_fn(boxes, progress) -> masks``: replaces ``segmenter.segment(volume, ...)``;
#: it must return one mask per detected box, in order (the benchmark uses it to call a
#: :class:`~autoprompt_seg.backends.SliceSegmenter`'s ``segment_slices`` with per-slice
#: boxes, one lesion per key box).
SegmentFn = Callable[[Sequence[Box3D], ProgressFn | None], list[LesionMask]]


#: The detector name that means "no prompt" (:mod:`autoprompt_seg.detect.none`).
NO_PROMPT_DETECTOR = "none"


def split_components(lesion: LesionMask) -> list[LesionMask]:
    """One :class:`LesionMask` per 26-connected component of ``lesion``, each with its own
    bounding box as the box (key slice = its largest slice), largest first."""
    import numpy as np
    from scipy import ndimage as ndi

    if lesion.is_empty:
        return []
    lab, n = ndi.label(lesion.mask, structure=np.ones((3, 3, 3), dtype=bool))
    out = []
    oz, oy, ox = lesion.offset
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        comp = lab[sl] == i
        key = int(np.argmax(comp.sum(axis=(1, 2))))
        z0, y0, x0 = oz + sl[0].start, oy + sl[1].start, ox + sl[2].start
        box = Box3D(z0=z0, z1=oz + sl[0].stop, y0=y0, y1=oy + sl[1].stop, x0=x0,
                    x1=ox + sl[2].stop, key_slice=z0 + key, score=lesion.score,
                    source=lesion.box.source)
        out.append(LesionMask(comp, (z0, y0, x0), lesion.volume_shape, box, lesion.score))
    out.sort(key=lambda m: -m.voxel_count)
    return out


def run(volume: Volume, detector: Detector, segmenter: Segmenter,
        stage_progress: StageProgress | None = None, *,
        segment_fn: SegmentFn | None = None,
        operating_point: OperatingPoint | None = None) -> Prediction:
    """Run one study through a detector and a segmenter.

    ``segment_fn`` (see :data:`SegmentFn`) replaces the call to ``segmenter.segment``;
    timings, checks and the dropping of empty masks stay the same.

    ``operating_point`` (default :class:`OperatingPoint`'s) picks which automatic boxes
    are segmented; the others go to ``Prediction.not_segmented``. Prompt-free runs
    (detector ``none``) are not filtered.

    Lesions whose mask comes back empty are dropped with a warning. Backend exceptions
    that are not :class:`AutosegError` are wrapped in :class:`BackendError`.
    """
    timings: dict[str, float] = {}
    warnings: list[str] = []
    det_info, seg_info = detector.info(), segmenter.info()
    no_prompt = det_info.name == NO_PROMPT_DETECTOR
    if no_prompt and is_promptable(segmenter):
        raise ConfigError(f"--detector none gives no prompt; segmenter {seg_info.name!r} needs "
                          "box prompts (use a detector, or a prompt-free segmenter: nnunet, "
                          "unet, deeplabv3)")

    def prog(stage: str, total: int) -> ProgressFn | None:
        return stage_progress(stage, total) if stage_progress else None

    t0 = time.perf_counter()
    try:
        boxes = detector.detect(volume, prog("detect", 0))
    except AutosegError:
        raise
    except Exception as e:  # noqa: BLE001 - wrap any backend crash
        raise BackendError(f"detector {det_info.name!r} failed: {type(e).__name__}: {e}") from e
    timings["detect_s"] = time.perf_counter() - t0
    for b in boxes:
        if not b.fits(volume.shape):
            raise BackendError(f"detector {det_info.name!r} returned a box {b.to_dict()} "
                               f"outside the volume {volume.shape}")
    log.info("%s proposed %d box(es)", det_info.name, len(boxes))
    below: list[Box3D] = []
    op = None if no_prompt else (operating_point or OperatingPoint())
    if op is not None:
        boxes, below = op.split(boxes)
        if below:
            log.info("%d box(es) below the operating point are not segmented", len(below))

    t0 = time.perf_counter()
    lesions = []
    if boxes:
        try:
            if segment_fn is None:
                masks = segmenter.segment(volume, boxes, prog("segment", len(boxes)))
            else:
                masks = segment_fn(boxes, prog("segment", len(boxes)))
        except AutosegError:
            raise
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"segmenter {seg_info.name!r} failed: "
                               f"{type(e).__name__}: {e}") from e
        if len(masks) != len(boxes):
            raise BackendError(f"segmenter {seg_info.name!r} returned {len(masks)} mask(s) "
                               f"for {len(boxes)} box(es)")
        if no_prompt:
            masks = [c for m in masks for c in split_components(m)]
            boxes = [m.box for m in masks]
        for i, m in enumerate(masks):
            if m.is_empty:
                warnings.append(f"box {i + 1} (key slice {boxes[i].key_slice}) gave an empty "
                                "mask and was dropped")
            else:
                lesions.append(m)
    timings["segment_s"] = time.perf_counter() - t0
    return Prediction(volume=volume, lesions=tuple(lesions), detector=det_info,
                      segmenter=seg_info, timings=timings, warnings=tuple(warnings),
                      not_segmented=tuple(below), operating_point=op)
