"""MedSAM2 training: the mask decoder and the memory modules on short clips of
consecutive CT slices, with the image encoder frozen (the recipe of the paper's group,
after sam2's ``SAM2Train`` and MedSAM2's fine-tuning config).

Entry point: :func:`train`, called by :func:`autoprompt_seg.train.core.train_model` for
``TrainConfig(model="medsam2")``. The model-level parts (options, case index, trained
modules, losses, clip forward pass, base weights) live in
:mod:`autoprompt_seg.models.medsam2.training`; this module is the run itself (feature store
fed by the benchmark's datasets, jittered prompts, the resumable loop), which needs
``bench`` and ``train.core`` and so stays in ``train``.

Base weights
    ``init_checkpoint``: a MedSAM2 checkpoint file or weights name (``MedSAM2_latest`` for
    real runs), loaded strictly as the ``medsam2`` segmenter does. Without it training
    refuses to start (:class:`ConfigError`) unless ``options["allow_random_base"]`` is
    true (tests: a seeded random model).

Data (one *clip* per anchor)
    Every 3-D lesion (26-connected component of the GT) gives one anchor per slice on which
    it appears and per direction (+z and -z, since inference propagates both ways). A clip
    is ``clip_len`` consecutive slices starting at the anchor, cut short at the end of the
    volume; its first frame is the conditioning frame. Reverse clips are fed in reversed
    slice order as an ordinary forward video: with sam2's signed temporal encodings this is
    exactly what ``track_in_reverse=True`` computes at inference. The box prompt on the
    first frame is the GT box of that lesion on that slice (``box="slice"``) or the lesion's
    in-plane 3-D extent (``box="lesion"``, what a detector's 3-D box gives the segmenter),
    jittered like the benchmark's manual prompts (:class:`autoprompt_seg.bench.prompts.
    Jitter`), then mapped to 512 px exactly as the segmenter maps boxes
    (:func:`autoprompt_seg.models.medsam2.box_to_model`) and given to the model as two
    corner points with labels 2 and 3 (what ``add_new_points_or_box`` builds). Targets are
    the lesion's GT mask on every frame (empty where the lesion has ended).

Preprocessing
    Exactly the segmenter's (:class:`autoprompt_seg.models.medsam2.FrameSource`): window
    (``settings.options["medsam2"]["window"]``, default lung window) and min-max over the
    clipped study (``medsam2.scaling``, as MedSAM2's CT script), uint8, 512 px bicubic,
    ImageNet normalisation; the encoder runs under bf16 autocast on CUDA as at inference.
    GT masks are resized to 512 px bilinearly and thresholded at 0.5.

Feature cache
    The image encoder (Hiera trunk + FPN neck) and the decoder's two high-resolution
    projections (``sam_mask_decoder.conv_s0/conv_s1``, which sam2 applies inside
    ``forward_image``) run once per needed slice; their outputs are written to
    ``RUN/features/`` (float16 by default, about 2 MB per slice, with the slice's 512-px
    label map) and read back through a bounded in-memory LRU (``feature_cache_mb``).
    The cache is keyed by a hash of those frozen weights and the window, so a resumed run
    encodes nothing again. Only one encoder batch of frames is ever on the device.

What is trained (everything else is frozen)
    * ``sam_mask_decoder`` (two-way transformer, upscaling, mask/IoU/object-score heads),
      except ``conv_s0``/``conv_s1``: their outputs are cached, so they are frozen with the
      encoder they belong to at inference;
    * ``memory_attention`` and ``memory_encoder`` (they carry the mask from slice to slice);
    * ``obj_ptr_proj`` and ``obj_ptr_tpos_proj`` (object pointers that memory attention
      reads), and the memory parameters ``maskmem_tpos_enc``, ``no_mem_embed``,
      ``no_mem_pos_enc``, ``no_obj_ptr``, ``no_obj_embed_spatial``.
    Frozen: ``image_encoder`` (eval mode, never run during steps), ``sam_prompt_encoder``
    (MedSAM's recipe: box embeddings are generic), ``mask_downsample`` (used only for mask
    prompts, which this training never gives).

Forward (per clip, as ``SAM2Train.forward_tracking``)
    Frame 0 gets the box and no memory; frame t > 0 is conditioned through
    ``_prepare_memory_conditioned_features`` on the memories of the earlier frames (up to
    ``num_maskmem``) and their object pointers, with gradients through all of it. Memories
    are encoded from the model's own predicted masks (sigmoid, as sam2 trains); with
    ``teacher_forcing`` = p, a clip uses the GT masks for its memories with probability p.

Loss (sam2 / MedSAM2 ``MultiStepMultiMasksAndIous``, weights ``loss_weights``)
    Per frame: 20 x sigmoid focal (alpha 0.25, gamma 2) + 1 x Dice on the 512-px mask
    logits, taking the best of the multimask outputs; 1 x L1 between the IoU head and the
    masks' true IoU (all outputs); these three only on frames where the lesion is present;
    + 1 x BCE of the object-score logit against presence. Averaged over frames and clips.

Optimisation
    AdamW at ``cfg.lr`` (MedSAM2 used 5e-5), weight decay ``weight_decay`` (0.1) on
    tensors of 2+ dimensions and none on biases and norms, cosine decay to lr / 10 over the
    run, gradient clipping at ``grad_clip`` (0.1), ``cfg.batch_size`` clips per step (clips
    of equal length run as one batch), bf16 autocast on CUDA, float32 on the CPU.
    ``cfg.steps_per_epoch`` = 0 means one pass over all anchors per epoch. The order of
    clips and their jitter come from ``(cfg.seed, epoch)``, so a resumed epoch is the same
    epoch. State is saved after every epoch; a crash resumes from the last saved epoch.

Training mode
    The model runs in sam2's training mode, as ``SAM2Train`` does: memory attention's
    dropout (0.1) is on, and the inference-only steps are off (dynamic multimask selection
    by stability, binarised masks for the memory of prompted frames). Where the object
    score says "absent" on a frame that has the lesion, sam2 sets that frame's mask logits
    to -1024: its focal term is then large but carries no gradient (only the object-score
    loss teaches), so logged losses can spike early in a run.

Output
    ``RUN/medsam2_trained.pt``: ``{"model": state_dict}`` of the whole model, MedSAM2's own
    format, which the ``medsam2`` segmenter loads strictly (``options["medsam2"]["checkpoint"]``); its
    ``.train.json`` record makes the segmenter report it as trained here.

Options (``cfg.options``)
    ``clip_len`` (8), ``box`` ("slice"), ``jitter_shift`` (0.1), ``jitter_scale`` (0.1),
    ``teacher_forcing`` (0.0), ``grad_clip`` (0.1), ``weight_decay`` (0.1),
    ``loss_weights`` ({"focal": 20, "dice": 1, "iou": 1, "class": 1}), ``feature_dtype``
    ("float16"), ``feature_cache_mb`` (1024), ``allow_random_base`` (false).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..config import Settings
from ..errors import BackendError, ConfigError, InputError
from ..models.medsam2.training import (
    DEFAULT_LOSS_WEIGHTS,
    FROZEN_IN_DECODER,
    TRAINABLE_MODULES,
    TRAINABLE_PARAMS,
    Anchor,
    CaseIndex,
    Lesion,
    MedSAM2TrainOptions,
    anchors_of,
    clip_forward,
    clip_frames,
    configure_trainable,
    frozen_encoder_hash,
    labels_to_512,
    lesions_of,
    load_base,
    needed_slices,
    param_groups,
    slice_box,
)
from .core import (
    LOSS_FILE,
    RunDir,
    TrainConfig,
    TrainProgress,
    TrainResult,
    atomic_write_bytes,
    atomic_write_text,
    run_device,
    seed_everything,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "medsam2_trained.pt"
FEATURES_DIR = "features"
FEATURE_FORMAT = 1
MIN_LR_RATIO = 0.1
def _case_key(case_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", case_id)[:60]
    return f"{safe}-{hashlib.sha1(case_id.encode('utf-8')).hexdigest()[:8]}"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    atomic_write_bytes(path, lambda f: torch.save(obj, f))


@dataclass
class StoreStats:
    encoded: int = 0  # slices encoded in this process
    encoder_s: float = 0.0
    disk_reads: int = 0
    hits: int = 0
    peak_bytes: int = 0


class FeatureStore:
    """Cached encoder outputs and 512-px label maps per (case, slice), on disk under
    ``root`` with a bounded in-memory LRU in front (module docstring)."""

    def __init__(self, root: Path, model: Any, device: str, window: tuple[float, float],
                 dtype: str = "float16", capacity_bytes: int = 1 << 30,
                 bf16: bool = True, encoder_batch: int = 0,
                 scaling: str = "study-minmax") -> None:
        import torch

        from ..models import medsam2 as M

        self.root = Path(root)
        self.model = model
        self.device = device
        self.window = (float(window[0]), float(window[1]))
        self.scaling = scaling
        self.dtype = getattr(torch, dtype)
        self.capacity_bytes = int(capacity_bytes)
        self.bf16 = bf16
        self.batch = encoder_batch or M.default_encoder_batch(device)
        self.size = int(model.image_size)
        self.stats = StoreStats()
        self._lru: OrderedDict[tuple[str, int], tuple[list[torch.Tensor], torch.Tensor]] = \
            OrderedDict()
        self._bytes: dict[tuple[str, int], int] = {}
        self.bytes = 0
        self.pos_enc: list[torch.Tensor] | None = None
        meta = {"format": FEATURE_FORMAT, "encoder": frozen_encoder_hash(model),
                "window": list(self.window), "scaling": self.scaling, "dtype": dtype,
                "image_size": self.size,
                "autocast_bf16": M.use_bf16(device, bf16)}
        self.root.mkdir(parents=True, exist_ok=True)
        mp = self.root / "meta.json"
        if mp.is_file():
            try:
                old = json.loads(mp.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                old = None
            if old != meta:
                log.info("%s: cached features are for other weights or settings; "
                         "clearing them", self.root)
                shutil.rmtree(self.root)
                self.root.mkdir(parents=True)
        atomic_write_text(mp, json.dumps(meta, indent=2) + "\n")
        pp = self.root / "pos_enc.pt"
        if pp.is_file():
            self.pos_enc = torch.load(pp, map_location="cpu", weights_only=True)

    # ------------------------------------------------------------------ preparation
    def prepare(self, case: Any, clip_len: int) -> CaseIndex:
        """Index one case and cache the features of every slice its clips visit. A case
        whose index and slice files are all present is not loaded again."""
        from ..datasets import load_case

        key = _case_key(case.case_id)
        cdir = self.root / key
        ip = cdir / "index.json"
        if ip.is_file():
            try:
                idx = CaseIndex.from_dict(json.loads(ip.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
                idx = None
            if idx is not None and idx.case_id == case.case_id and idx.clip_len == clip_len \
                    and self.pos_enc is not None \
                    and all((cdir / self._fname(z)).is_file() for z in idx.slices):
                return idx
        volume, mask = load_case(case)
        lab, n = lesions_of(mask)
        nz, h, w = mask.shape
        per_slice: dict[int, list[int]] = {}
        raw: list[tuple[int, dict[int, tuple[int, int, int, int]]]] = []
        for lb in range(1, n + 1):
            m = lab == lb
            zs = [int(z) for z in np.nonzero(m.any(axis=(1, 2)))[0]]
            boxes = {z: slice_box(m[z]) for z in zs}
            raw.append((lb, boxes))
            for z in zs:
                per_slice.setdefault(z, []).append(lb)
        all_z = sorted({z for _, b in raw for z in b})
        slices = needed_slices(all_z, nz, clip_len)
        cdir.mkdir(parents=True, exist_ok=True)
        from ..models import medsam2 as M

        frames = M.FrameSource(volume.array, self.window, self.scaling, self.size)
        nonempty: dict[int, set[int]] = {}
        todo = []
        for z in slices:
            lab512 = labels_to_512(lab[z], per_slice.get(z, []), self.size)
            nonempty[z] = {int(v) for v in np.unique(lab512) if v}
            if not (cdir / self._fname(z)).is_file() or self.pos_enc is None:
                todo.append((z, lab512))
        for i in range(0, len(todo), self.batch):
            self._encode(frames, cdir, todo[i:i + self.batch])
        lesions = []
        for lb, boxes in raw:
            ext = (min(b[0] for b in boxes.values()), max(b[1] for b in boxes.values()),
                   min(b[2] for b in boxes.values()), max(b[3] for b in boxes.values()))
            anchors = tuple(z for z in sorted(boxes) if lb in nonempty.get(z, set()))
            if len(anchors) < len(boxes):
                log.warning("case %s lesion %d: %d slice(s) vanish at %d px; not used as "
                            "clip starts", case.case_id, lb, len(boxes) - len(anchors),
                            self.size)
            lesions.append(Lesion(lb, boxes, ext, anchors))
        idx = CaseIndex(case.case_id, key, (nz, h, w), tuple(lesions), tuple(slices), clip_len)
        atomic_write_text(ip, json.dumps(idx.to_dict()) + "\n")
        return idx

    @staticmethod
    def _fname(z: int) -> str:
        return f"z{z:05d}.pt"

    def _encode(self, frames: Any, cdir: Path,
                items: Sequence[tuple[int, npt.NDArray[np.uint8]]]) -> None:
        import torch

        from ..models import medsam2 as M

        t0 = time.perf_counter()
        zs = [z for z, _ in items]
        x = torch.from_numpy(frames.frames(zs)).to(self.device)
        with torch.inference_mode(), M.autocast_context(self.device, self.bf16):
            out = self.model.forward_image(x)
        if self.pos_enc is None:
            self.pos_enc = [p[:1].detach().float().cpu().clone() for p in out["vision_pos_enc"]]
            _atomic_torch_save(self.pos_enc, self.root / "pos_enc.pt")
        for i, (z, lab512) in enumerate(items):
            feats = []
            for f in out["backbone_fpn"]:
                t = f[i:i + 1].detach().float().cpu()
                if self.dtype == torch.float16 and (not torch.isfinite(t).all()
                                                    or t.abs().max() > 6e4):
                    feats.append(t.clone())  # would overflow float16: keep float32
                else:
                    feats.append(t.to(self.dtype).clone())
            _atomic_torch_save({"fpn": feats, "labels": torch.from_numpy(lab512.copy())},
                               cdir / self._fname(z))
        self.stats.encoded += len(items)
        self.stats.encoder_s += time.perf_counter() - t0

    # ------------------------------------------------------------------ reading
    def load(self, key: str, z: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(backbone_fpn as three (1, C, H, W) tensors in the cache dtype, 512-px uint8
        label map) of one cached slice."""
        import torch

        k = (key, z)
        got = self._lru.get(k)
        if got is not None:
            self._lru.move_to_end(k)
            self.stats.hits += 1
            return got
        obj = torch.load(self.root / key / self._fname(z), map_location="cpu",
                         weights_only=True)
        got = (list(obj["fpn"]), obj["labels"])
        self.stats.disk_reads += 1
        n = sum(t.numel() * t.element_size() for t in got[0]) + got[1].numel()
        self._lru[k] = got
        self._bytes[k] = n
        self.bytes += n
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.bytes)
        while self.bytes > self.capacity_bytes and len(self._lru) > 1:
            old, _ = self._lru.popitem(last=False)
            self.bytes -= self._bytes.pop(old)
        return got


# --------------------------------------------------------------------------- training


def _epoch_order(n: int, count: int, seed: int, epoch: int) -> list[int]:
    """``count`` indices into ``n`` anchors: seeded permutations, repeated as needed."""
    rng = np.random.default_rng([seed, epoch, 0])
    out: list[int] = []
    while len(out) < count:
        out.extend(int(i) for i in rng.permutation(n))
    return out[:count]


RUN_FILE = "medsam2_run.json"


def _check_identity(run: RunDir, ident: Mapping[str, Any]) -> None:
    """Refuse to resume a run folder started from other base weights or another CT window
    (neither is part of ``TrainConfig``, so :class:`RunDir` cannot tell)."""
    p = run.path / RUN_FILE
    mine = json.loads(json.dumps(ident))
    if p.is_file():
        try:
            theirs = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            theirs = None
        if theirs is not None and theirs != mine:
            raise ConfigError(f"training folder {run.path} holds a medsam2 run from other base "
                              f"weights or another window ({theirs}); this one is {mine}: use "
                              f"another folder")
    atomic_write_text(p, json.dumps(mine, indent=2) + "\n")


def _truncate_log(run: RunDir, epochs_done: int) -> None:
    """Drop loss rows of epochs after the last saved state (a crashed epoch is redone)."""
    p = run.path / LOSS_FILE
    if not p.is_file():
        return
    rows = run.losses()
    keep = [r for r in rows if int(r.get("epoch", 0)) <= epochs_done]
    if len(keep) != len(rows):
        atomic_write_text(p, "".join(json.dumps(r, default=float) + "\n" for r in keep))


class _Batcher:
    """Builds the tensors of a batch of clips from the feature store."""

    def __init__(self, store: FeatureStore, indices: Sequence[CaseIndex],
                 opts: MedSAM2TrainOptions, device: str) -> None:
        self.store = store
        self.indices = indices
        self.opts = opts
        self.device = device

    def box(self, a: Anchor, rng: np.random.Generator) -> torch.Tensor:
        """The jittered box of the clip's first frame at 512 px, (x0, y0, x1, y1)."""
        from ..datasets.jitter import Jitter, jitter_box
        from ..models import medsam2 as M
        from ..types import Box3D

        idx = self.indices[a.case]
        les = next(x for x in idx.lesions if x.label == a.lesion)
        y0, y1, x0, x1 = les.boxes[a.z] if self.opts.box == "slice" else les.extent
        b = Box3D(z0=a.z, z1=a.z + 1, y0=y0, y1=y1, x0=x0, x1=x1, key_slice=a.z)
        b = jitter_box(b, idx.shape, Jitter(self.opts.jitter_shift, self.opts.jitter_scale),
                       rng)
        return M.box_to_model(b, idx.shape[1], idx.shape[2])

    def build(self, anchors: Sequence[Anchor], rng: np.random.Generator
              ) -> tuple[list[list[torch.Tensor]], list[torch.Tensor], dict[str, torch.Tensor],
                         torch.Tensor]:
        import torch

        clips = [clip_frames(a.z, a.step, self.indices[a.case].shape[0], self.opts.clip_len)
                 for a in anchors]
        n = len(clips[0])
        fpn: list[list[torch.Tensor]] = []
        targets: list[torch.Tensor] = []
        for t in range(n):
            levels: list[list[torch.Tensor]] = [[], [], []]
            tg = []
            for a, zs in zip(anchors, clips):
                feats, lab = self.store.load(self.indices[a.case].key, zs[t])
                for i, f in enumerate(feats):
                    levels[i].append(f)
                tg.append((lab == a.lesion)[None])
            fpn.append([torch.cat(lv).to(self.device, torch.float32) for lv in levels])
            targets.append(torch.stack(tg).to(self.device, torch.float32))
        boxes = torch.stack([self.box(a, rng) for a in anchors]).to(self.device)
        points = {"point_coords": boxes.view(-1, 2, 2),
                  "point_labels": torch.tensor([[2, 3]], dtype=torch.int32,
                                               device=self.device).repeat(len(anchors), 1)}
        teacher = torch.from_numpy(rng.random(len(anchors)) < self.opts.teacher_forcing
                                   ).to(self.device)
        return fpn, targets, points, teacher


def train(cfg: TrainConfig, cases: Sequence[Any], run: RunDir, *, settings: Settings,
          init_checkpoint: str | None, progress: TrainProgress | None) -> TrainResult:
    """Fine-tune MedSAM2 on ``cases`` into ``run`` (module docstring); resumes from the
    run's last saved epoch."""
    import torch

    from ..models import medsam2 as M

    opts = MedSAM2TrainOptions.from_options(cfg.options)
    device = run_device(cfg, settings)
    seg_opts = M.MedSAM2Options.from_settings(settings)
    bf16 = seg_opts.bf16
    if float(cfg.lr) > 1e-3:
        log.warning("medsam2 training at lr %g: far above MedSAM2's fine-tuning lr of 5e-5",
                    cfg.lr)
    if cfg.image_size != M.IMAGE_SIZE:
        log.warning("medsam2 trains at its fixed %d px; TrainConfig.image_size=%d is ignored",
                    M.IMAGE_SIZE, cfg.image_size)
    seed_everything(cfg.seed)
    model, base = load_base(init_checkpoint, settings, opts, cfg.seed)
    model = model.to(device)
    trained_names, frozen_names = configure_trainable(model)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("medsam2 training on %s: %d of %d parameters trained (%s)", device, n_train,
             n_all, ", ".join(TRAINABLE_MODULES + TRAINABLE_PARAMS))

    _check_identity(run, {"base_sha256": base.get("sha256", ""),
                          "window_level_width": list(seg_opts.window),
                          "scaling": seg_opts.scaling})
    t_prep = time.perf_counter()
    store = FeatureStore(run.path / FEATURES_DIR, model, device, seg_opts.window,
                         opts.feature_dtype, int(opts.feature_cache_mb * 2**20), bf16,
                         seg_opts.encoder_batch, seg_opts.scaling)
    indices: list[CaseIndex] = []
    skipped: list[str] = []
    for c in sorted(cases, key=lambda c: c.case_id):  # clip order must not depend on input order
        try:
            indices.append(store.prepare(c, opts.clip_len))
        except InputError as e:
            log.warning("medsam2 training: case %s skipped: %s", c.case_id, e)
            skipped.append(c.case_id)
    prep_s = time.perf_counter() - t_prep
    anchors = anchors_of(indices)
    if not anchors:
        raise InputError(f"medsam2 training: no usable tumour slice in the {len(cases)} "
                         f"case(s) given (skipped: {', '.join(skipped) or 'none'})")
    assert store.pos_enc is not None
    pos = [p.to(device) for p in store.pos_enc]
    per_epoch = cfg.steps_per_epoch or math.ceil(len(anchors) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    log.info("medsam2 training: %d case(s), %d clip anchors, %d step(s) per epoch of %d "
             "clip(s), %d epoch(s); %d slice(s) encoded in %.1f s", len(indices),
             len(anchors), per_epoch, cfg.batch_size, cfg.epochs, store.stats.encoded, prep_s)

    opt = torch.optim.AdamW(param_groups(model, opts.weight_decay), lr=float(cfg.lr))

    def lr_factor(step: int) -> float:
        frac = min(step, total) / max(total, 1)
        return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    start = run.load_state(model, opt, sched)
    configure_trainable(model)  # (load_state leaves modes alone; be explicit)
    _truncate_log(run, start)
    batcher = _Batcher(store, indices, opts, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    t_train = time.perf_counter()
    steps_run = 0
    for epoch in range(start, cfg.epochs):
        order = _epoch_order(len(anchors), per_epoch * cfg.batch_size, cfg.seed, epoch)
        rng = np.random.default_rng([cfg.seed, epoch, 1])
        for s in range(per_epoch):
            batch = [anchors[i] for i in order[s * cfg.batch_size:(s + 1) * cfg.batch_size]]
            parts = _step(model, batcher, batch, rng, pos, opts, device, bf16)
            if not math.isfinite(parts["loss"]):
                raise BackendError(f"medsam2 training: the loss is {parts['loss']} at step "
                                   f"{epoch * per_epoch + s + 1} (epoch {epoch + 1}); lower "
                                   f"the learning rate (lr={cfg.lr}) or check the data")
            if opts.grad_clip > 0:
                gnorm = float(torch.nn.utils.clip_grad_norm_(trainable, opts.grad_clip))
            else:
                gnorm = float(torch.nn.utils.clip_grad_norm_(trainable, float("inf")))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            steps_run += 1
            step = epoch * per_epoch + s + 1
            run.log(epoch=epoch + 1, step=step, loss=parts["loss"],
                    **{k: parts[k] for k in DEFAULT_LOSS_WEIGHTS}, grad_norm=gnorm,
                    lr=sched.get_last_lr()[0], clips=len(batch))
            if progress is not None:
                progress(step, total)
        run.save_state(model, opt, epoch + 1, sched, base_sha256=base.get("sha256", ""))
    train_s = time.perf_counter() - t_train

    rows = [r for r in run.losses() if int(r.get("epoch", 0)) == cfg.epochs and "loss" in r]
    final_loss = float(np.mean([r["loss"] for r in rows])) if rows else float("nan")
    model.eval()
    sd = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    extra = {
        "base_checkpoint": base, "window_level_width": list(seg_opts.window),
        "scaling": seg_opts.scaling,
        "image_size": M.IMAGE_SIZE, "architecture": M.ARCHITECTURE,
        "trained_parameters": sorted({n.split(".", 1)[0] for n in trained_names}),
        "frozen_parameters": sorted({".".join(n.split(".")[:2])
                                     if n.startswith(FROZEN_IN_DECODER) else n.split(".", 1)[0]
                                     for n in frozen_names}),
        "n_trained_parameters": n_train, "clip_anchors": len(anchors),
        "steps_per_epoch": per_epoch, "skipped_cases": skipped, "device": device,
        "precision": "bf16 autocast" if M.use_bf16(device, bf16) else "float32",
        "timing": {"prep_s": round(prep_s, 3), "encoded_slices": store.stats.encoded,
                   "encoder_s": round(store.stats.encoder_s, 3), "train_s": round(train_s, 3),
                   "steps": steps_run,
                   "s_per_step": round(train_s / steps_run, 3) if steps_run else None},
        "options": {k: (dict(v) if isinstance(v, Mapping) else v)
                    for k, v in opts.__dict__.items()},
    }
    return run.finish({"model": sd}, CHECKPOINT_FILE, epochs=cfg.epochs,
                      final_loss=final_loss, extra=extra)


def _step(model: Any, batcher: _Batcher, batch: Sequence[Anchor], rng: np.random.Generator,
          pos: Sequence[torch.Tensor], opts: MedSAM2TrainOptions, device: str,
          bf16: bool) -> dict[str, float]:
    """Forward and backward over one batch of clips (clips of equal length together);
    returns the batch's mean losses."""
    from ..models import medsam2 as M

    groups: dict[int, list[Anchor]] = {}
    for a in batch:
        n = len(clip_frames(a.z, a.step, batcher.indices[a.case].shape[0], opts.clip_len))
        groups.setdefault(n, []).append(a)
    out: dict[str, float] = {}
    for _, group in sorted(groups.items()):
        fpn, targets, points, teacher = batcher.build(group, rng)
        with M.autocast_context(device, bf16):
            parts = clip_forward(model, fpn, pos, targets, points,
                                 teacher if opts.teacher_forcing > 0 else None,
                                 opts.loss_weights)
        share = len(group) / len(batch)
        (parts["loss"] * share).backward()
        for k, v in parts.items():
            out[k] = out.get(k, 0.0) + float(v.detach()) * share
    return out
