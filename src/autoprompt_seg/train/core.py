"""Shared machinery of every training run: config, data hash, checkpoint/resume, loss log,
the final checkpoint and its training record.

One run lives in one folder (``RunDir``)::

    OUT/
      state.pt          # resumable training state: model, optimiser, epoch, RNG states
      loss.jsonl        # one JSON row per logged step/epoch ({"epoch", "step", "loss", ...})
      <final file>      # the checkpoint in the backend's own inference format
      <final file>.train.json   # training record: model, config, data hash, epochs, sha256
      done.json         # written last: the run is complete (same content as the record)

A rerun with the same configuration and data resumes from ``state.pt`` (or returns the
finished result at once when ``done.json`` matches). A folder holding a run of another
configuration or data is refused (:class:`ConfigError`), never overwritten.

The training record makes backends report the checkpoint as *trained here* (see
:func:`autoprompt_seg.weights.training_record`), never as a published release.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import logging
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings, resolve_device
from ..errors import BackendError, ConfigError
from ..io.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

#: model name -> "module:function" (relative to this package) of its trainer.
TRAINERS: dict[str, str] = {
    "unet": ".cnn2d:train",
    "deeplabv3": ".cnn2d:train",
    "medsam": ".medsam:train",
    "medsam2": ".medsam2:train",
    "nnunet": ".nnunet:train",
}
PARADIGMS = ("zero-shot", "few-shot", "fine-tune")
STATE_FILE = "state.pt"
LOSS_FILE = "loss.jsonl"
DONE_FILE = "done.json"

#: ``progress(done, total)`` over the run's optimisation steps.
TrainProgress = Callable[[int, int], None]


def _check(cond: bool, arg: str, value: object, msg: str) -> None:
    if not cond:
        raise ConfigError(f"Argument '{arg}' {msg}; got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how. ``options`` holds model-specific settings (documented in each
    trainer module), e.g. ``{"arch": "resnet50", "pos_fraction": 0.5}``."""

    model: str
    epochs: int = 100
    batch_size: int = 16
    lr: float = 5e-3
    #: optimisation steps per epoch; 0 = one pass over the sampled training items
    steps_per_epoch: int = 0
    image_size: int = 512
    seed: int = 0
    device: str = "auto"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.model in TRAINERS, "model", self.model,
               f"must be one of {', '.join(TRAINERS)}")
        for name in ("epochs", "batch_size", "image_size"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, v,
                   "must be an integer >= 1")
        _check(isinstance(self.steps_per_epoch, int) and self.steps_per_epoch >= 0,
               "steps_per_epoch", self.steps_per_epoch, "must be an integer >= 0")
        _check(isinstance(self.lr, (int, float)) and 0 < float(self.lr) < 10, "lr", self.lr,
               "must be a positive number below 10")
        _check(self.device in ("auto", "cpu", "cuda"), "device", self.device,
               "must be auto, cpu or cuda")
        object.__setattr__(self, "options", dict(self.options))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def device_choice(self, settings: Settings) -> str:
        """Where the run goes: ``device`` unless it is ``auto``, then ``settings.device``
        (``auto``, ``cpu`` or ``cuda``, not yet resolved). The one place where a trainer
        merges the two; the torch trainers resolve it with :func:`run_device`."""
        return self.device if self.device != "auto" else settings.device

    def config_hash(self) -> str:
        """12 hex digits of the SHA-256 of every field except ``device`` (where a run
        happens does not change what it means)."""
        d = self.to_dict()
        d.pop("device")
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class TrainResult:
    """A finished run: the inference checkpoint (load it with the backend's
    ``--checkpoint``), its sha256 and its record."""

    model: str
    checkpoint: Path
    sha256: str
    epochs: int
    data_hash: str
    config_hash: str
    final_loss: float
    run_dir: Path
    record: Mapping[str, Any] = field(default_factory=dict)


def data_hash(cases: Sequence[Any]) -> str:
    """12 hex digits identifying a training set: the sorted case ids with their patient ids
    and source paths (the data are not read)."""
    items = sorted((c.case_id, c.patient_id, str(getattr(c, "source", ""))) for c in cases)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:12]


class RunDir:
    """One training run's folder: resume, log, finish (module docstring)."""

    def __init__(self, out_dir: str | os.PathLike[str], cfg: TrainConfig,
                 cases: Sequence[Any]) -> None:
        self.path = Path(out_dir)
        self.cfg = cfg
        self.case_ids = sorted(c.case_id for c in cases)
        self.data_hash = data_hash(cases)
        self.config_hash = cfg.config_hash()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"training folder {self.path}: cannot be created ({e})") from e
        ident = self.path / "run.json"
        mine = {"model": cfg.model, "config_hash": self.config_hash,
                "data_hash": self.data_hash}
        if ident.is_file():
            theirs = json.loads(ident.read_text(encoding="utf-8"))
            if {k: theirs.get(k) for k in mine} != mine:
                raise ConfigError(
                    f"training folder {self.path} holds another run ({theirs.get('model')}, "
                    f"config {theirs.get('config_hash')}, data {theirs.get('data_hash')}); "
                    f"this one is {cfg.model}, config {self.config_hash}, data "
                    f"{self.data_hash}: use another folder")
        else:
            atomic_write_text(ident, json.dumps({**mine, "config": cfg.to_dict(),
                                                  "cases": self.case_ids}, indent=2,
                                                 default=str) + "\n")

    # ------------------------------------------------------------------ resume
    def finished(self) -> TrainResult | None:
        """The result of a completed run in this folder, if its checkpoint is intact."""
        from ..weights import sha256_path

        done = self.path / DONE_FILE
        if not done.is_file():
            return None
        rec = json.loads(done.read_text(encoding="utf-8"))
        ck = self.path / rec["file"]
        if not ck.exists() or sha256_path(ck) != rec["sha256"]:
            log.warning("%s: finished run's checkpoint is missing or changed; retraining",
                        self.path)
            return None
        return self._result(ck, rec)

    def load_state(self, model: Any, optimizer: Any = None, scheduler: Any = None) -> int:
        """Restore ``state.pt`` into the objects; return the epoch to start from (0 when
        there is no state). RNG states (python, numpy, torch) are restored too."""
        import numpy as np
        import torch

        p = self.path / STATE_FILE
        if not p.is_file():
            return 0
        st = torch.load(p, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        if optimizer is not None and st.get("optimizer") is not None:
            optimizer.load_state_dict(st["optimizer"])
        if scheduler is not None and st.get("scheduler") is not None:
            scheduler.load_state_dict(st["scheduler"])
        rng = st.get("rng", {})
        if "python" in rng:
            random.setstate(rng["python"])
        if "numpy" in rng:
            np.random.set_state(rng["numpy"])
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        epoch = int(st["epoch"])
        log.info("%s: resuming after epoch %d", self.path, epoch)
        return epoch

    def save_state(self, model: Any, optimizer: Any, epoch: int, scheduler: Any = None,
                   **extra: Any) -> None:
        """Atomically write the resumable state after ``epoch`` (1-based count of epochs
        done)."""
        import numpy as np
        import torch

        st = {"model": model.state_dict(),
              "optimizer": optimizer.state_dict() if optimizer is not None else None,
              "scheduler": scheduler.state_dict() if scheduler is not None else None,
              "epoch": int(epoch), "config_hash": self.config_hash,
              "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                      "torch": torch.get_rng_state()}, **extra}
        atomic_write_bytes(self.path / STATE_FILE, lambda f: torch.save(st, f))

    # ------------------------------------------------------------------ logging
    def log(self, **row: Any) -> None:
        """Append one row (e.g. ``epoch=1, step=10, loss=0.4``) to ``loss.jsonl``."""
        with open(self.path / LOSS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def losses(self) -> list[dict[str, Any]]:
        p = self.path / LOSS_FILE
        if not p.is_file():
            return []
        out = []
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def checked_loss(self, loss: Any, epoch: int, step: int) -> float:
        """The float value of a step's ``loss`` (``epoch``, ``step`` 0-based); a NaN or
        infinite one raises :class:`BackendError` (the run diverged)."""
        value = float(loss.detach())
        if not math.isfinite(value):
            raise BackendError(f"{self.cfg.model} training diverged at epoch {epoch + 1}, step "
                               f"{step + 1} (loss {value}); lower the learning rate "
                               f"(lr={self.cfg.lr})")
        return value

    def final_loss(self, last_epoch_losses: Sequence[float]) -> float:
        """The run's final loss: the mean over the last epoch trained in this session, or,
        when this session trained none (resumed after the last epoch's state was saved),
        the last epoch row of ``loss.jsonl``."""
        if last_epoch_losses:
            import numpy as np

            return float(np.mean(last_epoch_losses))
        rows = [r for r in self.losses() if r.get("kind") == "epoch"]
        return float(rows[-1]["loss"]) if rows else float("nan")

    # ------------------------------------------------------------------ finish
    def finish(self, checkpoint_obj: Any, filename: str, *, epochs: int, final_loss: float,
               extra: Mapping[str, Any] | None = None,
               save: Callable[[Any, Path], None] | None = None) -> TrainResult:
        """Write the inference checkpoint atomically (``torch.save`` unless ``save`` is
        given, e.g. for a folder), its ``.train.json`` record and ``done.json``."""
        import torch

        from ..weights import TRAINING_RECORD_SUFFIX, sha256_path

        ck = self.path / filename
        if save is not None:
            save(checkpoint_obj, ck)
        else:
            atomic_write_bytes(ck, lambda f: torch.save(checkpoint_obj, f))
        sha = sha256_path(ck)
        rec = {"model": self.cfg.model, "file": filename, "sha256": sha,
               "epochs": int(epochs), "final_loss": float(final_loss),
               "config": self.cfg.to_dict(), "config_hash": self.config_hash,
               "data_hash": self.data_hash, "cases": self.case_ids,
               "n_cases": len(self.case_ids), "trained_by": "autoprompt_seg.train",
               "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
               **dict(extra or {})}
        text = json.dumps(rec, indent=2, default=str) + "\n"
        atomic_write_text(ck.with_name(ck.name + TRAINING_RECORD_SUFFIX), text)
        atomic_write_text(self.path / DONE_FILE, text)
        return self._result(ck, rec)

    def _result(self, ck: Path, rec: Mapping[str, Any]) -> TrainResult:
        return TrainResult(model=self.cfg.model, checkpoint=ck, sha256=rec["sha256"],
                           epochs=int(rec["epochs"]), data_hash=self.data_hash,
                           config_hash=self.config_hash,
                           final_loss=float(rec["final_loss"]), run_dir=self.path,
                           record=dict(rec))


def run_device(cfg: TrainConfig, settings: Settings) -> str:
    """The torch device (``cpu`` or ``cuda``) a trainer runs on: :meth:`TrainConfig.
    device_choice` resolved by :func:`autoprompt_seg.config.resolve_device`; also applies
    ``settings.threads`` to torch."""
    device = resolve_device(cfg.device_choice(settings))
    if settings.threads > 0:
        import torch

        torch.set_num_threads(settings.threads)
    return device


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train_model(cfg: TrainConfig, cases: Sequence[Any], out_dir: str | os.PathLike[str], *,
                settings: Settings | None = None, init_checkpoint: str | None = None,
                progress: TrainProgress | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``cases`` (bench :class:`~autoprompt_seg.datasets.Case`
    objects) into ``out_dir``; resumes an interrupted run, returns a finished one at once.

    ``init_checkpoint`` starts from given weights (fine-tuning a pretrained model);
    without it the model starts from its trainer's default (random, or a pretrained
    backbone named in ``cfg.options``).
    """
    if not cases:
        raise ConfigError(f"training {cfg.model} needs at least one case; got none")
    run = RunDir(out_dir, cfg, cases)
    done = run.finished()
    if done is not None:
        log.info("%s: already trained (%s)", run.path, done.checkpoint.name)
        return done
    mod_name, fn = TRAINERS[cfg.model].split(":")
    mod = importlib.import_module(mod_name, package=__package__)
    result: TrainResult = getattr(mod, fn)(cfg, list(cases), run,
                                           settings=settings or Settings(),
                                           init_checkpoint=init_checkpoint, progress=progress)
    return result
