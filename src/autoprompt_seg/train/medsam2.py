"""MedSAM2 training: the mask decoder and the memory modules on short clips of
consecutive CT slices, with the image encoder frozen (the recipe of the paper's group,
after sam2's ``SAM2Train`` and MedSAM2's fine-tuning config).

Entry point: :func:`train`, called by :func:`autoprompt_seg.train.core.train_model` for
``TrainConfig(model="medsam2")``.

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
    (:func:`autoprompt_seg.segment.medsam2.box_to_model`) and given to the model as two
    corner points with labels 2 and 3 (what ``add_new_points_or_box`` builds). Targets are
    the lesion's GT mask on every frame (empty where the lesion has ended).

Preprocessing
    Exactly the segmenter's (:class:`autoprompt_seg.segment.medsam2.FrameSource`): window
    (``settings.options["medsam2_window"]``, default lung window) and min-max over the
    clipped study (``medsam2_scaling``, as MedSAM2's CT script), uint8, 512 px bicubic,
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
    format, which the ``medsam2`` segmenter loads strictly (``medsam2_checkpoint``); its
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
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..config import Settings, resolve_device
from ..errors import BackendError, ConfigError, InputError
from .core import (
    LOSS_FILE,
    RunDir,
    TrainConfig,
    TrainProgress,
    TrainResult,
    atomic_write_bytes,
    atomic_write_text,
    seed_everything,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "medsam2_trained.pt"
FEATURES_DIR = "features"
FEATURE_FORMAT = 1
BOX_MODES = ("slice", "lesion")
FEATURE_DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_LOSS_WEIGHTS: Mapping[str, float] = {"focal": 20.0, "dice": 1.0, "iou": 1.0,
                                             "class": 1.0}
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
MIN_LR_RATIO = 0.1

#: Sub-modules and parameters trained (see the module docstring for why).
TRAINABLE_MODULES = ("sam_mask_decoder", "memory_attention", "memory_encoder",
                     "obj_ptr_proj", "obj_ptr_tpos_proj")
TRAINABLE_PARAMS = ("maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr",
                    "no_obj_embed_spatial")
#: Frozen although inside a trained module: their outputs are cached with the encoder's.
FROZEN_IN_DECODER = ("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.")


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class MedSAM2TrainOptions:
    """The trainer's knobs, from ``TrainConfig.options`` (validated; unknown keys refused)."""

    clip_len: int = 8
    box: str = "slice"
    jitter_shift: float = 0.1
    jitter_scale: float = 0.1
    teacher_forcing: float = 0.0
    grad_clip: float = 0.1
    weight_decay: float = 0.1
    loss_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    feature_dtype: str = "float16"
    feature_cache_mb: float = 1024.0
    allow_random_base: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MedSAM2TrainOptions:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"Option {unknown[0]!r} is not a medsam2 training option "
                              f"(known: {', '.join(sorted(known))}); got {options[unknown[0]]!r}")
        kw: dict[str, Any] = {}
        o = options

        def num(key: str, lo: float, hi: float, lo_open: bool = False) -> float:
            v = o[key]
            ok = isinstance(v, (int, float, np.number)) and not isinstance(v, bool) \
                and math.isfinite(float(v)) and (float(v) > lo if lo_open else float(v) >= lo) \
                and float(v) <= hi
            if not ok:
                rng = f"{'(' if lo_open else '['}{lo}, {hi}]"
                raise ConfigError(f"Option {key!r} must be a number in {rng}; got {v!r}")
            return float(v)

        if "clip_len" in o:
            v = o["clip_len"]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= 64:
                raise ConfigError(f"Option 'clip_len' must be an integer in [1, 64]; got {v!r}")
            kw["clip_len"] = int(v)
        if "box" in o:
            if o["box"] not in BOX_MODES:
                raise ConfigError(f"Option 'box' must be one of {', '.join(BOX_MODES)}; "
                                  f"got {o['box']!r}")
            kw["box"] = o["box"]
        for key in ("jitter_shift", "jitter_scale"):
            if key in o:
                kw[key] = num(key, 0.0, 0.99)
        if "teacher_forcing" in o:
            kw["teacher_forcing"] = num("teacher_forcing", 0.0, 1.0)
        if "grad_clip" in o:
            kw["grad_clip"] = num("grad_clip", 0.0, 1e6)  # 0 = no clipping
        if "weight_decay" in o:
            kw["weight_decay"] = num("weight_decay", 0.0, 10.0)
        if "feature_cache_mb" in o:
            kw["feature_cache_mb"] = num("feature_cache_mb", 0.0, 1e7, lo_open=True)
        if "feature_dtype" in o:
            if o["feature_dtype"] not in FEATURE_DTYPES:
                raise ConfigError(f"Option 'feature_dtype' must be one of "
                                  f"{', '.join(FEATURE_DTYPES)}; got {o['feature_dtype']!r}")
            kw["feature_dtype"] = o["feature_dtype"]
        if "allow_random_base" in o:
            if not isinstance(o["allow_random_base"], bool):
                raise ConfigError(f"Option 'allow_random_base' must be true or false; got "
                                  f"{o['allow_random_base']!r}")
            kw["allow_random_base"] = o["allow_random_base"]
        if "loss_weights" in o:
            w = o["loss_weights"]
            if not isinstance(w, Mapping) or set(w) - set(DEFAULT_LOSS_WEIGHTS):
                raise ConfigError(f"Option 'loss_weights' must map some of "
                                  f"{', '.join(DEFAULT_LOSS_WEIGHTS)} to numbers >= 0; got {w!r}")
            merged = dict(DEFAULT_LOSS_WEIGHTS)
            for k, v in w.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) \
                        or not math.isfinite(float(v)) or v < 0:
                    raise ConfigError(f"Option 'loss_weights' must map some of "
                                      f"{', '.join(DEFAULT_LOSS_WEIGHTS)} to numbers >= 0; "
                                      f"got {w!r}")
                merged[k] = float(v)
            if not any(merged.values()):
                raise ConfigError(f"Option 'loss_weights' must have a positive weight; got {w!r}")
            kw["loss_weights"] = merged
        return cls(**kw)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Lesion:
    """One 3-D lesion of a case: its slices, per-slice boxes and in-plane extent, all in
    the case's pixel indices (``(y0, y1, x0, x1)``, half-open)."""

    label: int
    boxes: Mapping[int, tuple[int, int, int, int]]  # z -> slice box
    extent: tuple[int, int, int, int]
    anchors: tuple[int, ...]  # slices whose 512-px GT is non-empty

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "boxes": {str(z): list(b) for z, b in self.boxes.items()},
                "extent": list(self.extent), "anchors": list(self.anchors)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Lesion:
        return cls(int(d["label"]), {int(z): (int(b[0]), int(b[1]), int(b[2]), int(b[3]))
                                     for z, b in d["boxes"].items()},
                   (int(d["extent"][0]), int(d["extent"][1]), int(d["extent"][2]),
                    int(d["extent"][3])),
                   tuple(int(z) for z in d["anchors"]))


@dataclass(frozen=True)
class CaseIndex:
    """What training needs of one case once its features are cached."""

    case_id: str
    key: str  # folder name in the feature cache
    shape: tuple[int, int, int]
    lesions: tuple[Lesion, ...]
    slices: tuple[int, ...]  # slices with cached features
    clip_len: int

    def to_dict(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "key": self.key, "shape": list(self.shape),
                "lesions": [les.to_dict() for les in self.lesions],
                "slices": list(self.slices), "clip_len": self.clip_len}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CaseIndex:
        s = d["shape"]
        return cls(str(d["case_id"]), str(d["key"]), (int(s[0]), int(s[1]), int(s[2])),
                   tuple(Lesion.from_dict(x) for x in d["lesions"]),
                   tuple(int(z) for z in d["slices"]), int(d["clip_len"]))


@dataclass(frozen=True)
class Anchor:
    """A clip: case (index into the training set), lesion label, first slice, direction."""

    case: int
    lesion: int
    z: int
    step: int  # +1 or -1


def clip_frames(z: int, step: int, num_slices: int, clip_len: int) -> list[int]:
    """The clip's slices: ``z, z + step, ...`` (``clip_len`` of them), cut at the volume's
    ends."""
    if step not in (1, -1):
        raise ValueError(f"Argument 'step' must be 1 or -1; got {step!r}")
    if not 0 <= z < num_slices:
        raise ValueError(f"Argument 'z' must lie in [0, {num_slices}); got {z!r}")
    return [z + step * k for k in range(clip_len) if 0 <= z + step * k < num_slices]


def needed_slices(lesion_slices: Sequence[int], num_slices: int, clip_len: int) -> list[int]:
    """Every slice some clip of these anchors visits (both directions)."""
    out: set[int] = set()
    for z in lesion_slices:
        out.update(range(max(0, z - clip_len + 1), min(num_slices, z + clip_len)))
    return sorted(out)


def anchors_of(indices: Sequence[CaseIndex]) -> list[Anchor]:
    """All clips of a training set: every lesion, every anchor slice, both directions."""
    out = []
    for ci, idx in enumerate(indices):
        for les in idx.lesions:
            for z in les.anchors:
                for step in (1, -1):
                    out.append(Anchor(ci, les.label, z, step))
    return out


def lesions_of(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.int32], int]:
    """26-connected components of a GT mask (one lesion each, as the segmenter's
    ``largest_component`` and the benchmark's prompts see lesions)."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(np.asarray(mask, bool), structure=np.ones((3, 3, 3), bool))
    return lab.astype(np.int32), int(n)


def _slice_box(m: npt.NDArray[np.bool_]) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(m)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def labels_to_512(lab2d: npt.NDArray[np.integer[Any]], labels: Sequence[int],
                  size: int) -> npt.NDArray[np.uint8]:
    """A slice's lesion label map at ``size`` px: each lesion's mask resized bilinearly
    (``align_corners=False``, as sam2 maps masks between resolutions) and thresholded at
    0.5. Labels above 255 are refused."""
    import torch
    import torch.nn.functional as F

    out = np.zeros((size, size), np.uint8)
    for lb in labels:
        if lb > 255:
            raise InputError(f"too many lesions in one case for the 8-bit label cache "
                             f"(label {lb}); at most 255")
        m = lab2d == lb
        if not m.any():
            continue
        t = torch.from_numpy(m.astype(np.float32))[None, None]
        if t.shape[-2:] != (size, size):
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        out[(t[0, 0] > 0.5).numpy()] = lb
    return out


def _case_key(case_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", case_id)[:60]
    return f"{safe}-{hashlib.sha1(case_id.encode('utf-8')).hexdigest()[:8]}"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def frozen_encoder_hash(model: Any) -> str:
    """16 hex digits of the SHA-256 of the weights whose outputs are cached: the image
    encoder and the decoder's ``conv_s0``/``conv_s1``."""
    h = hashlib.sha256()
    sd = model.state_dict()
    for k in sorted(sd):
        if k.startswith("image_encoder.") or k.startswith(FROZEN_IN_DECODER):
            t = sd[k].detach().to("cpu").contiguous()
            h.update(k.encode() + b"\0" + str(tuple(t.shape)).encode() + str(t.dtype).encode())
            h.update(t.view(-1).view(dtype=_uint8_dtype()).numpy().tobytes())
    return h.hexdigest()[:16]


def _uint8_dtype() -> Any:
    import torch

    return torch.uint8


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

        from ..segment import medsam2 as M

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
        from ..bench.datasets import load_case

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
            boxes = {z: _slice_box(m[z]) for z in zs}
            raw.append((lb, boxes))
            for z in zs:
                per_slice.setdefault(z, []).append(lb)
        all_z = sorted({z for _, b in raw for z in b})
        slices = needed_slices(all_z, nz, clip_len)
        cdir.mkdir(parents=True, exist_ok=True)
        from ..segment import medsam2 as M

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

        from ..segment import medsam2 as M

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


# --------------------------------------------------------------------------- model


def configure_trainable(model: Any) -> tuple[list[str], list[str]]:
    """Freeze everything but the trained parts (module docstring); put the model in
    training mode with the image encoder and prompt encoder in eval mode. Returns the
    names of the trained and of the frozen parameters."""
    trained: list[str] = []
    frozen: list[str] = []
    for name, p in model.named_parameters():
        top = name.split(".", 1)[0]
        train = (top in TRAINABLE_MODULES and not name.startswith(FROZEN_IN_DECODER)) \
            or name in TRAINABLE_PARAMS
        p.requires_grad_(train)
        (trained if train else frozen).append(name)
    model.train()
    model.image_encoder.eval()
    model.sam_prompt_encoder.eval()
    return trained, frozen


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on trainable tensors of 2+ dimensions, none on biases/norms."""
    decay: list[Any] = []
    no_decay: list[Any] = []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def frame_losses(masks: torch.Tensor, ious: torch.Tensor, obj_logits: torch.Tensor,
                 target: torch.Tensor, weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """sam2's per-frame losses for a batch: each a (B,) tensor.

    ``masks`` (B, M, H, W) mask logits, ``ious`` (B, M) IoU predictions, ``obj_logits``
    (B, 1) object-score logits, ``target`` (B, 1, H, W) in {0, 1}. Focal and Dice are taken
    on the output with the lowest weighted focal + Dice; the IoU loss (L1) is over all
    outputs; these three count only where the target is non-empty. ``class`` is the BCE of
    the object score against presence.
    """
    import torch
    import torch.nn.functional as F

    masks = masks.float()
    t = target.float().expand_as(masks)
    prob = masks.sigmoid()
    ce = F.binary_cross_entropy_with_logits(masks, t, reduction="none")
    p_t = prob * t + (1 - prob) * (1 - t)
    alpha_t = FOCAL_ALPHA * t + (1 - FOCAL_ALPHA) * (1 - t)
    focal = (alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA).flatten(2).mean(-1)  # (B, M)
    pf, tf_ = prob.flatten(2), t.flatten(2)
    den = pf.sum(-1) + tf_.sum(-1)
    num = den - (pf - tf_).abs().sum(-1)
    dice = 1 - (num + 1) / (den + 1)  # (B, M)
    with torch.no_grad():
        pb, tb = masks.flatten(2) > 0, tf_ > 0
        inter = (pb & tb).sum(-1).float()
        union = (pb | tb).sum(-1).float().clamp(min=1.0)
        true_iou = inter / union
    iou = (ious.float() - true_iou).abs().mean(-1)  # (B,)
    combo = weights["focal"] * focal + weights["dice"] * dice
    best = combo.argmin(-1, keepdim=True)
    present = tf_[:, 0].amax(-1)  # (B,) 1 where the lesion is on this frame
    cls = F.binary_cross_entropy_with_logits(obj_logits.float()[:, 0], present,
                                             reduction="none")
    return {"focal": focal.gather(-1, best)[:, 0] * present,
            "dice": dice.gather(-1, best)[:, 0] * present,
            "iou": iou * present, "class": cls}


def clip_forward(model: Any, fpn: Sequence[Sequence[torch.Tensor]],
                 pos: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                 points: Mapping[str, torch.Tensor], teacher: torch.Tensor | None,
                 weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Track a batch of B equal-length clips as ``SAM2Train.forward_tracking`` does and
    return the losses (scalars, averaged over frames and clips; ``loss`` is their weighted
    sum).

    ``fpn[t]``: the three feature levels of frame t, each (B, C, H, W); ``pos``: the three
    position encodings (1, C, H, W); ``targets[t]``: (B, 1, 512, 512); ``points``: the box
    corners of frame 0 (``point_coords`` (B, 2, 2) at 512 px, ``point_labels`` (B, 2) =
    2, 3); ``teacher``: (B,) bool, clips whose memories are encoded from the GT masks.
    """
    import torch

    n = len(fpn)
    b = fpn[0][0].shape[0]
    output_dict: dict[str, dict[int, Any]] = {"cond_frame_outputs": {},
                                              "non_cond_frame_outputs": {}}
    sums: dict[str, torch.Tensor] = {}
    for t in range(n):
        backbone = {"backbone_fpn": list(fpn[t]),
                    "vision_pos_enc": [p.expand(b, -1, -1, -1) for p in pos]}
        _, feats, feat_pos, sizes = model._prepare_backbone_features(backbone)
        pts = dict(points) if t == 0 else None
        current, sam_out, _, _ = model._track_step(
            t, t == 0, feats, feat_pos, sizes, pts, None, output_dict, n, False, None)
        _, hr_multi, ious, low_res, high_res, obj_ptr, obj_logits = sam_out
        losses = frame_losses(hr_multi, ious, obj_logits, targets[t], weights)
        for k, v in losses.items():
            sums[k] = sums[k] + v.mean() if k in sums else v.mean()
        current["pred_masks"] = low_res
        current["pred_masks_high_res"] = high_res
        current["obj_ptr"] = obj_ptr
        mem_masks, mem_scores = high_res, obj_logits
        if teacher is not None and bool(teacher.any()) and t > 0:
            sel = teacher.view(-1, 1, 1, 1)
            gt_logits = targets[t].to(high_res.dtype) * 20.0 - 10.0
            mem_masks = torch.where(sel, gt_logits, high_res)
            gt_score = targets[t].flatten(1).amax(-1, keepdim=True).to(obj_logits.dtype) \
                * 20.0 - 10.0
            mem_scores = torch.where(teacher.view(-1, 1), gt_score, obj_logits)
        model._encode_memory_in_output(feats, sizes, pts, True, mem_masks, mem_scores, current)
        key = "cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"
        output_dict[key][t] = current
    out = {k: v / n for k, v in sums.items()}
    out["loss"] = sum((weights[k] * out[k] for k in DEFAULT_LOSS_WEIGHTS),
                      start=torch.zeros((), device=out["focal"].device))
    return out


# --------------------------------------------------------------------------- base weights


def load_base(init_checkpoint: str | os.PathLike[str] | None, settings: Settings,
              opts: MedSAM2TrainOptions, seed: int) -> tuple[Any, dict[str, Any]]:
    """The model to fine-tune (on the CPU) and a description of its weights."""
    import torch

    from ..segment import medsam2 as M

    if init_checkpoint is None:
        if not opts.allow_random_base:
            raise ConfigError(
                "Argument 'init_checkpoint' is required for medsam2 training: give a MedSAM2 "
                "checkpoint file or weights name (MedSAM2_latest for real runs; `autoseg "
                "weights fetch MedSAM2_latest`); got None. Random base weights are for tests "
                "only (options allow_random_base=true)")
        torch.manual_seed(seed)
        model = M.build_model("cpu")
        log.warning("medsam2 training from RANDOM base weights (allow_random_base): for "
                    "tests only")
        return model, {"name": "random", "sha256": "", "trained": False}
    s = settings.with_(options={**settings.options, "medsam2_checkpoint": str(init_checkpoint)})
    choice = M.resolve_checkpoint(s, M.MedSAM2Options.from_settings(s))
    model = M.load_model(choice.path, "cpu")
    if not choice.trained:
        log.warning("medsam2 training starts from %s, which is not a known trained release "
                    "(sha256 %s)", choice.path, choice.sha256[:12])
    return model, {"name": choice.name, "file": str(choice.path), "sha256": choice.sha256,
                   "trained": choice.trained}


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
        from ..bench.prompts import Jitter, jitter_box
        from ..segment import medsam2 as M
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

    from ..segment import medsam2 as M

    opts = MedSAM2TrainOptions.from_options(cfg.options)
    device = resolve_device(cfg.device if cfg.device != "auto" else settings.device)
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
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
    from ..segment import medsam2 as M

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
