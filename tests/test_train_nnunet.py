"""nnU-Net through the paradigm trainer (``train_model(model="nnunet")``): nnU-Net's own
planner and trainer on bench cases, a model folder with a training record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoprompt_seg.config import Settings
from autoprompt_seg.datasets import Case
from autoprompt_seg.errors import ConfigError
from autoprompt_seg.train.core import TrainConfig, train_model
from nnunet_helpers import random_tiny_model, tiny_chest, volume_of

OPTIONS = {"base_features": 8, "max_features": 64, "max_stages": 4, "val_iterations": 1,
           "augment": False, "target_spacing_mm": 4.0, "threads": 2}


def _case(seed: int) -> Case:
    chest = tiny_chest(seed)
    return Case(case_id=f"chest{seed}", patient_id=f"P{seed}",
                load_volume=lambda: volume_of(chest),
                load_label=lambda v: chest.labels > 0, source=f"synthetic:{seed}")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def _mean_dice(model_dir: Path, tmp: Path, seeds: list[int]) -> tuple[float, bool]:
    from autoprompt_seg.segment.nnunet_seg import create

    seg = create(Settings(device="cpu", threads=2, weights_dir=tmp / "w",
                          options={"nnunet": {"model_dir": str(model_dir)}}))
    d = [_dice(seg.full_mask(volume_of(tiny_chest(s))) > 0, tiny_chest(s).labels > 0)
         for s in seeds]
    return float(np.mean(d)), seg.info().trained


@pytest.mark.slow
def test_nnunet_trains_on_bench_cases_and_beats_random_weights(tmp_path: Path):
    cfg = TrainConfig(model="nnunet", epochs=8, steps_per_epoch=20, lr=0.05, seed=0,
                      device="cpu", options=OPTIONS)
    cases = [_case(s) for s in range(6)]
    res = train_model(cfg, cases, tmp_path / "run")
    assert res.checkpoint == tmp_path / "run" / "model"
    assert (res.checkpoint / "fold_all" / "checkpoint_final.pth").is_file()
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "loss.jsonl")
                                     .read_text().splitlines())]
    assert len(losses) == 8 and np.mean(losses[-2:]) < np.mean(losses[:2])
    rec = json.loads((tmp_path / "run" / "model.train.json").read_text())
    assert rec["n_cases"] == 6 and rec["epochs"] == 8 and rec["sha256"] == res.sha256
    trained, trained_flag = _mean_dice(res.checkpoint, tmp_path, [100, 101])
    untrained, untrained_flag = _mean_dice(random_tiny_model(tmp_path / "rand", seed=0),
                                           tmp_path, [100, 101])
    assert trained_flag is True and untrained_flag is False  # the training record counts
    assert trained > untrained + 0.2, (trained, untrained)
    # a rerun returns the finished run at once
    again = train_model(cfg, cases, tmp_path / "run")
    assert again.sha256 == res.sha256


def test_nnunet_training_refuses_init_weights_and_unknown_options(tmp_path: Path):
    cases = [_case(0)]
    with pytest.raises(ConfigError, match="init_checkpoint is not supported"):
        train_model(TrainConfig(model="nnunet", epochs=1, options=OPTIONS), cases,
                    tmp_path / "a", init_checkpoint="x.pth")
    with pytest.raises(ConfigError, match=r"Option 'train\.nnunet': unknown key\(s\) 'patch'; "
                       r"known: augment, base_features, .*; got \{'patch': 3\}$"):
        train_model(TrainConfig(model="nnunet", epochs=1, options={"patch": 3}), cases,
                    tmp_path / "b")
    with pytest.raises(ConfigError, match=r"Option 'train\.nnunet\.val_iterations' must be an "
                       r"integer; got '20'$"):
        train_model(TrainConfig(model="nnunet", epochs=1, options={"val_iterations": "20"}),
                    cases, tmp_path / "c")
    with pytest.raises(ConfigError, match=r"'max_features' must be >= base_features \(16\); "
                       r"got 8$"):  # a range: checked before any case is written
        train_model(TrainConfig(model="nnunet", epochs=1, options={"max_features": 8}),
                    cases, tmp_path / "d")
    assert not (tmp_path / "d" / "data").exists()
