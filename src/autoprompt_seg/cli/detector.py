"""``autoseg detector ...``: train the lightweight nnU-Net v2 tumour detector.

Registered by ``cli/app.py`` with ``main.add_command(detector)``. A thin layer over
:mod:`autoprompt_seg.models.nnunet.train`; library errors map to their exit codes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .common import (
    EXIT_HELP,
    device_option,
    handle_errors,
    threads_option,
    weights_dir_option,
)

log = logging.getLogger(__name__)


@click.group("detector")
def detector() -> None:
    """Train and manage the nnU-Net v2 tumour detector (see docs/detector.md).

    \b
    Example:
      autoseg detector train /data/Task06_Lung --out models/det --register
    """


@detector.command("train", epilog=EXIT_HELP)
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model folder to write (dataset.json, plans.json, fold_all/...).")
@click.option("--epochs", default=50, show_default=True, type=click.IntRange(min=1),
              help="Training epochs.")
@click.option("--iterations", "iterations", default=250, show_default=True,
              type=click.IntRange(min=1), help="Training iterations per epoch.")
@click.option("--target-spacing", "target_spacing", default=2.5, show_default=True,
              type=click.FloatRange(0.3, 10.0), help="Isotropic working spacing in mm.")
@click.option("--roi-name", default="GTV-1", show_default=True,
              help="RTSTRUCT ROI holding the tumour (DICOM datasets).")
@device_option(help="Where training runs.")
@threads_option(help="CPU threads for torch (0 = default).")
@click.option("--base-features", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--max-stages", default=5, show_default=True, type=click.IntRange(min=2))
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="nnU-Net raw/preprocessed/results folders (default OUT.work).")
@click.option("--register", is_flag=True,
              help="Install the model into the weights folder as nnunet_lung_detector.")
@weights_dir_option("Weights folder for --register (default: AUTOSEG_WEIGHTS_DIR or the user "
                    "data folder).")
@handle_errors
def train(data: Path, out: Path, epochs: int, iterations: int, target_spacing: float,
          roi_name: str, device: str, threads: int, base_features: int, max_stages: int,
          work_dir: Path | None, register: bool, weights_dir: str | None) -> None:
    """Train a lightweight nnU-Net v2 detector on DATA.

    DATA is the MSD Task06 Lung layout (imagesTr/, labelsTr/, dataset.json) or a folder of
    DICOM studies with an RTSTRUCT (ROI --roi-name) or SEG ground truth.

    \b
    Example:
      autoseg detector train /data/Task06_Lung --out models/det --epochs 100 --register
    """
    from ..models.nnunet.train import DetectorTrainConfig, train_detector

    cfg = DetectorTrainConfig(data=data, out=out, epochs=epochs, iterations_per_epoch=iterations,
                      target_spacing_mm=target_spacing, roi_name=roi_name, device=device,
                      threads=threads, base_features=base_features,
                      max_features=max(base_features, 8 * base_features),
                      max_stages=max_stages, work_dir=work_dir, register=register,
                      weights_dir=Path(weights_dir) if weights_dir else None)
    res = train_detector(cfg)
    click.echo(f"model folder: {res.model_dir}")
    click.echo(f"checkpoint:   {res.checkpoint} (sha256 {res.checkpoint_sha256})")
    click.echo(f"folder sha256: {res.folder_sha256}")
    click.echo(f"cases: {res.n_cases}; time: {res.seconds:.0f} s; plans: {res.plans_summary}")
    if res.registered:
        click.echo("registered as nnunet_lung_detector (unverified until its sha256 is in the "
                   "manifest)")
