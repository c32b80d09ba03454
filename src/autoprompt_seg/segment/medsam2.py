"""MedSAM2 segmenter: a detector's box prompts MedSAM2 on the key slice, and the mask is
tracked through the slices in both directions.

MedSAM2 (bowang-lab, 2025) is sam2.1 Hiera-tiny at 512 px; its checkpoints are
``{"model": state_dict}`` and load ``strict=True`` into PyPI ``sam2`` 1.1.0 built from the
config shipped with this package (``configs/sam2.1_hiera_t512.yaml``). Everything that
imports ``sam2``, Hydra or OmegaConf lives in this module and is imported lazily (``sam2``
initialises Hydra on import), so importing this module has no side effect.

How a study is segmented (see ``docs/medsam2.md``):

1. **Preprocessing, once per study, only for visited slices.** As MedSAM2's CT script
   (``medsam2_infer_3D_CT.py``) and MedSAM's ``pre_CT_MR.py``: the study is clipped to the
   window (default: lung window, level -600 HU, width 1500 HU;
   ``settings.options["medsam2_window"] = (level, width)``), then min-max scaled over the
   *clipped study* (its own minimum and maximum, e.g. -1024..150 HU for air at -1024) to
   0..255 and truncated to ``uint8`` (``medsam2_scaling = "study-minmax"``, the default;
   ``"window"`` scales by the nominal window bounds instead). Each slice is then resized to
   512x512 (PIL bicubic, identity for 512x512 slices), divided by 255 and normalised with
   the ImageNet mean/std, in float32 (the encoder then runs under bf16 autocast on CUDA).
   The ``uint8`` slice is kept; the float frame only while it is encoded.
2. **Image features, once per slice per study.** A memory-bounded LRU cache
   (:class:`FeatureCache`) holds the encoder's outputs; every lesion and both directions
   share it. The encoder runs in batches of ``medsam2_encoder_batch`` slices along the
   direction of travel (default 1 on the CPU, where batching does not pay, 8 on CUDA).
3. **Prompt.** The box ``[x0, x1) x [y0, y1)`` on the key slice becomes the sam2 box
   ``(x0, y0, x1 - 1, y1 - 1)`` in pixel-index coordinates (as MedSAM2 builds boxes from
   masks), mapped to 512 px.
4. **Propagation** forward and in reverse from the key slice, each direction in a fresh
   tracking state (as MedSAM2's reference: box, forward, reset, box, reverse). A direction
   stops after ``medsam2_empty_stop`` consecutive empty slices (default 3) or beyond the
   box's z-extent plus ``medsam2_z_margin_mm`` (default 10 mm, at least 2 slices).
5. **Join.** Per lesion, the union of both directions (max logit where both visited);
   where two lesions claim a voxel the higher logit wins; then each lesion keeps its largest
   26-connected component. Every lesion gets its own mask, never one union blob.

sam2's hole filling (its CUDA-only ``_C`` extension) is switched off (``fill_hole_area=0``)
on every device so that CPU and GPU follow the same procedure.

The ``sam2`` segmenter (:func:`create_sam2`) is the same procedure with vanilla SAM 2.1
Hiera-tiny (Meta, 1024 px, sam2's own ``configs/sam2.1/sam2.1_hiera_t.yaml``) and its
checkpoint ``sam2.1_hiera_tiny``; its options are the ``sam2_*`` keys (or a nested
``options["sam2"]`` mapping), with the same meanings and defaults.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..backends import ProgressFn
from ..config import Settings, resolve_device
from ..errors import BackendError, ConfigError, UnavailableError
from ..types import BackendInfo, Box3D, LesionMask, Volume
from ..weights import CheckpointChoice, register_checker, resolve

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

NAME = "medsam2"
CONFIG_NAME = "sam2.1_hiera_t512.yaml"
ARCHITECTURE = "sam2.1_hiera_tiny_512"
IMAGE_SIZE = 512
DEFAULT_CHECKPOINT = "MedSAM2_latest"
#: Lung window (level, width) in HU: the default CT window of the segmenter.
DEFAULT_WINDOW: tuple[float, float] = (-600.0, 1500.0)
#: How windowed HU become 0..255: "study-minmax" (MedSAM2's CT script: min-max over the
#: clipped study) or "window" (the nominal window bounds).
SCALINGS = ("study-minmax", "window")
DEFAULT_SCALING = "study-minmax"
DEFAULT_EMPTY_STOP = 3
DEFAULT_Z_MARGIN_MM = 10.0
MIN_Z_MARGIN_SLICES = 2
DEFAULT_CACHE_MB = 1024.0
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)
UNTRAINED_NOTE = ("untrained test checkpoint: its sha256 matches no known MedSAM2 release in "
                  "the weights manifest; no accuracy may be claimed for its masks")


@dataclass(frozen=True)
class Variant:
    """Which sam2-family model a segmenter runs: MedSAM2 (512 px) or vanilla SAM 2.1."""

    name: str  # backend name, and the prefix of its option keys
    architecture: str  # manifest architecture
    config_package: str  # package that holds the Hydra config
    config: str  # path of the config inside that package
    image_size: int
    default_checkpoint: str
    label: str

    @property
    def untrained_note(self) -> str:
        return (f"untrained test checkpoint: its sha256 matches no known {self.label} release "
                "in the weights manifest; no accuracy may be claimed for its masks")


MEDSAM2 = Variant(NAME, ARCHITECTURE, "autoprompt_seg", f"configs/{CONFIG_NAME}", IMAGE_SIZE,
                  DEFAULT_CHECKPOINT, "MedSAM2")
#: Vanilla SAM 2.1 Hiera-tiny at 1024 px, sam2's own config (its checkpoint has the same
#: keys and shapes as MedSAM2's: only the image size and the RoPE sizes differ).
SAM2 = Variant("sam2", "sam2.1_hiera_tiny", "sam2", "configs/sam2.1/sam2.1_hiera_t.yaml",
               1024, "sam2.1_hiera_tiny", "SAM 2.1")
VARIANTS = {v.name: v for v in (MEDSAM2, SAM2)}

#: Hydra overrides that ``sam2.build_sam.build_sam2_video_predictor`` applies by default
#: (``apply_postprocessing=True``), except hole filling, which needs sam2's CUDA ``_C``.
POSTPROCESSING_OVERRIDES: Mapping[str, Any] = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
    "model.binarize_mask_from_pts_for_mem_enc": True,
    "model.fill_hole_area": 0,
}

_BUILD_LOCK = threading.Lock()


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class MedSAM2Options:
    """The segmenter's knobs, read from ``settings.options`` (keys ``medsam2_*``)."""

    checkpoint: str = DEFAULT_CHECKPOINT  # manifest name or path of a checkpoint file
    window: tuple[float, float] = DEFAULT_WINDOW  # (level, width) HU
    scaling: str = DEFAULT_SCALING  # "study-minmax" (MedSAM2's script) | "window"
    empty_stop: int = DEFAULT_EMPTY_STOP  # k consecutive empty slices end a direction
    z_margin_mm: float = DEFAULT_Z_MARGIN_MM  # beyond the box's z-extent
    cache_mb: float = DEFAULT_CACHE_MB  # image-feature cache bound
    encoder_batch: int = 0  # 0 = auto (1 on the CPU, 8 on CUDA)
    bf16: bool = True  # bf16 autocast on CUDA (never on the CPU)

    @classmethod
    def from_settings(cls, settings: Settings, variant: Variant | None = None
                      ) -> MedSAM2Options:
        """Validate ``settings.options`` (keys ``<variant>_*``, default ``medsam2_*``; for
        another variant also a nested ``options["<variant>"]`` mapping); a bad value raises
        :class:`ConfigError` naming it."""
        variant = variant or MEDSAM2
        pre = variant.name
        o: dict[str, Any] = dict(settings.options)
        nested = o.get(pre) if pre != NAME else None
        if isinstance(nested, Mapping):
            for k, v in nested.items():
                o.setdefault(f"{pre}_{k}", v)
        kw: dict[str, Any] = {"checkpoint": variant.default_checkpoint}
        if f"{pre}_checkpoint" in o:
            v = o[f"{pre}_checkpoint"]
            if not isinstance(v, (str, Path)) or not str(v):
                raise ConfigError(f"Option '{pre}_checkpoint' must be a weights name or a "
                                  f"file path; got {v!r}")
            kw["checkpoint"] = str(v)
        if f"{pre}_window" in o:
            v = o[f"{pre}_window"]
            if isinstance(v, str):
                v = v.replace(",", " ").split()
            try:
                level, width = (float(x) for x in v)
            except (TypeError, ValueError):
                raise ConfigError(f"Option '{pre}_window' must be (level, width) in HU; "
                                  f"got {o[f'{pre}_window']!r}") from None
            if not (math.isfinite(level) and math.isfinite(width) and width > 0):
                raise ConfigError(f"Option '{pre}_window' must have a finite level and a "
                                  f"positive width; got {o[f'{pre}_window']!r}")
            kw["window"] = (level, width)
        if f"{pre}_scaling" in o:
            v = o[f"{pre}_scaling"]
            if v not in SCALINGS:
                raise ConfigError(f"Option '{pre}_scaling' must be one of "
                                  f"{', '.join(map(repr, SCALINGS))}; got {v!r}")
            kw["scaling"] = str(v)
        for key, attr, lo in ((f"{pre}_empty_stop", "empty_stop", 1),
                              (f"{pre}_encoder_batch", "encoder_batch", 0)):
            if key in o:
                v = o[key]
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                    raise ConfigError(f"Option {key!r} must be an integer >= {lo}; got {v!r}")
                kw[attr] = int(v)
        for key, attr, positive in ((f"{pre}_z_margin_mm", "z_margin_mm", False),
                                    (f"{pre}_cache_mb", "cache_mb", True)):
            if key in o:
                v = o[key]
                ok = isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                if not ok or not math.isfinite(float(v)) or (float(v) <= 0 if positive
                                                              else float(v) < 0):
                    raise ConfigError(f"Option {key!r} must be a {'positive' if positive else 'non-negative'} "
                                      f"number; got {v!r}")
                kw[attr] = float(v)
        if f"{pre}_bf16" in o:
            v = o[f"{pre}_bf16"]
            if not isinstance(v, bool):
                raise ConfigError(f"Option '{pre}_bf16' must be true or false; got {v!r}")
            kw["bf16"] = v
        return cls(**kw)


# --------------------------------------------------------------------------- device


def select_device(settings: Settings) -> str:
    """``settings.device`` (auto|cpu|cuda) -> "cpu" or "cuda" (see :func:`resolve_device`)."""
    return resolve_device(settings.device)


def use_bf16(device: str, bf16: bool = True) -> bool:
    """bf16 autocast is used on CUDA only (and only when asked for)."""
    return device == "cuda" and bf16


def autocast_context(device: str, bf16: bool = True) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast("cuda", bfloat16)`` on CUDA; a no-op on the CPU (float32)."""
    if not use_bf16(device, bf16):
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16)


def default_encoder_batch(device: str) -> int:
    """Measured on the 2-core CPU: batching the Hiera encoder does not pay (1); on CUDA 8."""
    return 8 if device == "cuda" else 1


# --------------------------------------------------------------------------- preprocessing


def window_bounds(window: tuple[float, float]) -> tuple[float, float]:
    """(level, width) -> (lower, upper) HU."""
    level, width = window
    return level - width / 2.0, level + width / 2.0


def intensity_range(hu: npt.NDArray[np.floating[Any]], window: tuple[float, float],
                    scaling: str = DEFAULT_SCALING) -> tuple[float, float]:
    """The HU values that become 0 and 255.

    ``"study-minmax"`` (MedSAM2's CT script): the minimum and maximum of the study clipped
    to the window, e.g. (-1024, 150) for a lung window on a CT whose air is -1024 HU.
    ``"window"``: the window's own bounds, e.g. (-1350, 150).
    """
    lo, hi = window_bounds(window)
    if scaling == "window":
        return lo, hi
    if scaling != "study-minmax":
        raise ValueError(f"Argument 'scaling' must be one of {SCALINGS}; got {scaling!r}")
    a = np.asarray(hu)
    if a.size == 0:
        raise ValueError("Argument 'hu' must not be empty")
    return (float(np.clip(np.float64(a.min()), lo, hi)),
            float(np.clip(np.float64(a.max()), lo, hi)))


def scale_uint8(hu: npt.NDArray[np.floating[Any]], window: tuple[float, float],
                value_range: tuple[float, float]) -> npt.NDArray[np.uint8]:
    """Clip HU to the window, map ``value_range`` to 0..255 and truncate to uint8, in
    float64 and in the order of MedSAM2's script: ``(x - min) / (max - min) * 255``.
    A constant study (max == min) gives zeros."""
    lo, hi = window_bounds(window)
    mn, mx = value_range
    x = np.clip(np.asarray(hu, dtype=np.float64), lo, hi) - mn
    if mx <= mn:
        return np.zeros(x.shape, dtype=np.uint8)
    return (x / (mx - mn) * 255.0).astype(np.uint8)


def window_uint8(hu: npt.NDArray[np.floating[Any]], window: tuple[float, float]
                 ) -> npt.NDArray[np.uint8]:
    """Window HU to 0..255 by the window's nominal bounds and truncate to uint8 (the
    ``"window"`` scaling), in float64."""
    return scale_uint8(hu, window, window_bounds(window))


def resize_uint8(u8: npt.NDArray[np.uint8], size: int = IMAGE_SIZE) -> npt.NDArray[np.uint8]:
    """Resize one slice to ``size`` x ``size`` with PIL bicubic (identity when it fits)."""
    if u8.shape == (size, size):
        return np.ascontiguousarray(u8)
    from PIL import Image

    return np.asarray(Image.fromarray(u8).resize((size, size), Image.Resampling.BICUBIC))


def normalize_frames(u8: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """(n, S, S) uint8 -> (n, 3, S, S) float32: /255 then ImageNet mean/std (in float64)."""
    x = u8.astype(np.float64)[:, None, :, :] / 255.0
    mean = np.asarray(IMG_MEAN, dtype=np.float64)[None, :, None, None]
    std = np.asarray(IMG_STD, dtype=np.float64)[None, :, None, None]
    return ((x - mean) / std).astype(np.float32)


class FrameSource:
    """The study's slices, windowed and resized lazily: each visited slice once.

    The intensity range (:func:`intensity_range`) is taken over the whole study once, so a
    slice's pixels do not depend on which slices are visited."""

    def __init__(self, hu: npt.NDArray[np.float32], window: tuple[float, float],
                 scaling: str = DEFAULT_SCALING, size: int = IMAGE_SIZE) -> None:
        if hu.ndim != 3:
            raise ValueError(f"Argument 'hu' must be 3-D (z, y, x); got shape {hu.shape}")
        self.hu = hu
        self.window = window
        self.scaling = scaling
        self.size = size
        self.value_range = intensity_range(hu, window, scaling)
        self._u8: dict[int, npt.NDArray[np.uint8]] = {}
        self.preprocessed = 0

    @property
    def num_frames(self) -> int:
        return int(self.hu.shape[0])

    def uint8(self, z: int) -> npt.NDArray[np.uint8]:
        """The scaled ``size`` x ``size`` ``uint8`` slice ``z`` (computed on first use)."""
        f = self._u8.get(z)
        if f is None:
            f = resize_uint8(scale_uint8(self.hu[z], self.window, self.value_range), self.size)
            self._u8[z] = f
            self.preprocessed += 1
        return f

    def frames(self, zs: Sequence[int]) -> npt.NDArray[np.float32]:
        """(len(zs), 3, 512, 512) float32 normalised frames."""
        return normalize_frames(np.stack([self.uint8(z) for z in zs]))


def box_pixels(box: Box3D) -> torch.Tensor:
    """The 2-D box on the key slice as sam2's ``(x0, y0, x1, y1)`` in pixel indices.

    ``Box3D`` is half-open, so the last pixel inside is ``x1 - 1`` (MedSAM2 builds its
    boxes from masks the same way: min and max pixel indices).
    """
    import torch

    return torch.tensor([box.x0, box.y0, box.x1 - 1, box.y1 - 1], dtype=torch.float32)


def box_to_model(box: Box3D, height: int, width: int, size: int = IMAGE_SIZE
                 ) -> torch.Tensor:
    """The box as the model sees it, at ``size`` px: ``(x / width, y / height) * size`` in
    float32, exactly as sam2's ``add_new_points_or_box(normalize_coords=True)`` maps it."""
    import torch

    b = box_pixels(box).reshape(2, 2) / torch.tensor([width, height])
    return (b * size).reshape(4)


# --------------------------------------------------------------------------- feature cache


@dataclass
class CacheStats:
    encoder_calls: int = 0  # slices encoded (a batch of n counts n)
    encoder_batches: int = 0
    hits: int = 0
    evictions: int = 0
    encoder_s: float = 0.0
    peak_bytes: int = 0


class FeatureCache:
    """Image-encoder outputs per slice, shared by every lesion and direction of a study.

    Bounded by ``capacity_bytes`` (least recently used slices go first; an evicted slice
    is re-encoded when visited again and counted again in ``stats.encoder_calls``). The
    position encodings are the same for every slice and are stored once.
    """

    def __init__(self, model: Any, frames: FrameSource, device: str, capacity_bytes: int,
                 batch: int = 1, bf16: bool = True) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"Argument 'capacity_bytes' must be positive; got {capacity_bytes}")
        if batch < 1:
            raise ValueError(f"Argument 'batch' must be >= 1; got {batch}")
        self.model = model
        self.frames = frames
        self.device = device
        self.capacity_bytes = capacity_bytes
        self.batch = batch
        self.bf16 = bf16
        self._feats: OrderedDict[int, list[torch.Tensor]] = OrderedDict()
        self._nbytes: dict[int, int] = {}
        self.bytes = 0
        self.pos_enc: list[torch.Tensor] | None = None
        self.stats = CacheStats()

    def __contains__(self, z: int) -> bool:
        return z in self._feats

    def __len__(self) -> int:
        return len(self._feats)

    def prefetch(self, zs: Sequence[int]) -> None:
        """Encode the slices of ``zs`` (in order) that are not cached, ``batch`` at a time."""
        todo = [z for z in dict.fromkeys(zs) if z not in self._feats]
        for i in range(0, len(todo), self.batch):
            self._encode(todo[i:i + self.batch])

    def get(self, z: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(backbone_fpn, vision_pos_enc) for slice ``z``, each a list of (1, C, H, W)."""
        if z in self._feats:
            self.stats.hits += 1
            self._feats.move_to_end(z)
        else:
            self._encode([z])
        assert self.pos_enc is not None
        return self._feats[z], self.pos_enc

    def _encode(self, zs: list[int]) -> None:
        import torch

        t0 = time.perf_counter()
        x = torch.from_numpy(self.frames.frames(zs)).to(self.device)
        with torch.inference_mode(), autocast_context(self.device, self.bf16):
            out = self.model.forward_image(x)
        if self.pos_enc is None:
            self.pos_enc = [p[:1].clone() for p in out["vision_pos_enc"]]
        for i, z in enumerate(zs):
            feats = [f[i:i + 1].clone() for f in out["backbone_fpn"]]
            n = sum(f.numel() * f.element_size() for f in feats)
            self._feats[z] = feats
            self._nbytes[z] = n
            self.bytes += n
        self.stats.encoder_calls += len(zs)
        self.stats.encoder_batches += 1
        self.stats.encoder_s += time.perf_counter() - t0
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.bytes)
        while self.bytes > self.capacity_bytes and len(self._feats) > len(zs):
            old, _ = self._feats.popitem(last=False)
            self.bytes -= self._nbytes.pop(old)
            self.stats.evictions += 1


# --------------------------------------------------------------------------- model


def config_path(variant: Variant | None = None) -> Path:
    """The model config: the shipped 512-px Hiera-tiny config for MedSAM2, sam2's own
    ``sam2.1_hiera_t.yaml`` for vanilla SAM 2.1."""
    v = variant or MEDSAM2
    return Path(str(resources.files(v.config_package).joinpath(v.config)))


_PREDICTOR_CLASS: type | None = None


def predictor_class() -> type:
    """The in-memory subclass of sam2's legacy video predictor (created on first use)."""
    global _PREDICTOR_CLASS
    if _PREDICTOR_CLASS is not None:
        return _PREDICTOR_CLASS
    from collections import OrderedDict as _OD

    import torch
    from sam2.sam2_video_predictor_legacy import SAM2VideoPredictor

    class InMemoryVideoPredictor(SAM2VideoPredictor):  # type: ignore[misc,valid-type]
        """Legacy sam2 video predictor fed from memory: frames come from a
        :class:`FeatureCache` (no JPEG folder, no per-state image tensor)."""

        def init_state_from_cache(self, cache: FeatureCache, video_height: int,
                                  video_width: int) -> dict[str, Any]:
            """A tracking state over ``cache.frames`` (same keys as ``init_state``)."""
            dev = torch.device(cache.device)
            return {
                "images": None, "feature_cache": cache,
                "num_frames": cache.frames.num_frames,
                "offload_video_to_cpu": False, "offload_state_to_cpu": False,
                "video_height": video_height, "video_width": video_width,
                "device": dev, "storage_device": dev,
                "point_inputs_per_obj": {}, "mask_inputs_per_obj": {},
                "cached_features": {}, "constants": {},
                "obj_id_to_idx": _OD(), "obj_idx_to_id": _OD(), "obj_ids": [],
                "output_dict": {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                "output_dict_per_obj": {}, "temp_output_dict_per_obj": {},
                "consolidated_frame_inds": {"cond_frame_outputs": set(),
                                            "non_cond_frame_outputs": set()},
                "tracking_has_started": False, "frames_already_tracked": {},
            }

        def _get_image_feature(self, inference_state: dict[str, Any], frame_idx: int,
                               batch_size: int) -> tuple[Any, ...]:
            cache: FeatureCache = inference_state["feature_cache"]
            fpn, pos = cache.get(frame_idx)
            backbone_out = {
                "backbone_fpn": [f.expand(batch_size, -1, -1, -1) for f in fpn],
                "vision_pos_enc": [p.expand(batch_size, -1, -1, -1) for p in pos],
            }
            features = self._prepare_backbone_features(backbone_out)
            return (None,) + tuple(features)

        @torch.inference_mode()
        def track(self, inference_state: dict[str, Any], start: int, reverse: bool,
                  last: int, empty_stop: int) -> Iterator[tuple[int, torch.Tensor]]:
            """Propagate one object from its prompt on ``start`` towards ``last``
            (inclusive), yielding ``(slice, logits at video resolution (H, W))``; stops
            after ``empty_stop`` consecutive empty slices. Same per-frame steps as
            ``propagate_in_video``."""
            self.propagate_in_video_preflight(inference_state)
            output_dict = inference_state["output_dict"]
            step = -1 if reverse else 1
            empty = 0
            for frame_idx in range(start, last + step, step):
                if frame_idx in output_dict["cond_frame_outputs"]:
                    storage_key = "cond_frame_outputs"
                    current_out = output_dict[storage_key][frame_idx]
                    pred_masks = current_out["pred_masks"]
                else:
                    storage_key = "non_cond_frame_outputs"
                    cache: FeatureCache = inference_state["feature_cache"]
                    if frame_idx not in cache:
                        cache.prefetch(list(range(frame_idx, last + step, step))[:cache.batch])
                    current_out, pred_masks = self._run_single_frame_inference(
                        inference_state=inference_state, output_dict=output_dict,
                        frame_idx=frame_idx, batch_size=1, is_init_cond_frame=False,
                        point_inputs=None, mask_inputs=None, reverse=reverse,
                        run_mem_encoder=True)
                    output_dict[storage_key][frame_idx] = current_out
                self._add_output_per_object(inference_state, frame_idx, current_out,
                                            storage_key)
                inference_state["frames_already_tracked"][frame_idx] = {"reverse": reverse}
                _, video_res = self._get_orig_video_res_output(inference_state, pred_masks)
                logits = video_res[0, 0].float()
                yield frame_idx, logits
                empty = 0 if bool((logits > 0).any()) else empty + 1
                if frame_idx != start and empty >= empty_stop:
                    break

    _PREDICTOR_CLASS = InMemoryVideoPredictor
    return InMemoryVideoPredictor


def build_model(device: str = "cpu", predictor: type | None = None,
                variant: Variant | None = None) -> Any:
    """The Hiera-tiny video predictor (512 px for MedSAM2, 1024 px for ``variant=SAM2``)
    with random weights, in eval mode.

    ``predictor`` defaults to :func:`predictor_class`; the reference procedure of the tests
    passes sam2's stock legacy predictor. Hydra's global state is not touched (the config
    is read with OmegaConf and instantiated directly).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cls = predictor or predictor_class()
    cfg = OmegaConf.load(config_path(variant))
    for key, value in POSTPROCESSING_OVERRIDES.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    cfg.model._target_ = "sam2.sam2_video_predictor_legacy.SAM2VideoPredictor"
    with _BUILD_LOCK:
        # Hydra builds the sub-modules; the predictor class itself is ours (it is created
        # at run time, so Hydra could not locate it by name).
        parts = instantiate(cfg.model, _recursive_=True, _partial_=True)
        model = cls(*parts.args, **parts.keywords)
    return model.to(device).eval()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a MedSAM2 checkpoint file's state dict (``weights_only``: no pickled code).

    Raises :class:`UnavailableError` for a missing, truncated or corrupt file and
    :class:`ConfigError` for a file that is not ``{"model": state_dict}``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UnavailableError(f"checkpoint {str(path)!r}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        raise UnavailableError(f"checkpoint {str(path)!r} is truncated or corrupt and cannot be "
                               f"read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if not isinstance(obj, dict) or "model" not in obj:
        found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(f"checkpoint {str(path)!r} is not in sam2's checkpoint format: expected a dict "
                          f"with the key 'model' (a state dict); found {found}")
    sd = obj["model"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"checkpoint {str(path)!r}: 'model' must be a state dict of tensors; "
                          f"got {type(sd).__name__}")
    return dict(sd)


def check_fits(model: Any, state_dict: Mapping[str, Any], path: Path,
               variant: Variant | None = None) -> None:
    """Compare keys and shapes with the model; a mismatch raises :class:`ConfigError`
    that names the file and the first differences."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape)
              != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {'; '.join(shapes[:2])})")
        v = variant or MEDSAM2
        raise ConfigError(f"checkpoint {str(path)!r} does not fit the {v.architecture} "
                          f"architecture ({v.label}, sam2.1 Hiera-tiny at {v.image_size} px): "
                          f"{'; '.join(parts)}")


def load_model(path: Path, device: str = "cpu", predictor: type | None = None,
               variant: Variant | None = None) -> Any:
    """Build the model and load ``path`` into it with ``strict=True``."""
    v = variant or MEDSAM2
    sd = read_checkpoint(path)
    model = build_model("cpu", predictor, v)
    check_fits(model, sd, path, v)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"checkpoint {str(path)!r} does not load strictly into the "
                          f"{v.architecture} architecture: {str(e)[:300]}") from e
    return model.to(device).eval()


def check_checkpoint(path: Path, variant: Variant | None = None) -> None:
    """Prove that ``path`` loads strictly into the variant's architecture (MedSAM2 by
    default; used by weights add)."""
    if Path(path).is_dir():
        raise ConfigError(f"weights {str(path)!r} is a folder; a sam2 checkpoint is one "
                          f".pt file")
    load_model(Path(path), "cpu", variant=variant)


def check_medsam2_file(path: Path) -> None:
    """The weights checker of MedSAM2's architecture (:func:`check_checkpoint`)."""
    check_checkpoint(path, MEDSAM2)


def check_sam2_file(path: Path) -> None:
    """The weights checker of plain SAM2.1 Hiera-tiny (:func:`check_checkpoint`)."""
    check_checkpoint(path, SAM2)


register_checker(MEDSAM2.architecture, check_medsam2_file)
register_checker(SAM2.architecture, check_sam2_file)


def sam2_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sam2")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------- checkpoint choice


def resolve_checkpoint(settings: Settings, options: MedSAM2Options,
                       variant: Variant | None = None) -> CheckpointChoice:
    """Find the checkpoint: a file path, or a manifest name installed in the weights folder.

    Its provenance comes from :func:`autoprompt_seg.weights.resolve`: a pinned release, an
    official download (hash not pinned) or a user pin count as trained; else a valid
    training record of a run of this model beside the file (trained here, never reported
    as a release); else it is an untrained test checkpoint.
    """
    v = variant or MEDSAM2
    return resolve(v.architecture, options.checkpoint, settings.weights_dir, model=v.name,
                   option=f"{v.name}_checkpoint", label=v.label, record_model=v.name)


# --------------------------------------------------------------------------- segmenter


@dataclass
class LesionLogits:
    """One lesion's tracking output: per slice with a positive pixel, the (y0, y1, x0, x1)
    box of its positive pixels and the logits inside it; ``visited`` lists every slice
    tracked (in both directions, empty ones included)."""

    visited: set[int] = field(default_factory=set)
    slices: dict[int, tuple[tuple[int, int, int, int], npt.NDArray[np.float32]]] = field(
        default_factory=dict)

    def add(self, z: int, logits: npt.NDArray[np.float32]) -> None:
        self.visited.add(z)
        pos = logits > 0
        if not pos.any():
            return
        ys, xs = np.nonzero(pos)
        bb = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
        old = self.slices.get(z)
        if old is not None:  # both directions visited z: keep the larger logit
            (oy0, oy1, ox0, ox1), _ = old
            bb = (min(bb[0], oy0), max(bb[1], oy1), min(bb[2], ox0), max(bb[3], ox1))
            full = np.full(logits.shape, -np.inf, dtype=np.float32)
            full[oy0:oy1, ox0:ox1] = old[1]
            logits = np.maximum(logits, full)
        self.slices[z] = (bb, np.ascontiguousarray(logits[bb[0]:bb[1], bb[2]:bb[3]]))


@dataclass
class RunStats:
    """What one ``segment`` call cost (exposed as ``MedSAM2Segmenter.last_stats``)."""

    encoder_calls: int = 0
    visited: int = 0  # (lesion, direction, slice) tracking steps
    distinct_slices: int = 0
    preprocessed: int = 0
    evictions: int = 0
    cache_peak_mb: float = 0.0
    encoder_s: float = 0.0
    wall_s: float = 0.0
    per_lesion: list[dict[str, Any]] = field(default_factory=list)


class MedSAM2Segmenter:
    """The ``medsam2`` segmenter, and with ``variant=SAM2`` the ``sam2`` one (see the
    module docstring)."""

    def __init__(self, settings: Settings, variant: Variant | None = None) -> None:
        self.variant = variant or MEDSAM2
        self.settings = settings
        self.options = MedSAM2Options.from_settings(settings, self.variant)
        self.device = select_device(settings)
        if settings.threads > 0:
            import torch

            torch.set_num_threads(settings.threads)
        self.checkpoint = resolve_checkpoint(settings, self.options, self.variant)
        self.model = load_model(self.checkpoint.path, self.device, variant=self.variant)
        self.encoder_batch = self.options.encoder_batch or default_encoder_batch(self.device)
        self.last_stats = RunStats()
        self.last_logits: list[LesionLogits] = []
        self.last_value_range: tuple[float, float] | None = None
        if not self.checkpoint.trained:
            log.warning("%s: %s (%s, sha256 %s)", self.variant.name,
                        self.variant.untrained_note, self.checkpoint.path,
                        self.checkpoint.sha256[:12])

    def info(self) -> BackendInfo:
        c = self.checkpoint
        v = self.variant
        details: dict[str, Any] = {
            "config": Path(v.config).name, "architecture": v.architecture,
            "image_size": v.image_size, "device": self.device,
            "precision": "bf16 autocast" if use_bf16(self.device, self.options.bf16)
            else "float32",
            "checkpoint_file": c.path.name, "window_level_width": list(self.options.window),
            "scaling": self.options.scaling,
            "empty_stop": self.options.empty_stop, "z_margin_mm": self.options.z_margin_mm,
            "sam2_version": sam2_version(),
            "provenance_state": c.state,
        }
        if self.last_value_range is not None:
            details["scaling_range_hu"] = [round(x, 3) for x in self.last_value_range]
        if not c.trained:
            details["note"] = v.untrained_note
            details["provenance"] = "untrained test checkpoint"
        else:
            details["provenance"] = c.provenance
        if c.training is not None:
            details["training"] = {k: c.training.get(k) for k in (
                "config_hash", "data_hash", "n_cases", "epochs", "final_loss", "created")}
            base = c.training.get("base_checkpoint")
            if isinstance(base, Mapping):
                details["training"]["base_checkpoint"] = base.get("name")
        return BackendInfo(name=v.name, kind="segmenter", version=f"sam2 {sam2_version()}",
                           family="Artificial Intelligence", checkpoint=c.name,
                           checkpoint_sha256=c.sha256, trained=c.trained, details=details)

    def z_margin_slices(self, spacing_z: float) -> int:
        return max(MIN_Z_MARGIN_SLICES, math.ceil(self.options.z_margin_mm / spacing_z - 1e-9))

    def segment(self, volume: Volume, boxes: Sequence[Box3D],
                progress: ProgressFn | None = None) -> list[LesionMask]:
        """One mask per box, in order (see the module docstring for the procedure)."""
        import torch

        t0 = time.perf_counter()
        for i, b in enumerate(boxes):
            if not b.fits(volume.shape):
                raise ConfigError(f"Argument 'boxes[{i}]' {b.to_dict()} lies outside the "
                                  f"volume {volume.shape}")
        nz, h, w = volume.shape
        frames = FrameSource(volume.array, self.options.window, self.options.scaling,
                             self.variant.image_size)
        self.last_value_range = frames.value_range
        cache = FeatureCache(self.model, frames, self.device,
                             int(self.options.cache_mb * 1024 * 1024), self.encoder_batch,
                             self.options.bf16)
        margin = self.z_margin_slices(volume.spacing[0])
        plans = [(b, max(0, b.z0 - margin), min(nz - 1, b.z1 - 1 + margin)) for b in boxes]
        total = sum(hi - lo + 2 for _, lo, hi in plans)
        done = 0
        stats = RunStats()
        per: list[LesionLogits] = []
        try:
            with torch.inference_mode(), autocast_context(self.device, self.options.bf16):
                for b, lo, hi in plans:
                    acc = LesionLogits()
                    visited = {"forward": 0, "reverse": 0}
                    for reverse in (False, True):
                        state = self.model.init_state_from_cache(cache, h, w)
                        self.model.add_new_points_or_box(
                            state, frame_idx=b.key_slice, obj_id=1,
                            box=box_pixels(b), normalize_coords=True)
                        last = lo if reverse else hi
                        for z, logits in self.model.track(state, b.key_slice, reverse, last,
                                                          self.options.empty_stop):
                            acc.add(z, logits.cpu().numpy())
                            visited["reverse" if reverse else "forward"] += 1
                            done += 1
                            if progress is not None:
                                progress(min(done, total), total)
                        del state
                    stats.visited += visited["forward"] + visited["reverse"]
                    stats.per_lesion.append({"key_slice": b.key_slice, "z_plan": [lo, hi],
                                             **visited})
                    per.append(acc)
        except (ConfigError, UnavailableError):
            raise
        except RuntimeError as e:
            raise BackendError(f"{self.variant.name} failed on {self.device}: {e}") from e
        masks = self._join(per, boxes, volume.shape)
        stats.encoder_calls = cache.stats.encoder_calls
        stats.distinct_slices = frames.preprocessed
        stats.preprocessed = frames.preprocessed
        stats.evictions = cache.stats.evictions
        stats.cache_peak_mb = cache.stats.peak_bytes / 2**20
        stats.encoder_s = cache.stats.encoder_s
        stats.wall_s = time.perf_counter() - t0
        self.last_stats = stats
        self.last_logits = per
        log.info("%s: %d lesion(s), %d tracking steps, %d encoder calls, %.1f s",
                 self.variant.name, len(boxes), stats.visited, stats.encoder_calls, stats.wall_s)
        return masks

    @staticmethod
    def _join(per: Sequence[LesionLogits], boxes: Sequence[Box3D],
              shape: tuple[int, int, int]) -> list[LesionMask]:
        """Resolve voxels claimed by several lesions (higher logit wins), then keep each
        lesion's largest connected component."""
        claims: dict[int, list[int]] = {}
        for i, acc in enumerate(per):
            for z in acc.slices:
                claims.setdefault(z, []).append(i)
        # per lesion, per slice: boolean crop after overlap resolution
        kept: list[dict[int, tuple[tuple[int, int, int, int], npt.NDArray[np.bool_]]]] = [
            {} for _ in per]
        for z, owners in claims.items():
            if len(owners) == 1:
                i = owners[0]
                bb, lg = per[i].slices[z]
                kept[i][z] = (bb, lg > 0)
                continue
            full = np.full((len(owners),) + shape[1:], -np.inf, dtype=np.float32)
            for j, i in enumerate(owners):
                (y0, y1, x0, x1), lg = per[i].slices[z]
                full[j, y0:y1, x0:x1] = lg
            best = np.argmax(full, axis=0)
            for j, i in enumerate(owners):
                bb, _ = per[i].slices[z]
                y0, y1, x0, x1 = bb
                m = (full[j, y0:y1, x0:x1] > 0) & (best[y0:y1, x0:x1] == j)
                kept[i][z] = (bb, m)
        out = []
        for i, b in enumerate(boxes):
            out.append(_assemble(kept[i], b, shape))
        return out


def _assemble(slices: Mapping[int, tuple[tuple[int, int, int, int], npt.NDArray[np.bool_]]],
              box: Box3D, shape: tuple[int, int, int]) -> LesionMask:
    """Stack per-slice crops into one cropped 3-D mask and keep its largest component."""
    slices = {z: v for z, v in slices.items() if v[1].any()}
    if not slices:
        return LesionMask(np.zeros((1, 1, 1), bool), (0, 0, 0), shape, box, box.score)
    zs = sorted(slices)
    y0 = min(v[0][0] for v in slices.values())
    y1 = max(v[0][1] for v in slices.values())
    x0 = min(v[0][2] for v in slices.values())
    x1 = max(v[0][3] for v in slices.values())
    crop = np.zeros((zs[-1] - zs[0] + 1, y1 - y0, x1 - x0), dtype=bool)
    for z, ((a, b_, c, d), m) in slices.items():
        crop[z - zs[0], a - y0:b_ - y0, c - x0:d - x0] = m
    crop = largest_component(crop)
    full_offset = (zs[0], y0, x0)
    nzi = np.nonzero(crop)
    lo = [int(a.min()) for a in nzi]
    hi = [int(a.max()) + 1 for a in nzi]
    crop = crop[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].copy()
    off = (full_offset[0] + lo[0], full_offset[1] + lo[1], full_offset[2] + lo[2])
    return LesionMask(crop, off, shape, box, box.score)


def largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The largest 26-connected component (MedSAM2's ``getLargestCC``)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(bool)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == int(np.argmax(counts))


def create(settings: Settings) -> MedSAM2Segmenter:
    """Registry factory: ``.segment.medsam2:create``."""
    try:
        import sam2  # noqa: F401  (initialises Hydra's global state: only here, lazily)
    except ImportError as e:  # pragma: no cover - registry checks find_spec first
        raise UnavailableError(f"the medsam2 segmenter needs the Python package sam2==1.1.0: "
                               f"pip install sam2==1.1.0 ({e})") from e
    return MedSAM2Segmenter(settings)


def create_sam2(settings: Settings) -> MedSAM2Segmenter:
    """Registry factory: ``.segment.medsam2:create_sam2`` (vanilla SAM 2.1 Hiera-tiny)."""
    try:
        import sam2  # noqa: F401
    except ImportError as e:  # pragma: no cover - registry checks find_spec first
        raise UnavailableError(f"the sam2 segmenter needs the Python package sam2==1.1.0: "
                               f"pip install sam2==1.1.0 ({e})") from e
    return MedSAM2Segmenter(settings, SAM2)

