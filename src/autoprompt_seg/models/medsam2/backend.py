"""MedSAM2 segmenter: a detector's box prompts MedSAM2 on the key slice, and the mask is
tracked through the slices in both directions.

MedSAM2 (bowang-lab, 2025) is sam2.1 Hiera-tiny at 512 px; its checkpoints are
``{"model": state_dict}`` and load ``strict=True`` into PyPI ``sam2`` 1.1.0 built from the
config shipped with this package (``configs/sam2.1_hiera_t512.yaml``). Everything that
imports ``sam2``, Hydra or OmegaConf lives in this package and is imported lazily (``sam2``
initialises Hydra on import), so importing this module has no side effect.

How a study is segmented (see ``docs/medsam2.md``):

1. **Preprocessing, once per study, only for visited slices.** As MedSAM2's CT script
   (``medsam2_infer_3D_CT.py``) and MedSAM's ``pre_CT_MR.py``: the study is clipped to the
   window (default: lung window, level -600 HU, width 1500 HU;
   ``settings.options["medsam2"]["window"] = (level, width)``), then min-max scaled over the
   *clipped study* (its own minimum and maximum, e.g. -1024..150 HU for air at -1024) to
   0..255 and truncated to ``uint8`` (``medsam2.scaling = "study-minmax"``, the default;
   ``"window"`` scales by the nominal window bounds instead). Each slice is then resized to
   512x512 (PIL bicubic, identity for 512x512 slices), divided by 255 and normalised with
   the ImageNet mean/std, in float32 (the encoder then runs under bf16 autocast on CUDA).
   The ``uint8`` slice is kept; the float frame only while it is encoded.
2. **Image features, once per slice per study.** A memory-bounded LRU cache
   (:class:`FeatureCache`) holds the encoder's outputs; every lesion and both directions
   share it. The encoder runs in batches of ``medsam2.encoder_batch`` slices along the
   direction of travel (default 1 on the CPU, where batching does not pay, 8 on CUDA).
3. **Prompt.** The box ``[x0, x1) x [y0, y1)`` on the key slice becomes the sam2 box
   ``(x0, y0, x1 - 1, y1 - 1)`` in pixel-index coordinates (as MedSAM2 builds boxes from
   masks), mapped to 512 px.
4. **Propagation** forward and in reverse from the key slice, each direction in a fresh
   tracking state (as MedSAM2's reference: box, forward, reset, box, reverse). A direction
   stops after ``medsam2.empty_stop`` consecutive empty slices (default 3) or beyond the
   box's z-extent plus ``medsam2.z_margin_mm`` (default 10 mm, at least 2 slices).
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

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ...backends import ProgressFn
from ...config import Settings
from ...errors import BackendError, ConfigError, UnavailableError
from ...types import BackendInfo, Box3D, LesionMask, Volume
from .checkpoint import load_model, resolve_checkpoint, sam2_version
from .options import (
    MEDSAM2,
    MIN_Z_MARGIN_SLICES,
    SAM2,
    MedSAM2Options,
    Variant,
    autocast_context,
    default_encoder_batch,
    select_device,
    use_bf16,
)
from .preprocess import FeatureCache, FrameSource, box_pixels

if TYPE_CHECKING:  # pragma: no cover
    pass


log = logging.getLogger(__name__)

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
    """Registry factory: ``.models.medsam2:create``."""
    try:
        import sam2  # noqa: F401  (initialises Hydra's global state: only here, lazily)
    except ImportError as e:  # pragma: no cover - registry checks find_spec first
        raise UnavailableError(f"the medsam2 segmenter needs the Python package sam2==1.1.0: "
                               f"pip install sam2==1.1.0 ({e})") from e
    return MedSAM2Segmenter(settings)


def create_sam2(settings: Settings) -> MedSAM2Segmenter:
    """Registry factory: ``.models.medsam2:create_sam2`` (vanilla SAM 2.1 Hiera-tiny)."""
    try:
        import sam2  # noqa: F401
    except ImportError as e:  # pragma: no cover - registry checks find_spec first
        raise UnavailableError(f"the sam2 segmenter needs the Python package sam2==1.1.0: "
                               f"pip install sam2==1.1.0 ({e})") from e
    return MedSAM2Segmenter(settings, SAM2)

