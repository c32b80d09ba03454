#!/usr/bin/env python
"""CPU cost of the ``nnunet_fullscan`` detector (lung crop + a 1.5 mm full-resolution
nnU-Net, as TotalSegmentator's ``lung_nodules``) on a 512 x 512 x 300 study.

The weights are RANDOM (cost does not depend on them): this measures time, never accuracy.

Model: nnU-Net's own default planner (``ExperimentPlanner``, its ``3d_fullres``) run on a
fingerprint of 1.5 mm isotropic images (``--fp-shape``, default 200 x 230 x 230 voxels),
which is how TotalSegmentator trains its 1.5 mm models (it resamples to 1.5 mm first). The
real ``Dataset913_lung_nodules`` plans.json could not be read here (the weights zip is
not reachable from this machine), so patch size and features are nnU-Net's defaults for
such data, not confirmed copies of TotalSegmentator's. The checkpoint names TotalSegmentator's
trainer (``nnUNetTrainer_MOSAIC_1k_QuarterLR_NoMirroring``), installed through
``add_nnunet`` (so the custom-trainer mapping is exercised), 3 labels (lung, lung_nodules).

Input: a seeded synthetic chest, 300 x 512 x 512 at 1.25 x 0.78 x 0.78 mm (the same as
``scripts/bench_nnunet.py``).

Measured: model load; lung crop; nnU-Net preprocessing of the crop (resampling to 1.5 mm);
``--patches`` sliding-window patches (network + Gaussian weighting; median time); the
resampling of the logits back to the crop's grid (on zero logits of the right shape); the
boxes; with ``--full`` also the whole detector end to end. Extrapolated (labelled so): the sliding window = patches x time per patch; total =
the sum. The whole-volume (no crop) patch count is given for comparison.

Usage: ``.venv/bin/python scripts/bench_nnunet_fullscan.py --threads 2 [--patches 3] [--full] [--device cuda]``
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MOSAIC = "nnUNetTrainer_MOSAIC_1k_QuarterLR_NoMirroring"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (scripts/gpu_check.sh)")
    ap.add_argument("--patches", type=int, default=3)
    ap.add_argument("--fp-shape", default="200,230,230")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--full", action="store_true",
                    help="also run the whole detector end to end (measured, not extrapolated)")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from autoprompt_seg.config import Settings
    from autoprompt_seg.detect.nnunet import boxes_from_probabilities
    from autoprompt_seg.models.nnunet.fullscan import FullscanDetector, crop_volume, lung_crop
    from autoprompt_seg.models.nnunet.install import InstallChoices, add_nnunet
    from autoprompt_seg.models.nnunet.model import (
        canonical_spacing,
        quiet_stdout,
        to_canonical,
        torch_threads,
    )
    from autoprompt_seg.models.nnunet.train import plan_from_fingerprint, random_model_folder
    from autoprompt_seg.synthetic import synthetic_chest
    from autoprompt_seg.types import Volume

    row: dict[str, Any] = {"threads": a.threads, "device": a.device,
                           "weights": "random (cost only)"}
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench_fullscan_"))
    work.mkdir(parents=True, exist_ok=True)
    shape = [int(v) for v in a.fp_shape.split(",")]
    t0 = time.perf_counter()
    plans = plan_from_fingerprint([[1.5, 1.5, 1.5]] * 8, [shape] * 8, work_dir=work)
    row["plan_s"] = round(time.perf_counter() - t0, 1)
    ds = dict(plans["dataset_json"])
    ds["labels"] = {"background": 0, "lung": 1, "lung_nodules": 2}
    folder = random_model_folder(work / "model", plans["nnunet_default"], "3d_fullres", ds,
                                 seed=0)
    ck = folder / "fold_0" / "checkpoint_final.pth"
    obj = torch.load(ck, map_location="cpu", weights_only=False)
    obj["trainer_name"] = MOSAIC
    obj["inference_allowed_mirroring_axes"] = None
    torch.save(obj, ck)
    cfg = plans["nnunet_default"]["configurations"]["3d_fullres"]
    arch = cfg["architecture"]["arch_kwargs"]
    row.update(plans_spacing=cfg["spacing"], patch=cfg["patch_size"],
               features=arch["features_per_stage"], stages=arch["n_stages"],
               network=cfg["architecture"]["network_class_name"].rsplit(".", 1)[-1])
    wdir = work / "weights"
    t0 = time.perf_counter()
    add_nnunet(folder, "bench_lung_nodules", wdir, InstallChoices(tumour_labels=(2,)))
    row["install_s"] = round(time.perf_counter() - t0, 1)

    c = synthetic_chest((300, 512, 512), (1.25, 0.78, 0.78), n_tumours=3, seed=0)
    vol = Volume(array=c.hu, spacing=c.spacing, origin=(0.0, 0.0, 0.0), direction=np.eye(3),
                 source_format="synthetic")
    row.update(input_shape_zyx=list(vol.shape), input_spacing_zyx=list(vol.spacing))
    settings = Settings(device=a.device, threads=a.threads, weights_dir=wdir,
                        options={"nnunet_fullscan": {"model": "bench_lung_nodules"}})
    t0 = time.perf_counter()
    det = FullscanDetector(settings)
    row["load_s"] = round(time.perf_counter() - t0, 1)
    p = det.model.predictor

    t0 = time.perf_counter()
    crop = lung_crop(vol, det.opts.crop_margin_mm)
    row["crop_s"] = round(time.perf_counter() - t0, 1)
    assert crop is not None
    sub = crop_volume(vol, crop)
    row["crop_zyx"] = [[s.start, s.stop] for s in crop]
    row["crop_voxel_fraction"] = round(float(np.prod(sub.shape)) / float(np.prod(vol.shape)), 3)

    from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    def preprocess(v: Volume) -> dict[str, Any]:
        img = np.ascontiguousarray(to_canonical(v.array, v.direction), dtype=np.float32)[None]
        sp = canonical_spacing(v.spacing, v.direction)
        with torch_threads(a.threads), quiet_stdout():
            ppa = PreprocessAdapterFromNpy([img], [None], [{"spacing": list(sp)}], [None],
                                           p.plans_manager, p.dataset_json,
                                           p.configuration_manager,
                                           num_threads_in_multithreaded=1, verbose=False)
            return dict(next(ppa))

    t0 = time.perf_counter()
    dct = preprocess(sub)
    row["preprocess_s"] = round(time.perf_counter() - t0, 1)
    data = dct["data"]
    row["preprocessed_shape"] = list(data.shape[1:])
    n_patches = det.model._count_patches(data.shape[1:])
    row["patches_crop"] = n_patches
    full_pre = [int(round(n * s / 1.5)) for n, s in zip(vol.shape, vol.spacing)]
    row["patches_whole_volume"] = det.model._count_patches(full_pre)

    patch = [int(s) for s in p.configuration_manager.patch_size]
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    padded, _ = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
    slicers = p._internal_get_sliding_window_slicers(padded.shape[1:])
    gauss = compute_gaussian(tuple(patch), sigma_scale=1.0 / 8, value_scaling_factor=10,
                             device=torch.device(a.device))
    net = p.network.to(a.device).eval()
    times = []
    with torch.inference_mode():
        idx = np.linspace(0, len(slicers) - 1, a.patches).round().astype(int)
        for i in idx:
            x = torch.as_tensor(padded[slicers[i]][None]).float().to(a.device)
            t0 = time.perf_counter()
            y = net(x)[0] * gauss
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            del y
    per = float(np.median(times))
    row.update(s_per_patch=round(per, 2), patch_times_s=[round(t, 2) for t in times])

    logits = torch.zeros((3, *data.shape[1:]), dtype=torch.float32)
    t0 = time.perf_counter()
    with torch_threads(a.threads), quiet_stdout():
        _, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, p.plans_manager, p.configuration_manager, p.label_manager,
            dct["data_properties"], return_probabilities=True, num_threads_torch=a.threads)
    row["resample_back_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    prob = np.zeros(vol.shape, dtype=np.float32)
    prob[crop] = np.asarray(probs)[2]
    boxes_from_probabilities(prob, vol.spacing)
    row["boxes_s"] = round(time.perf_counter() - t0, 1)
    window = n_patches * per
    row["sliding_window_s_extrapolated"] = round(window, 1)
    total = (row["crop_s"] + row["preprocess_s"] + window + row["resample_back_s"]
             + row["boxes_s"])
    row["total_s_extrapolated"] = round(total, 1)
    row["whole_volume_window_s_extrapolated"] = round(row["patches_whole_volume"] * per, 1)
    if a.full:
        t0 = time.perf_counter()
        boxes = det.detect(vol)
        row["full_run_s_measured"] = round(time.perf_counter() - t0, 1)
        row["full_run_boxes"] = len(boxes)
        row["full_run_detail_s"] = {k: round(v, 1) for k, v in det.last_seconds.items()}
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    print(json.dumps(row, indent=1), file=sys.stderr)
    if a.json:
        a.json.write_text(json.dumps(row, indent=1))
    print(f"| {row['input_shape_zyx']} | crop {row['crop_zyx']} "
          f"({row['crop_voxel_fraction']:.0%}) | {row['patch']} | {n_patches} "
          f"(whole volume {row['patches_whole_volume']}) | {per:.1f} | "
          f"{row['preprocess_s']} + {window:.0f} (extrap.) + {row['resample_back_s']} | "
          f"{total / 60:.1f} min (extrap.) | "
          f"{row.get('full_run_s_measured', 'not run')} | {row['peak_rss_mb']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
