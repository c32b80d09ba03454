"""A benchmark study from a TOML file: methods × prompt modes × learning paradigms.

``autoseg bench run CONFIG.toml`` reads the file with :func:`load_study` and runs it with
:func:`run_study`. The format (every key optional unless marked)::

    out = "bench-out"             # results folder (``--out`` overrides)
    executor = "local"            # local | dask  (``--executor`` overrides)
    scheduler = ""                # Dask scheduler address; empty = a LocalCluster
    workers = 2                   # LocalCluster worker processes
    device = "auto"               # auto | cpu | cuda
    threads = 0                   # CPU threads for neural backends (0 = library default)
    seed = 0                      # jitter and K-shot sampling seed
    match_dice = 0.1              # lesion matching rule (see docs/bench.md)
    measure_cost = true           # parameters, GFLOPs, warm latency per method
    cost_repeats = 3

    [dataset]
    name = "pycerr"               # pycerr | nsclc | msd | pairs   (required)
    path = ""                     # dataset root (not for pycerr)
    roi = "GTV-1"                 # RTSTRUCT ROI (pycerr, nsclc)

    [split]                       # patient-level split; needed by few-shot / fine-tune
    seed = 0
    fractions = [0.75, 0.0, 0.25] # train, val, test
    file = ""                     # or an existing splits file (autoseg bench splits)
    evaluate = "test"             # the split the methods are evaluated on

    [[method]]                    # one table per method (at least one)
    segmenter = "medsam2"         # required: a registered segmenter
    detector = "oracle"           # a detector, "oracle" (manual prompts) or "none"
    protocol = "key-slice"        # manual prompt protocol: key-slice | every-k | every-slice
    k = 2                         # every-k spacing
    jitter_shift = 0.1
    jitter_scale = 0.1
    checkpoint = "MedSAM2_latest" # zero-shot weights: a weights name or a file
    paradigms = ["zero-shot", "few-shot", "fine-tune"]   # default ["zero-shot"]
    shots = [1, 5, 10]            # K of few-shot (patients, nested, seeded)
    options = {}                  # backend options (Settings.options of that backend)

    [method.train]                # how few-shot / fine-tune train this model
    epochs = 100
    batch_size = 16
    lr = 0.005
    steps_per_epoch = 0           # 0 = one pass over the sampled training items
    image_size = 512
    init = "base"                 # base = start from `checkpoint` (foundation models);
                                  # scratch = random init (CNNs, nnU-Net); or a file
    options = {}                  # trainer options (see autoprompt_seg.train.<model>)

Semantics:

* **zero-shot** evaluates the weights as loaded (``checkpoint``, or the backend's
  installed default).
* **few-shot** trains, for every K in ``shots``, on the first K patients of the train
  split (nested, seeded subsets: the K = 1 patient is among the K = 5 ones), then evaluates.
* **fine-tune** trains on every case of the train split, then evaluates.
* Every trained model is a run folder ``OUT/training/<model>-<paradigm>[-K<k>]-<hash>``
  (:mod:`autoprompt_seg.train.core`): a rerun reuses finished training and resumes an
  interrupted one; the evaluation rows are resumed by configuration hash as usual.
* With any training paradigm the evaluation uses ``split.evaluate`` only, so no training
  patient is ever scored. Without one, every case is evaluated (or ``split.evaluate`` when
  a ``[split]`` table is given).
* Each (method, mode, paradigm, K) is its own group in the report.
* MedSAM's image encoder is frozen in every paradigm, so its slice embeddings are cached
  once in ``OUT/cache/medsam-embeddings`` (about 4 MB per slice) and shared by the
  zero-shot evaluation, the training runs and the trained models' evaluations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import registry
from ..config import Settings
from ..errors import ConfigError
from ..registry import checkpoint_options

log = logging.getLogger(__name__)

PARADIGMS = ("zero-shot", "few-shot", "fine-tune")
#: segmenter -> the trainer model name of :mod:`autoprompt_seg.train.core`
TRAINABLE = {"unet": "unet", "deeplabv3": "deeplabv3", "medsam": "medsam",
             "medsam2": "medsam2", "nnunet": "nnunet"}
#: foundation models fine-tune from their base weights; the others train from scratch
FROM_BASE = ("medsam", "medsam2")

_TOP_KEYS = {"out", "executor", "scheduler", "device", "threads", "seed", "match_dice",
             "nsd_tolerance_mm", "measure_cost", "cost_repeats", "save_masks", "dataset", "workers",
             "split", "method"}
_DATASET_KEYS = {"name", "path", "roi"}
_SPLIT_KEYS = {"seed", "fractions", "file", "evaluate"}
_METHOD_KEYS = {"segmenter", "detector", "protocol", "k", "jitter_shift", "jitter_scale",
                "checkpoint", "paradigms", "shots", "options", "train", "label"}
_TRAIN_KEYS = {"epochs", "batch_size", "lr", "steps_per_epoch", "image_size", "init",
               "options", "seed"}


def _unknown(where: str, d: Mapping[str, Any], known: set[str], src: str) -> None:
    bad = sorted(set(d) - known)
    if bad:
        raise ConfigError(f"{src}: unknown key(s) {', '.join(bad)} in {where}; known: "
                          f"{', '.join(sorted(known))}")


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 100
    batch_size: int = 16
    lr: float = 0.005
    steps_per_epoch: int = 0
    image_size: int = 512
    init: str = "base"  # base | scratch | a file
    seed: int | None = None  # default: the study seed
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    segmenter: str
    detector: str = "candidates"
    protocol: str = "key-slice"
    k: int = 2
    jitter_shift: float = 0.0
    jitter_scale: float = 0.0
    checkpoint: str = ""
    paradigms: tuple[str, ...] = ("zero-shot",)
    shots: tuple[int, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    train: TrainSpec = field(default_factory=TrainSpec)
    label: str = ""

    def __post_init__(self) -> None:
        registry.get("segmenter", self.segmenter)
        if self.detector != "oracle":
            registry.get("detector", self.detector)
        for p in self.paradigms:
            if p not in PARADIGMS:
                raise ConfigError(f"method {self.segmenter}: paradigm {p!r} is not one of "
                                  f"{', '.join(PARADIGMS)}")
        trains = [p for p in self.paradigms if p != "zero-shot"]
        if trains and self.segmenter not in TRAINABLE:
            raise ConfigError(f"method {self.segmenter}: paradigm {trains[0]} needs a trainable "
                              f"segmenter ({', '.join(TRAINABLE)}); {self.segmenter} has no "
                              "weights to train")
        if "few-shot" in self.paradigms:
            if not self.shots or any(not isinstance(k, int) or k < 1 for k in self.shots):
                raise ConfigError(f"method {self.segmenter}: few-shot needs shots = a list of "
                                  f"integers >= 1; got {list(self.shots)!r}")
        elif self.shots:
            raise ConfigError(f"method {self.segmenter}: shots {list(self.shots)} given "
                              "without the few-shot paradigm")


@dataclass(frozen=True)
class StudyConfig:
    dataset: str
    methods: tuple[MethodSpec, ...]
    dataset_path: str | None = None
    roi: str = "GTV-1"
    out: str = ""
    executor: str = "local"
    scheduler: str = ""
    workers: int = 2
    device: str = "auto"
    threads: int = 0
    seed: int = 0
    match_dice: float = 0.1
    nsd_tolerance_mm: float = 2.0
    measure_cost: bool = True
    cost_repeats: int = 3
    save_masks: bool = True
    split_seed: int = 0
    split_fractions: tuple[float, ...] = (0.75, 0.0, 0.25)
    splits_file: str = ""
    evaluate: str = "test"
    has_split: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError(f"{self.source or 'study'}: no [[method]] table")
        if self.executor not in ("local", "dask"):
            raise ConfigError(f"executor must be local or dask; got {self.executor!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda; got {self.device!r}")

    @property
    def trains(self) -> bool:
        return any(p != "zero-shot" for m in self.methods for p in m.paradigms)


def _as_tuple(v: Any, name: str, src: str) -> tuple[Any, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(v)
    raise ConfigError(f"{src}: {name} must be a list; got {v!r}")


def load_study(path: str | os.PathLike[str]) -> StudyConfig:
    """Read and validate a study TOML file (format in the module docstring)."""
    p = Path(path)
    src = str(p)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{src}: cannot be read ({e})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{src}: not valid TOML ({e})") from e
    return study_from_dict(doc, src, base_dir=p.parent)


def study_from_dict(doc: Mapping[str, Any], src: str = "study",
                    base_dir: Path | None = None) -> StudyConfig:
    _unknown("the top level", doc, _TOP_KEYS, src)
    dset = doc.get("dataset")
    if not isinstance(dset, Mapping) or "name" not in dset:
        raise ConfigError(f"{src}: a [dataset] table with name = pycerr|nsclc|msd|pairs is "
                          "required")
    _unknown("[dataset]", dset, _DATASET_KEYS, src)

    def rel(v: str) -> str:
        if not v:
            return v
        q = Path(v).expanduser()
        return str(q if q.is_absolute() or base_dir is None else (base_dir / q))

    split = doc.get("split", {})
    _unknown("[split]", split, _SPLIT_KEYS, src)
    methods = []
    raw_methods = doc.get("method", [])
    if not isinstance(raw_methods, list):
        raise ConfigError(f"{src}: method must be an array of tables ([[method]])")
    for i, m in enumerate(raw_methods):
        _unknown(f"[[method]] #{i + 1}", m, _METHOD_KEYS, src)
        if "segmenter" not in m:
            raise ConfigError(f"{src}: [[method]] #{i + 1} has no segmenter")
        t = dict(m.get("train", {}))
        _unknown(f"[method.train] of method #{i + 1}", t, _TRAIN_KEYS, src)
        if "init" in t and t["init"] not in ("base", "scratch"):
            t["init"] = rel(str(t["init"]))
        train = TrainSpec(**t)
        ck = str(m.get("checkpoint", ""))
        if ck and (Path(ck).suffix or "/" in ck):
            ck = rel(ck)
        try:
            methods.append(MethodSpec(
                segmenter=m["segmenter"], detector=m.get("detector", "candidates"),
                protocol=m.get("protocol", "key-slice"), k=int(m.get("k", 2)),
                jitter_shift=float(m.get("jitter_shift", 0.0)),
                jitter_scale=float(m.get("jitter_scale", 0.0)), checkpoint=ck,
                paradigms=_as_tuple(m.get("paradigms", ["zero-shot"]), "paradigms", src),
                shots=_as_tuple(m.get("shots", []), "shots", src),
                options=dict(m.get("options", {})), train=train, label=str(m.get("label", ""))))
        except ConfigError as e:
            raise ConfigError(f"{src}: [[method]] #{i + 1}: {e}") from e
    return StudyConfig(
        dataset=str(dset["name"]), dataset_path=rel(str(dset.get("path", ""))) or None,
        roi=str(dset.get("roi", "GTV-1")), methods=tuple(methods),
        out=rel(str(doc.get("out", ""))), executor=str(doc.get("executor", "local")),
        scheduler=str(doc.get("scheduler", "")), workers=int(doc.get("workers", 2)),
        device=str(doc.get("device", "auto")),
        threads=int(doc.get("threads", 0)), seed=int(doc.get("seed", 0)),
        match_dice=float(doc.get("match_dice", 0.1)),
        nsd_tolerance_mm=float(doc.get("nsd_tolerance_mm", 2.0)),
        measure_cost=bool(doc.get("measure_cost", True)),
        cost_repeats=int(doc.get("cost_repeats", 3)),
        save_masks=bool(doc.get("save_masks", True)),
        split_seed=int(split.get("seed", 0)),
        split_fractions=tuple(float(x) for x in split.get("fractions", (0.75, 0.0, 0.25))),
        splits_file=rel(str(split.get("file", ""))), evaluate=str(split.get("evaluate", "test")),
        has_split=bool(split), source=src)


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Job:
    """One evaluation: a method under one paradigm (and K), with its training set."""

    method: MethodSpec
    paradigm: str
    shots: int = 0
    train_case_ids: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        k = f" K={self.shots}" if self.shots else ""
        return f"{self.method.label or self.method.segmenter + '+' + self.method.detector} " \
               f"[{self.paradigm}{k}]"


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) \
            else v
    return out


def split_cases(study: StudyConfig, cases: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(train pool, evaluation cases) under the study's split."""
    from ..datasets import load_splits, make_splits

    if not (study.has_split or study.trains):
        return [], list(cases)
    if study.splits_file:
        sp = load_splits(study.splits_file)
    else:
        names = ("train", "val", "test")
        if len(study.split_fractions) != 3:
            raise ConfigError(f"{study.source}: split.fractions must be [train, val, test]; "
                              f"got {list(study.split_fractions)}")
        sp = make_splits(cases, seed=study.split_seed, fractions=study.split_fractions,
                         names=names)
    by_id = {c.case_id: c for c in cases}
    if study.evaluate not in sp["cases"]:
        raise ConfigError(f"{study.source}: split.evaluate {study.evaluate!r} is not a split "
                          f"({', '.join(sp['cases'])})")
    evaluate = [by_id[i] for i in sp["cases"][study.evaluate] if i in by_id]
    train = [by_id[i] for i in sp["cases"].get("train", []) if i in by_id]
    if not evaluate:
        raise ConfigError(f"{study.source}: the {study.evaluate!r} split holds no case")
    leak = {c.patient_id for c in train} & {c.patient_id for c in evaluate}
    if leak:  # cannot happen with make_splits; guards hand-edited splits files
        raise ConfigError(f"{study.source}: patient(s) {sorted(leak)} are in both the train "
                          f"and the {study.evaluate} split")
    return train, evaluate


def plan_jobs(study: StudyConfig, train_pool: Sequence[Any]) -> list[Job]:
    from ..train.data import kshot_subsets

    jobs: list[Job] = []
    for m in study.methods:
        for p in m.paradigms:
            if p == "zero-shot":
                jobs.append(Job(m, p))
                continue
            if not train_pool:
                raise ConfigError(f"{study.source}: method {m.segmenter} {p} needs training "
                                  "cases, but the train split is empty")
            if p == "fine-tune":
                jobs.append(Job(m, p, 0, tuple(sorted(c.case_id for c in train_pool))))
                continue
            n_pat = len({c.patient_id for c in train_pool})
            too_big = [k for k in m.shots if k > n_pat]
            if too_big:
                raise ConfigError(f"{study.source}: method {m.segmenter}: shots {too_big} "
                                  f"exceed the {n_pat} training patient(s)")
            subsets = kshot_subsets(train_pool, list(m.shots), study.seed)
            for k in m.shots:
                jobs.append(Job(m, p, k, tuple(sorted(c.case_id for c in subsets[k]))))
    return jobs


# --------------------------------------------------------------------------- running

#: ``on_event(kind, message)``: kind is "train", "eval" or "done".
EventFn = Callable[[str, str], None]


def _train_job(job: Job, study: StudyConfig, out: Path, cases: Sequence[Any],
               settings: Settings, progress: Any = None,
               extra_options: Mapping[str, Any] | None = None) -> Any:
    from ..train.core import TrainConfig, train_model

    m, t = job.method, job.method.train
    model = TRAINABLE[m.segmenter]
    cfg = TrainConfig(model=model, epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                      steps_per_epoch=t.steps_per_epoch, image_size=t.image_size,
                      seed=study.seed if t.seed is None else t.seed, device=study.device,
                      options={**dict(extra_options or {}), **dict(t.options)})
    init: str | None
    if t.init == "scratch":
        init = None
    elif t.init == "base":
        init = (m.checkpoint or None) if m.segmenter in FROM_BASE else None
        if m.segmenter in FROM_BASE and init is None:
            raise ConfigError(f"{study.source}: method {m.segmenter} {job.paradigm} starts "
                              "from its base weights: set checkpoint = FILE or a weights name "
                              "(or train.init = FILE)")
        if init is not None and not Path(init).exists():
            from ..weights import installed_path

            found = installed_path(init, settings.weights_dir)
            if found is None:
                raise ConfigError(f"{study.source}: method {m.segmenter}: base checkpoint "
                                  f"{init!r} is neither a file nor installed weights")
            init = str(found)
    else:
        init = t.init
    by_id = {c.case_id: c for c in cases}
    train_cases = [by_id[i] for i in job.train_case_ids]
    tag = f"{model}-{job.paradigm}" + (f"-K{job.shots}" if job.shots else "")
    h = hashlib.sha256(json.dumps([cfg.config_hash(), job.train_case_ids, init or ""])
                       .encode()).hexdigest()[:10]
    return train_model(cfg, train_cases, out / "training" / f"{tag}-{h}", settings=settings,
                       init_checkpoint=init, progress=progress)


def run_study(study: StudyConfig, out_dir: str | os.PathLike[str] | None = None, *,
              settings: Settings | None = None, on_event: EventFn | None = None,
              on_case: Any = None, train_progress: Any = None,
              on_stage: Any = None, save_overlays: bool = True) -> dict[str, Any]:
    """Train what the paradigms need, evaluate every job, write the report; returns the
    summary (:func:`autoprompt_seg.bench.outputs.write_outputs`)."""
    from ..datasets import get_cases
    from .outputs import write_outputs
    from .runner import BenchConfig, run_bench

    out = Path(out_dir or study.out or "bench-out")
    base = settings or Settings(device=study.device, threads=study.threads)
    cases = get_cases(study.dataset, study.dataset_path, roi=study.roi,
                      cache_dir=base.cache_dir)
    train_pool, evaluate = split_cases(study, cases)
    jobs = plan_jobs(study, train_pool)
    emit = on_event or (lambda kind, msg: None)
    emit("plan", f"{len(jobs)} job(s); {len(train_pool)} training case(s), {len(evaluate)} "
                 f"evaluation case(s)")
    for job in jobs:
        m = job.method
        options = _merge({}, m.options)
        train_opts: dict[str, Any] = {}
        if m.segmenter == "medsam":
            # MedSAM's encoder is frozen in every paradigm: one embedding per slice serves
            # the zero-shot evaluation, every training run and every trained model.
            emb = str(out / "cache" / "medsam-embeddings")
            options = _merge({"medsam": {"embedding_cache": emb}}, options)
            train_opts = {"embedding_cache": emb}
        train_cases = 0
        train_hash = ""
        if job.paradigm == "zero-shot":
            if m.checkpoint:
                options = _merge(options, checkpoint_options(m.segmenter, m.checkpoint))
        else:
            emit("train", f"{job.name}: training on {len(job.train_case_ids)} case(s)")
            res = _train_job(job, study, out, cases, replace(base, options=options),
                             progress=train_progress, extra_options=train_opts)
            options = _merge(options, checkpoint_options(m.segmenter, str(res.checkpoint)))
            train_cases = len(job.train_case_ids)
            train_hash = f"{res.config_hash}-{res.data_hash}-{res.sha256[:12]}"
        cfg = BenchConfig(dataset=study.dataset, dataset_path=study.dataset_path,
                          roi=study.roi, detector=m.detector, segmenter=m.segmenter,
                          protocol=m.protocol, k=m.k, jitter_shift=m.jitter_shift,
                          jitter_scale=m.jitter_scale, seed=study.seed,
                          match_dice=study.match_dice,
                          nsd_tolerance_mm=study.nsd_tolerance_mm,
                          cases=tuple(c.case_id for c in evaluate), options=options,
                          paradigm=job.paradigm, shots=job.shots, train_hash=train_hash,
                          train_cases=train_cases, measure_cost=study.measure_cost,
                          cost_repeats=study.cost_repeats)
        emit("eval", f"{job.name}: evaluating {len(evaluate)} case(s)")
        run_bench(cfg, out, settings=replace(base, options=options),
                  save_masks=study.save_masks, save_overlays=save_overlays, on_case=on_case,
                  on_stage=on_stage, executor=study.executor,
                  scheduler=study.scheduler or None, n_workers=study.workers)
    summary = write_outputs(out)
    emit("done", str(out))
    return summary
