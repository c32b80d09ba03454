"""The benchmark's configuration: :class:`BenchConfig` (everything that determines a
benchmark's per-case results, hashed into ``config_hash``) and the names it validates
against. :mod:`.runner` runs it."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import datasets as ds
from .. import registry
from ..datasets.jitter import Jitter
from ..errors import ConfigError
from ..types import DEFAULT_MAX_LESIONS, DEFAULT_MIN_SCORE, OperatingPoint
from .prompts import PROTOCOLS

#: Detector name that means "manual prompts simulated from the ground truth".
MANUAL_DETECTOR = "oracle"
#: Detector name that means "no prompt" (one box covering the volume).
NO_PROMPT_DETECTOR = "none"
#: Training paradigms of the segmenter's checkpoint.
PARADIGMS = ("zero-shot", "few-shot", "fine-tune")
#: Bumped when the meaning of a row changes, so old rows are not reused.
#: 2: rows carry paradigm / shots / train_cases; the config gained the training fields.
RESULTS_VERSION = 2
#: BenchConfig fields that do not change per-case results (not hashed).
_RUN_ONLY_FIELDS = ("cases", "measure_cost", "cost_repeats")
_MANUAL_ONLY_FIELDS = ("protocol", "k", "jitter_shift", "jitter_scale")


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class BenchConfig:
    """Everything that determines a benchmark's per-case results, plus two run settings
    (``measure_cost``, ``cost_repeats``) that do not.

    ``paradigm`` says how the segmenter's checkpoint was obtained: ``zero-shot`` (as
    published, or untrained), ``few-shot`` (trained on ``shots`` = K patients) or
    ``fine-tune`` (trained on the full training split). ``train_hash`` identifies the
    trained checkpoint (required for few-shot and fine-tune; see :func:`training_fields`);
    the checkpoint itself is named in ``options`` as each backend reads it (e.g.
    ``{"medsam2": {"checkpoint": PATH}}``, ``{"nnunet": {"model_dir": DIR}}``).
    ``train_cases`` is the number of cases it was trained on (0 = not recorded).
    """

    dataset: str = "pycerr"
    dataset_path: str | None = None
    roi: str = ds.DEFAULT_ROI
    detector: str = "candidates"
    segmenter: str = "classical"
    protocol: str = "key-slice"
    k: int = 2
    jitter_shift: float = 0.0
    jitter_scale: float = 0.0
    seed: int = 0
    match_dice: float = 0.1
    nsd_tolerance_mm: float = 2.0
    cases: tuple[str, ...] = ()  # subset of case ids; empty = all
    options: dict[str, Any] = field(default_factory=dict)  # backend options (Settings)
    paradigm: str = "zero-shot"
    shots: int = 0
    train_hash: str = ""
    train_cases: int = 0
    min_score: float = DEFAULT_MIN_SCORE  # operating point (see OperatingPoint)
    max_lesions: int = DEFAULT_MAX_LESIONS
    measure_cost: bool = True
    cost_repeats: int = 3

    def __post_init__(self) -> None:
        try:
            self.operating_point()
        except ValueError as e:
            raise ConfigError(str(e).replace("Argument 'min_score'", "--min-score").replace(
                "Argument 'max_lesions'", "--max-lesions")) from e
        if self.dataset not in ds.DATASETS:
            raise ConfigError(f"--dataset must be one of {', '.join(ds.DATASETS)}; got "
                              f"{self.dataset!r}")
        if self.detector != MANUAL_DETECTOR:
            registry.get("detector", self.detector)
        registry.get("segmenter", self.segmenter)
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--prompt-protocol must be one of {', '.join(PROTOCOLS)}; got "
                              f"{self.protocol!r}")
        Jitter(self.jitter_shift, self.jitter_scale)
        if not _is_int(self.k) or self.k < 1:
            raise ConfigError(f"--every-k must be an integer >= 1; got {self.k!r}")
        if not 0.0 <= self.match_dice < 1.0:
            raise ConfigError(f"--match-dice must lie in [0, 1); got {self.match_dice!r}")
        if self.paradigm not in PARADIGMS:
            raise ConfigError(f"--paradigm must be one of {', '.join(PARADIGMS)}; got "
                              f"{self.paradigm!r}")
        if not _is_int(self.shots) or self.shots < 0:
            raise ConfigError(f"--shots must be an integer >= 0; got {self.shots!r}")
        if self.paradigm == "few-shot" and self.shots < 1:
            raise ConfigError(f"--shots must be >= 1 (K patients) with --paradigm few-shot; "
                              f"got {self.shots!r}")
        if self.paradigm != "few-shot" and self.shots != 0:
            raise ConfigError(f"--shots applies to --paradigm few-shot only; got --shots "
                              f"{self.shots!r} with --paradigm {self.paradigm}")
        if not isinstance(self.train_hash, str):
            raise ConfigError(f"Argument 'train_hash' must be a string; got "
                              f"{self.train_hash!r}")
        if self.paradigm != "zero-shot" and not self.train_hash:
            raise ConfigError(f"--paradigm {self.paradigm} needs train_hash, the identity of "
                              f"the trained checkpoint (training_fields(CHECKPOINT)); got "
                              f"{self.train_hash!r}")
        if not _is_int(self.train_cases) or self.train_cases < 0:
            raise ConfigError(f"Argument 'train_cases' must be an integer >= 0; got "
                              f"{self.train_cases!r}")
        if not isinstance(self.measure_cost, bool):
            raise ConfigError(f"Argument 'measure_cost' must be true or false; got "
                              f"{self.measure_cost!r}")
        if not _is_int(self.cost_repeats) or self.cost_repeats < 1:
            raise ConfigError(f"--cost-repeats must be an integer >= 1; got "
                              f"{self.cost_repeats!r}")
        object.__setattr__(self, "cases", tuple(self.cases))
        object.__setattr__(self, "options", dict(self.options))

    @property
    def mode(self) -> str:
        """``manual:<protocol>`` (GT boxes), ``unprompted`` (detector ``none``) or ``auto``
        (detector boxes)."""
        if self.detector == MANUAL_DETECTOR:
            return f"manual:{self.protocol}"
        return "unprompted" if self.detector == NO_PROMPT_DETECTOR else "auto"

    @property
    def method(self) -> str:
        return f"{self.segmenter}+{self.detector}"

    @property
    def manual(self) -> bool:
        return self.detector == MANUAL_DETECTOR

    def operating_point(self) -> OperatingPoint:
        return OperatingPoint(min_score=self.min_score, max_lesions=self.max_lesions)

    def config_hash(self) -> str:
        """12 hex digits of the SHA-256 of the result-relevant fields (``cases``,
        ``measure_cost`` and ``cost_repeats`` excluded, and the manual-only fields for
        runs that are not manual)."""
        d = asdict(self)
        for key in _RUN_ONLY_FIELDS:
            d.pop(key)
        if not self.manual:
            for key in _MANUAL_ONLY_FIELDS:
                d.pop(key)
        d["results_version"] = RESULTS_VERSION
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def training_columns(self) -> dict[str, Any]:
        """The training columns of every row: 0 / empty values become null."""
        return {"paradigm": self.paradigm, "shots": self.shots or None,
                "train_cases": self.train_cases or None,
                "train_hash": self.train_hash or None}


def training_fields(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """``train_hash`` and ``train_cases`` for a checkpoint trained here, from its training
    record (:func:`autoprompt_seg.weights.training_record`): the first 12 hex digits of the
    checkpoint's sha256, and the record's ``n_cases``."""
    from ..weights import training_record

    rec = training_record(checkpoint)
    if rec is None:
        raise ConfigError(f"Argument 'checkpoint' {os.fspath(checkpoint)!r} has no valid "
                          "training record beside it (<file>.train.json with a matching "
                          "sha256): it was not trained by autoseg")
    return {"train_hash": str(rec["sha256"])[:12], "train_cases": int(rec.get("n_cases", 0))}
