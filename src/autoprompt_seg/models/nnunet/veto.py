"""An anatomy veto for any detector: candidates inside the mediastinum or pericardium
(labelled by an installed nnU-Net anatomy model) are dropped.

Off unless asked for (``--veto-model NAME`` / ``Settings.options["veto"] = {"model":
NAME}``); the named model must be installed (else exit 69 naming the install command).
Made for TotalSegmentator's ``trunk_cavities`` (Dataset343: 1 abdominal_cavity,
2 thoracic_cavity, 3 pericardium, 4 mediastinum), but any installed nnU-Net model works:
``labels`` names the veto labels by name or number (default: ``pericardium`` and
``mediastinum``, looked up in the model's dataset.json).

How
---
1. The detector runs as usual. No box: the anatomy model is not run.
2. The anatomy model runs on the lung region (the same crop as ``nnunet_fullscan``: the
   training-free lung mask's bounding box plus ``crop_margin_mm``, which holds the
   mediastinum and heart) or the whole volume (``crop = "none"``); its label map (nnU-Net's
   argmax) gives the veto mask, in the original grid.
3. A box is vetoed when at least ``min_inside_frac`` (default 0.5) of its voxels lie in the
   veto mask. Vetoed boxes are removed and listed, with their fraction, in the detector's
   report.json details under ``veto`` (with the model, its provenance and the labels).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ...backends import ProgressFn
from ...config import Settings
from ...errors import ConfigError
from ...types import BackendInfo, Box3D, Volume

log = logging.getLogger(__name__)

OPTIONS_KEY = "veto"
DEFAULT_LABELS = ("pericardium", "mediastinum")


@dataclass(frozen=True)
class VetoOptions:
    model: str
    labels: tuple[str | int, ...] = DEFAULT_LABELS
    min_inside_frac: float = 0.5
    crop: str = "lungs"
    crop_margin_mm: float = 20.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"Option 'veto.model' must be an installed model name; got "
                              f"{self.model!r}")
        if not self.labels or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                      for v in self.labels):
            raise ConfigError(f"Option 'veto.labels' must list label names or numbers; got "
                              f"{self.labels!r}")
        v = self.min_inside_frac
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
            raise ConfigError(f"Option 'veto.min_inside_frac' must lie in (0, 1]; got {v!r}")
        if self.crop not in ("lungs", "none"):
            raise ConfigError(f"Option 'veto.crop' must be 'lungs' or 'none'; got "
                              f"{self.crop!r}")
        m = self.crop_margin_mm
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m < 1e4:
            raise ConfigError(f"Option 'veto.crop_margin_mm' must be >= 0; got {m!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> VetoOptions | None:
        raw = settings.options.get(OPTIONS_KEY)
        if not raw:
            return None
        if isinstance(raw, str):
            raw = {"model": raw}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"Option 'veto' must be a model name or a mapping; got {raw!r}")
        from ...options import parse_options

        kw = dict(raw)
        if "labels" in kw:
            labels = kw["labels"]
            kw["labels"] = tuple(labels) if isinstance(labels, (list, tuple)) else (labels,)
        if "model" not in kw and not set(kw) - {f.name for f in fields(cls)}:
            raise ConfigError("Option 'veto' needs 'model' (an installed model name)")
        return parse_options(cls, kw, OPTIONS_KEY)


def resolve_labels(wanted: tuple[str | int, ...], labels: Mapping[str, int],
                   model: str) -> tuple[int, ...]:
    """Label numbers for names or numbers, checked against the model's labels."""
    out = []
    values = {v for v in labels.values() if v > 0}
    for w in wanted:
        if isinstance(w, int) or (isinstance(w, str) and w.isdigit()):
            v = int(w)
        elif w in labels:
            v = labels[w]
        else:
            v = -1
        if v not in values:
            raise ConfigError(f"Option 'veto.labels': {w!r} is not a foreground label of model "
                              f"{model!r}; it has "
                              f"{', '.join(f'{v}={k}' for k, v in labels.items() if v > 0)}")
        out.append(v)
    return tuple(sorted(set(out)))


@dataclass
class VetoDetector:
    """Wraps a detector (see the module docstring)."""

    inner: Any
    opts: VetoOptions
    settings: Settings
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .install import load_installed

        self.installed, self.model, self.provenance = load_installed(self.opts.model,
                                                                     self.settings)
        self.labels = resolve_labels(self.opts.labels, self.installed.labels, self.opts.model)
        self.record.update(
            model=self.installed.name, dataset=self.installed.dataset,
            labels=self.installed.label_names(self.labels), label_values=list(self.labels),
            min_inside_frac=self.opts.min_inside_frac, crop=self.opts.crop,
            trained=self.model.trained, provenance=self.provenance.text,
            folder_sha256=self.model.folder_sha256, ran=False, vetoed=[])

    def info(self) -> BackendInfo:
        i = self.inner.info()
        # the record is filled in by detect(); report.json is written after it
        details = {**dict(i.details), "veto": self.record}
        return BackendInfo(name=i.name, kind=i.kind, version=i.version, family=i.family,
                           checkpoint=i.checkpoint, checkpoint_sha256=i.checkpoint_sha256,
                           trained=i.trained, details=details)

    def veto_mask(self, volume: Volume) -> np.ndarray:
        """The veto labels' mask in ``volume``'s grid (False outside the crop)."""
        from .fullscan import crop_volume, lung_crop

        crop = lung_crop(volume, self.opts.crop_margin_mm) if self.opts.crop == "lungs" \
            else None
        if crop is None:
            crop = (slice(0, volume.shape[0]), slice(0, volume.shape[1]),
                    slice(0, volume.shape[2]))
        out = self.model.predict(crop_volume(volume, crop))
        mask = np.zeros(volume.shape, dtype=bool)
        mask[crop] = np.isin(out.segmentation, self.labels)
        self.record["crop_zyx"] = [[s.start, s.stop] for s in crop]
        return mask

    def detect(self, volume: Volume, progress: ProgressFn | None = None) -> list[Box3D]:
        boxes = list(self.inner.detect(volume, progress))
        self.record.update(ran=False, vetoed=[])
        if not boxes:
            return boxes
        t0 = time.perf_counter()
        mask = self.veto_mask(volume)
        kept, vetoed = [], []
        for b in boxes:
            frac = float(mask[b.slices()].mean())
            if frac >= self.opts.min_inside_frac:
                vetoed.append({**b.to_dict(), "inside_frac": round(frac, 4)})
            else:
                kept.append(b)
        self.record.update(ran=True, vetoed=vetoed,
                           seconds=round(time.perf_counter() - t0, 2))
        log.info("veto (%s): %d of %d box(es) vetoed", self.installed.name, len(vetoed),
                 len(boxes))
        return kept


def wrap(detector: Any, settings: Settings) -> Any:
    """``detector`` wrapped in the veto when ``Settings.options["veto"]`` asks for one."""
    opts = VetoOptions.from_settings(settings)
    if opts is None:
        return detector
    return VetoDetector(detector, opts, settings)
