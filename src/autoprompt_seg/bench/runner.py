"""Run one benchmark configuration over a dataset, resumably, locally or on Dask.

Output folder layout (several configurations may share one folder; the report compares
them):

``cases.jsonl``
    One JSON object per evaluated case, appended and flushed as soon as the case is done.
    Each row carries ``config_hash`` (see :meth:`BenchConfig.config_hash`); a rerun skips
    every case whose ``(config_hash, case_id)`` is already there, so a crashed run
    continues where it stopped. ``status`` is ``ok``, ``skipped`` (bad case: missing label,
    geometry mismatch, empty ROI) or ``failed`` (the backend raised); ``error`` says why.
    ``paradigm`` (zero-shot, few-shot, fine-tune), ``shots`` (K of few-shot) and
    ``train_cases`` (cases the checkpoint was trained on) say how the segmenter was trained;
    ``shots``, ``train_cases`` and ``train_hash`` are null when 0 / empty.
``lesions.jsonl``
    One row per GT lesion and per false-positive predicted lesion (see
    :mod:`autoprompt_seg.bench.metrics`).
``masks/<config_hash>/<case_id>.npz``
    The predicted binary mask (``pred``) and the voxel spacing, so that every metric can be
    recomputed from disk.
``overlays/<config_hash>/<case_id>.png``
    Ground truth against prediction on one slice, for ``ok`` cases
    (:mod:`.overlay`): rendered where the case ran, written by the driver.
``costs.jsonl``
    One row per configuration: the model cost measured by :mod:`.cost` (see
    :func:`case_cost`), appended once per ``config_hash``.
``cases.csv``, ``lesions.csv``, ``summary.json``, ... (:mod:`.report`)
    Rewritten at the end of each run from the JSONL files.

Only the driver (the process that calls :func:`run_bench`) writes to the folder, whichever
executor runs the cases (:mod:`.executor`): a case's task returns its rows and mask, and
the driver writes the mask, then the lesion rows, then the case row, as each result
arrives. A case counts as done once its case row is there.

Timing per case: ``load_s`` (image + GT), ``detect_s``, ``segment_s`` (from the pipeline),
``metrics_s``. ``peak_rss_mb`` is the resident-set high-water mark (``getrusage``) of the
process that ran the case, after the case: it never decreases within a process, so it
bounds the memory of that case and all cases before it in the same process (with Dask,
the same worker).

Prompt modes (``mode`` column): ``auto`` (a detector's boxes), ``unprompted`` (detector
``none``: one box covering the volume, for prompt-free segmenters) and
``manual:<protocol>`` (detector ``oracle``: boxes simulated from the GT; see
:mod:`.prompts`). The multi-box protocols need a :class:`~autoprompt_seg.backends.
SliceSegmenter`; for ``every-k`` the slices between two drawn boxes of a lesion get
interpolated boxes (:func:`.prompts.fill_slice_boxes`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import datasets as ds
from .. import registry
from ..backends import is_promptable
from ..config import Settings
from ..errors import AutosegError, ConfigError, InputError
from ..types import (
    BackendInfo,
    Box3D,
    LesionMask,
    Prediction,
    Volume,
)
from .config import (
    NO_PROMPT_DETECTOR,
    PARADIGMS,
    BenchConfig,
    training_fields,
)
from .cost import measure, peak_rss_mb
from .executor import (
    DEFAULT_DASK_WORKERS,
    DaskExecutor,
    Executor,
    StageFn,
    default_worker_threads,
    make_executor,
)
from .metrics import case_metrics
from .prompts import (
    MULTI_BOX_PROTOCOLS,
    GTPromptDetector,
    Jitter,
    case_seed,
    fill_slice_boxes,
)
from .rows import CASES_FILE, COSTS_FILE, LESIONS_FILE, append_rows, read_rows

log = logging.getLogger(__name__)

__all__ = ["BenchConfig", "CaseResult", "run_bench", "evaluate_case", "case_cost",
           "backends_for", "release_backends", "read_rows", "peak_rss_mb", "wants_gpu",
           "training_fields", "CASES_FILE", "LESIONS_FILE", "COSTS_FILE", "PARADIGMS"]

# --------------------------------------------------------------------------- I/O


def _nan_to_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in d.items()}


# --------------------------------------------------------------------------- backends


@dataclass
class Backends:
    """A configuration's detector and segmenter, built once per process."""

    detector: Any
    segmenter: Any
    seg_info: BackendInfo


#: Per-process cache (the driver with ``local``, each worker with ``dask``): one entry,
#: the configuration last used; building another configuration's backends drops it.
_BACKENDS: dict[str, Backends] = {}


def settings_for(config: BenchConfig, settings: Settings | None) -> Settings:
    """The settings a configuration runs with: ``settings`` (default: defaults) with the
    configuration's backend ``options`` laid over its own (the hashed options win)."""
    base = settings or Settings()
    return base.with_(options={**dict(base.options), **dict(config.options)})


def _cache_key(config: BenchConfig, settings: Settings) -> str:
    return config.config_hash() + json.dumps(asdict(settings), sort_keys=True, default=str)


def backends_for(config: BenchConfig, settings: Settings) -> Backends:
    """The configuration's backends in this process, built on first use.

    Refuses, with a :class:`ConfigError` naming the segmenter, a multi-box manual protocol
    for a segmenter without ``segment_slices`` and detector ``none`` for a promptable
    segmenter.
    """
    key = _cache_key(config, settings)
    bk = _BACKENDS.get(key)
    if bk is None:
        release_backends()
        bk = _build(config, settings)
        _BACKENDS[key] = bk
    return bk


def release_backends() -> None:
    """Drop this process's cached backends (their models are freed with them)."""
    _BACKENDS.clear()


def _build(config: BenchConfig, settings: Settings) -> Backends:
    segmenter = registry.get("segmenter", config.segmenter).create(settings)
    if config.manual and config.protocol in MULTI_BOX_PROTOCOLS and \
            not callable(getattr(segmenter, "segment_slices", None)):
        raise ConfigError(f"--prompt-protocol {config.protocol} gives several 2-D boxes per "
                          f"lesion; segmenter {config.segmenter!r} takes one box per lesion "
                          "(no segment_slices); use --prompt-protocol key-slice")
    if config.detector == NO_PROMPT_DETECTOR and is_promptable(segmenter):
        raise ConfigError(f"--detector none gives no prompt; segmenter {config.segmenter!r} "
                          "needs box prompts (use a detector, or a prompt-free segmenter)")
    detector: Any
    if config.manual:
        detector = GTPromptDetector(config.protocol, Jitter(config.jitter_shift,
                                                            config.jitter_scale), config.k)
    else:
        detector = registry.get("detector", config.detector).create(settings)
    if settings.threads > 0 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(settings.threads)
    return Backends(detector, segmenter, segmenter.info())


# --------------------------------------------------------------------------- one case


@dataclass(frozen=True, eq=False)
class CaseResult:
    """What a case's task returns to the driver."""

    case_id: str
    row: dict[str, Any]
    lesion_rows: list[dict[str, Any]]
    mask: npt.NDArray[np.bool_] | None = None
    spacing: tuple[float, float, float] | None = None
    overlay_png: bytes | None = None


def slice_prompts(detector: GTPromptDetector) -> list[list[Box3D]]:
    """Per lesion, the 2-D boxes a :class:`SliceSegmenter` gets from the last
    :meth:`GTPromptDetector.detect`: the drawn boxes, and for ``every-k`` the slices in
    between filled by :func:`fill_slice_boxes`."""
    if detector.protocol == "every-k":
        return [fill_slice_boxes(p.slice_boxes) for p in detector.last]
    return [list(p.slice_boxes) for p in detector.last]


def predict(volume: Volume, gt: npt.NDArray[np.bool_], case_id: str, config: BenchConfig,
            bk: Backends) -> tuple[Prediction, dict[str, Any]]:
    """Detect + segment one case (:func:`autoprompt_seg.pipeline.run`); also returns the
    prompt counts for the row (``n_prompt_boxes``: boxes given by the rater, for manual
    modes; ``n_slice_boxes``: 2-D boxes segmented, for the multi-box protocols)."""
    from .. import pipeline

    det = bk.detector
    counts: dict[str, Any] = {"n_prompt_boxes": None, "n_slice_boxes": None}
    if not isinstance(det, GTPromptDetector):
        return pipeline.run(volume, det, bk.segmenter,
                            operating_point=config.operating_point()), counts
    det.mask = gt
    det.seed = case_seed(config.seed, case_id)
    if config.protocol not in MULTI_BOX_PROTOCOLS:
        pred = pipeline.run(volume, det, bk.segmenter)
        counts["n_prompt_boxes"] = len(det.last)
        return pred, counts
    seg = bk.segmenter

    def segment_fn(boxes: Sequence[Box3D], progress: Any) -> list[LesionMask]:
        per_lesion = slice_prompts(det)
        counts["n_slice_boxes"] = sum(len(b) for b in per_lesion)
        return list(seg.segment_slices(volume, per_lesion, progress))

    pred = pipeline.run(volume, det, seg, segment_fn=segment_fn)
    counts["n_prompt_boxes"] = sum(len(p.slice_boxes) for p in det.last)
    return pred, counts


def evaluate_case(config: BenchConfig, settings: Settings, case: ds.Case,
                  keep_mask: bool = True, overlay: bool = True) -> CaseResult:
    """Load, predict and score one case, in whichever process runs it; with ``keep_mask``
    the result holds the predicted mask, with ``overlay`` the overlay PNG of an ok case
    (:func:`.overlay.render_case_overlay`; a drawing error is logged, not raised).

    A bad case (:class:`InputError` while loading) gives a ``skipped`` row and a backend
    error (:class:`AutosegError` from the pipeline) a ``failed`` row; errors while
    building the backends (bad configuration, missing weights) propagate.
    """
    bk = backends_for(config, settings)
    chash = config.config_hash()
    base: dict[str, Any] = {
        "config_hash": chash, "case_id": case.case_id, "patient_id": case.patient_id,
        "dataset": config.dataset, "method": config.method, "detector": config.detector,
        "segmenter": config.segmenter, "mode": config.mode, **config.training_columns(),
        "trained": bool(getattr(bk.seg_info, "trained", True)), "status": "ok", "error": "",
    }
    t0 = time.perf_counter()
    try:
        volume, gt = ds.load_case(case)
    except InputError as e:
        log.warning("skipping %s", e)
        return CaseResult(case.case_id, {**base, "status": "skipped", "error": str(e),
                                         "peak_rss_mb": peak_rss_mb()}, [])
    load_s = time.perf_counter() - t0
    try:
        pred, counts = predict(volume, gt, case.case_id, config, bk)
    except AutosegError as e:
        log.error("case %s failed: %s", case.case_id, e)
        return CaseResult(case.case_id, {**base, "status": "failed", "error": str(e),
                                         "load_s": load_s, "peak_rss_mb": peak_rss_mb()}, [])
    mask = pred.union_mask()
    t1 = time.perf_counter()
    values, lesions = case_metrics(mask, gt, volume.spacing, match_dice=config.match_dice,
                                   nsd_tolerance_mm=config.nsd_tolerance_mm)
    metrics_s = time.perf_counter() - t1
    row = {**base, **_nan_to_none(values), "n_masks": len(pred.lesions), **counts,
           "load_s": load_s, "detect_s": pred.timings.get("detect_s"),
           "segment_s": pred.timings.get("segment_s"), "metrics_s": metrics_s,
           "peak_rss_mb": peak_rss_mb(), "shape": list(volume.shape),
           "spacing": list(volume.spacing), "warnings": list(pred.warnings)}
    lrows = [{"config_hash": chash, "case_id": case.case_id, "method": config.method,
              "mode": config.mode, "paradigm": config.paradigm, **r.to_dict()}
             for r in lesions.rows]
    png = _render_overlay(volume, gt, mask, row) if overlay else None
    return CaseResult(case.case_id, row, lrows, mask if keep_mask else None,
                      volume.spacing, png)


def _render_overlay(volume: Volume, gt: npt.NDArray[np.bool_], mask: npt.NDArray[np.bool_],
                    row: dict[str, Any]) -> bytes | None:
    from .overlay import render_case_overlay

    dice = row.get("dice")
    title = f"{row['case_id']} · {row['method']} · {row['mode']}" + \
        (f" · Dice {dice:.3f}" if isinstance(dice, float) else "")
    try:
        return render_case_overlay(volume.array, gt, mask, volume.spacing, title=title)
    except Exception as e:  # noqa: BLE001 - a picture must not fail the case
        log.warning("case %s: no overlay (%s: %s)", row["case_id"], type(e).__name__, e)
        return None


def case_cost(config: BenchConfig, settings: Settings, case: ds.Case) -> dict[str, Any]:
    """The ``costs.jsonl`` row of a configuration, measured on ``case`` in this process
    (:func:`autoprompt_seg.bench.cost.measure` over detect + segment of the case, with the
    same prompts as its evaluation)."""
    bk = backends_for(config, settings)
    volume, gt = ds.load_case(case)
    cost = measure(lambda: predict(volume, gt, case.case_id, config, bk),
                   (bk.detector, bk.segmenter), repeats=config.cost_repeats)
    return {"config_hash": config.config_hash(), "method": config.method,
            "mode": config.mode, "paradigm": config.paradigm, "shots": config.shots or None,
            "detector": config.detector, "segmenter": config.segmenter,
            "trained": bool(getattr(bk.seg_info, "trained", True)),
            "case_id": case.case_id, "shape": list(volume.shape), **cost.to_dict()}


def _save_images(out: Path, chash: str, res: CaseResult) -> None:
    if res.mask is not None:
        d = out / "masks" / chash
        d.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(d / f"{res.case_id}.npz", pred=res.mask,
                            spacing=np.asarray(res.spacing))
    if res.overlay_png is not None:
        from .overlay import overlay_path, write_overlay

        write_overlay(overlay_path(out, chash, res.case_id), res.overlay_png)


def wants_gpu(settings: Settings) -> bool:
    """Whether the run's device resolves to CUDA (torch installed and a GPU visible)."""
    if settings.device == "cpu" or importlib.util.find_spec("torch") is None:
        return False
    from ..config import resolve_device

    return resolve_device(settings.device) == "cuda"


# --------------------------------------------------------------------------- driver

CaseCallback = Callable[[int, int, dict[str, Any]], None]


def run_bench(config: BenchConfig, out_dir: str | os.PathLike[str], *,
              settings: Settings | None = None, save_masks: bool = True,
              save_overlays: bool = True, on_case: CaseCallback | None = None, on_stage: StageFn | None = None,
              executor: str | Executor = "local", scheduler: str | None = None,
              n_workers: int = DEFAULT_DASK_WORKERS) -> dict[str, Any]:
    """Evaluate ``config`` on every case not yet in ``out_dir``; return the summary.

    ``save_masks`` / ``save_overlays`` write each case's predicted mask / overlay PNG.

    ``executor`` is ``local`` (in this process, in case order) or ``dask`` (one task per
    case on a LocalCluster of ``n_workers`` processes, or on the cluster at ``scheduler``;
    see :mod:`.executor`). ``executor`` may also be an executor already entered by the
    caller (:func:`.executor.make_executor`), to run several configurations on one
    cluster: run_bench then neither starts nor closes it. ``settings`` gives the device, threads and folders; backend
    options belong in ``config.options`` (they are hashed) and are laid over
    ``settings.options``.

    ``on_case(i, n, row)`` is called once per case: first for the cases already done
    (``row = {"case_id": ..., "resumed": True}``), then for each case as it finishes; ``i``
    counts the cases reported before (with ``local`` and nothing resumed, the case index).
    ``on_stage(message)`` announces the stages (starting a cluster, evaluating, measuring
    cost, writing the report).

    Cost (``config.measure_cost``): after the cases, when ``costs.jsonl`` has no row for
    this ``config_hash``, :func:`case_cost` runs on the first case (in dataset order) whose
    row is ``ok``, through the same executor: in this process with ``local``, as one more
    task on one worker with ``dask`` (nothing else runs then).
    """
    from .outputs import write_outputs

    def stage(msg: str) -> None:
        log.info(msg)
        if on_stage is not None:
            on_stage(msg)

    settings = settings_for(config, settings)
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
    todo = [c for c in cases if c.case_id not in done]
    n = len(cases)
    log.info("bench %s (%s, %s): %d case(s), %d already done", chash, config.method,
             config.mode, n, n - len(todo))
    reported = 0
    for case in cases:
        if case.case_id in done:
            if on_case:
                on_case(reported, n, {"case_id": case.case_id, "resumed": True})
            reported += 1

    costs_done = {r.get("config_hash") for r in read_rows(out / COSTS_FILE)}
    need_cost = config.measure_cost and chash not in costs_done
    if todo or need_cost:
        ctx: Any
        if isinstance(executor, str):
            ctx = make_executor(executor, scheduler, n_workers=n_workers,
                                gpu=executor == "dask" and wants_gpu(settings),
                                on_stage=stage, on_exit=release_backends)
        else:
            if scheduler is not None:
                raise ConfigError(f"--scheduler {scheduler}: give it to make_executor, not "
                                  "with an executor object")
            ctx = contextlib.nullcontext(executor)
        with ctx as ex:
            run_settings = settings
            if isinstance(ex, DaskExecutor) and ex.scheduler is None and settings.threads == 0:
                run_settings = settings.with_(threads=default_worker_threads(ex.n_workers))
            if todo:
                stage(f"evaluating {len(todo)} case(s) with the {ex.name} executor")
            args = [(config, run_settings, c, save_masks, save_overlays) for c in todo]
            for res in ex.map_unordered(evaluate_case, args):
                _save_images(out, chash, res)
                append_rows(out / LESIONS_FILE, res.lesion_rows)
                append_rows(out / CASES_FILE, [res.row])  # last: the case is done when complete
                if on_case:
                    on_case(reported, n, res.row)
                reported += 1
            if need_cost:
                _measure_cost(config, run_settings, cases, out, ex, stage)
    stage("writing the report")
    return write_outputs(out)


def _measure_cost(config: BenchConfig, settings: Settings, cases: list[ds.Case], out: Path,
                  ex: Any, stage: Callable[[str], None]) -> None:
    chash = config.config_hash()
    ok = {r.get("case_id") for r in read_rows(out / CASES_FILE)
          if r.get("config_hash") == chash and r.get("status") == "ok"}
    first = next((c for c in cases if c.case_id in ok), None)
    if first is None:
        log.warning("bench %s: no ok case, so no cost measurement", chash)
        return
    stage(f"measuring cost on {first.case_id} (1 warm-up + {config.cost_repeats} timed "
          f"run(s), {ex.name} executor)")
    try:
        row = ex.call(case_cost, config, settings, first)
    except AutosegError as e:
        log.error("bench %s: cost measurement on %s failed: %s", chash, first.case_id, e)
        return
    append_rows(out / COSTS_FILE, [row])
