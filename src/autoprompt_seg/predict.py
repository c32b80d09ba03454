"""One study in, outputs out: load -> detect -> segment -> write. Shared by the CLI,
the listener and the benchmark. Raises :class:`AutosegError`; never prints."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import registry
from .config import Settings
from .errors import OutputError
from .pipeline import StageProgress, run
from .types import Prediction, Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PredictResult:
    prediction: Prediction
    outputs: dict[str, Path]
    input_info: dict[str, Any]
    warnings: tuple[str, ...]


def load_input(path: str | os.PathLike[str], series_uid: str | None = None,
               stage_progress: StageProgress | None = None) -> tuple[Volume, dict[str, Any]]:
    """Load a DICOM study folder, or a NIfTI/NRRD file. Returns (volume, input info)."""
    from .io.image import is_image_file, load_image

    p = Path(path)
    if is_image_file(p):
        vol = load_image(p)
        reason = f"{vol.source_format} file"
    else:
        from .io.dicom import load_study

        progress = stage_progress("load", 0) if stage_progress else None
        vol, reason = load_study(p, series_uid, progress)
    info = {
        "path": str(p),
        "format": vol.source_format,
        "study_uid": vol.study_uid,
        "series_uid": vol.series_uid,
        "series_choice": reason,
        "slices": vol.shape[0],
        "shape_zyx": list(vol.shape),
        "spacing_zyx_mm": list(vol.spacing),
    }
    return vol, info


def check_output_parent(out_dir: Path) -> None:
    """Fail early, before any heavy work, when the output cannot be written."""
    parent = out_dir.resolve().parent
    probe = out_dir if out_dir.exists() else parent
    while not probe.exists():
        probe = probe.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{out_dir}: cannot write into {probe} (permission denied)")


def predict_path(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                 detector: str = registry.DEFAULT_DETECTOR,
                 segmenter: str = registry.DEFAULT_SEGMENTER,
                 settings: Settings | None = None, series_uid: str | None = None,
                 stage_progress: StageProgress | None = None) -> PredictResult:
    settings = settings or Settings()
    out = Path(out_dir)
    check_output_parent(out)
    det_spec = registry.get("detector", detector)
    seg_spec = registry.get("segmenter", segmenter)
    t0 = time.perf_counter()
    volume, info = load_input(path, series_uid, stage_progress)
    t_load = time.perf_counter() - t0
    det = det_spec.create(settings)
    seg = seg_spec.create(settings)
    pred = run(volume, det, seg, stage_progress, operating_point=settings.operating_point())
    timings = {"load_s": t_load, **pred.timings}
    warnings = list(pred.warnings)
    if not volume.has_dicom_sources:
        warnings.append(f"input is {volume.source_format}: no DICOM-SEG can be made without "
                        "DICOM sources; NIfTI output only")
    pred = Prediction(volume=pred.volume, lesions=pred.lesions, detector=pred.detector,
                      segmenter=pred.segmenter, timings=timings, warnings=tuple(warnings),
                      not_segmented=pred.not_segmented,
                      operating_point=pred.operating_point)
    from .export.writer import write_outputs

    t0 = time.perf_counter()
    outputs = write_outputs(pred, out, input_info=info)
    log.info("outputs written in %.2f s", time.perf_counter() - t0)
    return PredictResult(prediction=pred, outputs=outputs, input_info=info,
                         warnings=tuple(warnings))
