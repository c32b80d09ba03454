"""``autoseg train``: train one learned backend on a dataset (the bench's trainers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .common import (
    EXIT_HELP,
    dataset_options,
    device_option,
    handle_errors,
    make_settings,
    threads_option,
    weights_dir_option,
)

MODELS = ("unet", "deeplabv3", "medsam", "medsam2", "nnunet")


def _parse_option(values: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as JSON when they can be (numbers, lists,
    true/false), else kept as strings."""
    from ..errors import ConfigError

    out: dict[str, Any] = {}
    for v in values:
        if "=" not in v:
            raise ConfigError(f"--option must be KEY=VALUE; got {v!r}")
        k, raw = v.split("=", 1)
        try:
            out[k.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[k.strip()] = raw
    return out


@click.command("train", epilog=EXIT_HELP)
@click.argument("model", type=click.Choice(MODELS))
@dataset_options
@click.option("--roi", default="GTV-1", show_default=True, help="RTSTRUCT ROI (pycerr, nsclc).")
@click.option("--splits", "splits_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Splits file (autoseg bench splits); trains on --split.")
@click.option("--split", "split_name", default="train", show_default=True,
              help="The split of --splits to train on.")
@click.option("--case", "cases", multiple=True, help="Train only on this case (repeatable).")
@click.option("--shots", type=click.IntRange(min=1), default=None,
              help="Few-shot: K patients drawn (seeded, nested) from the training cases.")
@click.option("--epochs", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=float, default=0.005, show_default=True, help="Learning rate.")
@click.option("--steps-per-epoch", type=click.IntRange(min=0), default=0, show_default=True,
              help="Optimisation steps per epoch (0 = one pass over the sampled items).")
@click.option("--image-size", type=click.IntRange(min=16), default=512, show_default=True,
              help="2-D input size of unet/deeplabv3.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--init", "init_checkpoint", default=None,
              help="Start weights (required for medsam/medsam2: the zero-shot checkpoint).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Trainer option (repeatable), e.g. arch=resnet101 pos_fraction=0.5.")
@device_option(help="Where training runs.")
@threads_option(help="CPU threads for torch (0 = library default).")
@weights_dir_option("Folder of installed weights, where --init NAME is looked up "
                    "[env AUTOSEG_WEIGHTS_DIR].")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoint, training record, loss.jsonl; rerun to resume.")
@handle_errors
def train(model: str, dataset: str, dataset_path: str | None, roi: str,
          splits_file: str | None, split_name: str, cases: tuple[str, ...],
          shots: int | None, epochs: int, batch_size: int, lr: float, steps_per_epoch: int,
          image_size: int, seed: int, init_checkpoint: str | None, options: tuple[str, ...],
          device: str, threads: int, weights_dir: str | None, out_dir: str) -> None:
    """Train MODEL on a dataset; an interrupted run resumes when rerun with the same
    arguments, and a finished one is returned at once.

    The checkpoint it writes carries a training record (FILE.train.json), so predict and
    bench report it as "trained here", never as a published release. Use it with
    `autoseg predict --segmenter MODEL --checkpoint FILE`.

    \b
    Example:
      autoseg train unet --dataset pycerr --epochs 2 --image-size 128 --out runs/unet
      autoseg train medsam2 --dataset msd --dataset-path Task06_Lung --splits splits.json \\
          --init MedSAM2_latest.pt --shots 5 --device cuda --out runs/medsam2-k5
    """
    from ..datasets import get_cases, load_splits
    from ..errors import ConfigError
    from ..train.core import TrainConfig, train_model
    from ..train.data import kshot_subsets

    settings = make_settings(device, threads, weights_dir)
    pool = get_cases(dataset, dataset_path, roi=roi, cache_dir=settings.cache_dir)
    if splits_file:
        sp = load_splits(splits_file)
        if split_name not in sp["cases"]:
            raise ConfigError(f"--split {split_name!r} is not in {splits_file} (splits: "
                              f"{', '.join(sp['cases'])})")
        keep = set(sp["cases"][split_name])
        pool = [c for c in pool if c.case_id in keep]
    if cases:
        missing = sorted(set(cases) - {c.case_id for c in pool})
        if missing:
            raise ConfigError(f"--case {', '.join(missing)}: not among the training cases")
        pool = [c for c in pool if c.case_id in set(cases)]
    if shots:
        pool = kshot_subsets(pool, [shots], seed)[shots]
    cfg = TrainConfig(model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                      steps_per_epoch=steps_per_epoch, image_size=image_size, seed=seed,
                      device=device, options=_parse_option(options))
    click.echo(f"training {model} on {len(pool)} case(s): "
               f"{', '.join(c.case_id for c in pool)} -> {out_dir}", err=True)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), transient=False) as prog:
        tid = prog.add_task(f"train {model}", total=None)

        def progress(done: int, total: int) -> None:
            prog.update(tid, completed=done, total=total)

        res = train_model(cfg, pool, Path(out_dir), settings=settings,
                          init_checkpoint=init_checkpoint, progress=progress)
    click.echo(json.dumps({"checkpoint": str(res.checkpoint), "sha256": res.sha256,
                           "epochs": res.epochs, "final_loss": res.final_loss,
                           "data_hash": res.data_hash, "config_hash": res.config_hash},
                          indent=2))
