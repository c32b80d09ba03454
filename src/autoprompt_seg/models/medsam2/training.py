"""MedSAM2 fine-tuning, the model-level parts (the resumable run that uses them is
:mod:`autoprompt_seg.train.medsam2`, whose docstring describes the procedure): the trainer's
options (:class:`MedSAM2TrainOptions`), the lesion / clip-anchor index of a case, the masks
at 512 px, which modules are trained (:func:`configure_trainable`, :func:`param_groups`),
the frame losses, the clip forward pass (:func:`clip_forward`) and the base weights
(:func:`load_base`). torch and sam2 are imported lazily.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ...config import Settings
from ...errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

BOX_MODES = ("slice", "lesion")
FEATURE_DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_LOSS_WEIGHTS: Mapping[str, float] = {"focal": 20.0, "dice": 1.0, "iou": 1.0,
                                             "class": 1.0}
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


#: Sub-modules and parameters trained (see the module docstring for why).
TRAINABLE_MODULES = ("sam_mask_decoder", "memory_attention", "memory_encoder",
                     "obj_ptr_proj", "obj_ptr_tpos_proj")
TRAINABLE_PARAMS = ("maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr",
                    "no_obj_embed_spatial")
#: Frozen although inside a trained module: their outputs are cached with the encoder's.
FROZEN_IN_DECODER = ("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.")


# --------------------------------------------------------------------------- options


#: How :class:`MedSAM2TrainOptions` names its keys in errors (``train.medsam2.clip_len``).
OPTIONS_LABEL = "train.medsam2"


@dataclass(frozen=True)
class MedSAM2TrainOptions:
    """The trainer's knobs, ``TrainConfig.options`` (:mod:`autoprompt_seg.train.medsam2`),
    parsed by :func:`autoprompt_seg.options.parse_options` (unknown keys refused; errors
    name ``train.medsam2.<key>``); ranges and choices are checked in ``__post_init__``."""

    clip_len: int = field(default=8, metadata={
        "help": "consecutive slices per training clip, 1-64"})
    box: str = field(default="slice", metadata={
        "help": "box prompt on the clip's first frame: the lesion's box on that slice "
                "(slice) or its box over all its slices (lesion)"})
    jitter_shift: float = field(default=0.1, metadata={
        "help": "box centre jitter, a fraction (0-0.99) of the box size"})
    jitter_scale: float = field(default=0.1, metadata={
        "help": "box size jitter, a fraction (0-0.99) of the box size"})
    teacher_forcing: float = field(default=0.0, metadata={
        "help": "share (0-1) of clips whose memory is built from the true masks"})
    grad_clip: float = field(default=0.1, metadata={
        "help": "gradient norm clip, 0-1e6; 0 = no clipping"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay, 0-10"})
    loss_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS), metadata={
            "help": "weights >= 0 of the focal, dice, iou and class losses; keys left out "
                    "keep their default (focal 20, dice 1, iou 1, class 1)"})
    feature_dtype: str = field(default="float16", metadata={
        "help": "dtype of the cached encoder features: float16, bfloat16 or float32"})
    feature_cache_mb: float = field(default=1024.0, metadata={
        "help": "MiB of encoder features kept in RAM (> 0; the rest stays on disk)"})
    allow_random_base: bool = field(default=False, metadata={
        "help": "train from random weights when the MedSAM2 base weights are missing"})

    def __post_init__(self) -> None:
        def bad(key: str, want: str) -> ConfigError:
            return ConfigError(f"Option '{OPTIONS_LABEL}.{key}' must be {want}; "
                               f"got {getattr(self, key)!r}")

        if not 1 <= self.clip_len <= 64:
            raise bad("clip_len", "an integer in [1, 64]")
        if self.box not in BOX_MODES:
            raise bad("box", f"one of {', '.join(BOX_MODES)}")
        for key, lo, hi in (("jitter_shift", 0.0, 0.99), ("jitter_scale", 0.0, 0.99),
                            ("teacher_forcing", 0.0, 1.0), ("grad_clip", 0.0, 1e6),
                            ("weight_decay", 0.0, 10.0)):
            if not lo <= getattr(self, key) <= hi:
                raise bad(key, f"a number in [{lo}, {hi}]")
        if not 0.0 < self.feature_cache_mb <= 1e7:
            raise bad("feature_cache_mb", "a number in (0.0, 10000000.0]")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise bad("feature_dtype", f"one of {', '.join(FEATURE_DTYPES)}")
        w = self.loss_weights
        if set(w) - set(DEFAULT_LOSS_WEIGHTS) or any(v < 0 for v in w.values()):
            raise bad("loss_weights", f"a table mapping some of "
                                      f"{', '.join(DEFAULT_LOSS_WEIGHTS)} to numbers >= 0")
        merged = {**DEFAULT_LOSS_WEIGHTS, **w}
        if not any(merged.values()):
            raise bad("loss_weights", "a table with a positive weight")
        object.__setattr__(self, "loss_weights", merged)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> MedSAM2TrainOptions:
        """``TrainConfig.options`` checked by the shared parser, then ``__post_init__``."""
        from ...options import parse_options

        return parse_options(cls, options, OPTIONS_LABEL)


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


def slice_box(m: npt.NDArray[np.bool_]) -> tuple[int, int, int, int]:
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




def _uint8_dtype() -> Any:
    import torch

    return torch.uint8


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

    from .. import medsam2 as M

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
    s = settings.with_(options={**settings.options, "medsam2": {
        **dict(settings.options.get("medsam2") or {}), "checkpoint": str(init_checkpoint)}})
    choice = M.resolve_checkpoint(s, M.MedSAM2Options.from_settings(s))
    model = M.load_model(choice.path, "cpu")
    if not choice.trained:
        log.warning("medsam2 training starts from %s, which is not a known trained release "
                    "(sha256 %s)", choice.path, choice.sha256[:12])
    return model, {"name": choice.name, "file": str(choice.path), "sha256": choice.sha256,
                   "trained": choice.trained}
