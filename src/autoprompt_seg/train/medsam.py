"""MedSAM fine-tuning with MedSAM's recipe: only the mask decoder learns.

The image encoder and the prompt encoder are frozen; the mask decoder is trained on
tumour-positive slices with jittered ground-truth boxes, loss Dice + BCE, AdamW. Because the
encoder is frozen, each training slice's image embedding is computed **once** (before the
first epoch) and stored; epochs then only run the prompt encoder and the decoder.

* **items** -- every lesion (26-connected component of a case's GT) on every slice where
  it has at least ``min_slice_pixels`` pixels (MedSAM drops 2-D objects under 10 pixels)
  is one item: the slice, that lesion's 2-D mask and its box (other lesions on the slice
  are background for this item, as in MedSAM's one-label-per-sample training);
  ``max_slices_per_lesion`` keeps that many evenly spaced slices per lesion (0 = all).
  Cases are loaded one at a time (:func:`~.data.load_training_set`; a bad case is logged
  and skipped), so only one volume is in memory at once.
* **pixels** -- exactly the ``medsam`` segmenter's inference path
  (:mod:`autoprompt_seg.models.medsam`): the CT window to ``uint8``, then ``preprocess``
  (``"medsam"``: MedSAM's 1024x1024 [0, 1] input; ``"sam"``: ``SamPredictor``'s), the image
  encoder under bf16 autocast on CUDA, embeddings kept in float32.
* **embedding cache** -- one ``.npy`` (256x64x64 float32, 4 MiB) per distinct slice, named
  by a hash of the encoder's weights, the preprocessing and the slice's windowed pixels, in
  ``<run>/embeddings/`` or in the folder ``embedding_cache`` (shared between runs: nested
  K-shot subsets then encode each slice once). While training, up to ``embedding_ram_mb``
  of them stay in memory; the rest are read from disk per step.
* **boxes** -- the item's box ``(x_min, y_min, x_max, y_max)`` (pixel indices) mapped to the
  1024-px model frame as at inference, then, per draw, optionally scaled about its centre
  by a factor in ``[1 - box_scale, 1 + box_scale]`` (default 0: off) and each side moved
  outward by a random 0..``box_shift`` px (default 20: MedSAM's ``bbox_shift``), clipped to
  the image.
* **loss** -- the decoder's single-mask logits upsampled to the slice's size (bilinear; in
  ``"sam"`` mode ``postprocess_masks``), MONAI ``DiceLoss(sigmoid=True, squared_pred=True)``
  + ``BCEWithLogitsLoss`` per item (MedSAM's pair), averaged over the batch. MedSAM computes
  it at 1024 px; here it is at the slice's own resolution, where the masks are used.
* **optimiser** -- AdamW on the mask decoder's parameters at ``cfg.lr`` with
  ``weight_decay`` (default 0.01, MedSAM's). MedSAM used lr 1e-4; the shared default
  ``cfg.lr`` (5e-3, for the CNNs) is much larger, so set ``lr`` for MedSAM runs.
* **epochs** -- ``cfg.steps_per_epoch`` steps of ``cfg.batch_size`` items, or (0) one pass
  over the items in a random order; each epoch's order and box jitter depend only on
  ``(cfg.seed, epoch)``, so a resumed run ends with the same weights as an uninterrupted
  one (same device).

Start weights: ``init_checkpoint`` (the zero-shot ``medsam_vit_b.pth``, or any SAM ViT-B
state dict). Without it training is refused (:class:`ConfigError`) unless
``allow_random_base`` is set (tests only: a random encoder).

State: ``state.pt`` holds the decoder, the optimiser and the RNGs after each epoch, plus a
fingerprint of the base encoder; resuming with another base is refused. The result,
``medsam_finetuned.pth``, is the full SAM ViT-B state dict in MedSAM's format (the frozen
base with the trained decoder), loadable by the ``medsam`` segmenter
(``Settings.options["medsam"]["checkpoint"]``), with its training record, which also holds
``preprocess`` and ``window`` so that the segmenter uses the same pixels.

Loss log rows: ``{"kind": "step", "epoch", "step", "loss"}`` per step and ``{"kind":
"epoch", "epoch", "step", "loss", "seconds"}`` per epoch.

``cfg.image_size`` does not apply: SAM's model frame is 1024 px, and the loss is computed at
each slice's own size.

``cfg.options`` (all optional): ``box_shift``, ``box_scale``, ``min_slice_pixels``,
``max_slices_per_lesion``, ``weight_decay``, ``preprocess``, ``window`` ((level, width) HU),
``encoder_batch``, ``bf16``, ``embedding_cache``, ``embedding_ram_mb``,
``allow_random_base``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..config import Settings
from ..datasets import Case
from ..errors import BackendError, ConfigError, InputError
from ..models import medsam as M
from ..models.medsam import embedding_key, encoder_fingerprint
from .core import (
    STATE_FILE,
    RunDir,
    TrainConfig,
    TrainProgress,
    TrainResult,
    run_device,
    seed_everything,
)
from .data import load_training_set

log = logging.getLogger(__name__)

FINAL_FILE = "medsam_finetuned.pth"
EMBED_DIR = "embeddings"
MEDSAM_LR = 1e-4


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class MedSAMTrainOptions:
    """``cfg.options`` of a MedSAM run (module docstring)."""

    box_shift: int = 20
    box_scale: float = 0.0
    min_slice_pixels: int = 10
    max_slices_per_lesion: int = 0
    weight_decay: float = 0.01
    preprocess: str = M.DEFAULT_PREPROCESS
    window: tuple[float, float] = M.DEFAULT_WINDOW
    encoder_batch: int = 0
    bf16: bool = True
    embedding_cache: str = ""
    embedding_ram_mb: float = 2048.0
    allow_random_base: bool = False

    @classmethod
    def from_mapping(cls, o: Mapping[str, Any]) -> MedSAMTrainOptions:
        """``cfg.options`` checked by :func:`autoprompt_seg.options.parse_options` (errors
        name ``train.medsam.<key>``), then the ranges."""
        from ..options import parse_options

        label = "train.medsam"
        raw: dict[str, Any] = {}
        for k, v in o.items():
            if isinstance(v, np.integer):
                v = int(v)
            elif isinstance(v, np.floating):
                v = float(v)
            elif k == "embedding_cache" and isinstance(v, os.PathLike):
                v = str(v)
            raw[k] = v
        if "preprocess" in raw:
            raw["preprocess"] = M.parse_preprocess(raw["preprocess"], f"{label}.preprocess")
        if "window" in raw:
            raw["window"] = M.parse_window(raw["window"], f"{label}.window")
        opts = parse_options(cls, raw, label)
        for key in ("box_shift", "min_slice_pixels", "max_slices_per_lesion", "encoder_batch"):
            if getattr(opts, key) < 0:
                raise ConfigError(f"Option '{label}.{key}' must be an integer >= 0; "
                                  f"got {getattr(opts, key)!r}")
        for key, hi in (("box_scale", 0.9), ("weight_decay", 10.0),
                        ("embedding_ram_mb", math.inf)):
            if not 0.0 <= getattr(opts, key) <= hi:
                raise ConfigError(f"Option '{label}.{key}' must be a number in [0, {hi}]; "
                                  f"got {getattr(opts, key)!r}")
        return opts


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class Item:
    """One training sample: a lesion on a slice."""

    case_id: str
    z: int
    embedding: str  # embedding key (file stem)
    box: tuple[int, int, int, int]  # (x_min, y_min, x_max, y_max) pixel indices
    crop: tuple[int, int, int, int]  # (y0, y1, x0, x1) of the mask crop
    mask: npt.NDArray[np.bool_]  # the lesion's pixels inside ``crop``
    input_size: tuple[int, int]
    original_size: tuple[int, int]

    def full_mask(self) -> npt.NDArray[np.float32]:
        out = np.zeros(self.original_size, dtype=np.float32)
        y0, y1, x0, x1 = self.crop
        out[y0:y1, x0:x1] = self.mask
        return out


def _lesion_slices(mask3d: npt.NDArray[np.bool_], min_pixels: int, max_per_lesion: int
                   ) -> list[tuple[int, npt.NDArray[np.bool_]]]:
    """(z, 2-D lesion mask) for every lesion and slice kept (module docstring)."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask3d, structure=np.ones((3, 3, 3), bool))
    out: list[tuple[int, npt.NDArray[np.bool_]]] = []
    for les in range(1, n + 1):
        region = lab == les
        counts = region.sum(axis=(1, 2))
        zs = [int(z) for z in np.flatnonzero(counts >= max(1, min_pixels))]
        if max_per_lesion and len(zs) > max_per_lesion:
            pick = np.linspace(0, len(zs) - 1, max_per_lesion).round().astype(int)
            zs = [zs[i] for i in sorted(set(pick.tolist()))]
        out += [(z, region[z]) for z in zs]
    return out


@dataclass
class PrepStats:
    slices: int = 0
    encoded: int = 0  # slices encoded in this session (the rest came from the cache)
    encoder_s: float = 0.0


def collect_items(cases: Sequence[Case], sam: Any, o: MedSAMTrainOptions, cache: Path,
                  fingerprint: str, device: str) -> tuple[list[Item], PrepStats]:
    """Load the cases one at a time, list the items and make sure every slice they use has
    its embedding in ``cache`` (encoding the missing ones in batches)."""
    import torch

    cache.mkdir(parents=True, exist_ok=True)
    batch = o.encoder_batch or M.default_encoder_batch(device)
    items: list[Item] = []
    stats = PrepStats()
    for case in cases:
        try:
            (tv,) = load_training_set([case])
        except InputError as e:
            log.warning("medsam training: case %s skipped (%s)", case.case_id, e)
            continue
        per_z: dict[int, list[npt.NDArray[np.bool_]]] = {}
        for z, m2 in _lesion_slices(tv.mask, o.min_slice_pixels, o.max_slices_per_lesion):
            per_z.setdefault(z, []).append(m2)
        todo: list[tuple[str, M.Prepared]] = []
        for z in sorted(per_z):
            u8 = M.window_uint8(tv.hu[z], o.window)
            key = embedding_key(fingerprint, o.preprocess, u8)
            original = (int(u8.shape[0]), int(u8.shape[1]))
            input_size = M.input_size_of(original, o.preprocess)
            stats.slices += 1
            if not (cache / f"{key}.npy").is_file():
                todo.append((key, M.prepare_slice(u8, o.preprocess)))
            for m2 in per_z[z]:
                ys, xs = np.nonzero(m2)
                crop = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
                items.append(Item(case.case_id, z, key,
                                  (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
                                  crop, m2[crop[0]:crop[1], crop[2]:crop[3]].copy(),
                                  input_size, original))
            if len(todo) >= batch:
                _encode(sam, todo, o, cache, device, stats)
                todo = []
        if todo:
            _encode(sam, todo, o, cache, device, stats)
        del tv
    if device == "cuda":
        torch.cuda.empty_cache()
    return items, stats


def _encode(sam: Any, todo: Sequence[tuple[str, M.Prepared]], o: MedSAMTrainOptions,
            cache: Path, device: str, stats: PrepStats) -> None:
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        x = M.encoder_input(sam, [p for _, p in todo], o.preprocess, device)
        with M.encoder_autocast(device, o.bf16):
            emb = sam.image_encoder(x)
        emb = emb.float().cpu().numpy()
    for (key, _), e in zip(todo, emb):
        M.save_embedding(cache / f"{key}.npy", e)
    stats.encoded += len(todo)
    stats.encoder_s += time.perf_counter() - t0


class EmbeddingStore:
    """Embeddings by key: read from the cache folder, kept in memory up to a budget."""

    def __init__(self, folder: Path, ram_bytes: int) -> None:
        self.folder = folder
        self.ram_bytes = ram_bytes
        self._mem: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> npt.NDArray[np.float32]:
        e = self._mem.get(key)
        if e is not None:
            return e
        p = self.folder / f"{key}.npy"
        try:
            e = np.load(p)
        except (OSError, ValueError) as err:
            raise BackendError(f"medsam training: cached embedding {p} is unreadable ({err}); "
                               f"delete it and rerun") from err
        if self._bytes + e.nbytes <= self.ram_bytes:
            self._mem[key] = e
            self._bytes += e.nbytes
        return e


# --------------------------------------------------------------------------- model


def base_model(cfg: TrainConfig, o: MedSAMTrainOptions, init_checkpoint: str | None
               ) -> tuple[Any, str, str]:
    """The start weights: (model, description, sha256 or "")."""
    from ..weights import sha256_file

    if init_checkpoint:
        p = Path(init_checkpoint).expanduser()
        sam = M.load_model(p, "cpu")
        return sam, str(p), sha256_file(p)
    if not o.allow_random_base:
        raise ConfigError("MedSAM fine-tuning needs a base checkpoint: pass init_checkpoint "
                          "(the zero-shot medsam_vit_b.pth, e.g. from `autoseg weights fetch "
                          "medsam_vit_b`); a random base is only allowed with the option "
                          "allow_random_base (tests)")
    import torch

    torch.manual_seed(cfg.seed)
    return M.build_model("cpu"), f"random SAM ViT-B (seed {cfg.seed})", ""


def jitter_box(box_model: npt.NDArray[np.float64], frame: tuple[int, int],
               o: MedSAMTrainOptions, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """MedSAM's box perturbation in the model frame (module docstring)."""
    x0, y0, x1, y1 = (float(v) for v in box_model)
    if o.box_scale > 0:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        sx, sy = rng.uniform(1 - o.box_scale, 1 + o.box_scale, size=2)
        x0, x1 = cx - (cx - x0) * sx, cx + (x1 - cx) * sx
        y0, y1 = cy - (cy - y0) * sy, cy + (y1 - cy) * sy
    s = rng.integers(0, o.box_shift + 1, size=4) if o.box_shift else np.zeros(4)
    h, w = frame
    return np.array([max(0.0, x0 - s[0]), max(0.0, y0 - s[1]), min(float(w), x1 + s[2]),
                     min(float(h), y1 + s[3])], dtype=np.float64)


def epoch_order(n_items: int, steps: int, batch: int, rng: np.random.Generator) -> list[int]:
    """``steps * batch`` item indices: concatenated random permutations of the items."""
    need = steps * batch
    out: list[int] = []
    while len(out) < need:
        out += rng.permutation(n_items).tolist()
    return out[:need]


def _check_state_base(run: RunDir, fingerprint: str) -> None:
    import torch

    p = run.path / STATE_FILE
    if not p.is_file():
        return
    st = torch.load(p, map_location="cpu", weights_only=False)
    theirs = st.get("base_encoder")
    if theirs is not None and theirs != fingerprint:
        raise ConfigError(f"training folder {run.path} holds a MedSAM run started from another "
                          f"base checkpoint (encoder {str(theirs)[:12]}, this one "
                          f"{fingerprint[:12]}): use another folder")


# --------------------------------------------------------------------------- training


def train(cfg: TrainConfig, cases: Sequence[Case], run: RunDir, *, settings: Settings,
          init_checkpoint: str | None = None, progress: TrainProgress | None = None
          ) -> TrainResult:
    """Fine-tune MedSAM's mask decoder on ``cases`` in ``run`` (module docstring)."""
    import torch
    from monai.losses import DiceLoss

    if cfg.model != "medsam":
        raise ConfigError(f"Argument 'cfg.model' must be 'medsam' for this trainer; got "
                          f"{cfg.model!r}")
    o = MedSAMTrainOptions.from_mapping(cfg.options)
    device = run_device(cfg, settings)
    if float(cfg.lr) > 1e-3:
        log.warning("medsam training at lr %g: MedSAM's recipe uses %g (AdamW)", cfg.lr,
                    MEDSAM_LR)
    t_session = time.perf_counter()
    seed_everything(cfg.seed)
    sam, base_desc, base_sha = base_model(cfg, o, init_checkpoint)
    fp = encoder_fingerprint(sam)
    _check_state_base(run, fp)
    sam = sam.to(device).eval()
    sam.image_encoder.requires_grad_(False)
    sam.prompt_encoder.requires_grad_(False)

    cache = Path(o.embedding_cache).expanduser() if o.embedding_cache else run.path / EMBED_DIR
    items, prep = collect_items(cases, sam, o, cache, fp, device)
    if not items:
        raise InputError(f"medsam training: no tumour slice with at least "
                         f"{o.min_slice_pixels} pixel(s) of one lesion in {len(cases)} case(s)")
    store = EmbeddingStore(cache, int(o.embedding_ram_mb * 2**20))
    steps = cfg.steps_per_epoch or max(1, math.ceil(len(items) / cfg.batch_size))
    total = steps * cfg.epochs

    dec = sam.mask_decoder
    opt = torch.optim.AdamW(dec.parameters(), lr=float(cfg.lr), weight_decay=o.weight_decay)
    first_epoch = run.load_state(dec, opt)
    seg_loss = DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")
    ce_loss = torch.nn.BCEWithLogitsLoss(reduction="mean")
    pe = sam.prompt_encoder.get_dense_pe().detach()
    log.info("medsam: %d item(s) on %d slice(s) (%d encoded now, %.1f s), %d step(s) x %d "
             "epoch(s), batch %d, on %s", len(items), prep.slices, prep.encoded,
             prep.encoder_s, steps, cfg.epochs, cfg.batch_size, device)

    last_epoch_losses: list[float] = []
    for epoch in range(first_epoch, cfg.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([int(cfg.seed), epoch])
        order = epoch_order(len(items), steps, cfg.batch_size, rng)
        dec.train()
        losses: list[float] = []
        for s in range(steps):
            batch = [items[i] for i in order[s * cfg.batch_size:(s + 1) * cfg.batch_size]]
            item_losses = []
            for it in batch:
                emb = torch.from_numpy(store.get(it.embedding)).to(device)[None]
                bm = M.boxes_to_model(np.array([it.box], np.float64), it.original_size,
                                      o.preprocess)[0]
                frame = it.input_size
                jb = jitter_box(bm, frame, o, rng)
                with torch.no_grad():
                    sparse, dense = sam.prompt_encoder(
                        points=None, boxes=torch.as_tensor(jb, dtype=torch.float,
                                                           device=device).reshape(1, 1, 4),
                        masks=None)
                low, _ = dec(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
                             dense_prompt_embeddings=dense, multimask_output=False)
                logits = M.upsample_logits(sam, low, o.preprocess, it.input_size,
                                           it.original_size)
                gt = torch.from_numpy(it.full_mask()).to(device)[None, None]
                item_losses.append(seg_loss(logits, gt) + ce_loss(logits, gt))
            loss = torch.stack(item_losses).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = run.checked_loss(loss, epoch, s)
            losses.append(value)
            step = epoch * steps + s + 1
            run.log(kind="step", epoch=epoch + 1, step=step, loss=value)
            if progress is not None:
                progress(step, total)
        secs = time.perf_counter() - t0
        run.log(kind="epoch", epoch=epoch + 1, step=(epoch + 1) * steps,
                loss=float(np.mean(losses)), seconds=round(secs, 3))
        run.save_state(dec, opt, epoch + 1, base_encoder=fp)
        last_epoch_losses = losses
        log.info("medsam epoch %d/%d: loss %.4f (%.1f s)", epoch + 1, cfg.epochs,
                 float(np.mean(losses)), secs)

    final_loss = run.final_loss(last_epoch_losses)
    sam.eval()
    sd = {k: v.detach().cpu() for k, v in sam.state_dict().items()}
    from ..weights import load_manifest, training_record

    known = {e.sha256.lower() for e in load_manifest().values() if e.sha256}
    base_trained = bool(base_sha) and (base_sha in known or (
        init_checkpoint is not None and training_record(init_checkpoint) is not None))
    extra = {"base_checkpoint": base_desc, "base_sha256": base_sha, "base_encoder": fp,
             "base_trained": base_trained,
             "preprocess": o.preprocess, "window": list(o.window), "trained": "mask_decoder",
             "trainable_params": int(sum(p.numel() for p in dec.parameters())),
             "items": len(items), "slices": prep.slices, "encoded_this_session": prep.encoded,
             "device": device,
             "steps_per_epoch": steps, "session_seconds": round(time.perf_counter() - t_session, 3)}
    return run.finish(sd, FINAL_FILE, epochs=cfg.epochs, final_loss=final_loss, extra=extra)
