"""What the prompt-free segmenters share: splitting a full mask among the boxes, and the
slice-by-slice 2-D CNNs (``unet``, ``deeplabv3``): checkpoint format, options, inference.

Component assignment (:func:`assign_components`, also used by the ``nnunet`` segmenter)
-----------------------------------------------------------------------------------------
A prompt-free model segments the whole volume; the boxes only say which part of that mask
belongs to which lesion:

* the mask is split into 26-connected components;
* a component belongs to the box it overlaps most (in voxels; ties: the earlier box), so
  a voxel is never given to two lesions;
* each box's mask is the union of its components, *whole* (not cut at the box);
* a box that overlaps no component gets an empty mask; components that overlap no box are
  not reported. A single whole-volume box (the ``none`` detector) gets the whole mask.

2-D CNN checkpoints (format ``autoseg-cnn2d/1``)
------------------------------------------------
One file written with ``torch.save`` and read with ``torch.load(weights_only=True)``::

    {"format": "autoseg-cnn2d/1",
     "model": "unet" | "deeplabv3",
     "arch": {...},                       # the model's architecture options (see below)
     "preprocess": {"window": [lo, hi],   # CT window in HU, mapped to [0, 1]
                    "image_size": 512},   # every slice is resized to this square size
     "state_dict": {...}}                 # loads strictly into the built network

``arch`` for ``unet`` (MONAI ``UNet``, 2-D, 1 -> 2 channels): ``{"channels": [...],
"strides": [...], "num_res_units": int, "norm": "instance" | "batch"}``; for
``deeplabv3`` (torchvision): ``{"backbone": "resnet50" | "resnet101"}``, and its
``state_dict`` is exactly torchvision's ``deeplabv3_resnetXX(num_classes=2,
aux_loss=False)`` state dict. :func:`save_checkpoint` writes one; the trainers
(:mod:`autoprompt_seg.train.cnn2d`) write theirs through the same function.

A missing, truncated or corrupt file raises :class:`UnavailableError` (69); a file of the
wrong content (another format, another model, a state dict that does not load strictly)
raises :class:`ConfigError` (78); both name the file.

Provenance (:func:`autoprompt_seg.weights.resolve`): a checkpoint whose sha256 is pinned
by a weights-manifest entry of architecture ``cnn2d_<model>`` is a release (or an official
download / user pin, as ``installed.json`` records it); else one with a matching training
record beside it (``<file>.train.json``, :func:`autoprompt_seg.weights.training_record`)
is *trained here*; anything else is an *untrained test checkpoint*
(``BackendInfo.trained=False``).

Inference
---------
Every slice of the volume is windowed, resized to ``image_size``, run through the network
in batches of ``batch_size`` (``torch.inference_mode``; bf16 autocast on CUDA), the
2-class logits are resized back to the slice's own grid, and a voxel is tumour where the
tumour logit exceeds the background logit. Only one batch is ever on the device.

Options: ``Settings.options["unet"]`` / ``Settings.options["deeplabv3"]`` (a mapping):
``checkpoint`` (file; required), ``batch_size`` (default 4 on the CPU, 16 on CUDA),
``bf16`` (default true; CUDA only). Training-only keys (``arch``, ``pos_fraction``,
``augment``, ``window``, ``backbone_weights``, ``log_every``, ``bn_batches``) are ignored
here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..backends import ProgressFn
from ..config import Settings, resolve_device
from ..errors import ConfigError, UnavailableError
from ..types import BackendInfo, Box3D, LesionMask, Volume

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

FORMAT = "autoseg-cnn2d/1"
MODELS = ("unet", "deeplabv3")
VERSION = "0.1.0"
UNTRAINED = "untrained test checkpoint"
UNTRAINED_NOTE = ("untrained test checkpoint: no training record beside it and its sha256 "
                  "matches no known release; no accuracy may be claimed for its masks")
TRAIN_ONLY_OPTIONS = ("arch", "pos_fraction", "augment", "window", "backbone_weights",
                      "log_every", "bn_batches")


# --------------------------------------------------------------------------- components


def assign_components(mask: npt.NDArray[np.bool_], boxes: Sequence[Box3D]
                      ) -> tuple[list[npt.NDArray[np.bool_]], int, int]:
    """Split ``mask`` into 26-connected components and give each to the box it overlaps
    most (module docstring). Returns (one full-size boolean mask per box, number of
    components, number of components that no box claimed)."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, dtype=bool)
    labelled, n = ndi.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    owner = np.full(n + 1, -1, dtype=np.int64)
    best = np.zeros(n + 1, dtype=np.int64)
    for i, b in enumerate(boxes):
        counts = np.bincount(labelled[b.slices()].ravel(), minlength=n + 1)
        counts[0] = 0
        better = counts > best
        owner[better] = i
        best[better] = counts[better]
    lesion_of = owner[labelled]  # -1 for background and unclaimed components
    out = [lesion_of == i if (owner == i).any() else np.zeros(mask.shape, dtype=bool)
           for i in range(len(boxes))]
    return out, int(n), int((owner[1:] < 0).sum())


def masks_for_boxes(mask: npt.NDArray[np.bool_], boxes: Sequence[Box3D], who: str = "",
                    progress: ProgressFn | None = None) -> list[LesionMask]:
    """:func:`assign_components` as one :class:`LesionMask` per box (score: the box's)."""
    fulls, n, unclaimed = assign_components(mask, boxes)
    out = []
    for i, (full, b) in enumerate(zip(fulls, boxes)):
        out.append(LesionMask.from_full(full, b, score=b.score))
        if progress is not None:
            progress(i + 1, len(boxes))
    log.info("%s: %d component(s), %d box(es), %d unclaimed", who or "segmenter", n,
             len(boxes), unclaimed)
    return out


# --------------------------------------------------------------------------- networks


def check_model(model: str) -> None:
    if model not in MODELS:
        raise ConfigError(f"Argument 'model' must be one of {', '.join(MODELS)}; got {model!r}")


def normalise_arch(model: str, arch: Any) -> dict[str, Any]:
    """The full, checked architecture options of ``model`` (defaults filled in)."""
    check_model(model)
    if model == "unet":
        from .unet2d import normalise_arch as f
    else:
        from .deeplab import normalise_arch as f
    return f(arch)


def build_net(model: str, arch: Mapping[str, Any]) -> torch.nn.Module:
    """The network of ``model``: ``(N, 1, S, S)`` images in ``[0, 1]`` -> ``(N, 2, S, S)``
    logits (background, tumour). Random initial weights (from torch's global RNG)."""
    check_model(model)
    if model == "unet":
        from .unet2d import build_net as f
    else:
        from .deeplab import build_net as f
    return f(normalise_arch(model, arch))


def check_image_size(model: str, arch: Mapping[str, Any], image_size: int) -> None:
    """A U-Net needs ``image_size`` divisible by the product of its strides."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ConfigError(f"Argument 'image_size' must be an integer >= 8; got {image_size!r}")
    if model == "unet":
        div = int(np.prod(arch["strides"]))
        if image_size % div:
            raise ConfigError(f"Argument 'image_size' must be divisible by {div} (the U-Net's "
                              f"strides {list(arch['strides'])}); got {image_size}")


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True, eq=False)
class Cnn2dCheckpoint:
    """A read ``autoseg-cnn2d/1`` checkpoint (not yet loaded into a network)."""

    path: Path
    model: str
    arch: dict[str, Any]
    window: tuple[float, float]
    image_size: int
    state_dict: dict[str, Any]


def checkpoint_dict(model: str, arch: Mapping[str, Any], window: Sequence[float],
                    image_size: int, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The object that is ``torch.save``-d as a checkpoint (tensors moved to the CPU)."""
    check_model(model)
    return {"format": FORMAT, "model": model, "arch": dict(normalise_arch(model, arch)),
            "preprocess": {"window": [float(window[0]), float(window[1])],
                           "image_size": int(image_size)},
            "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()}}


def save_checkpoint(path: str | Path, model: str, arch: Mapping[str, Any],
                    window: Sequence[float], image_size: int,
                    state_dict: Mapping[str, Any]) -> Path:
    """Write an ``autoseg-cnn2d/1`` checkpoint (no training record: such a file reports as
    an untrained test checkpoint unless it is a known release)."""
    import torch

    p = Path(path)
    torch.save(checkpoint_dict(model, arch, window, image_size, state_dict), p)
    return p


def read_checkpoint(path: str | Path, model: str | None = None) -> Cnn2dCheckpoint:
    """Read and check a checkpoint file (``weights_only``: no pickled code). ``model``,
    when given, must match the file's."""
    import torch

    from ..train.data import parse_window

    p = Path(path)
    if not p.is_file():
        raise UnavailableError(f"checkpoint {str(p)!r}: no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        raise UnavailableError(f"checkpoint {str(p)!r} is truncated or corrupt and cannot be "
                               f"read ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                               ) from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = (f"format {obj.get('format')!r}, keys {sorted(map(str, obj))[:8]}"
                 if isinstance(obj, dict) else type(obj).__name__)
        raise ConfigError(f"checkpoint {str(p)!r} is not an {FORMAT} checkpoint (a dict with "
                          f"format, model, arch, preprocess, state_dict); found {found}")
    m = obj.get("model")
    if m not in MODELS:
        raise ConfigError(f"checkpoint {str(p)!r}: unknown model {m!r} (expected one of "
                          f"{', '.join(MODELS)})")
    if model is not None and m != model:
        raise ConfigError(f"checkpoint {str(p)!r} holds a {m} model, not {model}")
    try:
        arch = normalise_arch(m, obj.get("arch"))
        pre = obj.get("preprocess")
        if not isinstance(pre, Mapping):
            raise ConfigError(f"'preprocess' must be a mapping; got {pre!r}")
        window = parse_window(pre.get("window"))
        size: Any = pre.get("image_size")
        check_image_size(m, arch, size)
    except ConfigError as e:
        raise ConfigError(f"checkpoint {str(p)!r}: {e}") from e
    sd = obj.get("state_dict")
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"checkpoint {str(p)!r}: 'state_dict' must be a mapping of tensors; "
                          f"got {type(sd).__name__}")
    return Cnn2dCheckpoint(path=p, model=m, arch=arch, window=window, image_size=int(size),
                           state_dict=dict(sd))


def load_state_strict(net: torch.nn.Module, state_dict: Mapping[str, Any], path: Path | str,
                      what: str) -> None:
    """``load_state_dict(strict=True)``; a mismatch raises :class:`ConfigError` naming the
    file and the first differences."""
    own = net.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. "
                         f"{', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {'; '.join(shapes[:2])})")
        raise ConfigError(f"{str(path)!r} does not fit {what}: {'; '.join(parts)}")
    try:
        net.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as e:
        raise ConfigError(f"{str(path)!r} does not load strictly into {what}: "
                          f"{str(e)[:300]}") from e


def load_net(ck: Cnn2dCheckpoint) -> torch.nn.Module:
    """Build the checkpoint's network and load its weights strictly (on the CPU)."""
    net = build_net(ck.model, ck.arch)
    load_state_strict(net, ck.state_dict, ck.path, f"the {ck.model} architecture {ck.arch}")
    return net


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Cnn2dOptions:
    """``Settings.options[<model>]`` of a 2-D CNN segmenter (module docstring)."""

    checkpoint: Path | None = None
    batch_size: int = 0  # 0 = auto (4 on the CPU, 16 on CUDA)
    bf16: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, key: str) -> Cnn2dOptions:
        raw = settings.options.get(key, {})
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"Option {key!r} must be a mapping of {key} options; got {raw!r}")
        known = {"checkpoint", "batch_size", "bf16"}
        unknown = sorted(set(raw) - known - set(TRAIN_ONLY_OPTIONS))
        if unknown:
            raise ConfigError(f"Option {key!r}: unknown key(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(sorted(known | set(TRAIN_ONLY_OPTIONS)))}")
        kw: dict[str, Any] = {}
        if raw.get("checkpoint") is not None:
            v = raw["checkpoint"]
            if not isinstance(v, (str, Path)) or not str(v):
                raise ConfigError(f"Option '{key}.checkpoint' must be a file path; got {v!r}")
            kw["checkpoint"] = Path(v).expanduser()
        if "batch_size" in raw:
            v = raw["batch_size"]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ConfigError(f"Option '{key}.batch_size' must be an integer >= 0 "
                                  f"(0 = auto); got {v!r}")
            kw["batch_size"] = int(v)
        if "bf16" in raw:
            v = raw["bf16"]
            if not isinstance(v, bool):
                raise ConfigError(f"Option '{key}.bf16' must be true or false; got {v!r}")
            kw["bf16"] = v
        return cls(**kw)


def autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (when asked for); a no-op on the CPU."""
    if device != "cuda" or not bf16:
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16)


# --------------------------------------------------------------------------- inference


def predict_volume(net: torch.nn.Module, hu: npt.NDArray[Any], window: Sequence[float],
                   image_size: int, device: str, batch_size: int, bf16: bool = True,
                   progress: ProgressFn | None = None) -> npt.NDArray[np.bool_]:
    """The network's tumour mask for every slice of ``hu`` (z, y, x), on ``hu``'s grid."""
    import torch

    from ..train.data import resize_images, window_ct

    nz, h, w = hu.shape
    out = np.zeros(hu.shape, dtype=bool)
    net.eval()
    with torch.inference_mode():
        for z0 in range(0, nz, batch_size):
            z1 = min(nz, z0 + batch_size)
            x = torch.from_numpy(window_ct(hu[z0:z1], window))[:, None].to(device)
            x = resize_images(x, image_size)
            with autocast(device, bf16):
                logits = net(x)
            logits = resize_images(logits.float(), (h, w))
            out[z0:z1] = (logits[:, 1] > logits[:, 0]).cpu().numpy()
            if progress is not None:
                progress(z1, nz)
    return out


class SliceCnnSegmenter:
    """A 2-D CNN applied slice by slice; prompt-free (module docstring)."""

    promptable = False
    name = ""  # set by subclasses: "unet" | "deeplabv3"

    def __init__(self, settings: Settings) -> None:
        from ..weights import resolve

        check_model(self.name)
        self.settings = settings
        self.options = Cnn2dOptions.from_settings(settings, self.name)
        self.device = resolve_device(settings.device)
        if settings.threads > 0:
            import torch

            torch.set_num_threads(settings.threads)
        path = self.options.checkpoint
        if path is None:
            raise UnavailableError(
                f"segmenter {self.name!r} needs a trained checkpoint and none was given: "
                f"train one (the benchmark trains {self.name} in its few-shot and fine-tune "
                f"paradigms; see docs/bench.md) and pass it with --checkpoint FILE "
                f"(Settings.options[{self.name!r}]['checkpoint'])")
        self.checkpoint = read_checkpoint(path, self.name)
        self.net = load_net(self.checkpoint).to(self.device).eval()
        self.choice = resolve(f"cnn2d_{self.name}", self.checkpoint.path,
                              settings.weights_dir, model=self.name,
                              option=f"{self.name}.checkpoint")
        self.sha256 = self.choice.sha256
        self.record = self.choice.record
        self.trained = self.choice.trained
        self.batch_size = self.options.batch_size or (16 if self.device == "cuda" else 4)
        self.last_seconds = 0.0
        if not self.trained:
            log.warning("%s: %s (%s, sha256 %s)", self.name, UNTRAINED_NOTE,
                        self.checkpoint.path, self.sha256[:12])

    def torch_modules(self) -> dict[str, Any]:
        return {"net": self.net}

    def provenance(self) -> str:
        return self.choice.provenance

    def info(self) -> BackendInfo:
        ck = self.checkpoint
        details: dict[str, Any] = {
            "architecture": ck.arch, "window_hu": list(ck.window),
            "image_size": ck.image_size, "device": self.device,
            "precision": "bf16 autocast" if self.device == "cuda" and self.options.bf16
            else "float32",
            "batch_size": self.batch_size, "checkpoint_file": ck.path.name,
            "prompt": "ignored: components of the model's full mask overlapping each box",
            "provenance": self.provenance(),
        }
        if self.record is not None:
            details["training"] = {k: self.record.get(k) for k in
                                   ("n_cases", "epochs", "data_hash", "config_hash",
                                    "final_loss", "created")}
        if not self.trained:
            details["note"] = UNTRAINED_NOTE
        return BackendInfo(name=self.name, kind="segmenter", version=VERSION,
                           checkpoint=self.choice.name,
                           checkpoint_sha256=self.sha256, trained=self.trained,
                           details=details)

    def full_mask(self, volume: Volume, progress: ProgressFn | None = None
                  ) -> npt.NDArray[np.bool_]:
        """The model's tumour mask on every slice of ``volume`` (z, y, x)."""
        ck = self.checkpoint
        t0 = time.perf_counter()
        mask = predict_volume(self.net, volume.array, ck.window, ck.image_size, self.device,
                              self.batch_size, self.options.bf16, progress)
        self.last_seconds = time.perf_counter() - t0
        log.info("%s: %d slice(s) in %.1f s (%.3f s/slice)", self.name, volume.shape[0],
                 self.last_seconds, self.last_seconds / max(1, volume.shape[0]))
        return mask

    def segment(self, volume: Volume, boxes: Sequence[Box3D],
                progress: ProgressFn | None = None) -> list[LesionMask]:
        """One mask per box: the components of the full mask that overlap it most."""
        if not boxes:
            return []
        mask = self.full_mask(volume, progress)
        return masks_for_boxes(mask, boxes, self.name)
