"""Training of the 2-D CNN baselines ``unet`` and ``deeplabv3`` (slice by slice).

Recipe (the paper group's settings are the defaults of :class:`~.core.TrainConfig`: 512x512
input, 100 epochs, batch 16, Adam lr 0.005):

* **data** -- the cases are loaded into host memory as int16 HU
  (:func:`~.data.load_training_set`); each step draws ``batch_size`` slices with
  tumour-positive oversampling (:class:`~.data.SliceSampler`, ``pos_fraction`` of them hold
  tumour), windows them to ``[0, 1]`` and resizes them to ``image_size``; only the batch
  goes to the device;
* **augmentation** (``augment``, default on) -- random flips, rotation (+-15 deg), scale
  (+-15 %), intensity scale/shift and noise, identical for image and mask
  (:func:`~.data.augment_batch`);
* **loss** -- MONAI ``DiceCELoss(to_onehot_y=True, softmax=True, batch=True)`` on the two
  logits (background, tumour);
* **optimiser** -- Adam at ``cfg.lr``; no schedule;
* **epochs** -- ``cfg.steps_per_epoch`` steps, or (0) enough for every tumour-positive slice
  to come up once on average (:meth:`~.data.SliceSampler.epoch_length`);
* **batch-norm statistics** -- where the network has batch norm (DeepLabV3's ResNet and
  head; a U-Net with ``norm: batch``), its running statistics are re-estimated at the end
  with the final weights over ``bn_batches`` unaugmented training batches
  (``torch.optim.swa_utils.update_bn``; "precise BN" of detectron2/pycls). Without it the
  running averages lag behind the weights, which in short runs leaves the model in
  inference mode far worse than in training mode;
* **device** -- the CPU for tiny runs, CUDA with bf16 autocast for real ones.

Every random choice is seeded: the initial weights by ``cfg.seed``; each epoch's slices and
augmentations by ``(cfg.seed, epoch)``. The state (model, optimiser, RNGs) is saved after
every epoch (:meth:`~.core.RunDir.save_state`); a crashed run restarts at the interrupted
epoch and ends with the same weights as an uninterrupted one (on the same device). After a
resume the interrupted epoch's loss rows appear twice in ``loss.jsonl``; the later ones count.

Loss log rows: ``{"kind": "step", "epoch", "step", "loss"}`` every ``log_every`` steps (mean
over them) and ``{"kind": "epoch", "epoch", "step", "loss", "seconds"}`` per epoch.

The result is an ``autoseg-cnn2d/1`` checkpoint (:mod:`autoprompt_seg.models.cnn2d.segmenter`)
named ``<model>.pt`` with its training record; the ``unet`` / ``deeplabv3`` segmenter
loads it (``Settings.options[model]["checkpoint"]``) and reports it as trained here.

``cfg.options`` (all optional):

``arch``
    unet: ``{"channels": [...], "strides": [...], "num_res_units": n, "norm": ...}``;
    deeplabv3: ``"resnet50"`` / ``"resnet101"`` (or ``{"backbone": ...}``).
``pos_fraction``
    fraction of tumour-positive slices per batch (default 0.5).
``augment``
    true / false (default true).
``window``
    ``[lo, hi]`` HU (default ``[-1000, 400]``, or the init checkpoint's).
``backbone_weights``
    deeplabv3 only: a torchvision ResNet ImageNet state dict file to start the backbone
    from (otherwise from scratch).
``log_every``
    steps per loss row (default 1).
``bf16``
    bf16 autocast on CUDA (default true).
``bn_batches``
    batches for the final batch-norm re-estimation (default 32; 0 = keep the running
    averages of training).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Settings
from ..datasets import Case
from ..errors import ConfigError
from ..models.cnn2d import checkpoint as cnn2d_ck
from ..models.cnn2d.segmenter import autocast
from .core import RunDir, TrainConfig, TrainProgress, TrainResult, run_device, seed_everything
from .data import (
    DEFAULT_WINDOW,
    SliceSampler,
    augment_batch,
    load_training_set,
    make_batch,
    parse_window,
)

log = logging.getLogger(__name__)

DEFAULT_BN_BATCHES = 32


@dataclass(frozen=True)
class Cnn2dTrainOptions:
    """``cfg.options`` of a unet / deeplabv3 run (module docstring), parsed by
    :func:`autoprompt_seg.options.parse_options` (errors name ``train.<model>.<key>``)."""

    arch: Any = None  # None = the model's default architecture
    pos_fraction: float = 0.5
    augment: bool = True
    window: tuple[float, float] | None = None  # None = the default or the init checkpoint's
    backbone_weights: str | None = None
    log_every: int = 1
    bf16: bool = True
    bn_batches: int = DEFAULT_BN_BATCHES

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Cnn2dTrainOptions:
        from ..options import parse_options

        label = f"train.{cfg.model}"
        raw = {k: (int(v) if isinstance(v, np.integer) else
                   float(v) if isinstance(v, np.floating) else
                   str(v) if k == "backbone_weights" and isinstance(v, os.PathLike) else v)
               for k, v in cfg.options.items()}
        if raw.get("window") is not None:
            raw["window"] = parse_window(raw["window"])
        o = parse_options(cls, raw, label)
        for key, lo in (("log_every", 1), ("bn_batches", 0)):
            if getattr(o, key) < lo:
                raise ConfigError(f"Option '{label}.{key}' must be an integer >= {lo}; "
                                  f"got {getattr(o, key)!r}")
        if o.backbone_weights is not None and cfg.model != "deeplabv3":
            raise ConfigError(f"Option '{label}.backbone_weights' only applies to deeplabv3; "
                              f"got it for {cfg.model}")
        return o


def initial_net(cfg: TrainConfig, init_checkpoint: str | Path | None = None
                ) -> tuple[Any, dict[str, Any], tuple[float, float], dict[str, Any]]:
    """The network a run starts from, seeded by ``cfg.seed``: random (or with the
    ``backbone_weights`` backbone), or ``init_checkpoint``'s weights.

    Returns (network on the CPU, architecture, window, provenance of the start weights).
    With zero training, this is the "untrained self" a trained model is compared with.
    """
    o = Cnn2dTrainOptions.from_config(cfg)
    seed_everything(cfg.seed)
    start: dict[str, Any] = {"init": "random", "seed": cfg.seed}
    if init_checkpoint is not None:
        ck = cnn2d_ck.read_checkpoint(init_checkpoint, cfg.model)
        if o.arch is not None and cnn2d_ck.normalise_arch(cfg.model, o.arch) != ck.arch:
            raise ConfigError(f"Option 'arch' {o.arch!r} differs from the architecture "
                              f"{ck.arch} of the init checkpoint {str(ck.path)!r}")
        arch = ck.arch
        window = o.window if o.window is not None else ck.window
        if ck.image_size != cfg.image_size:
            log.warning("init checkpoint %s was trained at %d px; fine-tuning at %d px",
                        ck.path, ck.image_size, cfg.image_size)
        net = cnn2d_ck.load_net(ck)
        from ..weights import sha256_file

        start = {"init": "checkpoint", "file": str(ck.path), "sha256": sha256_file(ck.path)}
    else:
        arch = cnn2d_ck.normalise_arch(cfg.model, o.arch)
        window = o.window if o.window is not None else DEFAULT_WINDOW
        net = cnn2d_ck.build_net(cfg.model, arch)
        bw = o.backbone_weights
        if bw is not None:
            from ..models.cnn2d.deeplab import load_backbone_weights

            sha = load_backbone_weights(net, bw)
            start = {"init": "backbone", "file": str(bw), "sha256": sha, "seed": cfg.seed}
    cnn2d_ck.check_image_size(cfg.model, arch, cfg.image_size)
    return net, arch, window, start


def has_batch_norm(net: Any) -> bool:
    import torch

    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def train(cfg: TrainConfig, cases: Sequence[Case], run: RunDir, *, settings: Settings,
          init_checkpoint: str | None = None, progress: TrainProgress | None = None
          ) -> TrainResult:
    """Train ``cfg.model`` (``unet`` or ``deeplabv3``) on ``cases`` in ``run`` (module
    docstring); resumes from the run's saved state."""
    import torch
    from monai.losses import DiceCELoss
    from torch.optim.swa_utils import update_bn

    cnn2d_ck.check_model(cfg.model)
    o = Cnn2dTrainOptions.from_config(cfg)
    if cfg.model == "deeplabv3" and cfg.batch_size < 2:
        raise ConfigError(f"Argument 'batch_size' must be >= 2 for deeplabv3 (its ASPP "
                          f"pooling branch has batch norm over a 1x1 map); got "
                          f"{cfg.batch_size}")
    device = run_device(cfg, settings)
    bf16 = o.bf16 and device == "cuda"
    augment = o.augment
    log_every = o.log_every

    net, arch, window, start_from = initial_net(cfg, init_checkpoint)
    volumes = load_training_set(cases, hu_dtype=np.int16)
    sampler = SliceSampler(volumes, o.pos_fraction, cfg.seed)
    steps = cfg.steps_per_epoch or max(1, math.ceil(sampler.epoch_length() / cfg.batch_size))
    total = steps * cfg.epochs

    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg.lr))
    first_epoch = run.load_state(net, opt)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    log.info("%s: %d volume(s), %d positive / %d negative slice(s), %d step(s) x %d "
             "epoch(s), batch %d at %d px on %s%s", cfg.model, len(volumes),
             len(sampler.positives), len(sampler.negatives), steps, cfg.epochs,
             cfg.batch_size, cfg.image_size, device, " (bf16)" if bf16 else "")

    last_epoch_losses: list[float] = []
    t_session = time.perf_counter()
    for epoch in range(first_epoch, cfg.epochs):
        t0 = time.perf_counter()
        items = sampler.sample(steps * cfg.batch_size, epoch)
        gen = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + epoch)
        net.train()
        losses: list[float] = []
        pending: list[float] = []
        for s in range(steps):
            x, y = make_batch(volumes, items[s * cfg.batch_size:(s + 1) * cfg.batch_size],
                              window, cfg.image_size)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if augment:  # random numbers from the CPU generator, warps on the device
                x, y = augment_batch(x, y, gen)
            with autocast(device, bf16):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = run.checked_loss(loss, epoch, s)
            losses.append(value)
            pending.append(value)
            step = epoch * steps + s + 1
            if len(pending) == log_every or s == steps - 1:
                run.log(kind="step", epoch=epoch + 1, step=step,
                        loss=float(np.mean(pending)))
                pending = []
            if progress is not None:
                progress(step, total)
        secs = time.perf_counter() - t0
        run.log(kind="epoch", epoch=epoch + 1, step=(epoch + 1) * steps,
                loss=float(np.mean(losses)), seconds=round(secs, 3))
        run.save_state(net, opt, epoch + 1)
        last_epoch_losses = losses
        log.info("%s epoch %d/%d: loss %.4f (%.1f s)", cfg.model, epoch + 1, cfg.epochs,
                 float(np.mean(losses)), secs)

    bn_batches = o.bn_batches
    if bn_batches and has_batch_norm(net):
        items = sampler.sample(bn_batches * cfg.batch_size, 0, stream=1)
        batches = (make_batch(volumes, items[i:i + cfg.batch_size], window,
                              cfg.image_size)[0]
                   for i in range(0, len(items), cfg.batch_size))
        with autocast(device, bf16):
            update_bn(batches, net, device=torch.device(device))
        log.info("%s: batch-norm statistics re-estimated over %d batch(es)", cfg.model,
                 bn_batches)

    final_loss = run.final_loss(last_epoch_losses)
    ck = cnn2d_ck.checkpoint_dict(cfg.model, arch, window, cfg.image_size, net.state_dict())
    extra = {"arch": arch, "preprocess": ck["preprocess"], "start": start_from,
             "bn_batches": bn_batches if has_batch_norm(net) else 0,
             "device": device, "steps_per_epoch": steps,
             "cases_used": sorted(v.case_id for v in volumes),
             "session_seconds": round(time.perf_counter() - t_session, 3)}
    return run.finish(ck, f"{cfg.model}.pt", epochs=cfg.epochs, final_loss=final_loss,
                      extra=extra)
