"""Train a lightweight nnU-Net v2 tumour detector (``autoseg detector train``).

Steps (:func:`train_detector`):

1. **Convert** the dataset to nnU-Net's raw format (``imagesTr/CASE_0000.nii.gz``,
   ``labelsTr/CASE.nii.gz``, ``dataset.json``; one label ``tumour``). Accepted inputs:

   * the MSD Task06 Lung layout (``DATA/dataset.json``, ``DATA/imagesTr``,
     ``DATA/labelsTr``), NIfTI;
   * a folder of DICOM studies, one per sub-folder (or a single study folder), each holding
     a CT series and an RTSTRUCT (ROI ``roi_name``, default ``GTV-1``) or a DICOM-SEG ground
     truth.

   Every image is written in the canonical layout of :mod:`autoprompt_seg.models.nnunet.model`
   (axis permutations and flips only), so the model sees training and inference volumes
   laid out the same way.
2. **Plan** with nnU-Net's own planner and plans mechanism: :class:`AutosegDetectorPlanner`
   (created by :func:`nnunet_classes`) subclasses ``ExperimentPlanner``. nnU-Net plans its
   3d_fullres configuration at the coarse isotropic ``target_spacing_mm`` (default 2.5 mm)
   with ``base_features`` (16) to ``max_features`` (128) features, one convolution per
   decoder stage, and the stages capped at ``max_stages`` (5); the patch size and batch size
   come from nnU-Net's own rules (the patch usually covers the whole coarse chest). The
   result is saved as configuration ``3d_detector`` of plans ``nnUNetPlans_autosegDetector``.
3. **Preprocess** with nnU-Net's ``preprocess_dataset`` and **train** with
   ``nnUNetTrainerAutosegDetector``, a subclass of ``nnUNetTrainer`` that only changes the
   schedule (``epochs``, ``iterations_per_epoch``, ``val_iterations``); its network is
   nnU-Net's. Fold ``all`` (every case trains). nnU-Net's final validation is skipped.
4. **Export** the model folder to ``--out``: ``dataset.json``, ``plans.json``,
   ``fold_all/checkpoint_final.pth`` and ``autoseg_training.json`` (what was trained, how,
   the sha256). The checkpoint's ``trainer_name`` is set to ``nnUNetTrainer`` (the subclass
   builds the very same network), so stock ``nnUNetv2_predict`` and
   ``nnUNetPredictor`` load the folder without our code; the real trainer is recorded in
   ``autoseg_training.json``.
5. **Register** (``register=True``): install the folder into the weights folder as
   ``nnunet_lung_detector`` with its sha256 (:func:`autoprompt_seg.weights.add_weights`). It
   stays *unverified* (an "untrained test checkpoint" in reports) until its sha256 is put in
   the manifest.

Environment variables: nnU-Net's planning, preprocessing and training code reads
``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` from the environment (there is
no other way to give it these paths). So steps 2-3 run in a **subprocess**
(``python -m autoprompt_seg.models.nnunet.train --worker JOB.json``) whose ``env`` holds them
(plus ``nnUNet_n_proc_DA`` and ``nnUNet_compile``); this process never writes
``os.environ``. The subprocess' output goes to ``WORK/nnunet_train.log``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendError, ConfigError, UnavailableError
from .dataset import convert_dataset

log = logging.getLogger(__name__)

DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID:03d}_AutosegLungDetector"
PLANS_NAME = "nnUNetPlans_autosegDetector"
CONFIGURATION = "3d_detector"
TRAINER_NAME = "nnUNetTrainerAutosegDetector"
FOLD = "all"
TRAINING_JSON = "autoseg_training.json"


@dataclass(frozen=True)
class DetectorTrainConfig:
    """Everything :func:`train_detector` needs; validated on creation (:class:`ConfigError`)."""

    data: Path
    out: Path
    epochs: int = 50
    iterations_per_epoch: int = 250
    val_iterations: int = 20
    target_spacing_mm: float = 2.5
    roi_name: str = "GTV-1"
    device: str = "auto"
    base_features: int = 16
    max_features: int = 128
    max_stages: int = 5
    # None: 0 on CPU (nnU-Net's SingleThreadedAugmenter, in the training process, which
    # the seed drives; its worker processes draw their own seeds), min(8, cores) on CUDA
    da_processes: int | None = None
    threads: int = 0
    work_dir: Path | None = None  # default OUT.work (kept for inspection)
    register: bool = False
    weights_dir: Path | None = None
    seed: int = 0
    initial_lr: float = 0.01
    augment: bool = True  # False: nnU-Net's nnUNetTrainerNoDA transforms (tiny CPU runs)

    def __post_init__(self) -> None:
        for name, lo in (("epochs", 1), ("iterations_per_epoch", 1), ("val_iterations", 1),
                         ("base_features", 1), ("max_features", 1), ("max_stages", 2),
                         ("threads", 0), ("seed", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"Argument {name!r} must be an integer >= {lo}; got {v!r}")
        if self.max_features < self.base_features:
            raise ConfigError(f"Argument 'max_features' must be >= base_features "
                              f"({self.base_features}); got {self.max_features!r}")
        lr = self.initial_lr
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < float(lr) <= 1:
            raise ConfigError(f"Argument 'initial_lr' must be a number in (0, 1]; got {lr!r}")
        t = self.target_spacing_mm
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.3 <= float(t) <= 10:
            raise ConfigError(f"Argument 'target_spacing_mm' must be a number of mm in "
                              f"[0.3, 10]; got {t!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"Argument 'device' must be auto, cpu or cuda; got {self.device!r}")
        if not isinstance(self.roi_name, str) or not self.roi_name.strip():
            raise ConfigError(f"Argument 'roi_name' must be a non-empty string; got "
                              f"{self.roi_name!r}")
        if self.da_processes is not None and (not isinstance(self.da_processes, int)
                                              or self.da_processes < 0):
            raise ConfigError(f"Argument 'da_processes' must be an integer >= 0; got "
                              f"{self.da_processes!r}")


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    checkpoint: Path
    checkpoint_sha256: str
    folder_sha256: str
    n_cases: int
    seconds: float
    registered: bool
    plans_summary: dict[str, Any]


# ------------------------------------------------------------- nnU-Net subclasses


@lru_cache(maxsize=2)
def nnunet_classes(augment: bool = True) -> tuple[Any, Any]:
    """(AutosegDetectorPlanner, nnUNetTrainerAutosegDetector), built on first use so that
    importing this module does not import nnunetv2. ``augment=False`` bases the trainer on
    nnU-Net's ``nnUNetTrainerNoDA`` (no data augmentation, no mirroring)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import (
        nnUNetTrainerNoDA,
    )
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    base: type = nnUNetTrainer if augment else nnUNetTrainerNoDA

    class AutosegDetectorPlanner(ExperimentPlanner):  # type: ignore[misc]
        """nnU-Net's planner with a coarse isotropic spacing and a small network."""

        base_features = 16
        max_features = 128
        max_stages = 5

        def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                     preprocessor_name: str = "DefaultPreprocessor",
                     plans_name: str = PLANS_NAME,
                     overwrite_target_spacing: list[float] | None = None,
                     suppress_transpose: bool = False) -> None:
            super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                             plans_name, overwrite_target_spacing, suppress_transpose)
            self.UNet_base_num_features = self.base_features
            self.UNet_max_features_3d = self.max_features
            self.UNet_max_features_2d = self.max_features
            self.UNet_blocks_per_stage_decoder = (1,) * 13
            self._final_save = False

        @staticmethod
        def static_estimate_VRAM_usage(patch_size: tuple[int, ...], input_channels: int,
                                       output_channels: int, arch_class_name: str,
                                       arch_kwargs: dict[str, Any],
                                       arch_kwargs_req_import: tuple[str, ...]) -> Any:
            """nnU-Net's estimate without its ``torch.set_num_threads(nnUNet_n_proc_DA)``,
            which fails when augmentation runs in the training process (0 workers)."""
            net = get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import,
                                         input_channels, output_channels, allow_init=False)
            return net.compute_conv_feature_map_size(patch_size)

        def get_plans_for_configuration(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            plan: dict[str, Any] = super().get_plans_for_configuration(*args, **kwargs)
            ak = plan["architecture"]["arch_kwargs"]
            n = min(int(ak["n_stages"]), self.max_stages)
            if n < ak["n_stages"]:
                ak["n_stages"] = n
                for k in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
                    ak[k] = list(ak[k])[:n]
                ak["n_conv_per_stage_decoder"] = list(ak["n_conv_per_stage_decoder"])[:n - 1]
            return plan

        def save_plans(self, plans: dict[str, Any]) -> None:
            if self._final_save:
                super().save_plans(plans)

        def plan_experiment(self) -> dict[str, Any]:
            plans: dict[str, Any] = super().plan_experiment()
            det = dict(plans["configurations"]["3d_fullres"])
            det["data_identifier"] = self.generate_data_identifier(CONFIGURATION)
            det["batch_dice"] = False
            plans["configurations"] = {CONFIGURATION: det}
            fname = join(nnUNet_preprocessed, self.dataset_name, self.plans_identifier + ".json")
            if os.path.isfile(fname):
                os.remove(fname)
            self._final_save = True
            self.save_plans(plans)
            self.plans = plans
            return plans

    class nnUNetTrainerAutosegDetector(base):  # type: ignore[misc]  # noqa: N801
        """nnUNetTrainer with a configurable schedule; the network is nnU-Net's own."""

        epochs = 50
        iterations = 250
        val_iterations = 20
        lr = 0.01

        def __init__(self, plans: dict[str, Any], configuration: str, fold: int | str,
                     dataset_json: dict[str, Any],
                     device: torch.device = torch.device("cuda")) -> None:  # noqa: B008
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = self.epochs
            self.num_iterations_per_epoch = self.iterations
            self.num_val_iterations_per_epoch = self.val_iterations
            self.initial_lr = self.lr
            self.save_every = max(1, min(50, self.epochs))

    return AutosegDetectorPlanner, nnUNetTrainerAutosegDetector


# ------------------------------------------------------------------------------ worker


def _worker(job_path: Path) -> None:
    """Runs inside the training subprocess, whose env names nnU-Net's folders."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        preprocess_dataset,
    )

    job = json.loads(job_path.read_text())
    torch.manual_seed(job["seed"])
    np.random.seed(job["seed"])
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    planner_cls, trainer_cls = nnunet_classes(bool(job.get("augment", True)))
    nproc = max(1, min(4, os.cpu_count() or 1))
    extract_fingerprint_dataset(DATASET_ID, num_processes=nproc, check_dataset_integrity=True,
                                clean=True, verbose=False, show_progress_bar=False)
    planner_cls.base_features = job["base_features"]
    planner_cls.max_features = job["max_features"]
    planner_cls.max_stages = job["max_stages"]
    t = float(job["target_spacing_mm"])
    planner = planner_cls(DATASET_ID, plans_name=PLANS_NAME, overwrite_target_spacing=[t, t, t])
    plans = planner.plan_experiment()
    log.info("plans: %s", json.dumps(plans["configurations"][CONFIGURATION]))
    preprocess_dataset(DATASET_ID, PLANS_NAME, (CONFIGURATION,), (nproc,), verbose=False,
                       show_progress_bar=False)
    pre = Path(os.environ["nnUNet_preprocessed"]) / DATASET_NAME
    plans = load_json(str(pre / f"{PLANS_NAME}.json"))
    plans["continue_training"] = False
    dataset_json = load_json(str(pre / "dataset.json"))
    trainer_cls.epochs = job["epochs"]
    trainer_cls.iterations = job["iterations_per_epoch"]
    trainer_cls.val_iterations = job["val_iterations"]
    trainer_cls.lr = job["initial_lr"]
    trainer = trainer_cls(plans=plans, configuration=CONFIGURATION, fold=FOLD,
                          dataset_json=dataset_json, device=torch.device(job["device"]))
    trainer.run_training()
    log.info("trained: %s", trainer.output_folder)


# -------------------------------------------------------------------------- the recipe


def _export(results_model: Path, out: Path, cfg: DetectorTrainConfig, n_cases: int,
            seconds: float) -> tuple[Path, str, str, dict[str, Any]]:
    import torch

    from ...weights import sha256_file, sha256_path

    src_ckpt = results_model / f"fold_{FOLD}" / "checkpoint_final.pth"
    if not src_ckpt.is_file():
        raise BackendError(f"nnU-Net training finished without {str(src_ckpt)!r}")
    if out.exists():
        shutil.rmtree(out)
    (out / f"fold_{FOLD}").mkdir(parents=True)
    for f in ("dataset.json", "plans.json"):
        shutil.copyfile(results_model / f, out / f)
    ckpt = torch.load(src_ckpt, map_location="cpu", weights_only=False)
    ckpt["trainer_name"] = "nnUNetTrainer"
    ckpt["init_args"]["device"] = torch.device("cpu")
    dest = out / f"fold_{FOLD}" / "checkpoint_final.pth"
    torch.save(ckpt, dest)
    for log_file in (results_model / f"fold_{FOLD}").glob("training_log_*.txt"):
        shutil.copyfile(log_file, out / f"fold_{FOLD}" / log_file.name)
    plans = json.loads((out / "plans.json").read_text())
    conf = plans["configurations"][CONFIGURATION]
    summary = {"configuration": CONFIGURATION, "spacing": conf["spacing"],
               "patch_size": conf["patch_size"], "batch_size": conf["batch_size"],
               "n_stages": conf["architecture"]["arch_kwargs"]["n_stages"],
               "features_per_stage": conf["architecture"]["arch_kwargs"]["features_per_stage"]}
    ck_sha = sha256_file(dest)
    record = {"trainer_used": TRAINER_NAME, "trainer_name_in_checkpoint": "nnUNetTrainer",
              "plans": PLANS_NAME, "fold": FOLD, "n_cases": n_cases,
              "train_seconds": round(seconds, 1), "checkpoint_sha256": ck_sha,
              "config": {k: str(v) if isinstance(v, Path) else v
                         for k, v in asdict(cfg).items()}, "plans_summary": summary,
              "status": "untrained test checkpoint unless its sha256 is in the manifest"}
    (out / TRAINING_JSON).write_text(json.dumps(record, indent=2, default=str))
    return dest, ck_sha, sha256_path(out), summary


def train_detector(cfg: DetectorTrainConfig) -> TrainResult:
    """Convert, plan, preprocess, train, export and (optionally) register a detector."""
    from ...config import resolve_device

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    out = Path(cfg.out).expanduser().resolve()
    work = Path(cfg.work_dir).expanduser().resolve() if cfg.work_dir else \
        out.with_name(out.name + ".work")
    if work == out or out in work.parents:
        raise ConfigError(f"Argument 'work_dir' must lie outside --out {str(out)!r}; got "
                          f"{str(work)!r}")
    if work.exists():
        shutil.rmtree(work)
    raw_root, pre_root, res_root = work / "raw", work / "preprocessed", work / "results"
    for p in (raw_root, pre_root, res_root):
        p.mkdir(parents=True)
    n = convert_dataset(cfg.data, raw_root / DATASET_NAME, cfg.roi_name)
    da = cfg.da_processes if cfg.da_processes is not None else \
        (0 if device == "cpu" else min(8, os.cpu_count() or 1))
    job = {"epochs": cfg.epochs, "iterations_per_epoch": cfg.iterations_per_epoch,
           "val_iterations": cfg.val_iterations, "target_spacing_mm": cfg.target_spacing_mm,
           "base_features": cfg.base_features, "max_features": cfg.max_features,
           "max_stages": cfg.max_stages, "device": device, "threads": cfg.threads,
           "seed": cfg.seed, "initial_lr": float(cfg.initial_lr), "augment": cfg.augment}
    job_path = work / "job.json"
    job_path.write_text(json.dumps(job))
    # nnU-Net's folders are given to the subprocess only; os.environ stays untouched.
    env = dict(os.environ)
    env.update(nnUNet_raw=str(raw_root), nnUNet_preprocessed=str(pre_root),
               nnUNet_results=str(res_root), nnUNet_n_proc_DA=str(da),
               nnUNet_compile="f" if device == "cpu" else env.get("nnUNet_compile", "t"),
               PYTHONUNBUFFERED="1")
    if cfg.threads:
        env["OMP_NUM_THREADS"] = str(cfg.threads)
    log_path = work / "nnunet_train.log"
    cmd = [sys.executable, "-m", "autoprompt_seg.models.nnunet.train", "--worker", str(job_path)]
    log.info("training nnU-Net detector: %d case(s), %d epoch(s) x %d iteration(s) on %s; "
             "log %s", n, cfg.epochs, cfg.iterations_per_epoch, device, log_path)
    with open(log_path, "w") as lf:
        proc = subprocess.run(cmd, env=env, stdout=lf, stderr=subprocess.STDOUT, cwd=work)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise BackendError(f"nnU-Net training failed (exit {proc.returncode}); see "
                           f"{log_path}:\n" + "\n".join(tail))
    model_src = res_root / DATASET_NAME / f"{TRAINER_NAME}__{PLANS_NAME}__{CONFIGURATION}"
    secs = time.perf_counter() - t0
    ckpt, ck_sha, folder_sha, summary = _export(model_src, out, cfg, n, secs)
    registered = False
    if cfg.register:
        from ...config import default_weights_dir
        from ...weights import add_weights
        from .model import WEIGHTS_NAME

        add_weights(out, WEIGHTS_NAME, cfg.weights_dir or default_weights_dir(),
                    source=f"autoseg detector train {cfg.data}")
        registered = True
    log.info("detector exported to %s (checkpoint sha256 %s) in %.0f s", out, ck_sha, secs)
    return TrainResult(model_dir=out, checkpoint=ckpt, checkpoint_sha256=ck_sha,
                       folder_sha256=folder_sha, n_cases=n, seconds=secs,
                       registered=registered, plans_summary=summary)


# ---------------------------------------------------- plans without data, random weights


def _plan_worker(job_path: Path) -> None:
    """Inside a subprocess: run nnU-Net's default planner and ours on a given fingerprint."""
    import SimpleITK as sitk
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )

    job = json.loads(job_path.read_text())
    raw = Path(os.environ["nnUNet_raw"]) / DATASET_NAME
    pre = Path(os.environ["nnUNet_preprocessed"]) / DATASET_NAME
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    pre.mkdir(parents=True, exist_ok=True)
    n = len(job["fingerprint"]["spacings"])
    for i in range(n):  # one-voxel stand-ins: the planners only read the reader class
        sitk.WriteImage(sitk.Image(2, 2, 2, sitk.sitkFloat32),
                        str(raw / "imagesTr" / f"lung_{i:04d}_0000.nii.gz"))
        sitk.WriteImage(sitk.Image(2, 2, 2, sitk.sitkUInt8),
                        str(raw / "labelsTr" / f"lung_{i:04d}.nii.gz"))
    ds = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": 1},
          "numTraining": n, "file_ending": ".nii.gz"}
    save_json(ds, str(raw / "dataset.json"))
    save_json(job["fingerprint"], str(pre / "dataset_fingerprint.json"))
    planner_cls, _ = nnunet_classes()
    planner_cls.base_features = job["base_features"]
    planner_cls.max_features = job["max_features"]
    planner_cls.max_stages = job["max_stages"]
    t = float(job["target_spacing_mm"])
    ours = planner_cls(DATASET_ID, plans_name=PLANS_NAME,
                       overwrite_target_spacing=[t, t, t]).plan_experiment()
    default = ExperimentPlanner(DATASET_ID, plans_name="nnUNetPlans").plan_experiment()
    out = {"detector": ours, "nnunet_default": default, "dataset_json": ds}
    Path(job["out"]).write_text(json.dumps(out, default=str))


def plan_from_fingerprint(spacings_zyx: list[list[float]], shapes_zyx: list[list[int]], *,
                          intensity: dict[str, float] | None = None,
                          target_spacing_mm: float = 2.5, base_features: int = 16,
                          max_features: int = 128, max_stages: int = 5,
                          work_dir: Path | None = None) -> dict[str, Any]:
    """Plans from nnU-Net's own planners for a dataset described only by its fingerprint.

    Returns ``{"detector": plans, "nnunet_default": plans, "dataset_json": ...}``: the
    lightweight detector plans (:class:`AutosegDetectorPlanner`) and nnU-Net's default
    ``ExperimentPlanner`` plans (its ``3d_fullres`` is what nnU-Net would train) for the same
    data. Used by the benchmark and the tests to build random-weight model folders. Runs
    in a subprocess (nnU-Net's planner reads its folders from the environment).
    """
    import tempfile

    ip = intensity or {"max": 3071.0, "mean": -100.0, "median": -50.0, "min": -1024.0,
                       "percentile_00_5": -1000.0, "percentile_99_5": 400.0, "std": 300.0}
    fingerprint = {"spacings": spacings_zyx, "shapes_after_crop": shapes_zyx,
                   "foreground_intensity_properties_per_channel": {"0": ip},
                   "median_relative_size_after_cropping": 1.0}
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        root = Path(tmp)
        job = {"fingerprint": fingerprint, "target_spacing_mm": target_spacing_mm,
               "base_features": base_features, "max_features": max_features,
               "max_stages": max_stages, "out": str(root / "plans_out.json")}
        (root / "job.json").write_text(json.dumps(job))
        env = dict(os.environ)
        env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
                   nnUNet_results=str(root / "res"), nnUNet_n_proc_DA="1")
        proc = subprocess.run([sys.executable, "-m", "autoprompt_seg.models.nnunet.train", "--plan",
                               str(root / "job.json")], env=env, capture_output=True,
                              text=True, cwd=root)
        if proc.returncode != 0:
            raise BackendError("nnU-Net planning failed: "
                               + "\n".join((proc.stderr or proc.stdout).splitlines()[-10:]))
        result: dict[str, Any] = json.loads((root / "plans_out.json").read_text())
    return result


def random_model_folder(out: Path, plans: dict[str, Any], configuration: str,
                        dataset_json: dict[str, Any], *, seed: int = 0, fold: int | str = 0,
                        foreground_bias: float | None = None) -> Path:
    """Write an nnU-Net model folder with *random* weights (for tests and cost benchmarks).

    The network is built by ``nnUNetTrainer.build_network_architecture`` from ``plans``;
    ``foreground_bias`` (optional) is added to the foreground output bias so that a random
    model gives a non-trivial mask. Never a trained model: the sha256 is unknown.
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    torch.manual_seed(seed)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    net = nnUNetTrainer.build_network_architecture(pm, cm, 1, n_out,
                                                   enable_deep_supervision=False)
    sd = net.state_dict()
    if foreground_bias is not None:
        key = [k for k in sd if k.endswith(".bias") and sd[k].shape == (n_out,)][-1]
        sd[key][1:] += foreground_bias
    out = Path(out)
    (out / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    (out / "plans.json").write_text(json.dumps(plans, indent=2, default=str))
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    ckpt = {"network_weights": sd, "trainer_name": "nnUNetTrainer",
            "init_args": {"plans": plans, "configuration": configuration, "fold": fold,
                          "dataset_json": dataset_json, "device": torch.device("cpu")},
            "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 0}
    torch.save(ckpt, out / f"fold_{fold}" / "checkpoint_final.pth")
    return out


def _main(argv: list[str]) -> int:
    """Entry point of the training subprocess; its output goes to the training log file."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if len(argv) == 2 and argv[0] == "--plan":
        _plan_worker(Path(argv[1]))
        return 0
    if len(argv) == 2 and argv[0] == "--worker":
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            if var not in os.environ:
                raise UnavailableError(f"the training worker needs {var} in its environment")
        _worker(Path(argv[1]))
        return 0
    sys.stderr.write("internal entry point: python -m autoprompt_seg.models.nnunet.train "
                     "--worker JOB.json (use `autoseg detector train`)\n")
    return 64


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
