"""Run one benchmark configuration over a dataset, resumably.

Output folder layout (several configurations may share one folder; the report compares
them):

``cases.jsonl``
    One JSON object per evaluated case, appended and flushed as soon as the case is done.
    Each row carries ``config_hash`` (see :meth:`BenchConfig.config_hash`); a rerun skips
    every case whose ``(config_hash, case_id)`` is already there, so a crashed run
    continues where it stopped. ``status`` is ``ok``, ``skipped`` (bad case: missing label,
    geometry mismatch, empty ROI) or ``failed`` (the backend raised); ``error`` says why.
``lesions.jsonl``
    One row per GT lesion and per false-positive predicted lesion (see
    :mod:`autoprompt_seg.bench.metrics`).
``masks/<config_hash>/<case_id>.npz``
    The predicted binary mask (``pred``) and the voxel spacing, so that every metric can be
    recomputed from disk.
``cases.csv``, ``lesions.csv``, ``summary.json``, ``report.md``
    Rewritten at the end of each run from the JSONL files (:mod:`.report`).

Timing per case: ``load_s`` (image + GT), ``detect_s``, ``segment_s`` (from the pipeline),
``metrics_s``. ``peak_rss_mb`` is the process's resident-set high-water mark
(``getrusage``) after the case: it never decreases within a run, so it bounds the memory
of that case and all cases before it in the same process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import registry
from ..config import Settings
from ..errors import AutosegError, ConfigError, InputError
from . import datasets as ds
from .metrics import case_metrics
from .prompts import MULTI_BOX_PROTOCOLS, PROTOCOLS, GTPromptDetector, Jitter, case_seed

log = logging.getLogger(__name__)

CASES_FILE = "cases.jsonl"
LESIONS_FILE = "lesions.jsonl"
#: Detector name that means "manual prompts simulated from the ground truth".
MANUAL_DETECTOR = "oracle"
#: Bumped when the meaning of a row changes, so old rows are not reused.
RESULTS_VERSION = 1


@dataclass(frozen=True)
class BenchConfig:
    """Everything that determines a benchmark's per-case results."""

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

    def __post_init__(self) -> None:
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
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"--every-k must be an integer >= 1; got {self.k!r}")
        if not 0.0 <= self.match_dice < 1.0:
            raise ConfigError(f"--match-dice must lie in [0, 1); got {self.match_dice!r}")
        object.__setattr__(self, "cases", tuple(self.cases))

    @property
    def mode(self) -> str:
        """``auto`` (detector boxes) or ``manual:<protocol>`` (GT boxes)."""
        return f"manual:{self.protocol}" if self.detector == MANUAL_DETECTOR else "auto"

    @property
    def method(self) -> str:
        return f"{self.segmenter}+{self.detector}"

    def config_hash(self) -> str:
        """12 hex digits of the SHA-256 of the result-relevant fields (``cases`` excluded,
        and the manual-only fields for automatic runs)."""
        d = asdict(self)
        d.pop("cases")
        if self.detector != MANUAL_DETECTOR:
            for key in ("protocol", "k", "jitter_shift", "jitter_scale"):
                d.pop(key)
        d["results_version"] = RESULTS_VERSION
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a truncated last line (a crash mid-write) is ignored."""
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not valid JSON (interrupted write?); ignored", path,
                        i + 1)
    return rows


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows as JSON lines, durably; a truncated last line is closed first so the
    new rows start on a line of their own."""
    needs_newline = False
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        if needs_newline:
            f.write("\n")
        for r in rows:
            f.write(json.dumps(r, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _json_default(o: object) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


def _nan_to_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in d.items()}


CaseCallback = Callable[[int, int, dict[str, Any]], None]


def run_bench(config: BenchConfig, out_dir: str | os.PathLike[str], *,
              settings: Settings | None = None, save_masks: bool = True,
              on_case: CaseCallback | None = None) -> dict[str, Any]:
    """Evaluate ``config`` on every case not yet in ``out_dir``; return the summary.

    ``on_case(index, total, row)`` is called after each case (also for resumed ones, with
    ``row["resumed"] = True``).
    """
    from ..pipeline import run as run_pipeline
    from .report import write_outputs

    settings = settings or Settings(options=dict(config.options))
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot be created ({e})") from e
    chash = config.config_hash()
    (out / "configs").mkdir(exist_ok=True)
    (out / "configs" / f"{chash}.json").write_text(
        json.dumps({**asdict(config), "config_hash": chash, "mode": config.mode,
                    "method": config.method}, indent=2, default=str) + "\n", encoding="utf-8")

    segmenter = registry.get("segmenter", config.segmenter).create(settings)
    seg_info = segmenter.info()
    manual = config.detector == MANUAL_DETECTOR
    if manual and config.protocol in MULTI_BOX_PROTOCOLS and \
            not hasattr(segmenter, "segment_slices"):
        raise ConfigError(f"--prompt-protocol {config.protocol} gives several 2-D boxes per "
                          f"lesion; segmenter {config.segmenter!r} takes one box per lesion "
                          "(no segment_slices); use --prompt-protocol key-slice")
    detector: Any
    if manual:
        detector = GTPromptDetector(config.protocol, Jitter(config.jitter_shift,
                                                            config.jitter_scale), config.k)
    else:
        detector = registry.get("detector", config.detector).create(settings)

    cases = ds.get_cases(config.dataset, config.dataset_path, roi=config.roi,
                         cache_dir=settings.cache_dir)
    if config.cases:
        known = {c.case_id for c in cases}
        missing = [c for c in config.cases if c not in known]
        if missing:
            raise ConfigError(f"--case {', '.join(missing)}: not in dataset {config.dataset} "
                              f"(cases: {', '.join(sorted(known)) or 'none'})")
        cases = [c for c in cases if c.case_id in set(config.cases)]
    done = {r.get("case_id") for r in read_rows(out / CASES_FILE)
            if r.get("config_hash") == chash}
    log.info("bench %s (%s, %s): %d case(s), %d already done", chash, config.method,
             config.mode, len(cases), len(done & {c.case_id for c in cases}))
    for i, case in enumerate(cases):
        if case.case_id in done:
            if on_case:
                on_case(i, len(cases), {"case_id": case.case_id, "resumed": True})
            continue
        row, lesion_rows = _evaluate(case, config, chash, detector, segmenter, seg_info,
                                     run_pipeline, out if save_masks else None)
        _append(out / LESIONS_FILE, lesion_rows)
        _append(out / CASES_FILE, [row])  # last: the case counts as done only when complete
        if on_case:
            on_case(i, len(cases), row)
    return write_outputs(out)


def _evaluate(case: ds.Case, config: BenchConfig, chash: str, detector: Any, segmenter: Any,
              seg_info: Any, run_pipeline: Any, mask_dir: Path | None
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    base: dict[str, Any] = {
        "config_hash": chash, "case_id": case.case_id, "patient_id": case.patient_id,
        "dataset": config.dataset, "method": config.method, "detector": config.detector,
        "segmenter": config.segmenter, "mode": config.mode,
        "trained": bool(getattr(seg_info, "trained", True)), "status": "ok", "error": "",
    }
    t0 = time.perf_counter()
    try:
        volume, gt = ds.load_case(case)
    except InputError as e:
        log.warning("skipping %s", e)
        return {**base, "status": "skipped", "error": str(e),
                "peak_rss_mb": peak_rss_mb()}, []
    load_s = time.perf_counter() - t0
    if isinstance(detector, GTPromptDetector):
        detector.mask = gt
        detector.seed = case_seed(config.seed, case.case_id)
    try:
        pred = run_pipeline(volume, detector, segmenter)
    except AutosegError as e:
        log.error("case %s failed: %s", case.case_id, e)
        return {**base, "status": "failed", "error": str(e), "load_s": load_s,
                "peak_rss_mb": peak_rss_mb()}, []
    mask = pred.label_map() > 0
    t1 = time.perf_counter()
    values, lesions = case_metrics(mask, gt, volume.spacing, match_dice=config.match_dice,
                                   nsd_tolerance_mm=config.nsd_tolerance_mm)
    metrics_s = time.perf_counter() - t1
    if mask_dir is not None:
        d = mask_dir / "masks" / chash
        d.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(d / f"{case.case_id}.npz", pred=mask,
                            spacing=np.asarray(volume.spacing))
    row = {**base, **_nan_to_none(values), "n_masks": len(pred.lesions),
           "load_s": load_s, "detect_s": pred.timings.get("detect_s"),
           "segment_s": pred.timings.get("segment_s"), "metrics_s": metrics_s,
           "peak_rss_mb": peak_rss_mb(), "shape": list(volume.shape),
           "spacing": list(volume.spacing), "warnings": list(pred.warnings)}
    lrows = [{"config_hash": chash, "case_id": case.case_id, "method": config.method,
              "mode": config.mode, **r.to_dict()} for r in lesions.rows]
    return row, lrows
