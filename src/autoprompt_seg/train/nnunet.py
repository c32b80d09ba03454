"""nnU-Net v2 training for the benchmark's paradigms: nnU-Net's own planner and trainer.

The cases are written in the MSD Task06 layout (``RUN/data/imagesTr``, ``labelsTr``,
NIfTI, the CT's geometry) and handed to :func:`autoprompt_seg.models.nnunet.train.
train_detector`, the detector issue's recipe: conversion to nnU-Net's raw format,
nnU-Net's ``ExperimentPlanner`` subclass, preprocessing, ``nnUNetTrainer`` subclass, export
of a model folder that stock ``nnUNetv2_predict`` loads. The result is the model folder
``RUN/model`` with a training record ``RUN/model.train.json``; load it with the ``nnunet``
segmenter or detector (``options["nnunet"]["model_dir"]``).

``TrainConfig`` mapping: ``epochs`` -> nnU-Net epochs; ``steps_per_epoch`` -> iterations per
epoch (0 = nnU-Net's 250); ``lr`` -> initial learning rate (nnU-Net's poly schedule);
``seed``; ``device``. ``options``: ``target_spacing_mm`` (2.5), ``base_features`` (16),
``max_features`` (128), ``max_stages`` (5), ``val_iterations`` (20), ``augment`` (True),
``threads`` (0). ``batch_size`` and ``image_size`` are nnU-Net's own choice (planned) and
ignored. ``init_checkpoint`` is not supported (nnU-Net trains from scratch in the paper's
protocol): giving one is a :class:`ConfigError`.

Resuming: a finished run is reused (``done.json``); an interrupted nnU-Net run starts its
training again from the first epoch (nnU-Net's own ``--c`` continuation is not wired in).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ConfigError, InputError
from .core import RunDir, TrainConfig, TrainProgress, TrainResult

log = logging.getLogger(__name__)

_OPTION_DEFAULTS: dict[str, Any] = {"target_spacing_mm": 2.5, "base_features": 16,
                                    "max_features": 128, "max_stages": 5,
                                    "val_iterations": 20, "augment": True, "threads": 0}


def write_msd_layout(cases: Sequence[Any], root: Path) -> list[str]:
    """Write ``cases`` as ``root/imagesTr/<id>.nii.gz`` + ``root/labelsTr/<id>.nii.gz`` with
    an MSD-style ``root/dataset.json``; bad cases are logged and skipped. Returns the case
    ids written."""
    import numpy as np
    import SimpleITK as sitk

    from ..datasets import load_case
    from ..io.image import volume_to_sitk

    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    written = []
    for c in cases:
        try:
            vol, mask = load_case(c)
        except InputError as e:
            log.warning("nnU-Net training: skipping %s", e)
            continue
        img = volume_to_sitk(vol, np.clip(np.rint(vol.array), -32768, 32767).astype(np.int16))
        sitk.WriteImage(img, str(root / "imagesTr" / f"{c.case_id}.nii.gz"),
                        useCompression=True)
        sitk.WriteImage(volume_to_sitk(vol, mask.astype(np.uint8)),
                        str(root / "labelsTr" / f"{c.case_id}.nii.gz"), useCompression=True)
        written.append(c.case_id)
    if not written:
        raise InputError("nnU-Net training: no usable case (every case was skipped)")
    (root / "dataset.json").write_text(json.dumps({
        "name": "autoprompt_seg training cases", "labels": {"0": "background", "1": "tumour"},
        "training": [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"}
                     for i in written]}, indent=2) + "\n", encoding="utf-8")
    return written


def train(cfg: TrainConfig, cases: Sequence[Any], run: RunDir, *, settings: Settings,
          init_checkpoint: str | None = None, progress: TrainProgress | None = None
          ) -> TrainResult:
    from ..models.nnunet.train import DetectorTrainConfig as NnunetTrainConfig
    from ..models.nnunet.train import train_detector

    if init_checkpoint:
        raise ConfigError(f"nnU-Net training starts from scratch; init_checkpoint is not "
                          f"supported; got {init_checkpoint!r}")
    unknown = set(cfg.options) - set(_OPTION_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown nnU-Net training option(s) {sorted(unknown)}; known: "
                          f"{sorted(_OPTION_DEFAULTS)}")
    o = {**_OPTION_DEFAULTS, **cfg.options}
    data = run.path / "data"
    ids = write_msd_layout(cases, data)
    ncfg = NnunetTrainConfig(
        data=data, out=run.path / "model", epochs=cfg.epochs,
        iterations_per_epoch=cfg.steps_per_epoch or 250,
        val_iterations=int(o["val_iterations"]), target_spacing_mm=float(o["target_spacing_mm"]),
        device=cfg.device_choice(settings), base_features=int(o["base_features"]),
        max_features=int(o["max_features"]), max_stages=int(o["max_stages"]),
        threads=int(o["threads"]), work_dir=run.path / "work", seed=cfg.seed,
        initial_lr=float(cfg.lr), augment=bool(o["augment"]))
    if progress is not None:
        progress(0, cfg.epochs)
    res = train_detector(ncfg)
    if progress is not None:
        progress(cfg.epochs, cfg.epochs)
    final_loss = _final_loss(res.model_dir)
    for epoch, loss in enumerate(_epoch_losses(res.model_dir), start=1):
        run.log(epoch=epoch, loss=loss)
    return run.finish(None, "model", epochs=cfg.epochs, final_loss=final_loss,
                      save=lambda _obj, _path: None,
                      extra={"trainer": "nnUNetTrainer (autoseg schedule)",
                             "cases_written": ids,
                             "checkpoint_sha256": res.checkpoint_sha256})


def _epoch_losses(model_dir: Path) -> list[float]:
    """Training losses per epoch from nnU-Net's training log (``train_loss -0.1234``)."""
    import re

    out: list[float] = []
    for f in sorted(model_dir.glob("fold_*/training_log_*.txt")):
        for m in re.finditer(r"train_loss (-?\d+(?:\.\d+)?(?:e-?\d+)?)",
                             f.read_text(errors="replace")):
            out.append(float(m.group(1)))
    return out


def _final_loss(model_dir: Path) -> float:
    losses = _epoch_losses(model_dir)
    return losses[-1] if losses else float("nan")
