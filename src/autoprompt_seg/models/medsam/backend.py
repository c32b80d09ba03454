"""MedSAM segmenter: 2-D MedSAM (SAM ViT-B, Ma et al., 2024) with one box per slice.

MedSAM's checkpoint ``medsam_vit_b.pth`` is a plain SAM ViT-B state dict, loaded
``strict=True`` into ``segment_anything.sam_model_registry["vit_b"]`` (MedSAM's own training
checkpoints, ``{"model": state_dict, "optimizer": ..., "epoch": ...}``, load too). Everything
that imports ``torch`` or ``segment_anything`` is imported lazily.

Options (``Settings.options["medsam"]``, a mapping; every key is optional):

``checkpoint``
    A weights name from the manifest installed in the weights folder (default
    ``medsam_vit_b``) or the path of a checkpoint file.
``window``
    ``(level, width)`` in HU. Default: the lung window ``(-600, 1500)``, the same as the
    ``medsam2`` segmenter, so that both models see the same CT contrast in the benchmark
    (lung tumours against lung parenchyma). MedSAM's own CT script (``pre_CT_MR.py``)
    defaults to the soft-tissue window ``(40, 400)``; set it here to follow that.
``preprocess``
    How a windowed slice becomes the encoder's input:

    * ``"medsam"`` (default): MedSAM's published inference (``MedSAM_Inference.py``), the
      procedure its weights were trained with: the ``uint8`` slice as 3 channels, resized to
      1024x1024 with ``skimage.transform.resize(order=3, preserve_range=True,
      anti_aliasing=True)`` and truncated to ``uint8``, min-max scaled to ``[0, 1]``, no
      mean/std normalisation, no padding; the box scaled by ``1024 / (W, H)``; the
      decoder's 256x256 logits through a sigmoid, bilinearly resized to the slice and
      thresholded at 0.5. (The resize runs on the 2-D slice and is then repeated over the
      3 channels: identical values, 25 times faster than resizing the 3-channel image.)
    * ``"sam"``: exactly ``segment_anything.SamPredictor``: ``ResizeLongestSide(1024)``,
      ``model.preprocess`` (pixel mean/std normalisation and padding), the box through
      ``apply_boxes``, ``model.postprocess_masks`` to the slice size and the threshold
      ``model.mask_threshold`` on the logits. MedSAM's authors point out that SAM's and
      MedSAM's preprocessing differ; this mode exists for SAM-style checkpoints and to prove
      equivalence with ``SamPredictor``.
    A checkpoint trained here records its ``preprocess`` and ``window``; they are the
    defaults when that checkpoint is used.
``encoder_batch``
    Slices per image-encoder call (default 1 on the CPU, 8 on CUDA).
``bf16``
    bf16 autocast for the image encoder on CUDA (default true; never on the CPU). The
    prompt encoder and mask decoder always run in float32.

How a study is segmented (:meth:`MedSAMSegmenter.segment_slices`): the slices that carry at
least one box are windowed and preprocessed, encoded in batches (each slice once, however
many lesions use it), and right after its batch is encoded every box on the slice goes
through the prompt encoder and the mask decoder (``multimask_output=False``), so no image
feature is kept longer than one batch. Per lesion, the masks of its boxes on a slice are
joined (their maximum score); where two lesions claim a pixel the higher score wins (logit
for ``sam``, probability for ``medsam``). A lesion's 3-D mask is the union of its slice
masks. :meth:`MedSAMSegmenter.segment` (automatic mode) turns each 3-D box into one 2-D box
with the same in-plane extent on every slice ``z0 .. z1 - 1``.

Boxes: ``Box3D`` is half-open, so the 2-D prompt is ``(x0, y0, x1 - 1, y1 - 1)`` in pixel
indices, as MedSAM builds boxes from masks (minimum and maximum pixel index).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ...backends import ProgressFn
from ...config import Settings, resolve_device
from ...errors import BackendError, ConfigError, UnavailableError
from ...types import BackendInfo, Box3D, LesionMask, Volume
from .checkpoint import (
    embedding_key,
    encoder_fingerprint,
    load_model,
    resolve_checkpoint,
    segment_anything_version,
)
from .options import (
    ARCHITECTURE,
    DEFAULT_PREPROCESS,
    DEFAULT_WINDOW,
    IMAGE_SIZE,
    NAME,
    UNTRAINED_NOTE,
    MedSAMOptions,
    default_encoder_batch,
    encoder_autocast,
    parse_preprocess,
    parse_window,
    use_bf16,
)
from .preprocess import (
    Prepared,
    box_pixels,
    boxes_to_model,
    decode_low_res,
    encoder_input,
    prepare_slice,
    score_threshold,
    scores_at_slice,
    window_uint8,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch


log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- segmenter


@dataclass
class RunStats:
    """What one ``segment_slices`` call cost (``MedSAMSegmenter.last_stats``)."""

    slices: int = 0  # distinct slices encoded
    encoder_calls: int = 0  # slices through the encoder (a batch of n counts n)
    encoder_batches: int = 0
    boxes: int = 0
    preprocess_s: float = 0.0
    encoder_s: float = 0.0
    decoder_s: float = 0.0
    wall_s: float = 0.0


@dataclass
class _LesionAcc:
    """Per lesion: per slice, the (y0, y1, x0, x1) crop of its pixels and the mask there."""

    slices: dict[int, tuple[tuple[int, int, int, int], npt.NDArray[np.bool_]]] = field(
        default_factory=dict)


class MedSAMSegmenter:
    """The ``medsam`` segmenter (see the module docstring). A :class:`SliceSegmenter`."""

    promptable = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.options = MedSAMOptions.from_settings(settings)
        self.device = resolve_device(settings.device)
        if settings.threads > 0:
            import torch

            torch.set_num_threads(settings.threads)
        self.checkpoint = resolve_checkpoint(settings, self.options)
        rec = self.checkpoint.record or {}
        self.window: tuple[float, float] = self.options.window or (
            parse_window(rec["window"], "training record window") if "window" in rec
            else DEFAULT_WINDOW)
        self.preprocess: str = self.options.preprocess or (
            parse_preprocess(rec["preprocess"], "training record preprocess")
            if "preprocess" in rec else DEFAULT_PREPROCESS)
        self.model = load_model(self.checkpoint.path, self.device)
        self.encoder_batch = self.options.encoder_batch or default_encoder_batch(self.device)
        self.last_stats = RunStats()
        self._fingerprint: str | None = None
        if not self.checkpoint.trained:
            log.warning("medsam: %s (%s, sha256 %s)", UNTRAINED_NOTE, self.checkpoint.path,
                        self.checkpoint.sha256[:12])

    # ------------------------------------------------------------------ provenance
    def info(self) -> BackendInfo:
        c = self.checkpoint
        details: dict[str, Any] = {
            "architecture": ARCHITECTURE, "image_size": IMAGE_SIZE, "device": self.device,
            "encoder_precision": "bf16 autocast" if use_bf16(self.device, self.options.bf16)
            else "float32",
            "preprocess": self.preprocess, "window_level_width": list(self.window),
            "checkpoint_file": c.path.name, "prompt": "one 2-D box per slice",
            "segment_anything_version": segment_anything_version(),
            "provenance": c.provenance, "provenance_state": c.state,
        }
        if not c.trained:
            details["note"] = UNTRAINED_NOTE
        return BackendInfo(name=NAME, kind="segmenter",
                           version=f"segment-anything {segment_anything_version()}",
                           family="Artificial Intelligence", checkpoint=c.name,
                           checkpoint_sha256=c.sha256, trained=c.trained, details=details)

    def torch_modules(self) -> dict[str, Any]:
        return {"sam": self.model}

    # ------------------------------------------------------------------ low level
    def slice_scores(self, hu: npt.NDArray[np.floating[Any]],
                     boxes_xyxy: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        """(n, H, W) score maps of ``n`` pixel boxes ``(x_min, y_min, x_max, y_max)`` on one
        HU slice: logits (``"sam"``) or probabilities (``"medsam"``); the mask is
        ``scores > self.threshold``. One encoder call."""
        import torch

        u8 = window_uint8(np.asarray(hu), self.window)
        prep = prepare_slice(u8, self.preprocess)
        with torch.inference_mode():
            with encoder_autocast(self.device, self.options.bf16):
                emb = self.model.image_encoder(
                    encoder_input(self.model, [prep], self.preprocess, self.device))
            return self._decode(emb[0:1].float(), prep, np.asarray(boxes_xyxy, np.float64))

    @property
    def threshold(self) -> float:
        return score_threshold(self.model, self.preprocess)

    def _decode(self, emb: torch.Tensor, prep: Prepared, boxes_xyxy: npt.NDArray[np.float64]
                ) -> npt.NDArray[np.float32]:
        import torch

        bm = boxes_to_model(boxes_xyxy, prep.original_size, self.preprocess)
        bt = torch.as_tensor(bm, dtype=torch.float, device=self.device)
        low = decode_low_res(self.model, emb, bt)
        s = scores_at_slice(self.model, low, self.preprocess, prep.input_size,
                            prep.original_size)
        return np.ascontiguousarray(s[:, 0].float().cpu().numpy())

    # ------------------------------------------------------------------ protocol
    def segment(self, volume: Volume, boxes: Sequence[Box3D],
                progress: ProgressFn | None = None) -> list[LesionMask]:
        """Automatic mode: each 3-D box becomes one 2-D box with its in-plane extent on
        every slice ``z0 .. z1 - 1``; one mask per box, in order (``box`` = the 3-D box)."""
        per = [slice_boxes_of(b) for b in boxes]
        masks = self.segment_slices(volume, per, progress)
        return [LesionMask(m.mask, m.offset, m.volume_shape, b, b.score)
                for m, b in zip(masks, boxes)]

    def _embeddings(self, u8s: Sequence[npt.NDArray[np.uint8]], preps: Sequence[Prepared],
                    stats: RunStats) -> torch.Tensor:
        """Image embeddings of a batch of slices: from ``embedding_cache`` when there,
        else encoded (and then stored there)."""
        import torch

        cache = Path(self.options.embedding_cache) if self.options.embedding_cache else None
        keys: list[str | None] = [None] * len(preps)
        found: dict[int, torch.Tensor] = {}
        if cache is not None:
            if self._fingerprint is None:
                self._fingerprint = encoder_fingerprint(self.model)
            for i, u8 in enumerate(u8s):
                key = embedding_key(self._fingerprint, self.preprocess, u8)
                keys[i] = key
                f = cache / f"{key}.npy"
                if f.is_file():
                    try:
                        found[i] = torch.from_numpy(np.load(f)).to(self.device)
                    except (OSError, ValueError) as e:
                        log.warning("medsam: cached embedding %s unreadable (%s); "
                                    "encoding again", f, e)
        todo = [i for i in range(len(preps)) if i not in found]
        if todo:
            x = encoder_input(self.model, [preps[i] for i in todo], self.preprocess,
                              self.device)
            with encoder_autocast(self.device, self.options.bf16):
                new = self.model.image_encoder(x).float()
            if self.device == "cuda":
                torch.cuda.synchronize()
            stats.encoder_calls += len(todo)
            stats.encoder_batches += 1
            for j, i in enumerate(todo):
                found[i] = new[j]
                slot = keys[i]
                if cache is not None and slot is not None:
                    save_embedding(cache / f"{slot}.npy", new[j].cpu().numpy())
        return torch.stack([found[i] for i in range(len(preps))])

    def segment_slices(self, volume: Volume, lesion_slice_boxes: Sequence[Sequence[Box3D]],
                       progress: ProgressFn | None = None) -> list[LesionMask]:
        """One mask per lesion from its 2-D boxes (module docstring)."""
        import torch

        t0 = time.perf_counter()
        shape = volume.shape
        by_slice: dict[int, list[tuple[int, Box3D]]] = {}
        for i, boxes in enumerate(lesion_slice_boxes):
            if len(boxes) == 0:
                raise ConfigError(f"Argument 'lesion_slice_boxes[{i}]' must hold at least one "
                                  f"2-D box; got none")
            for j, b in enumerate(boxes):
                if not isinstance(b, Box3D) or b.z1 != b.z0 + 1:
                    raise ConfigError(f"Argument 'lesion_slice_boxes[{i}][{j}]' must be a 2-D "
                                      f"box (Box3D with z1 == z0 + 1); got "
                                      f"{b.to_dict() if isinstance(b, Box3D) else b!r}")
                if not b.fits(shape):
                    raise ConfigError(f"Argument 'lesion_slice_boxes[{i}][{j}]' {b.to_dict()} "
                                      f"lies outside the volume {shape}")
                by_slice.setdefault(b.z0, []).append((i, b))
        zs = sorted(by_slice)
        stats = RunStats(slices=len(zs), boxes=sum(len(v) for v in by_slice.values()))
        accs = [_LesionAcc() for _ in lesion_slice_boxes]
        thr = self.threshold
        done = 0
        try:
            with torch.inference_mode():
                for start in range(0, len(zs), self.encoder_batch):
                    batch = zs[start:start + self.encoder_batch]
                    tp = time.perf_counter()
                    u8s = [window_uint8(volume.array[z], self.window) for z in batch]
                    preps = [prepare_slice(u8, self.preprocess) for u8 in u8s]
                    te = time.perf_counter()
                    stats.preprocess_s += te - tp
                    emb = self._embeddings(u8s, preps, stats)
                    td = time.perf_counter()
                    stats.encoder_s += td - te
                    for k, z in enumerate(batch):
                        owners = by_slice[z]
                        scores = self._decode(emb[k:k + 1], preps[k],
                                              np.stack([box_pixels(b) for _, b in owners]))
                        _resolve_slice(z, owners, scores, thr, accs)
                        done += 1
                        if progress is not None:
                            progress(done, len(zs))
                    stats.decoder_s += time.perf_counter() - td
                    del emb
        except (ConfigError, UnavailableError):
            raise
        except RuntimeError as e:
            raise BackendError(f"medsam failed on {self.device}: {e}") from e
        out = [_assemble(acc, union_box(boxes), shape)
               for acc, boxes in zip(accs, lesion_slice_boxes)]
        stats.wall_s = time.perf_counter() - t0
        self.last_stats = stats
        log.info("medsam: %d lesion(s), %d box(es) on %d slice(s), encoder %.1f s, "
                 "decoder %.1f s", len(lesion_slice_boxes), stats.boxes, stats.slices,
                 stats.encoder_s, stats.decoder_s)
        return out


def save_embedding(path: Path, arr: npt.NDArray[Any]) -> None:
    """Atomic ``np.save`` (a crash never leaves a half-written cache file)."""
    from ...io.atomic import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda f: np.save(f, np.ascontiguousarray(arr)))


def slice_boxes_of(box: Box3D) -> list[Box3D]:
    """A 3-D box as 2-D boxes with its in-plane extent on each slice ``z0 .. z1 - 1``."""
    return [Box3D(z, z + 1, box.y0, box.y1, box.x0, box.x1, z, score=box.score,
                  source=box.source, from_person=box.from_person)
            for z in range(box.z0, box.z1)]


def union_box(boxes: Sequence[Box3D]) -> Box3D:
    """The 3-D box around a lesion's 2-D boxes; its key slice is that of the largest box."""
    key = max(boxes, key=lambda b: ((b.y1 - b.y0) * (b.x1 - b.x0), -b.z0))
    return Box3D(min(b.z0 for b in boxes), max(b.z1 for b in boxes),
                 min(b.y0 for b in boxes), max(b.y1 for b in boxes),
                 min(b.x0 for b in boxes), max(b.x1 for b in boxes), key.z0,
                 score=max(b.score for b in boxes), source=key.source,
                 from_person=any(b.from_person for b in boxes))


def _resolve_slice(z: int, owners: Sequence[tuple[int, Box3D]],
                   scores: npt.NDArray[np.float32], thr: float, accs: list[_LesionAcc]) -> None:
    """Join one slice's box scores per lesion (maximum), give each pixel claimed by several
    lesions to the highest score, and store each lesion's mask crop."""
    lesions = sorted({i for i, _ in owners})
    per = np.stack([np.max(scores[[k for k, (i, _) in enumerate(owners) if i == les]], axis=0)
                    for les in lesions])
    pos = per > thr
    if len(lesions) > 1:
        best = np.argmax(np.where(pos, per, -np.inf), axis=0)
        pos &= best[None] == np.arange(len(lesions))[:, None, None]
    for j, les in enumerate(lesions):
        m = pos[j]
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        bb = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
        accs[les].slices[z] = (bb, m[bb[0]:bb[1], bb[2]:bb[3]].copy())


def _assemble(acc: _LesionAcc, box: Box3D, shape: tuple[int, int, int]) -> LesionMask:
    """Stack a lesion's slice crops into one cropped 3-D mask (the union; empty allowed)."""
    if not acc.slices:
        return LesionMask(np.zeros((1, 1, 1), bool), (0, 0, 0), shape, box, box.score)
    zs = sorted(acc.slices)
    y0 = min(v[0][0] for v in acc.slices.values())
    y1 = max(v[0][1] for v in acc.slices.values())
    x0 = min(v[0][2] for v in acc.slices.values())
    x1 = max(v[0][3] for v in acc.slices.values())
    crop = np.zeros((zs[-1] - zs[0] + 1, y1 - y0, x1 - x0), dtype=bool)
    for z, ((a, b, c, d), m) in acc.slices.items():
        crop[z - zs[0], a - y0:b - y0, c - x0:d - x0] = m
    return LesionMask(crop, (zs[0], y0, x0), shape, box, box.score)


def create(settings: Settings) -> MedSAMSegmenter:
    """Registry factory: ``.models.medsam:create``."""
    try:
        import segment_anything  # noqa: F401
    except ImportError as e:  # pragma: no cover - registry checks find_spec first
        raise UnavailableError(f"the medsam segmenter needs the Python package "
                               f"segment-anything ({e})") from e
    return MedSAMSegmenter(settings)
