"""detect -> segment -> Prediction. No I/O, no printing."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .backends import Detector, ProgressFn, Segmenter
from .errors import AutosegError, BackendError
from .types import Prediction, Volume

log = logging.getLogger(__name__)

#: ``stage_progress(stage_name, total) -> ProgressFn`` creates a progress callback per stage.
StageProgress = Callable[[str, int], ProgressFn | None]


def run(volume: Volume, detector: Detector, segmenter: Segmenter,
        stage_progress: StageProgress | None = None) -> Prediction:
    """Run one study through a detector and a segmenter.

    Lesions whose mask comes back empty are dropped with a warning. Backend exceptions
    that are not :class:`AutosegError` are wrapped in :class:`BackendError`.
    """
    timings: dict[str, float] = {}
    warnings: list[str] = []
    det_info, seg_info = detector.info(), segmenter.info()

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

    t0 = time.perf_counter()
    lesions = []
    if boxes:
        try:
            masks = segmenter.segment(volume, boxes, prog("segment", len(boxes)))
        except AutosegError:
            raise
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"segmenter {seg_info.name!r} failed: "
                               f"{type(e).__name__}: {e}") from e
        if len(masks) != len(boxes):
            raise BackendError(f"segmenter {seg_info.name!r} returned {len(masks)} mask(s) "
                               f"for {len(boxes)} box(es)")
        for i, m in enumerate(masks):
            if m.is_empty:
                warnings.append(f"box {i + 1} (key slice {boxes[i].key_slice}) gave an empty "
                                "mask and was dropped")
            else:
                lesions.append(m)
    timings["segment_s"] = time.perf_counter() - t0
    return Prediction(volume=volume, lesions=tuple(lesions), detector=det_info,
                      segmenter=seg_info, timings=timings, warnings=tuple(warnings))
