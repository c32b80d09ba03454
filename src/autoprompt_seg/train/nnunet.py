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
``seed``; ``device``. ``options`` (:class:`NnunetTrainOptions`, parsed by
:func:`autoprompt_seg.options.parse_options`, errors name ``train.nnunet.<key>``):
``target_spacing_mm`` (2.5), ``base_features`` (16), ``max_features`` (128), ``max_stages``
(5), ``val_iterations`` (20), ``augment`` (True), ``threads`` (0); their ranges are checked
by :class:`~autoprompt_seg.models.nnunet.train.DetectorTrainConfig` before any case is
written. ``batch_size`` and ``image_size`` are nnU-Net's own choice (planned) and
ignored. ``init_checkpoint`` is not supported (nnU-Net trains from scratch in the paper's
protocol): giving one is a :class:`ConfigError`.

Resuming: a finished run is reused (``done.json``); an interrupted nnU-Net run starts its
training again from the first epoch (nnU-Net's own ``--c`` continuation is not wired in).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ConfigError, InputError
from .core import RunDir, TrainConfig, TrainProgress, TrainResult

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class NnunetTrainOptions:
    """``cfg.options`` of an nnU-Net run (module docstring), parsed by
    :func:`autoprompt_seg.options.parse_options` (errors name ``train.nnunet.<key>``). The
    ranges are :class:`~autoprompt_seg.models.nnunet.train.DetectorTrainConfig`'s, checked
    when :func:`train` builds it from these options."""

    target_spacing_mm: float = field(default=2.5, metadata={
        "help": "mm; isotropic voxel spacing the cases are resampled to (0.3-10)"})
    base_features: int = field(default=16, metadata={
        "help": "feature maps of the first U-Net stage (>= 1)"})
    max_features: int = field(default=128, metadata={
        "help": "cap on the feature maps of a stage (>= base_features)"})
    max_stages: int = field(default=5, metadata={"help": "most U-Net stages (>= 2)"})
    val_iterations: int = field(default=20, metadata={
        "help": "validation iterations per epoch (>= 1)"})
    augment: bool = field(default=True, metadata={
        "help": "nnU-Net's data augmentation; false = nnUNetTrainerNoDA transforms"})
    threads: int = field(default=0, metadata={
        "help": "CPU threads for torch; 0 = its default"})

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> NnunetTrainOptions:
        from ..options import parse_options

        return parse_options(cls, cfg.options, f"train.{cfg.model}")


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
    o = NnunetTrainOptions.from_config(cfg)
    data = run.path / "data"
    ncfg = NnunetTrainConfig(  # checks the ranges before any case is written
        data=data, out=run.path / "model", epochs=cfg.epochs,
        iterations_per_epoch=cfg.steps_per_epoch or 250,
        val_iterations=o.val_iterations, target_spacing_mm=o.target_spacing_mm,
        device=cfg.device_choice(settings), base_features=o.base_features,
        max_features=o.max_features, max_stages=o.max_stages,
        threads=o.threads, work_dir=run.path / "work", seed=cfg.seed,
        initial_lr=float(cfg.lr), augment=o.augment)
    ids = write_msd_layout(cases, data)
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
